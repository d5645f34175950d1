"""对话：在终端里和任一阶段的模型多轮聊天（默认 PPO 模型），回答逐字显示。

    python chat.py                                    # 和 PPO 模型聊天（checkpoint/ppo，LoRA 已合并）
    python chat.py --model grpo                       # 换一个阶段（阶段名见 --help 的 --model），或任意本地模型文件夹
    python chat.py --model sft --sft_model_path checkpoint/sft-v2   # 另一个 SFT 文件夹（与 benchmark.py 同名的选项）
    python chat.py --model base --think               # 原始 Qwen3-0.6B，允许思考（思考过程灰色显示）
    python chat.py --prompt "你是谁？"                 # 只问一句：打印回答后退出
    printf '你好\\n你是谁？\\n' | python chat.py        # 从管道逐行读问题，当作同一段多轮对话，读完退出
    python chat.py --model checkpoint/tiny/ppo        # 离线演示：tiny 配方训练出的 PPO 模型
    python chat.py --model base --model_name_or_path checkpoint/tiny/base   # 离线随机小模型（只会说胡话）
    python chat.py --arena sft ppo                    # 盲评对战：两个模型各答一次（A/B 随机），你投票，票存进 data/human_prefs.jsonl

对话中的命令：/help /clear /system <文字> /model [阶段名|文件夹] /exit。回答时按 Ctrl-C 打断这一句（这一轮问答不计入历史），
再按一次 Ctrl-C 退出程序；在提示符处按 Ctrl-D 或输入 /exit 退出。
"""

import gc
import random
import signal
import sys
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteriaList

from qwen_rlhf import arena, data, errors, inference, options, prefs, stages, terminal
from qwen_rlhf.device import announce_device, native_bf16, pick_device
from qwen_rlhf.errors import EXIT_BAD_INPUT, UserError
from qwen_rlhf.options import display_path

STAGE_NAMES = " / ".join(stages.chat_stages())  # 能对话的阶段，来自阶段登记表
HELP = f"""命令：
  /help             显示本帮助
  /clear            清空对话历史（系统提示词保留）
  /system <文字>    设置系统提示词；只输入 /system 显示当前的，/system - 取消
  /model            显示已加载的模型
  /model <模型>     换模型：{STAGE_NAMES} 或一个本地模型文件夹；换成功后清空对话历史
                    （之前的回答来自另一个模型），系统提示词保留；换不成时仍用当前模型
  /exit             退出（也可以在提示符处按 Ctrl-D）
回答时按 Ctrl-C 打断这一句（这一轮问答不计入历史），再按一次退出程序。"""


def opt(default, text):
    return field(default=default, metadata={"help": text})


@dataclass
class ChatArgs(inference.PolicyPaths):  # --sft_model_path / --ppo_model_path / --grpo_model_path …（和 benchmark.py 同名）
    model: str = opt("ppo", f"和哪个模型对话：{STAGE_NAMES}（即 --model_name_or_path / "
                     "--<阶段>_model_path），或一个本地模型文件夹；对话中可用 /model 切换")
    model_name_or_path: str = opt(options.DEFAULT_MODEL, "--model base 时用的基座模型：本地文件夹或模型 ID")
    system_prompt: str | None = opt(None, "初始系统提示词（默认不加）；对话中可用 /system 修改")
    prompt: str | None = opt(None, "只问这一句：打印回答后退出（不进入交互）")
    arena: list[str] | None = opt(None, "盲评对战：给两个模型（阶段名、快照如 ppo@step-50 或文件夹），例如 --arena sft ppo；"
                                  "每句话两边各答一次、随机标成 A/B，你按 1 / 2 / 0（平局）/ s（跳过）投票，投完才揭晓")
    prefs_file: str = opt(prefs.DEFAULT_FILE, "--arena 的票追加到这个文件（TRL 的偏好格式，一票一行）；"
                          "train_rm.py / train_dpo.py 的 add_prefs 或 dataset 选项读它，benchmark.py 用它算你和 RM 的一致率")
    device: str = opt("auto", "auto（有 GPU 用 cuda，否则 cpu）/ cpu / cuda / cuda:1 …（与 benchmark.py 相同）")
    think: bool = opt(False, "允许 Qwen3 先思考再回答（默认关闭，即 enable_thinking=False）")
    hide_think: bool = opt(False, "和 --think 一起用：不显示思考过程，只显示最终回答")
    do_sample: bool = opt(True, "采样生成；--do_sample false 为贪心解码（确定的输出）")
    temperature: float = opt(0.7, "采样温度（Qwen3 非思考模式推荐 0.7；思考模式推荐 0.6）")
    top_p: float = opt(0.8, "top-p 采样（非思考模式推荐 0.8；思考模式推荐 0.95）")
    top_k: int = opt(20, "top-k 采样（0 = 不限制）")
    max_new_tokens: int = opt(512, "每个回答最多生成多少个 token")
    seed: int | None = opt(None, "随机种子：固定后同样的输入得到同样的回答（默认不固定）")
    allow_pickle: bool = opt(False, "允许加载 .bin/.pt 等 pickle 格式权重（不安全，默认只加载 safetensors）")
    # --debug 已被 transformers 占用，和训练脚本一样叫 --traceback
    traceback: bool = opt(False, "出错时打印完整 traceback（也可设环境变量 QWEN_RLHF_DEBUG=1）")

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError(f"--max_new_tokens 必须是正整数，现在是 {self.max_new_tokens}。", EXIT_BAD_INPUT)
        inference.check_sampling(self.do_sample, self.temperature, self.top_p, self.top_k)


