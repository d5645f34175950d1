"""benchmark.py 的批量生成值多少：同一份评测，--batch_size 1 对比默认批量，报告用时之比和峰值内存；
另记精确 KL 那一遍（对整个词表求和）每个回答花多少时间。

    python bench/bench_benchmark.py                      # tiny 检查点（checkpoint/tiny/sft、rm、ppo），配方 configs/tiny/benchmark.yaml
    python bench/bench_benchmark.py --batch_size 32      # 和别的批量比
    python bench/bench_benchmark.py -- --do_sample       # "--" 之后的选项原样交给 benchmark.py

每种批量在一个新进程里跑一次 benchmark.py（互不影响的峰值内存），读它写的 summary.json 里的用时（timing）与花费（cost）。
结果写到 bench/results/benchmark.json 并打印。只报告数字，不做断言；目标是生成阶段快 5 倍以上。
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # bench/common.py（脚本所在目录在 sys.path 里）

ROOT = Path(__file__).resolve().parent.parent
TARGET = 5.0


def run_once(batch_size: int, config: str, extra: list[str], out_root: Path) -> dict:
    """跑一次 benchmark.py；返回它自己记下的用时 / 花费，外加这边量的整个进程墙钟时间。"""
    out = out_root / f"batch_{batch_size}"
    cmd = [sys.executable, str(ROOT / "benchmark.py"), "--config", config, "--batch_size", str(batch_size),
           "--output_dir", str(out), *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stdout[-2000:] + proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"benchmark.py --batch_size {batch_size} 失败（退出码 {proc.returncode}）")
    run_dir = next(p for p in out.iterdir() if (p / "summary.json").is_file())
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    timing, cost = summary["timing"], summary["cost"]
    return {
        "batch_size": batch_size,
        "process_wall_s": round(wall, 3),
        "generate_s": round(sum(timing["generate_s"].values()), 3),  # 只算生成（不含加载模型）
        # 精确 KL（sampling.kl_to_reference）：每个非 SFT 模型在它自己对非常见问题的回答上各算一遍
        "kl_s": round(sum(timing["kl_s"].values()), 3),
        "kl_answers": sum(summary["num_by_source"].get(s, 0) for s in ("held_out", "file")) * len(timing["kl_s"]),
        "score_s": timing["score_s"],
        "benchmark_wall_s": cost["wall_s"],
        "answers_per_s": cost["throughput"]["answers_per_s"],
        "peak_rss_mb": cost["peak_rss_mb"],
        "cuda_max_allocated_mb": cost.get("cuda_max_allocated_mb"),
        "device": summary["device"],
        "num_answers": summary["num_questions"] * len(summary["models"]),
        "mean_tokens": {m: s["mean_tokens"] for m, s in summary["models"].items()},
        "results_csv": (run_dir / "results.csv").read_text(encoding="utf-8-sig"),
    }


def main():
    parser = argparse.ArgumentParser(description="benchmark.py：批量 1 对比默认批量")
    parser.add_argument("--config", default="configs/tiny/benchmark.yaml", help="交给 benchmark.py 的配方")
    parser.add_argument("--batch_size", type=int, default=16, help="和批量 1 比的批量（默认 16，与 benchmark.py 默认一致）")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "benchmark.json"), help="结果 JSON")
    parser.add_argument("extra", nargs="*", help="'--' 之后原样交给 benchmark.py 的选项")
    a = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-benchmark-") as tmp:
        runs = {}
        for bs in (1, a.batch_size):
            print(f"[bench] benchmark.py --batch_size {bs} …", flush=True)
            runs[bs] = run_once(bs, a.config, a.extra, Path(tmp))
            print(f"[bench]   生成 {runs[bs]['generate_s']:.2f}s，整个进程 {runs[bs]['process_wall_s']:.2f}s，"
                  f"峰值 RSS {runs[bs]['peak_rss_mb']:.0f} MB", flush=True)

    one, many = runs[1], runs[a.batch_size]
    result = {
        "what": "benchmark.py: --batch_size 1 vs batched generation + scoring",
        "config": a.config,
        "extra_args": a.extra,
        "device": many["device"],
        "python": platform.python_version(),
        "cpu_threads": os.cpu_count(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # 相同的贪心输出说明批量只是换了算法的排布；不同不算错（左填充会带来极小的数值差异）
        "same_results_csv": one.pop("results_csv") == many.pop("results_csv"),
        "runs": {f"batch_{bs}": r for bs, r in ((1, one), (a.batch_size, many))},
        "speedup_generate": round(one["generate_s"] / max(many["generate_s"], 1e-9), 2),
        "speedup_process_wall": round(one["process_wall_s"] / max(many["process_wall_s"], 1e-9), 2),
        # 精确 KL 的花费：每个回答多少毫秒，和生成每个回答的毫秒数并排（默认批量那一次）
        "kl_ms_per_answer": round(1000 * many["kl_s"] / max(many["kl_answers"], 1), 2),
        "generate_ms_per_answer": round(1000 * many["generate_s"] / max(many["num_answers"], 1), 2),
        "target_speedup_generate": TARGET,
    }
    result["meets_target"] = result["speedup_generate"] >= TARGET
    out = Path(a.out)
    common.write_result(result, out)
    print(f"[bench] 生成阶段加速 {result['speedup_generate']}×（目标 ≥ {TARGET}×），整个进程 "
          f"{result['speedup_process_wall']}×；精确 KL 每个回答 {result['kl_ms_per_answer']} 毫秒"
          f"（生成 {result['generate_ms_per_answer']} 毫秒）；已写入 {out}")


if __name__ == "__main__":
    main()
