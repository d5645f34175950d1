"""方法对比（scripts/compare.sh）计时与结果：每个阶段、每个种子的墙钟时间，评测里每个方法跨种子的分数、金标准分、
精确 KL 和训练轨迹（有没有奖励过度优化），以及同一次、同一台机器上 scripts/demo.sh 的用时（只打印数字）。

    .venv/bin/python bench/bench_compare.py            # 从零：demo.sh、接着 compare.sh（用户的顺序）、另一个副本里 compare.sh、再一遍 demo.sh，写 bench/results/compare_tiny.json
    .venv/bin/python bench/bench_compare.py --keep DIR # compare.sh 复用 DIR（已有的模型跳过，只补缺的），跑完留下来；不跑演示
    .venv/bin/python bench/bench_compare.py --leave DIR   # 同上（从零），但 compare.sh 的副本留在 DIR，供下一条复用
    WEAK_KL=1 RPO=1 RULES=1 .venv/bin/python bench/bench_compare.py --keep DIR --out bench/results/compare_tiny_extras.json
        # 在上一条留下的副本上只补训练 KL 为 0 的 PPO / GRPO、DPO + rpo_alpha、GRPO + repetition，再评测全部（环境变量原样交给 compare.sh）

从零跑：迷你基座、SFT、RM、金标准评委也在计时内。各阶段的用时读它们自己写的 stage.json 里的 cost.wall_s
（含加载模型），评测的读 summary.json；整个 compare.sh 和 demo.sh 的墙钟时间另记，并给出两者之比。不带 --keep 时依次量四段
（同一次、同一台机器）：
1. 全新副本 A 里 demo.sh（README 的第一条命令）；
2. 接着在 A 里 compare.sh：用户照 README 的顺序跑时的用时（SFT、RM、PPO 用演示训练好的，跳过）；
3. 全新副本 B 里 compare.sh 从零（连 SFT、RM、PPO 一起训练）：结果文件里的分数、判定、轨迹都来自这一次；
4. 全新副本 C 里再跑一遍 demo.sh：尺子本身在同一次测量里的起伏。两个比值都除以两次演示的平均。
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
from qwen_rlhf import words  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", help="在这个仓库副本里跑并保留产物（默认临时目录，跑完删掉）")
    p.add_argument("--relabel", help="不跑：按现在的 trajectory.label 和 words 重新标注这个结果文件里的判定和报告段落"
                                      "（判定只由文件里记下的回落、p 值、峰值之后代理分和 KL 的变化决定）")
    p.add_argument("--leave", help="从零跑完后把 compare.sh 的仓库副本移到这里（不删），--keep 可以接着用")
    p.add_argument("--seeds", default="1 2 3")
    p.add_argument("--out", default=str(common.RESULTS / "compare_tiny.json"))
    a = p.parse_args()
    if a.relabel:
        return relabel(Path(a.relabel))

    def fresh_copy() -> Path:
        # 在仓库的副本里跑：demo.sh / compare.sh 写 checkpoint/tiny/，不碰这个仓库里已有的演示结果
        copy = Path(tempfile.mkdtemp(prefix="bench-compare-")) / "repo"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "checkpoint", "tensorboard", ".venv", "*.pyc"))
        (copy / "checkpoint").mkdir()
        return copy

    def timed(script: str, copy: Path) -> float:
        env = dict(os.environ, SEEDS=a.seeds, VENV=str(Path(sys.executable).parent.parent),
                   QWEN_RLHF_TENSORBOARD_ROOT=str(copy / "tensorboard"))
        started = time.time()
        subprocess.run(["bash", script], cwd=copy, env=env, check=True)
        return round(time.time() - started, 1)

    demos, after_demo = [], None
    if not a.keep:  # 同一台机器、同一次：演示的用时是 compare.sh 预算的尺子
        user_copy = fresh_copy()
        demos.append(timed("scripts/demo.sh", user_copy))
        after_demo = timed("scripts/compare.sh", user_copy)  # 用户的顺序：演示之后
        shutil.rmtree(user_copy.parent, ignore_errors=True)
    copy = Path(a.keep) if a.keep and Path(a.keep).exists() else fresh_copy()
    total = timed("scripts/compare.sh", copy)
    if not a.keep:
        demo_copy = fresh_copy()
        demos.append(timed("scripts/demo.sh", demo_copy))
        shutil.rmtree(demo_copy.parent, ignore_errors=True)
    demo = round(sum(demos) / len(demos), 1) if demos else None
    tiny = copy / "checkpoint" / "tiny"
    stages = {}
    for stage_json in sorted(tiny.rglob("stage.json")):
        info = json.loads(stage_json.read_text(encoding="utf-8"))
        if stage_json.parent.name == "merged" or "snapshots" in stage_json.parts:  # 快照没有花费
            continue
        stages[str(stage_json.parent.relative_to(tiny))] = {"stage": info["stage"], "wall_s": info["cost"]["wall_s"],
                                                            "throughput": info["cost"]["throughput"]}
    summary_file = max((tiny / "compare" / "benchmark").glob("*/summary.json"))
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    per_stage_s = {}
    for rec in stages.values():
        per_stage_s.setdefault(rec["stage"], []).append(rec["wall_s"])
    result = {
        "machine": common.machine(), "seeds": a.seeds.split(), "weak_kl": os.environ.get("WEAK_KL") == "1",
        "extras": {k: os.environ.get(k) == "1" for k in ("WEAK_KL", "RPO", "RULES")},
        "reused_models_from": a.keep,  # 有值时：只补训练了缺的模型，compare_sh_wall_s 不是从零的用时
        "compare_sh_wall_s": total, "demo_sh_wall_s": demo, "demo_sh_runs_s": demos,
        "compare_over_demo": round(total / demo, 2) if demo else None,
        # 演示之后在同一个副本里跑（SFT、RM、PPO 沿用演示的）：README 里新用户的顺序
        "compare_after_demo_wall_s": after_demo,
        "compare_after_demo_over_demo": round(after_demo / demo, 2) if demo and after_demo else None,
        "benchmark_wall_s": summary["cost"]["wall_s"], "benchmark_timing": summary["timing"],
        "stage_wall_s": per_stage_s, "runs": stages,
        "num_questions": summary["num_questions"], "rm": summary["rm"], "gold": summary["gold"],
        "null": summary.get("null"), "gold_base": summary.get("gold_base"), "kl_sampling": summary.get("kl_sampling"),
        "by_method": summary["by_method"], "overoptimisation": summary.get("overoptimisation"),
        "trajectory": summary.get("trajectory"),
        "models": {m: {k: s.get(k) for k in ("mean_score", "mean_score_ci95", "mean_gain_vs_sft", "mean_gain_vs_sft_ci95",
                                             "win_rate_vs_sft", "win_rate_vs_sft_ci95", "wins", "ties", "losses",
                                             "gain_in_sft_sd", "gain_in_sft_sd_ci95", "gold_score", "gold_mean_gain_vs_sft",
                                             "gold_mean_gain_vs_sft_ci95", "gold_gain_in_sft_sd",
                                             "gold_gain_in_sft_sd_ci95", "null_mean_gain_vs_sft", "null_gain_in_sft_sd",
                                             "kl_seq", "kl_seq_ci95", "kl_per_token", "mean_tokens", "empty_share",
                                             "distinct_2", "held_out", "rules", "reward_terms")}
                   for m, s in summary["models"].items()},
        "report_paragraphs": words.method_paragraphs(summary) + words.trajectory_paragraphs(summary),
    }
    common.write_result(result, Path(a.out))
    if a.leave and not a.keep:
        shutil.move(str(copy), a.leave)
        shutil.rmtree(copy.parent, ignore_errors=True)
    elif not a.keep:
        shutil.rmtree(copy.parent, ignore_errors=True)


def relabel(path: Path) -> None:
    """判定的措辞改了之后，已经测好的结果不必重跑：每个方法、每位评委的判定由记下的统计量重新算出，报告段落用现在的
    words 重新生成；文件里记下重新标注的提交（原来的 commit、命令行、负载不动）。"""
    from qwen_rlhf import trajectory

    result = json.loads(path.read_text(encoding="utf-8"))
    changed = {}
    for method, judges in (result.get("overoptimisation") or {}).items():
        for judge, stats in judges.items():
            if isinstance(stats, dict) and "p_value" in stats:
                new = trajectory.label(stats)
                if new != stats["verdict"]:
                    changed[f"{method}/{judge}"] = [stats["verdict"], new]
                stats["verdict"] = new
    summary = {"models": {}, **result, "overoptimisation": result.get("overoptimisation")}
    result["report_paragraphs"] = [p for p in result["report_paragraphs"] if not p.startswith("判定方法") and
                                   not any(p.startswith(f"**{m}**：") for m in summary["overoptimisation"] or {})]
    result["report_paragraphs"] += words.trajectory_paragraphs(summary)
    result["relabelled"] = {"commit": common.commit(), "changed": changed}
    path.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps(result["relabelled"], ensure_ascii=False))


if __name__ == "__main__":
    main()