# ---------------------------------------------------------------- 对话


def load(spec: str, args: ChatArgs, device: str, dtype, announce: bool = False) -> inference.Loaded:
    """先认出 spec 是不是能对话的模型（RM、半成品在这里就被拒绝，什么都还没加载），再加载到 device。
    announce：第一次加载之前说一行设备（GPU 用不了时在这里拒绝）；写到 stderr，管道模式下 stdout 里只有回答。"""
    name, folder, _ = inference.policy_folder(
        spec, args.paths(), args.model_name_or_path)
    if announce:
        announce_device("chat", args.device == "cpu", "bf16" if dtype == torch.bfloat16 else "fp32", model=folder,
                        file=sys.stderr)
    if sys.stderr.isatty():  # 加载要几秒：终端上显示一行临时提示，加载完或出错时擦掉，错误仍然只有一行
        print(f"正在加载模型 {spec} …", end="\r", file=sys.stderr, flush=True)
    try:
        loaded = inference.load_policy(name, folder, args.allow_pickle, dtype)
        loaded.model.to(device)
    finally:
        if sys.stderr.isatty():
            print("\x1b[K", end="", file=sys.stderr, flush=True)
    return loaded


class Chat:
    def __init__(self, loaded: inference.Loaded, args: ChatArgs, device: str, dtype):
        self.args, self.device, self.dtype = args, device, dtype
        self.use(loaded)
        self.system = args.system_prompt
        self.prefix = ""  # 交互模式下回答前显示"助手："
        self.history: list[dict] = []  # user / assistant 交替，assistant 只存最终回答
        self.sampling = (dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k) if args.do_sample
                         else dict(temperature=None, top_p=None, top_k=None))  # None：不用模型自带的采样设置

    def use(self, loaded: inference.Loaded) -> None:
        """换上 loaded；上下文放不下 --max_new_tokens 时拒绝（不改动当前模型）。"""
        context = getattr(loaded.model.config, "max_position_embeddings", None) or 32768
        if self.args.max_new_tokens >= context:
            raise UserError(f"--max_new_tokens {self.args.max_new_tokens} 不小于模型的上下文长度 {context}，请调小。",
                            EXIT_BAD_INPUT)
        self.loaded, self.model, self.tok, self.context = loaded, loaded.model, loaded.tokenizer, context

    def switch(self, spec: str) -> None:
        """/model <模型>：新模型完整加载好才换掉旧的，所以任何失败（RM、半成品、坏权重、Ctrl-C）都保留当前模型。
        换成功后清空历史：之前的回答是另一个模型说的，留着会让新模型接着"它自己没说过的话"往下说。"""
        current = self.loaded.name
        try:
            self.use(load(spec, self.args, self.device, self.dtype))
        except UserError as e:
            print(f"（没有切换，仍在用 {current}：{e.message}）")
            return
        except KeyboardInterrupt:
            print(f"\n（已取消切换，仍在用 {current}）")
            return
        gc.collect()  # 旧模型已没有引用：立刻释放内存 / 显存
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.history.clear()
        print(f"（已切换到 {self.loaded.name}（{display_path(self.loaded.folder)}）；对话历史已清空（之前的回答来自另一个模型），"
              "系统提示词保留）")

    def prompt_ids(self, question: str) -> tuple[list[int], bool]:
        """系统提示 + 历史 + 新问题；超出上下文（留出 max_new_tokens）时从最早的一轮开始丢。"""
        budget = self.context - self.args.max_new_tokens
        msgs = data.messages(question, self.system)
        for start in range(0, len(self.history) + 1, 2):
            text = data.prompt_text(self.tok, msgs[:-1] + self.history[start:] + msgs[-1:], self.args.think)
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= budget:
                break
        else:  # 连一轮历史都不带也放不下：历史保持原样，只跳过这一句
            raise UserError(f"这条输入连同系统提示有 {len(ids)} 个 token，加上回答上限 {self.args.max_new_tokens} "
                            f"超出了模型上下文 {self.context}，已跳过；请缩短后重试", EXIT_BAD_INPUT)
        if start:
            self.history = self.history[start:]
            terminal.note(f"对话超出模型上下文（{self.context} token），已丢弃最早的 {start // 2} 轮")
        return ids, text.rstrip().endswith("<think>")  # 有的模板让生成直接从思考里开始

    def reply(self, question: str) -> bool:
        """生成并流式显示回答；正常结束的问答存进历史。返回是否被 Ctrl-C 打断。"""
        ids, starts_thinking = self.prompt_ids(question)
        display = terminal.Display(self.tok, show_think=self.args.think and not self.args.hide_think,
                                   thinking=starts_thinking)
        display.write(self.prefix)
        input_ids = torch.tensor([ids], device=self.device)
        with terminal.CtrlC() as ctrl_c, terminal.no_ctrl_echo(), torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=display,
                stopping_criteria=StoppingCriteriaList([ctrl_c]), max_new_tokens=self.args.max_new_tokens,
                do_sample=self.args.do_sample, eos_token_id=self.tok.eos_token_id,
                pad_token_id=self.tok.pad_token_id, **self.sampling,
            )
        tokens = out[0, len(ids):].tolist()
        if ctrl_c.pressed:
            terminal.note("已打断；这一轮问答不计入历史，可按 ↑ 找回问题")
            return True
        text = self.tok.decode(tokens, skip_special_tokens=True)
        answer = terminal.final_answer(("<think>" if starts_thinking else "") + text)
        if self.tok.eos_token_id not in tokens:
            terminal.note(f"回答达到 --max_new_tokens {self.args.max_new_tokens} 的上限，被截断")
        if answer:
            self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        else:
            terminal.note("模型没有给出回答；这一轮不计入历史")
        return False

    def command(self, line: str) -> bool:
        """执行 /命令；返回 False 表示退出。"""
        name, rest = (line.split(None, 1) + [""])[:2]
        rest = rest.strip()
        if name == "/help":
            print(HELP)
        elif name == "/clear":
            self.history.clear()
            print("（已清空对话历史）")
        elif name == "/system" and not rest:
            print(f"当前系统提示词：{self.system}" if self.system else "（当前没有系统提示词）")
        elif name == "/system":
            self.system = None if rest == "-" else rest
            print("（已取消系统提示词）" if self.system is None else "（已设置系统提示词，从下一句开始生效）")
        elif name == "/model" and rest:
            self.switch(rest)
        elif name == "/model":
            m = self.model
            params = sum(p.numel() for p in m.parameters())
            print(f"模型：{self.loaded.name}\n文件夹：{display_path(self.loaded.folder)}\n参数量：{params / 1e6:.1f}M\n"
                  f"设备：{self.device}（{str(m.dtype).replace('torch.', '')}）\n"
                  f"上下文：{self.context} token，回答最多 {self.args.max_new_tokens}；历史 {len(self.history) // 2} 轮")
        elif name in ("/exit", "/quit"):
            return False
        else:
            print(f"（未知命令 {name}，输入 /help 查看可用命令）")
        return True

    def handle(self, line: str) -> bool:
        """处理一行输入：空行忽略，/ 开头是命令，其余是问题。返回 False 表示退出。"""
        text = terminal.clean(line)
        if not text:
            return True
        if text.startswith("/") and "\n" not in text:
            return self.command(text)
        try:
            self.reply(text)
        except UserError as e:  # 这一句太长：提示后继续对话
            terminal.note(e.message)
            return True
        sys.stdout.write("\n")  # 空一行，一个回答一块
        return True


