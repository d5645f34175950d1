"""人的偏好：chat.py --arena 的投票文件（默认 data/human_prefs.jsonl）怎样写、怎样读，以及 benchmark.py 用它算的数。

一票一行，是 TRL 的"显式提示"对话偏好格式（prompt 消息 + chosen + rejected，
https://huggingface.co/docs/trl/dataset_formats#preference），另有几个独立的字段：
    vote      a / b（A 或 B 更好）、tie（一样好）、skip（跳过）
    model_a, model_b, answer_a, answer_b   这一轮显示为 A、B 的模型和它们的回答
    seed, turn, time                       会话的种子（A/B 的分配和采样都由它决定）、第几轮、投票时间
只有 a / b 的行有 chosen / rejected：平局和跳过记下了，但不是偏好对（datafile.validate 读到它们直接略过）。
多轮对话时 prompt 只放这一轮的问题（可带系统提示）：本仓库的 RM / DPO 只学单轮的偏好对，两边此前的历史也各不相同。

写：每票一次 write（O_APPEND），在 flock 下、屏蔽 Ctrl-C / 挂断信号，写完 fsync：两个会话同时投进一个文件不丢、
不交错；进程在任何时刻被打断，之前的票都已在盘上，这一票要么整行在、要么不在。
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from datetime import datetime
from pathlib import Path

from . import data, datafile, metrics, scoring
from .errors import EXIT_BAD_INPUT, UserError
from .paths import display_path, input_path, output_path

DEFAULT_FILE = "data/human_prefs.jsonl"
KEYS = {"1": "a", "2": "b", "0": "tie", "s": "skip"}  # 终端里按的键 -> 文件里的 vote
DECIDED = ("a", "b")
assert set(KEYS.values()) - set(DECIDED) == set(datafile.UNPAIRED_VOTES)  # 两处说的是同一组"不是偏好对"的票
AGREEMENT_FLOOR = 0.7  # 低于它就明说：RM 和你的口味不一致


# ---------------------------------------------------------------- 写


class VoteFile:
    """会话期间一直打开的投票文件。打开时先把已有的每一行读一遍：坏文件在加载模型之前就拒绝，绝不往后追加。"""

    def __init__(self, path: str):
        self.path = output_path(path)
        if self.path.is_dir():
            raise UserError(f"--prefs_file {display_path(self.path)} 是一个文件夹；请给一个 .jsonl 文件。", EXIT_BAD_INPUT)
        if self.path.suffix != ".jsonl":
            raise UserError(f"--prefs_file 必须是 .jsonl 文件（一票一行），现在是 {path}。", EXIT_BAD_INPUT)
        existed = self.path.exists()
        if existed and self.path.stat().st_size:
            read_votes(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_RDWR：追加前要读最后一个字节；O_APPEND：每次 write 都落在文件当时的末尾，两个会话不会互相覆盖
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"投票文件 {display_path(self.path)} 写不进去（{e.strerror}）；请换一个 --prefs_file。",
                            EXIT_BAD_INPUT) from None
        self.created, self.count = not existed, 0

    def append(self, row: dict) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        # 屏蔽信号：Ctrl-C / 关终端（SIGHUP）等到这一票写完、落盘后才生效
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP, signal.SIGTERM})
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)  # 和 outputs.lock_output 同一种内核锁：持有者死了自动释放
            try:
                size = os.fstat(self.fd).st_size
                if size and os.pread(self.fd, 1, size - 1) != b"\n":  # 手改过的文件最后没换行：别把这一票接在那行后面
                    line = b"\n" + line
                while line:  # 普通文件一次就写完；万一没有，接着写剩下的
                    line = line[os.write(self.fd, line):]
                os.fsync(self.fd)
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError as e:
            raise UserError(f"这一票没能写进 {display_path(self.path)}（{e.strerror}）；之前的票都还在。", EXIT_BAD_INPUT) \
                from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.count += 1

    def close(self) -> None:
        os.close(self.fd)
        if self.created and self.count == 0 and self.path.exists() and self.path.stat().st_size == 0:
            self.path.unlink()  # 一票没投：不留一个空文件（空的数据文件训练时会被拒绝）


def vote_row(question: str, system: str | None, names: list[str], answers: list[str], vote: str, seed: int,
             turn: int) -> dict:
    """一票 -> 文件里的一行（见模块说明）。names / answers：按显示的 A、B 排好。"""
    row: dict = {"prompt": data.messages(question, system)}
    if vote in DECIDED:
        win = DECIDED.index(vote)
        row["chosen"] = [{"role": "assistant", "content": answers[win]}]
        row["rejected"] = [{"role": "assistant", "content": answers[1 - win]}]
    return {**row, "vote": vote, "model_a": names[0], "model_b": names[1], "answer_a": answers[0],
            "answer_b": answers[1], "seed": seed, "turn": turn, "time": datetime.now().isoformat(timespec="seconds")}


# ---------------------------------------------------------------- 读


def read_votes(path: Path) -> list[dict]:
    """整个文件逐行检查；任何一行不对就拒绝（一行中文，说出哪一行）。返回每一票：
    {vote, model_a, model_b}，分出胜负的另有 question / system / chosen / rejected（经 datafile.validate 检查）和 winner。"""
    out = []
    for where, r in datafile.read_file(path):  # 不是 JSON、不是 UTF-8、空文件：data 已有的一行报错
        names = [r.get(k) if isinstance(r, dict) else None for k in ("model_a", "model_b")]
        if not isinstance(r, dict) or r.get("vote") not in KEYS.values() or not all(isinstance(n, str) and n for n in names):
            raise UserError(f"{where} 不是 chat.py --arena 写的一票（要有 vote：a/b/tie/skip 和 model_a、model_b）；"
                            "请修正或删掉这一行后重试。", EXIT_BAD_INPUT)
        vote = {"vote": r["vote"], "model_a": names[0], "model_b": names[1]}
        if r["vote"] in DECIDED:
            try:
                (pair,) = datafile.validate([(where, r)], where, strict=True).rows
            except UserError as e:
                raise UserError(f"{where} 这一票不是完整的偏好行（{e.message}）", EXIT_BAD_INPUT) from None
            vote.update(pair, winner=names[DECIDED.index(r["vote"])])
        out.append(vote)
    return out


def votes_if_any(path: str) -> list[dict] | None:
    """benchmark.py：文件不存在时 None（不报错：还没投过票）；存在就必须读得懂。"""
    file = input_path(path)
    if not file.exists():
        return None
    if not file.is_file():
        raise UserError(f"--prefs_file {path} 不是文件。", EXIT_BAD_INPUT)
    return read_votes(file) or None


def extra_pairs(path: str, held_out: list[dict], strict: bool) -> list[dict]:
    """train_rm.py / train_dpo.py 的 --add_prefs：投票文件里的偏好对，加进训练集。问题在留出集里的去掉（留出的问题
    永远不进训练，划分指纹因此不变，PPO / benchmark 照常认这个 RM）。"""
    rows = data.load_rows(path, strict).rows
    held = {r["question"] for r in held_out}
    kept = [r for r in rows if r["question"] not in held]
    data.say(f"[数据] --add_prefs：{display_path(input_path(path))} 里的 {len(rows)} 个偏好对加进训练集"
             + (f"（{len(rows) - len(kept)} 个的问题在留出集里，不用）" if len(kept) < len(rows) else "") + "。")
    return kept


# ---------------------------------------------------------------- 人当评委（benchmark.py）


def judge_agrees(reward_model, tokenizer, votes: list[dict], batch_size: int) -> list[bool]:
    """每一张分出胜负的票：这位评委给人选的回答打分是否更高（同分不算同意）。打分走 scoring.score，和评测的其余部分一样。"""
    decided = [v for v in votes if v["vote"] in DECIDED]
    prompts = [data.messages(v["question"], v["system"]) for v in decided]
    both = scoring.score(reward_model, tokenizer, prompts * 2, [v[k] for k in ("chosen", "rejected") for v in decided],
                         batch_size)
    return [c > r for c, r in zip(both[: len(decided)], both[len(decided):])]


def _rate(values: list[float]) -> dict:
    n = len(values)
    return {"rate": metrics.mean(values), "ci95": metrics.bootstrap_mean_ci(values),
            "n": n}


def summarize(votes: list[dict], agrees: dict[str, list[bool]]) -> dict:
    """每一对模型：人判的胜率（前一个对后一个；平局算半场，跳过不算）及区间；各评委和人一致的比例及区间（只在分出胜负
    的票上）。agrees：{评委名: judge_agrees 的结果}。区间都是 metrics.bootstrap_mean_ci（按票重抽）。"""
    pairs: dict[tuple, list[int]] = {}
    for i, v in enumerate(votes):
        pairs.setdefault(tuple(sorted((v["model_a"], v["model_b"]))), []).append(i)
    decided = [i for i, v in enumerate(votes) if v["vote"] in DECIDED]
    position = {i: k for k, i in enumerate(decided)}  # 票的序号 -> agrees 里的位置
    out = {"pairs": [], "overall": {}, "skipped": sum(v["vote"] == "skip" for v in votes)}
    for (x, y), idx in sorted(pairs.items()):
        played = [votes[i] for i in idx if votes[i]["vote"] != "skip"]
        outcome = [0.5 if v["vote"] == "tie" else float(v["winner"] == x) for v in played]
        entry = {"models": [x, y], "votes": len(idx), "ties": sum(v["vote"] == "tie" for v in played),
                 "win_rate": _rate(outcome), "agreement": {}}
        for name, agree in agrees.items():
            entry["agreement"][name] = _rate([float(agree[position[i]]) for i in idx if i in position])
        out["pairs"].append(entry)
    out["overall"] = {name: _rate([float(a) for a in agree]) for name, agree in agrees.items()}
    return out


def _pct(r: dict) -> str:
    if r["rate"] is None:
        return "—（没有分出胜负的票）"
    ci = f"，95% 区间 {r['ci95'][0]:.0%}–{r['ci95'][1]:.0%}" if r["ci95"] else ""
    return f"{r['rate']:.0%}（{r['n']} 票{ci}）"


def lines(summary: dict, source: str) -> list[str]:
    """终端和 report.md 共用的几句话。"""
    out = [f"你的投票（{source}）：每对模型你判的胜率和评委与你一致的比例（只算分出胜负的票；平局算半场，跳过 "
           f"{summary['skipped']} 票不算）。"]
    for p in summary["pairs"]:
        x, y = p["models"]
        agree = "；".join(f"{name}和你一致 {_pct(r)}" for name, r in p["agreement"].items())
        out.append(f"{x} 对 {y}：{p['votes']} 票（平局 {p['ties']}），你判 {x} 胜 {_pct(p['win_rate'])}；{agree}")
    for name, r in summary["overall"].items():
        if r["rate"] is not None and r["rate"] < AGREEMENT_FLOOR:
            out.append(f"{name}只在 {r['rate']:.0%} 的票上和你一致（低于 {AGREEMENT_FLOOR:.0%}）：这个{name}不认同你的口味，"
                       "它给的高分不代表你会喜欢。可以多投几票，用 train_rm.py --add_prefs 把你的票加进 RM 的训练数据。")
    return out


def append_markdown(report_file: Path, summary: dict, source: str) -> None:
    """report.md 末尾加一段"你的投票"（和终端打印的是同样几句话）。"""
    with report_file.open("a", encoding="utf-8") as f:
        f.write("\n## 你的投票：人当评委\n\n" + "\n".join(f"- {line}" for line in lines(summary, source)) + "\n")
