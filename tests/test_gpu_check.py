"""GPU 自检（bench/gpu_check.py）的 CPU 模式：迷你模型走一遍和 GPU 上相同的路径（SFT → RM → PPO → 评测 → 对话，
每个都是真实脚本的子进程），表格和 JSON 里每个阶段都有真实的结果，而且没有碰仓库里的 checkpoint/ 和 tensorboard/。"""

import json
import subprocess
import sys

from conftest import ROOT, offline_env

STAGES = {"sft": "SFT", "rm": "RM", "ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO", "rm_lora": "RM-LORA",
          "benchmark": "评测", "chat": "对话"}


def outputs_lora(folder):
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))["lora"]


def tree(folder):
    return sorted(str(p) for p in folder.rglob("*")) if folder.is_dir() else []


def test_cpu_self_check_runs_every_stage_and_reports_speed_memory_and_estimate(tmp_path):
    out, work = tmp_path / "result.json", tmp_path / "work"
    before = {d: tree(ROOT / d) for d in ("checkpoint", "tensorboard")}
    proc = subprocess.run([sys.executable, ROOT / "bench" / "gpu_check.py", "--device", "cpu", "--out", out,
                           "--work_dir", work], cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = {line.split()[0]: line for line in proc.stdout[proc.stdout.index("阶段"):].splitlines()[2:]}
    assert "token/s" in rows["SFT"] and "对/s" in rows["RM"] and "episode/s" in rows["PPO"] and "回答/s" in rows["评测"]
    assert "回答/s" in rows["GRPO"] and "回答/s" in rows["RLOO"] and "对/s" in rows["DPO"] and "对/s" in rows["RM-LORA"]
    assert all("GiB" in rows[label] for label in STAGES.values())

    result = json.loads(out.read_text(encoding="utf-8"))
    assert (result["size"], result["device"], result["gpu"], result["ok"]) == ("tiny", "cpu", None, True)
    data = result["prepare"]["data"]
    # RM 的每条样本都撑满 max_length（模板结尾的 <|im_end|>\n），SFT 的到 <|im_end|> 为止，少一个
    assert data["rm_tokens"] == [data["max_length"]] * 2 and data["sft_tokens"] == [data["max_length"] - 1] * 2
    stages = result["stages"]
    assert list(stages) == list(STAGES)
    assert all(s["wall_s"] > 0 and s["peak_rss_mb"] > 0 for s in stages.values())
    speed = {k: v for s in stages.values() for k, v in s.get("throughput", {}).items()}
    assert {"tokens_per_s", "pairs_per_s", "episodes_per_s", "rollout_tokens_per_s", "answers_per_s"} <= set(speed)
    assert all(v > 0 for v in speed.values())
    for s in ("sft", "rm", "ppo", "grpo", "rloo", "dpo", "rm_lora"):
        assert stages[s]["estimate_gib"] > 0 and stages[s]["ratio"] > 0
    assert stages["rm_lora"]["estimate_gib"] < stages["rm"]["estimate_gib"]  # 同样的选项，只有 LoRA 和打分头的优化器状态
    assert stages["chat"]["answer"]

    # 产物真的写出来了：可以接着用的模型文件夹和评测报告
    assert all((work / s / "model.safetensors").is_file() for s in ("sft", "rm", "rm_lora"))
    assert outputs_lora(work / "rm_lora")["r"] > 0  # LoRA 训练、合并成完整的 RM
    assert all((work / s / "merged" / "model.safetensors").is_file() for s in ("ppo", "grpo", "rloo", "dpo"))
    assert len(list((work / "benchmark").glob("*/report.md"))) == 1
    assert {d: tree(ROOT / d) for d in before} == before
