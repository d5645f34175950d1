"""评测的 KL 样本（qwen_rlhf/kl_measure.py）：子进程里算的和主进程里算的逐位相同；开着子进程时按 Ctrl-C，一行中文、
子进程一个不留。"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

from conftest import ROOT, assert_group_gone, offline_env, run_until
from qwen_rlhf import errors, inference, kl_measure

# 子进程里跑的小程序：SFT、PPO 和它的快照的 KL 样本；meanwhile 先打一行再睡 wait 秒（主进程"生成回答"的那段）。
# wait 为 0 时主进程不取 KL 的活，全由子进程算
PROGRAM = r"""
import json, os, pickle, sys, time
from pathlib import Path
from qwen_rlhf import errors, inference, kl_measure

def main():
    jobs, settings = pickle.loads(Path(sys.argv[1]).read_bytes())  # 测试里 jobs_and_settings 给的，同一份
    workers, wait = int(sys.argv[2]), float(sys.argv[3])
    def meanwhile():
        print("[开始]", flush=True)
        time.sleep(wait)
    found = kl_measure.run(inference.Policies(settings.sft_folder, "cpu", False, 8), jobs, settings, meanwhile,
                           workers=workers, main_helps=wait != 0)
    print(json.dumps({"main": os.getpid(), "found": {n: [m.texts, m.kl, m.vocab, m.pid] for n, m in found.items()}},
                     ensure_ascii=False))

errors.run(main)
"""


def jobs_and_settings(pipeline):
    ppo = pipeline["ppo"]
    jobs = [("sft", pipeline["sft"]), ("ppo", ppo)] + [(f"ppo@{p.name}", p) for p in sorted((ppo / "snapshots").iterdir())]
    return jobs, kl_measure.Settings(pipeline["sft"], False, 8, 42, 2, 0.7, 8, None, ("你好", "今天天气怎么样？", "推荐一本书"))


def program(pipeline, tmp_path, workers: int, wait: float) -> list[str]:
    """跑 PROGRAM 的命令行：任务和设置就是 jobs_and_settings 的那一份（pickle 交给子进程）。"""
    spec = tmp_path / "jobs.pkl"
    spec.write_bytes(pickle.dumps(jobs_and_settings(pipeline)))
    return list(map(str, [sys.executable, "-c", PROGRAM, spec, workers, wait]))


def test_a_worker_process_measures_bit_for_bit_what_the_main_process_measures(pipeline, tmp_path):
    """同样的种子：全由一个单线程的子进程算，和全在这个进程里依次算（同样单线程），样本、每个位置的 KL 逐位相同。"""
    jobs, settings = jobs_and_settings(pipeline)
    here = kl_measure.run(inference.Policies(pipeline["sft"], "cpu", False, 8), jobs, settings, lambda: None, workers=0)
    assert here["sft"].kl is None and all(here[n].kl for n, _ in jobs[1:])  # SFT 自己没有 KL，其余都有
    r = subprocess.run(program(pipeline, tmp_path, 1, 0), cwd=ROOT, env=offline_env(pipeline["tmp"]), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    there = result["found"]
    assert list(there) == [n for n, _ in jobs]
    assert all(pid != result["main"] for *_, pid in there.values())  # 真的是子进程算的
    for name, m in here.items():
        assert there[name][:3] == [[list(t) for t in m.texts], m.kl, m.vocab], name


def test_ctrl_c_while_a_worker_runs_gives_one_line_and_leaves_no_process(pipeline, tmp_path):
    """像终端里按 Ctrl-C 那样把 SIGINT 发给整个进程组（主进程和子进程都收到）：主进程说一行、退出码 130，没有 traceback
    （子进程忽略它，由主进程结束），进程组里一个进程也不剩。"""
    proc, out = run_until(program(pipeline, tmp_path, 1, 60), offline_env(pipeline["tmp"]), "[开始]", new_session=True)
    time.sleep(3)  # 子进程这时在 import、加载 SFT 或已经在算
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == errors.EXIT_INTERRUPTED, "".join(out)[-3000:]
    time.sleep(1)  # run_until 的读取线程读完最后几行
    text = "".join(out)
    assert "Traceback" not in text and "已按 Ctrl-C 中断" in text, text[-3000:]
    assert_group_gone(proc.pid, "Ctrl-C 之后子进程还在")
