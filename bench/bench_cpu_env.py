"""scripts/cpu_env.sh 值不值：同样的迷你模型 SFT（10 步）和 PPO（4 次更新），glibc 默认 vs GLIBC_TUNABLES，
各跑一次真实脚本（子进程），比较墙钟、用户 / 内核时间、缺页次数、峰值内存，并确认两种情况写出的权重逐位相同。

    .venv/bin/python bench/bench_cpu_env.py        # 约 3 分钟；结果写到 bench/results/cpu_env.json
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  bench/common.py
from qwen_rlhf import tiny  # noqa: E402

TUNABLES = (ROOT / "scripts" / "cpu_env.sh").read_text(encoding="utf-8").split('GLIBC_TUNABLES:-', 1)[1].split("}", 1)[0]


def run(script: str, args: list, env: dict) -> dict:
    """运行一个脚本，用 wait4 取这个子进程自己的资源用量。"""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"{script} 失败"
    return {"wall_s": round(time.perf_counter() - start, 1), "user_s": round(usage.ru_utime, 1),
            "sys_s": round(usage.ru_stime, 1), "minor_faults": usage.ru_minflt,
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-env-"))
    base = tiny.build(work / "base")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "QWEN_RLHF_TENSORBOARD_ROOT": str(work / "tb")}
    env.pop("GLIBC_TUNABLES", None)
    tiny_args = lambda stage, out, *extra: ["--config", f"configs/tiny/{stage}.yaml", "--model_name_or_path", base,  # noqa: E731
                                            "--output_dir", out, *extra]
    run("train_rm.py", tiny_args("rm", work / "rm", "--max_steps", 5), env)
    result = {"machine": common.machine(), "tunables": TUNABLES, "runs": {}}
    for name, extra_env in (("default", {}), ("cpu_env", {"GLIBC_TUNABLES": TUNABLES})):
        e = {**env, **extra_env}
        sft, ppo = work / f"sft-{name}", work / f"ppo-{name}"
        result["runs"][name] = {
            "sft_10_steps": run("train_sft.py", tiny_args("sft", sft, "--max_steps", 10), e),
            "ppo_4_updates": run("train_ppo.py", tiny_args("ppo", ppo, "--sft_model_path", work / "sft-default",
                                                           "--reward_model_path", work / "rm", "--total_episodes", 64), e),
        }
    same = all((work / f"{d}-default" / f).read_bytes() == (work / f"{d}-cpu_env" / f).read_bytes()
               for d, f in (("sft", "model.safetensors"), ("ppo", "adapter_model.safetensors")))
    result["weights_identical"] = same
    common.write_result(result, common.RESULTS / "cpu_env.json")


if __name__ == "__main__":
    main()