# ---------------------------------------------------------------- 入口


def prompt_loop(handle) -> None:
    """在"你："提示符处一行一行地读，交给 handle（返回 False 就退出）；Ctrl-C 只清掉这一行，Ctrl-D 退出。"""
    while True:
        try:
            line = input("你：")
        except KeyboardInterrupt:  # 提示符处的 Ctrl-C 只清掉这一行
            print("\n（输入 /exit 或按 Ctrl-D 退出）")
            continue
        except EOFError:
            print()
            break
        if not handle(line):
            break


def interactive_terminal() -> None:
    import readline  # noqa: F401  方向键编辑、↑↓ 翻历史（UTF-8 终端下中文可用）

    # 父进程忽略 SIGINT 时（后台任务、某些启动器）子进程会继承"忽略"，提示符处的 Ctrl-C 就失灵了：显式装回默认处理
    signal.signal(signal.SIGINT, signal.default_int_handler)


def arena_main(args: ChatArgs, device: str, dtype) -> None:
    """--arena：两个模型盲评对战（qwen_rlhf/arena.py），票追加到 --prefs_file。模型名、投票文件都在加载之前检查。"""
    if args.prompt is not None:
        raise UserError("--arena 是交互的盲评对战，不能和 --prompt 一起用。", EXIT_BAD_INPUT)
    specs = arena.check_pair(args.arena, args.paths(), args.model_name_or_path)
    votes = prefs.VoteFile(args.prefs_file)
    try:
        sides = [Chat(load(s, args, device, dtype, announce=i == 0), args, device, dtype) for i, s in enumerate(specs)]
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)  # 记进每一票：可复现
        from transformers import set_seed

        set_seed(seed)
        game = arena.Arena(sides, votes, seed, args.system_prompt)
        if sys.stdin.isatty():
            interactive_terminal()
        print(f"盲评对战：{specs[0]} 和 {specs[1]}，每轮随机标成 A/B（种子 {seed}）；票写进 {display_path(votes.path)}。"
              "输入 /help 查看说明，/exit 或 Ctrl-D 退出。")
        prompt_loop(lambda line: (text := terminal.clean(line)) == "" or game.handle(text, input))
    finally:
        votes.close()
        if votes.count:
            print(f"（本次投了 {votes.count} 票，已写进 {display_path(votes.path)}）")


