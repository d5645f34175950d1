"""离线演示端到端计时：每个阶段的墙钟时间、吞吐量和峰值内存（只打印数字，不做断言）。

    .venv/bin/python bench/bench_demo.py                 # 写 bench/results/demo.json
    .venv/bin/python bench/bench_demo.py --ppo_variants  # 另外比较 PPO 的两个取舍：梯度检查点、rollout 前向批量

每个阶段在独立子进程里跑（与 scripts/demo.sh 相同的配方），峰值内存是该子进程的 ru_maxrss。
产物写到临时目录，不会覆盖 checkpoint/tiny/。
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  bench/common.py（脚本所在目录在 sys.path 里）
from qwen_rlhf import outputs  # noqa: E402


def run(script: str, *args, env) -> dict:
    """跑一个脚本，返回墙钟时间和该子进程的峰值 RSS。"""
    start = time.time()
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{script} 失败：\n{stderr[-2000:]}")
    return {"seconds": round(time.time() - start, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}


def last(scalars: dict, tag: str) -> float:
    return scalars[tag][-1]


def main():
    parser = argparse.ArgumentParser(description="离线演示端到端计时")
    parser.add_argument("--ppo_variants", action="store_true", help="额外测 PPO 的梯度检查点与 rollout 前向批量")
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    env = dict(os.environ, QWEN_RLHF_TENSORBOARD_ROOT=str(work / "tb"), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    tiny = ROOT / "configs" / "tiny"
    base, sft, rm, ppo = work / "base", work / "sft", work / "rm", work / "ppo"
    stages = {}
    t0 = time.time()
    stages["tiny_model"] = run("scripts/make_tiny_model.py", "--out", base, env=env)
    stages["sft"] = run("train_sft.py", "--config", tiny / "sft.yaml", "--model_name_or_path", base,
                        "--output_dir", sft, env=env)
    stages["rm"] = run("train_rm.py", "--config", tiny / "rm.yaml", "--model_name_or_path", base,
                       "--output_dir", rm, env=env)
    ppo_args = ["--config", tiny / "ppo.yaml", "--model_name_or_path", base, "--sft_model_path", sft,
                "--reward_model_path", rm]
    stages["ppo"] = run("train_ppo.py", *ppo_args, "--output_dir", ppo, env=env)
    if (ROOT / "benchmark.py").is_file():
        stages["benchmark"] = run("benchmark.py", "--config", tiny / "benchmark.yaml", "--model_name_or_path", base,
                                  "--sft_path", sft, "--rm_path", rm, "--ppo_path", ppo,
                                  "--output_dir", work / "benchmark", env=env)
    total = round(time.time() - t0, 1)

    info = {s: json.loads((work / s / "stage.json").read_text()) for s in ("sft", "rm", "ppo")}
    tb = {s: outputs.read_scalars(info[s]["tensorboard"]) for s in info}
    stages["sft"]["tokens_per_s"] = round(last(tb["sft"], "train/num_tokens") / last(tb["sft"], "train/train_runtime"), 1)
    stages["rm"]["pairs_per_s"] = round(last(tb["rm"], "train/train_samples_per_second"), 2)
    stages["ppo"]["episodes_per_s"] = round(info["ppo"]["episodes"] / stages["ppo"]["seconds"], 2)
    first, final = outputs.quarter_means(tb["ppo"]["train/objective/scores"])
    result = {
        "machine": common.machine(),
        "demo_total_seconds": total,
        "stages": stages,
        "sft_loss_first_last": [tb["sft"]["train/loss"][0], tb["sft"]["train/loss"][-1]],
        "rm_eval_accuracy": info["rm"]["eval"]["eval_accuracy"],
        "ppo_scores_first_last_quarter": [round(first, 3), round(final, 3)],
    }
    if a.ppo_variants:  # 用速度换显存的两个选项，各测一边
        variants = {"gradient_checkpointing_on": ["--gradient_checkpointing", "true"],
                    "rollout_forward_batch_2": ["--local_rollout_forward_batch_size", "2"]}
        result["ppo_variants"] = {name: run("train_ppo.py", *ppo_args, *extra, "--output_dir", work / f"ppo-{name}",
                                            env=env) for name, extra in variants.items()}
    common.write_result(result, common.RESULTS / "demo.json")


if __name__ == "__main__":
    main()
