"""bench 脚本共用：这台机器的一行描述；把结果写成 bench/results/<名>.json 并原样打印，附上是哪次提交、什么命令、
开始和结束时的负载。"""

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent
# bench 脚本一开始就 import 本模块：这就是测量开始时的负载
LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]


def machine(device: str = "no GPU") -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU, {device}, Python {platform.python_version()}"


def commit() -> str:
    """当前提交；工作区有未提交的改动时加 "+dirty"（这样的数字对应不到任何一个提交）。"""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    except OSError:  # GPU 机器上可能没有 git
        return "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def provenance() -> dict:
    """哪次提交、什么命令、开始 / 结束时机器的负载（1 / 5 / 15 分钟平均；2 核机器空闲时 < 1，> 2 说明有别的任务在抢
    CPU，这样的用时不能当这台机器的速度引用）。"""
    # 影响 CPU 用时的环境变量也记下（scripts/cpu_env.sh 的 GLIBC_TUNABLES、线程数），没设的记 null
    env = {k: os.environ.get(k) for k in ("GLIBC_TUNABLES", "OMP_NUM_THREADS", "WEAK_KL", "RPO", "RULES", "SEEDS")}
    return {"commit": commit(), "command": shlex.join([Path(sys.executable).name, *sys.argv]), "env": env,
            "load_avg_1_5_15_at_start": LOAD_AT_START, "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]}


def write_result(result: dict, out: Path) -> None:
    """写结果，附上 provenance()。"""
    result = {**result, **provenance()}
    text = json.dumps(result, ensure_ascii=False, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)


def run_script(script: str, *args, env) -> float:
    """在仓库根目录跑一个脚本（输出丢掉，失败时打印它 stderr 的最后一段并退出），返回墙钟秒数。"""
    start = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"{script} {' '.join(map(str, args))} 失败：\n{proc.stderr[-2000:]}")
    return round(time.time() - start, 1)
