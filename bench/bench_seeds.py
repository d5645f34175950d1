"""离线演示的结论靠不靠运气：SFT 固定，RM 和 PPO 换 5 个种子（--seed 1..5）各跑一遍 RM → PPO → 评测。

    .venv/bin/python bench/bench_seeds.py                 # 写 bench/results/demo_seeds.json
    .venv/bin/python bench/bench_seeds.py --seeds 1,2     # 只跑其中几个
    .venv/bin/python bench/bench_seeds.py --jobs 3        # 几个种子同时跑（结果不变；用时会互相拖慢）

每个种子打印：RM 在留出偏好对上的准确率（评测算的，和打分同一个约定）、PPO − SFT 的平均 RM 分数提升、胜率；
JSON 里还有每个阶段的墙钟时间和当时的系统负载（演示本身的用时见 bench/bench_demo.py）。
配方与 scripts/demo.sh 相同（configs/tiny/*.yaml），产物写到临时目录，不会覆盖 checkpoint/tiny/。只打印数字，不做断言。
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  bench/common.py（脚本所在目录在 sys.path 里）

TINY = ROOT / "configs" / "tiny"


def done_seconds(folder: Path) -> float | None:
    """已经跑完的阶段（--work 里上次留下的）不再跑：用时读它自己记在 stage.json / summary.json 里的 cost。"""
    info = folder / "stage.json"
    if info.is_file():
        return json.loads(info.read_text(encoding="utf-8"))["cost"]["wall_s"]
    summaries = sorted(folder.glob("*/summary.json"))
    return json.loads(summaries[-1].read_text(encoding="utf-8"))["cost"]["wall_s"] if summaries else None


def one_seed(seed: int, work: Path, base: Path, sft: Path, env: dict) -> dict:
    rm, ppo, bench = work / f"rm-{seed}", work / f"ppo-{seed}", work / f"benchmark-{seed}"
    t = {"rm": done_seconds(rm) or common.run_script("train_rm.py", "--config", TINY / "rm.yaml", "--model_name_or_path", base,
                                       "--output_dir", rm, "--seed", seed, "--overwrite_output_dir", "true", env=env),
         "ppo": done_seconds(ppo) or common.run_script("train_ppo.py", "--config", TINY / "ppo.yaml", "--model_name_or_path", base,
                                         "--sft_model_path", sft, "--reward_model_path", rm, "--output_dir", ppo,
                                         "--seed", seed, "--overwrite_output_dir", "true", env=env)}
    t["benchmark"] = done_seconds(bench) or common.run_script(
        "benchmark.py", "--config", TINY / "benchmark.yaml", "--model_name_or_path", base, "--sft_model_path", sft,
        "--reward_model_path", rm, "--ppo_model_path", ppo, "--models", "sft,ppo", "--output_dir", bench, env=env)
    summary = json.loads(sorted(bench.glob("*/summary.json"))[-1].read_text(encoding="utf-8"))
    versus = summary["models"]["ppo"]
    row = {"seed": seed, "rm_accuracy": round(summary["rm"]["accuracy"], 3),
           "sft_mean_score": round(summary["models"]["sft"]["mean_score"], 3),
           "ppo_mean_score": round(versus["mean_score"], 3),
           "ppo_minus_sft_mean_gain": round(versus["mean_gain_vs_sft"], 3),
           "gain_ci95": [round(x, 3) for x in versus["mean_gain_vs_sft_ci95"]],
           "win_rate": round(versus["win_rate_vs_sft"], 3), "wins_ties_losses": [versus[k] for k in ("wins", "ties", "losses")],
           "answers_compared": versus["n"], "seconds": t}
    print(f"[种子 {seed}] RM 准确率 {row['rm_accuracy']:.3f}  PPO−SFT {row['ppo_minus_sft_mean_gain']:+.3f}  "
          f"胜率 {row['win_rate']:.0%}", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description="离线演示在 5 个 RM / PPO 种子上的结果")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="逗号分隔的种子")
    parser.add_argument("--jobs", type=int, default=1, help="同时跑几个种子")
    parser.add_argument("--work", default=None, help="工作文件夹（默认新建临时文件夹）；里面已有的 base/、sft/ 直接用")
    a = parser.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench-seeds-"))
    env = dict(os.environ, QWEN_RLHF_TENSORBOARD_ROOT=str(work / "tb"), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    base, sft = work / "base", work / "sft"
    load_before = os.getloadavg()
    seconds = {}
    if not (base / "config.json").is_file():
        seconds["tiny_model"] = common.run_script("scripts/make_tiny_model.py", "--out", base, env=env)
    if not (sft / "stage.json").is_file():
        seconds["sft"] = common.run_script("train_sft.py", "--config", TINY / "sft.yaml", "--model_name_or_path", base,
                             "--output_dir", sft, "--overwrite_output_dir", "true", env=env)
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        per_seed = list(pool.map(lambda s: one_seed(s, work, base, sft, env), seeds))
    result = {
        "machine": common.machine(),
        "what": "tiny demo (configs/tiny/*.yaml), SFT fixed (seed 42), RM and PPO with --seed N, benchmark recipe as is",
        "jobs": a.jobs,
        "load_average_1_5_15": {"before": [round(x, 2) for x in load_before],
                                "after": [round(x, 2) for x in os.getloadavg()]},
        "seconds_shared_stages": seconds,
        "per_seed": per_seed,
        "ppo_beats_sft_in": sum(r["ppo_minus_sft_mean_gain"] > 0 for r in per_seed),
        "win_rate_at_least_70pct_in": sum(r["win_rate"] >= 0.7 for r in per_seed),
        "seeds": len(per_seed),
    }
    common.write_result(result, common.RESULTS / "demo_seeds.json")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
