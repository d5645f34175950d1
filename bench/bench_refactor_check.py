"""重构不改变结果的检查：跑一遍离线演示（scripts/demo.sh），记下 SFT / RM / PPO 每个权重文件的 sha256 和评测报告的
数字（去掉用时、吞吐、路径这类每次都不同的项）。重构前后各跑一次，两次逐位相等才算重构没有改动结果。

    VENV=.venv .venv/bin/python bench/bench_refactor_check.py --phase before   # 改代码之前
    VENV=.venv .venv/bin/python bench/bench_refactor_check.py --phase after    # 改完之后；写出两次是否相等

结果写在 bench/results/refactor_check.json（同一个文件里保留 before 和 after 两次）。种子固定，负载只影响用时，
不影响权重。
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  bench/common.py（脚本所在目录在 sys.path 里）

TINY = ROOT / "checkpoint" / "tiny"
OUT = common.RESULTS / "refactor_check.json"
WEIGHTS = (".safetensors",)  # 只比权重：training_args.bin 是选项的 pickle，里面有输出文件夹的绝对路径
# 每次都会不同、与结果无关的项：用时、吞吐、负载
VOLATILE = ("second", "time", "timing", "cost", "throughput", "load", "peak", "rss")


def weight_hashes() -> dict[str, str]:
    return {str(p.relative_to(TINY)): hashlib.sha256(p.read_bytes()).hexdigest()
            for stage in ("sft", "rm", "ppo") for p in sorted((TINY / stage).rglob("*"))
            if p.is_file() and p.name.endswith(WEIGHTS)}


def stable(value):
    """只留数字：去掉用时、吞吐这类每次都不同的键，和文字（运行时间戳、文件夹路径）。"""
    if isinstance(value, dict):
        kept = {k: stable(v) for k, v in value.items() if not any(w in k.lower() for w in VOLATILE)}
        return {k: v for k, v in kept.items() if v is not None}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value if isinstance(value, (int, float)) else None


def main():
    parser = argparse.ArgumentParser(description="重构前后：演示的权重和评测数字是否逐位相等")
    parser.add_argument("--phase", choices=["before", "after"], required=True)
    parser.add_argument("--rescan", action="store_true",
                        help="不重跑演示，只重新读这一阶段已有的演示产物（用时等记录沿用上次的）")
    a = parser.parse_args()
    old = json.loads(OUT.read_text(encoding="utf-8")) if OUT.exists() else {}
    if a.rescan:
        seconds = old[a.phase]["demo_seconds"]
    else:
        start = time.time()
        subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, check=True, env=dict(os.environ),
                       stdout=subprocess.DEVNULL)
        seconds = round(time.time() - start, 1)
    summary = max((TINY / "benchmark").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    record = {"demo_seconds": seconds, "weights_sha256": weight_hashes(),
              "benchmark_summary": stable(json.loads(summary.read_text(encoding="utf-8")))}
    phases = {k: old[k] for k in ("before", "after") if k in old}
    run = ({k: old[a.phase][k] for k in ("commit", "load_avg_1_5_15_at_start", "load_avg_1_5_15_at_end")} if a.rescan else
           {"commit": common.commit(), "load_avg_1_5_15_at_start": common.LOAD_AT_START,
            "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]})
    phases[a.phase] = {**record, **run}
    result = {"machine": common.machine(), **phases}
    if len(phases) == 2:
        b, f = phases["before"], phases["after"]
        result["weights_equal"] = b["weights_sha256"] == f["weights_sha256"]
        result["benchmark_numbers_equal"] = b["benchmark_summary"] == f["benchmark_summary"]
    common.write_result(result, OUT)
    if len(phases) == 2 and not (result["weights_equal"] and result["benchmark_numbers_equal"]):
        sys.exit("重构前后的演示结果不一致")


if __name__ == "__main__":
    main()
