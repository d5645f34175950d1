"""盲评对战（chat.py --arena 模型1 模型2）：每句话两个模型各答一次，随机标成 A、B，人投票，票写进偏好文件。

InstructGPT 的标注员就是这样并排比较回答的（Ouyang et al. 2022, §3.4）。投票前从不显示哪边是哪个模型：
A/B 每一轮重新随机分配（由会话种子决定，写进每一票），投完才用一行揭晓。两边各有各的对话历史，和普通对话一样多轮。

这里只管流程；一边怎样生成、流式显示、被 Ctrl-C 打断，是 chat.py 的 Chat（由它传进来，库不导入脚本）；
票怎样落盘是 prefs.VoteFile。
"""

from __future__ import annotations

import random
import sys

from . import inference
from .errors import EXIT_BAD_INPUT, UserError
from .paths import display_path
from .prefs import KEYS, VoteFile, vote_row

VOTE_PROMPT = "你的投票（1 = A 好，2 = B 好，0 = 一样好，s = 跳过）："
HELP = f"""盲评对战：每句话两个模型各答一次，随机标成 A、B（每轮重新分配），投完票才揭晓哪边是哪个模型。
  投票：1 = A 更好，2 = B 更好，0 = 一样好（平局），s = 跳过；平局和跳过也会记下，但不会当成偏好对训练
  /help             显示本帮助
  /clear            清空两边的对话历史
  /exit             退出（也可以在提示符处按 Ctrl-D）；已投的票都已写进文件
回答时按 Ctrl-C 打断这一轮（两边都不计入历史、不投票），再按一次退出程序；投票时按 Ctrl-C 放弃这一票。"""


def check_pair(specs: list[str], paths: dict[str, str], base_model: str) -> list[str]:
    """--arena 的两个模型：恰好两个、都认得出（不存在、是 RM 在这里就拒绝，什么都还没加载），而且不是同一个模型。"""
    if len(specs) != 2:
        raise UserError(f"--arena 需要正好两个模型，例如 --arena sft ppo；现在给了 {len(specs)} 个：{' '.join(specs)}。",
                        EXIT_BAD_INPUT)
    folders = [inference.policy_folder(s, paths, base_model)[1].resolve() for s in specs]
    if folders[0] == folders[1]:
        raise UserError(f"--arena 的两个模型是同一个（{display_path(folders[0])}）：自己和自己比没有意义，请换一个。",
                        EXIT_BAD_INPUT)
    return specs


class Arena:
    def __init__(self, sides: list, votes: VoteFile, seed: int, system: str | None):
        self.sides, self.votes, self.seed, self.system = sides, votes, seed, system
        self.rng = random.Random(seed)  # A/B 的分配：同一个种子、同样的输入，同样的分配
        self.turn = 0

    def names(self) -> list[str]:
        return [s.loaded.name for s in self.sides]

    def ask(self, question: str, read) -> bool:
        """一轮：两边各答一次（按 A、B 的顺序逐字显示），再投票。返回 False 表示要退出。"""
        order = self.rng.sample(range(2), 2)  # order[0] 是这一轮显示为 A 的一边
        kept = [len(s.history) for s in self.sides]
        answers = []
        for label, i in zip("AB", order):
            side = self.sides[i]
            side.prefix = f"{label}："
            interrupted = True  # reply 抛出（这一句放不进上下文）时也一样：另一边已答的也作废
            try:
                interrupted = side.reply(question)
            finally:
                if interrupted:  # Ctrl-C：整轮作废，两边都回到这一轮之前
                    for s, n in zip(self.sides, kept):
                        del s.history[n:]
            if interrupted:
                return True
            sys.stdout.write("\n")
            answers.append(side.history[-1]["content"] if len(side.history) > kept[i] else None)
        self.turn += 1
        if None in answers:  # 有一边没给出回答（chat 已说明）：没有可比的两个回答
            print("（有一边没有给出回答，这一轮不投票）")
            return True
        vote = self.vote(read)
        if vote == "exit":
            return False
        names = [self.sides[i].loaded.name for i in order]
        if vote is not None:
            self.votes.append(vote_row(question, self.system, names, answers, vote, self.seed, self.turn))
        print(f"（揭晓：A 是 {names[0]}，B 是 {names[1]}"
              + ("；这一票没有记下）" if vote is None else f"；已记下，本次共 {self.votes.count} 票）"))
        return True

    def vote(self, read) -> str | None:
        """读一票；None = 放弃这一票（Ctrl-C），"exit" = 不投票直接退出。不是投票键的输入说一行，再问一次。"""
        while True:
            try:
                key = read(VOTE_PROMPT).strip().lower()
            except KeyboardInterrupt:
                print()
                return None
            except EOFError:  # 投票时按 Ctrl-D / 管道读完：这一票不记，退出
                print()
                return "exit"
            if key in KEYS:
                return KEYS[key]
            if key in ("/exit", "/quit"):
                return "exit"
            if key == "/help":
                print(HELP)
            else:
                print(f"（{key or '空行'} 不是投票键：请输入 1、2、0 或 s；/help 查看说明）")

    def handle(self, line: str, read) -> bool:
        """一行输入：/命令 或 问题。返回 False 表示退出。"""
        if line.startswith("/") and "\n" not in line:
            name = line.split()[0]
            if name in ("/exit", "/quit"):
                return False
            if name == "/help":
                print(HELP)
            elif name == "/clear":
                for s in self.sides:
                    s.history.clear()
                print("（已清空两边的对话历史）")
            else:
                print(f"（盲评时没有 {name} 命令，输入 /help 查看可用命令）")
            return True
        try:
            return self.ask(line, read)
        except UserError as e:  # 这一句太长：提示后继续
            print(f"（{e.message}）", file=sys.stderr)
            return True