def main():
    (args,) = options.parse([ChatArgs])
    # 非 UTF-8 的输入 / 终端编码不对时用 � 代替，绝不因为编码崩溃
    sys.stdin.reconfigure(errors="replace")
    sys.stdout.reconfigure(errors="replace")
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device != "cpu" and native_bf16() else torch.float32  # 不原生支持 bf16 的卡上用 fp32
    if args.arena is not None:
        return arena_main(args, device, dtype)
    chat = Chat(load(args.model, args, device, dtype, announce=True), args, device, dtype)  # 只由 chat 持有：/model 换掉后能释放
    if args.seed is not None:
        set_seed(args.seed)

    if args.prompt is not None:  # 一问一答
        question = terminal.clean(args.prompt)
        if not question:
            raise UserError("--prompt 是空的。", EXIT_BAD_INPUT)
        if chat.reply(question):
            raise KeyboardInterrupt
    elif not sys.stdin.isatty():  # 管道：逐行一个问题，同一段对话，读到结尾退出；按字节读，坏编码不会崩溃
        for raw in sys.stdin.buffer:
            if not chat.handle(raw.decode("utf-8", errors="replace")):
                break
    else:
        interactive_terminal()
        chat.prefix = "助手："
        print(f"已加载 {chat.loaded.name}（{display_path(chat.loaded.folder)}，{device}）。输入 /help 查看命令，/exit 或 Ctrl-D 退出。")
        prompt_loop(chat.handle)


if __name__ == "__main__":
    errors.run(main, stages.oom_hint("chat"))
