"""在 CPU 上用 fp32 实测，核对 qwen_rlhf/memory.py 的显存公式（同一套公式，精度选 fp32、不加 CUDA 开销）。

    python bench/bench_memory.py              # 默认 4 个情形，约 3 分钟，每个 < 1 分钟、内存峰值 < 5 GB
    python bench/bench_memory.py --cases sft-tiny ppo-tiny
    python bench/bench_memory.py --cases ppo-tiny-defaults   # PPO 脚本默认值，约 4～5 分钟（CPU 采样慢）

每个情形在一个新的子进程里跑（峰值不会互相混）：随机初始化的 Qwen3（transformers.Qwen3ForCausalLM），
词表都是真实的 151936，测量进程 RSS 峰值（getrusage 的 ru_maxrss）相对建模型之前的增量。

- sft-*：两次 AdamW 更新，第二次有两个 micro-batch（梯度累积：第二个 micro-batch 时梯度和优化器状态都已存在，
  与训练中的稳态一致）。
- ppo-tiny：真的跑 TRL 1.12 的 PPOTrainer（LoRA policy + critic + RM，提示 64 token、不设停止符，回复总是跑满），
  两次 PPO 更新（第二次 rollout 时上一次的 logits 还没释放，是稳态）。CPU 上对 15 万词表采样很慢，默认情形把
  rollout 缩小（4 条 × 128 token，峰值在训练时刻）；ppo-tiny-defaults 用脚本默认值（峰值在生成结束时刻）。

只打印数字（估计、实测、实测/估计），从不 assert；结果写到 bench/results/memory.json（git 忽略）。
子进程默认设 MALLOC_MMAP_THRESHOLD_=131072：128 KiB 以上的分配走 mmap、释放即还给系统，RSS 跟着存活的张量走，
和估计（存活张量的字节数）口径一致；--glibc_default 不设它，实测会多出 glibc 留着的空闲内存（约高几个百分点）。
估计不含 CUDA 开销，也无法在 CPU 上核对 bf16 autocast 的那几项（bf16 副本、bf16 激活）。
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qwen_rlhf import memory  # noqa: E402
from qwen_rlhf.tiny import QWEN3_0_6B, TINY  # noqa: E402

# 中等大小：同样的 15 万词表，8 层、hidden 512（约 1 亿参数，其中 7800 万是嵌入）
MID = dict(QWEN3_0_6B, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
           num_key_value_heads=4, head_dim=64, max_position_embeddings=4096)

CASES = {
    "sft-tiny": dict(kind="sft", config=TINY, batch=4, seq=256, gc=False),
    "sft-mid": dict(kind="sft", config=MID, batch=2, seq=512, gc=False),
    "sft-mid-gc": dict(kind="sft", config=MID, batch=2, seq=512, gc=True),
    # CPU 上采样 15 万词表很慢（每步约 0.1 秒），所以默认的 PPO 情形把 rollout 缩小到 4 条 × 128 token
    "ppo-tiny": dict(kind="ppo", config=TINY, batch=2, grad_accum=2, rollout_batch=4, response_length=128,
                     prompt_length=64, lora_r=32, gc=True, ppo_epochs=1),
    # 脚本的 PPO 默认值（每卡 2 × 累积 4、rollout 8、回复 200），约 4～5 分钟：只在 --cases 点名时跑
    "ppo-tiny-defaults": dict(kind="ppo", config=TINY, batch=2, grad_accum=4, rollout_batch=8, response_length=200,
                              prompt_length=64, lora_r=32, gc=True, ppo_epochs=1),
}
SLOW = {"ppo-tiny-defaults"}
RESULTS = ROOT / "bench" / "results" / "memory.json"


def estimate_for(case: dict) -> memory.StageEstimate:
    """同一套公式，fp32、无 CUDA 开销；输入没有 padding，transformers 不做 repeat_kv（gqa_repeat=False）。"""
    shape = memory.ModelShape.from_config(case["config"])
    common = dict(precision="fp32", gradient_checkpointing=case["gc"], overhead_gib=0.0, gqa_repeat=False)
    if case["kind"] == "sft":
        o = memory.StageOptions(stage="sft", batch=case["batch"], max_length=case["seq"], **common)
    else:
        o = memory.StageOptions(stage="ppo", batch=case["batch"], grad_accum=case["grad_accum"],
                                rollout_batch=case["rollout_batch"], response_length=case["response_length"],
                                prompt_length=case["prompt_length"], lora_r=case["lora_r"], **common)
    return memory.estimate(shape, o)


# ---------------------------------------------------------------------- 子进程：真正的测量


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_sft(case: dict) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(**case["config"], dtype="float32")
    b, s, vocab = case["batch"], case["seq"], cfg.vocab_size
    batches = [torch.randint(0, 150000, (b, s)) for _ in range(2)]
    base = rss_now()
    t0 = time.time()
    model = Qwen3ForCausalLM(cfg)
    model.train()
    if case["gc"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # Trainer 的默认 adamw_torch_fused
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=False)
    for step, ids in enumerate(batches):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss  # 输出（含 logits）随即释放，和 Trainer 一样
        loss.backward()
        del loss
        opt.step()
        # 第一次更新建出 AdamW 状态；梯度原地清零而不释放：第二次前向 + 反向时梯度、优化器状态都在，
        # 和梯度累积中间的 micro-batch 一样（稳态）
        opt.zero_grad(set_to_none=False)
    return {"baseline_bytes": base, "peak_bytes": peak_rss(), "seconds": time.time() - t0,
            "params": sum(p.numel() for p in model.parameters()), "vocab": vocab}


def run_ppo(case: dict) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from qwen_rlhf import tiny

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(tiny.tokenizer_files()), padding_side="left")
    cfg = Qwen3Config(**case["config"], pad_token_id=tok.pad_token_id, dtype="float32")
    local_batch = case["batch"] * case["grad_accum"]
    g = torch.Generator().manual_seed(0)
    # 提示全是普通 token（不含 pad），长度固定：没有 padding，生成也不会提前停（不设 stop_token）——最坏情况
    prompts = [{"input_ids": torch.randint(0, 150000, (case["prompt_length"],), generator=g).tolist()}
               for _ in range(2 * local_batch)]
    dataset = Dataset.from_list(prompts)
    tmp = tempfile.mkdtemp(prefix="bench-memory-ppo-")
    args = PPOConfig(
        output_dir=tmp, use_cpu=True, bf16=False, fp16=False, report_to=[], save_strategy="no",
        per_device_train_batch_size=case["batch"], gradient_accumulation_steps=case["grad_accum"],
        num_mini_batches=1, local_rollout_forward_batch_size=case["rollout_batch"],
        num_ppo_epochs=case["ppo_epochs"],
        response_length=case["response_length"], total_episodes=2 * local_batch, num_sample_generations=0,
        stop_token=None, missing_eos_penalty=None, logging_steps=1, disable_tqdm=True, seed=0,
    )
    base = rss_now()
    t0 = time.time()
    policy = Qwen3ForCausalLM(cfg)
    critic = Qwen3ForSequenceClassification(Qwen3Config(**cfg.to_dict(), num_labels=1))
    reward = Qwen3ForSequenceClassification(Qwen3Config(**cfg.to_dict(), num_labels=1))
    if case["gc"]:  # 和 qwen_rlhf/ppo.py 一样：TRL 1.12 自己不会打开
        for m in (policy, critic):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            m.config.use_cache = False
    peft_config = LoraConfig(r=case["lora_r"], lora_alpha=8, lora_dropout=0.05,
                             target_modules=list(memory.LORA_TARGETS), task_type="CAUSAL_LM")
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         value_model=critic, train_dataset=dataset, peft_config=peft_config)
    trainer.train()
    params = sum(p.numel() for p in trainer.model.parameters()) + sum(p.numel() for p in reward.parameters())
    return {"baseline_bytes": base, "peak_bytes": peak_rss(), "seconds": time.time() - t0, "params": params,
            "vocab": cfg.vocab_size}


def child(name: str) -> None:
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    case = CASES[name]
    out = run_sft(case) if case["kind"] == "sft" else run_ppo(case)
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------- 父进程：汇总


def measure(name: str, timeout: int, glibc_default: bool = False) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               ACCELERATE_MIXED_PRECISION="no", PYTHONWARNINGS="ignore")
    if not glibc_default:
        # 128 KiB 以上的分配走 mmap、释放即还给系统：RSS 跟着「存活的张量」走，和估计的口径一致
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"超过 {timeout} 秒未完成"}
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"error": f"子进程退出码 {p.returncode}：{(p.stderr or p.stdout).strip().splitlines()[-1:]}"}
    r = json.loads(lines[-1][len("RESULT "):])
    r["wall_seconds"] = time.time() - t0
    return r


def merge_results(new: list[dict]) -> list[dict]:
    """只跑了部分情形时，保留结果文件里其他情形上一次的结果（按 CASES 的顺序排列）。"""
    old = []
    if RESULTS.is_file():
        try:
            old = json.loads(RESULTS.read_text(encoding="utf-8")).get("results", [])
        except (json.JSONDecodeError, AttributeError):
            old = []
    by_case = {r.get("case"): r for r in old if isinstance(r, dict)}
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    by_case.update({r["case"]: {**r, "measured_at": stamp} for r in new})
    return [by_case[c] for c in CASES if c in by_case]


def main() -> None:
    ap = argparse.ArgumentParser(description="CPU fp32 实测 vs qwen_rlhf.memory 的估计")
    ap.add_argument("--cases", nargs="*", choices=list(CASES), default=[c for c in CASES if c not in SLOW],
                    help=f"要跑的情形（默认除 {', '.join(sorted(SLOW))} 以外的全部）")
    ap.add_argument("--glibc_default", action="store_true",
                    help="不设 MALLOC_MMAP_THRESHOLD_：RSS 会包含 glibc 留着没还的空闲内存，实测偏高几个百分点")
    ap.add_argument("--timeout", type=int, default=240, help="每个情形的超时（秒）")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return

    import torch
    import transformers

    rows, results = [], []
    print(f"CPU fp32 实测（torch {torch.__version__}，transformers {transformers.__version__}，"
          f"{os.cpu_count()} 核）。估计 = qwen_rlhf.memory 的同一套公式，精度 fp32，不加 CUDA 开销。\n")
    for name in a.cases:
        case = CASES[name]
        est = estimate_for(case)
        print(f"[{name}] 估计 {est.peak / memory.GiB:.2f} GiB（峰值时刻：{est.peak_phase.name}），测量中…", flush=True)
        r = measure(name, a.timeout, a.glibc_default)
        entry = {"case": name, **{k: v for k, v in case.items() if k != "config"},
                 "model": asdict(memory.ModelShape.from_config(case["config"])),
                 "estimate_bytes": est.peak, "estimate_phase": est.peak_phase.name,
                 "estimate_phases": [{"name": p.name, "total_bytes": p.total,
                                      "terms": {t.key: t.bytes for t in p.terms}} for p in est.phases]}
        if "error" in r:
            print(f"  失败：{r['error']}")
            entry["error"] = r["error"]
            rows.append([name, f"{est.peak / memory.GiB:.2f}", "—", "—", "—"])
        else:
            measured = r["peak_bytes"] - r["baseline_bytes"]
            ratio = measured / est.peak
            entry.update(r, measured_bytes=measured, ratio=ratio)
            print(f"  实测 {measured / memory.GiB:.2f} GiB，实测/估计 = {ratio:.2f}，用时 {r['seconds']:.0f} 秒")
            rows.append([name, f"{est.peak / memory.GiB:.2f}", f"{measured / memory.GiB:.2f}", f"{ratio:.2f}",
                         f"{r['seconds']:.0f}"])
        results.append(entry)
    print()
    print(memory._table(["情形", "估计 (GiB)", "实测 (GiB)", "实测/估计", "用时 (秒)"], rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = merge_results(results)
    RESULTS.write_text(json.dumps({
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                 "transformers": transformers.__version__, "python": platform.python_version()},
        "note": "CPU fp32；measured = ru_maxrss 峰值 − 建模型之前的 RSS；estimate = qwen_rlhf.memory（fp32，无 CUDA 开销）",
        "malloc_mmap_threshold": None if a.glibc_default else os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072"),
        "results": results,
    }, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"\n结果已写到 {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
