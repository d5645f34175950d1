"""离线演示端到端计时：每个阶段的墙钟时间、吞吐量和峰值内存（只打印数字，不做断言）。

    .venv/bin/python bench/bench_demo.py                 # 写 bench/results/demo.json
    .venv/bin/python bench/bench_demo.py --ppo_variants  # 另外比较 PPO 的两个取舍：梯度检查点、rollout 前向批量

每个阶段在独立子进程里跑（与 scripts/demo.sh 相同的配方），峰值内存是该子进程的 ru_maxrss；吞吐读各脚本写的
stage.json / summary.json 里的 "cost"。产物写到临时目录，不会覆盖 checkpoint/tiny/。
（显存和默认选项下的速度见 bench/gpu_check.py；这里看的是演示配方能不能学到东西：loss、准确率、分数。）
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


def read_scalars(logdir) -> dict[str, list[float]]:
    """TensorBoard 目录里的全部标量：{tag: [按步排序的值]}。"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)] for tag in acc.Tags()["scalars"]}


def quarter_means(values: list[float]) -> tuple[float, float]:
    """前四分之一与后四分之一的均值：看曲线整体是升是降，不被单步噪声左右。"""
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


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
    stages["benchmark"] = run("benchmark.py", "--config", tiny / "benchmark.yaml", "--model_name_or_path", base,
                              "--sft_model_path", sft, "--reward_model_path", rm, "--ppo_model_path", ppo,
                              "--output_dir", work / "benchmark", env=env)
    total = round(time.time() - t0, 1)

    info = {s: outputs.stage_info(work / s) for s in ("sft", "rm", "ppo")}
    summary = json.loads(next((work / "benchmark").glob("*/summary.json")).read_text())
    for s in info:
        stages[s]["throughput"] = info[s].get("cost", {}).get("throughput")
    stages["benchmark"]["throughput"] = summary.get("cost", {}).get("throughput")
    tb = {s: read_scalars(info[s]["tensorboard"]) for s in info}
    first, final = quarter_means(tb["ppo"]["ppo/objective/scores"])
    result = {
        "machine": common.machine(),
        "demo_total_seconds": total,
        "stages": stages,
        "sft_loss_first_last": [tb["sft"]["sft/loss"][0], tb["sft"]["sft/loss"][-1]],
        "rm_eval_accuracy": info["rm"]["eval"]["eval_accuracy"],
        "ppo_scores_first_last_quarter": [round(first, 3), round(final, 3)],
    }
    if a.ppo_variants:  # 用速度换显存的两个选项，各测一边
        variants = {"gradient_checkpointing_on": ["--gradient_checkpointing", "true"],
                    "rollout_forward_batch_2": ["--local_rollout_forward_batch_size", "2"]}
        result["ppo_variants"] = {name: run("train_ppo.py", *ppo_args, *extra, "--output_dir", work / f"ppo-{name}",
                                            env=env) for name, extra in variants.items()}
    common.write_result(result, common.RESULTS / "demo.json")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
