"""方法对比（scripts/compare.sh）计时与结果：每个阶段、每个种子的墙钟时间，评测里每个方法跨种子的分数（只打印数字）。

    .venv/bin/python bench/bench_compare.py            # 在临时的 checkpoint 副本里从零跑一遍 compare.sh，写 bench/results/compare_tiny.json
    .venv/bin/python bench/bench_compare.py --keep DIR # 复用 DIR（已有的模型跳过，只补缺的），跑完留下来

从零跑：迷你基座、SFT、RM 也在计时内。各阶段的用时读它们自己写的 stage.json 里的 cost.wall_s（含加载模型），
评测的读 summary.json；整个 compare.sh 的墙钟时间另记一项。
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  bench/common.py（脚本所在目录在 sys.path 里）


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", help="在这个仓库副本里跑并保留产物（默认临时目录，跑完删掉）")
    p.add_argument("--seeds", default="1 2 3")
    a = p.parse_args()
    copy = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-compare-")) / "repo"
    if not copy.exists():
        # 在仓库的副本里跑：compare.sh 写 checkpoint/tiny/，不碰这个仓库里已有的演示结果
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "checkpoint", "tensorboard", ".venv", "*.pyc"))
        (copy / "checkpoint").mkdir()
    env = dict(os.environ, SEEDS=a.seeds, VENV=str(Path(sys.executable).parent.parent),
               QWEN_RLHF_TENSORBOARD_ROOT=str(copy / "tensorboard"))
    started = time.time()
    subprocess.run(["bash", "scripts/compare.sh"], cwd=copy, env=env, check=True)
    total = round(time.time() - started, 1)
    tiny = copy / "checkpoint" / "tiny"
    stages = {}
    for stage_json in sorted(tiny.rglob("stage.json")):
        info = json.loads(stage_json.read_text(encoding="utf-8"))
        if stage_json.parent.name == "merged":
            continue
        stages[str(stage_json.parent.relative_to(tiny))] = {"stage": info["stage"], "wall_s": info["cost"]["wall_s"],
                                                            "throughput": info["cost"]["throughput"]}
    summary_file = max((tiny / "compare" / "benchmark").glob("*/summary.json"))
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    per_stage_s = {}
    for rec in stages.values():
        per_stage_s.setdefault(rec["stage"], []).append(rec["wall_s"])
    result = {
        "machine": common.machine(), "seeds": a.seeds.split(), "compare_sh_wall_s": total,
        "benchmark_wall_s": summary["cost"]["wall_s"], "stage_wall_s": per_stage_s, "runs": stages,
        "num_questions": summary["num_questions"], "rm": summary["rm"], "by_method": summary["by_method"],
        "models": {m: {k: s.get(k) for k in ("mean_score", "mean_score_ci95", "mean_gain_vs_sft", "mean_gain_vs_sft_ci95",
                                             "win_rate_vs_sft", "win_rate_vs_sft_ci95", "wins", "ties", "losses",
                                             "kl_to_sft", "mean_tokens", "distinct_2")}
                   for m, s in summary["models"].items()},
    }
    common.write_result(result, common.RESULTS / "compare_tiny.json")
    if not a.keep:
        shutil.rmtree(copy.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
