"""评测里离 SFT 的序列 KL：每个模型（含快照）按训练温度自己采的回答（sampling.policy_samples），和这些回答每个位置上
对整个词表求和的精确 KL（sampling.kl_to_reference）。训练轨迹的分数也打在这批回答上。

CPU 上固定用一个线程算：采样看的 logits 在 1 个和 2 个线程下末位可能不同，抽到的 token 也就不同；固定单线程，同样的
种子在几核的机器上都给同样的样本和 KL，也不管它是在主进程还是子进程里算的。模型多的时候（--trajectory 的快照）另开
几个单线程的子进程一起算：主进程这时在生成报告里的回答——CPU 上 torch.multinomial 对每一行、整个词表逐个抽指数随机数，
只用得上一个核——剩下的核正好空着；主进程生成完也从同一个队列里取活。GPU 上全部在主进程里依次算。
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from . import data, inference, sampling, scoring

JOBS_PER_WORKER = 4  # 一个子进程要先 import、加载 SFT（约 5 秒，单线程算一个模型约 2 秒）：至少分到这么多个模型才开


@dataclass(frozen=True)
class Settings:
    """子进程要的全部选项（可以 pickle）。"""
    sft_folder: Path | None
    allow_pickle: bool
    batch_size: int
    seed: int
    per_question: int
    temperature: float
    max_new_tokens: int
    system_prompt: str | None
    questions: tuple[str, ...]


@dataclass
class Measured:
    """一个模型的 KL 样本：[(问题, 回答文本)]（每个问题 per_question 个，按问题排），每条回答每个位置的精确 KL
    （它就是 SFT、或没有 SFT 可比时为 None），分词器的词表大小（评委核对用），用时（秒），算它的进程。"""
    texts: list[tuple[str, str]]
    kl: list[list[float]] | None
    vocab: int
    seconds: float
    pid: int


@contextlib.contextmanager
def one_thread(device: str):
    """CPU 上这一段只用一个线程（见模块说明）；GPU 上不变。"""
    import torch

    if not str(device).startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(bank: inference.Policies, name: str, folder: Path, s: Settings) -> Measured:
    """一个模型：播种、按训练温度采样、在这些回答上算 KL。"""
    from transformers import set_seed

    started = time.perf_counter()
    with one_thread(bank.device), bank.use(name, folder) as c:
        set_seed(s.seed)  # 每个模型从同一个种子开始：和谁先算、在哪个进程里算无关
        prompts = [data.prompt_ids(c.tokenizer, q, s.system_prompt) for q in s.questions]
        rows = [p for p in prompts for _ in range(s.per_question)]
        responses = sampling.policy_samples(c.model, c.tokenizer, prompts, s.per_question, s.temperature,
                                            s.max_new_tokens, s.batch_size)
        kl = c.kl(rows, responses, temperature=s.temperature) if c.kl is not None else None
        texts = [(s.questions[i // s.per_question], scoring.response_text(c.tokenizer, r))
                 for i, r in enumerate(responses)]
        return Measured(texts, kl, len(c.tokenizer), round(time.perf_counter() - started, 3), os.getpid())


def workers_for(device: str, jobs: int) -> int:
    """开几个子进程：只在 CPU 上；给主进程留一个核；每个至少分到 JOBS_PER_WORKER 个模型。"""
    if not str(device).startswith("cpu"):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(cores - 1, jobs // JOBS_PER_WORKER))


# ---------------------------------------------------------------- 子进程

_worker: dict = {}


def _start_worker(settings: Settings, jobs: list[tuple[str, Path]], counter, parent: int) -> None:
    """子进程的初始化：Ctrl-C 交给主进程处理（它会结束子进程），输出不进终端（加载的进度条），单线程、自己的一份 SFT。"""
    os.nice(10)  # 让着主进程：它的线程要用 CPU 时先给它，子进程只吃空着的那部分
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # 主进程开子进程时屏蔽了它（见 run）
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)  # 1 和 2 已指向它
    import torch

    torch.set_num_threads(1)
    _worker.update(settings=settings, jobs=jobs, counter=counter, parent=parent,
                   bank=inference.Policies(settings.sft_folder, "cpu", settings.allow_pickle, settings.batch_size))


def _next(counter, total: int) -> int | None:
    """从共享的计数器取下一个模型的下标（主进程和子进程都从这里取）；取完了为 None。"""
    with counter.get_lock():
        i = counter.value
        if i >= total:
            return None
        counter.value = i + 1
        return i


def _drain() -> dict[str, Measured]:
    w, out = _worker, {}
    while os.getppid() == w["parent"] and (i := _next(w["counter"], len(w["jobs"]))) is not None:
        name, folder = w["jobs"][i]
        out[name] = measure(w["bank"], name, folder, w["settings"])
    return out


# ---------------------------------------------------------------- 主进程


def run(bank: inference.Policies, jobs: list[tuple[str, Path]], settings: Settings, meanwhile,
        workers: int | None = None, main_helps: bool = True) -> dict[str, Measured]:
    """jobs 里每个模型的 KL 样本（按 jobs 的顺序返回）。meanwhile()：主进程自己的活（生成报告里的回答），和子进程并行；
    做完后主进程也取 KL 的活（main_helps=False：不取，全交给子进程）。子进程数默认见 workers_for；为 0 时 meanwhile()
    之后在主进程里依次算。"""
    workers = workers_for(bank.device, len(jobs)) if workers is None else workers
    if workers == 0:
        meanwhile()
        return {name: measure(bank, name, folder, settings) for name, folder in jobs}
    ctx = multiprocessing.get_context("spawn")  # 不 fork 一个已经加载了 torch 和模型的进程
    counter = ctx.Value("i", 0)
    # 开子进程的那一刻屏蔽 Ctrl-C：子进程继承屏蔽，import 的几秒里按下也不会各自打出 traceback；它们在初始化里忽略它、
    # 再解除屏蔽。主进程这边解除屏蔽后，按下的 Ctrl-C 照常变成 KeyboardInterrupt（errors.run 说一行），finally 结束子进程
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool = ctx.Pool(workers, initializer=_start_worker, initargs=(settings, jobs, counter, os.getpid()))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        pending = [pool.apply_async(_drain) for _ in range(workers)]
        meanwhile()
        found: dict[str, Measured] = {}
        while main_helps and (i := _next(counter, len(jobs))) is not None:
            name, folder = jobs[i]
            found[name] = measure(bank, name, folder, settings)
        for p in pending:
            found.update(p.get())
    finally:
        pool.terminate()
        pool.join()
    return {name: found[name] for name, _ in jobs}
