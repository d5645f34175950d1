"""CPU 上用 fp32 实测，核对 qwen_rlhf/memory.py 的公式（fp32、不加 CUDA 开销；bf16 那几项在 CPU 上核对不了）。

    .venv/bin/python bench/bench_memory.py [情形 ...]    # 默认 3 个情形，约 2 分钟，内存峰值 < 5 GB

每个情形一个新子进程：随机初始化的 Qwen3、真实的 15 万词表；实测 = RSS 峰值 − 建模型之前的 RSS（设了
MALLOC_MMAP_THRESHOLD_，大块内存释放即还给系统，和估计同一口径）。只打印数字，写 bench/results/memory.json。
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  bench/common.py
from qwen_rlhf import console, memory  # noqa: E402
from qwen_rlhf.tiny import QWEN3_0_6B, TINY  # noqa: E402

# 中等大小：同样的 15 万词表，8 层、hidden 512（约 1 亿参数，其中 7800 万是嵌入）
MID = dict(QWEN3_0_6B, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
           num_key_value_heads=4, head_dim=64)
CASES = {  # 键与 memory.Opts 同名；CPU 上采样 15 万词表很慢，PPO 的 rollout 缩小到 4 条 × 128 token
    "sft-mid": dict(config=MID, stage="sft", batch=2, max_length=512, gc=False),
    "sft-mid-gc": dict(config=MID, stage="sft", batch=2, max_length=512, gc=True),
    "ppo-tiny": dict(config=TINY, stage="ppo", batch=2, grad_accum=2, rollout_batch=4, response_length=128,
                     lora_r=32, gc=True),
}


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_sft(case: dict, cfg) -> int:
    import torch
    from transformers import Qwen3ForCausalLM

    batches = [torch.randint(0, 150000, (case["batch"], case["max_length"])) for _ in range(2)]
    base = rss_now()
    model = Qwen3ForCausalLM(cfg)
    if case["gc"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # Trainer 默认的 adamw_torch_fused
    for ids in batches:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # 第二步时梯度和 AdamW 状态都在：梯度累积中间的稳态
    return base


def run_ppo(case: dict, cfg) -> int:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from qwen_rlhf import ppo, tiny

    tok = AutoTokenizer.from_pretrained(str(tiny.tokenizer_files()), padding_side="left")
    local = case["batch"] * case["grad_accum"]
    # 提示全是普通 token、长度固定，不设停止符：没有 padding，回复总是跑满；两次更新，第二次 rollout 是稳态
    prompts = [{"input_ids": torch.randint(0, 150000, (memory.PROMPT_TOKENS,)).tolist()} for _ in range(2 * local)]
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-memory-"), use_cpu=True, bf16=False, report_to=[], seed=0,
        save_strategy="no", disable_tqdm=True, per_device_train_batch_size=case["batch"], num_ppo_epochs=1,
        gradient_accumulation_steps=case["grad_accum"], local_rollout_forward_batch_size=case["rollout_batch"],
        response_length=case["response_length"], total_episodes=2 * local, num_sample_generations=0,
        stop_token=None, missing_eos_penalty=None)
    cfg.pad_token_id = tok.pad_token_id
    base = rss_now()
    policy = Qwen3ForCausalLM(cfg)
    critic, reward = (Qwen3ForSequenceClassification(Qwen3Config(**cfg.to_dict(), num_labels=1)) for _ in range(2))
    ppo.enable_gradient_checkpointing(policy, critic)
    lora = LoraConfig(r=case["lora_r"], lora_alpha=8, lora_dropout=0.05, target_modules=list(memory.LINEARS),
                      task_type="CAUSAL_LM")
    PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward, value_model=critic,
               train_dataset=Dataset.from_list(prompts), peft_config=lora).train()
    return base


def child(name: str) -> None:
    import torch
    from transformers import Qwen3Config

    torch.manual_seed(0)
    torch.set_num_threads(2)
    case, t0 = CASES[name], time.time()
    base = (run_sft if case["stage"] == "sft" else run_ppo)(case, Qwen3Config(**case["config"], dtype="float32"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux：KiB
    print("RESULT " + json.dumps({"measured_bytes": peak - base, "seconds": round(time.time() - t0, 1)}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               ACCELERATE_MIXED_PRECISION="no", PYTHONWARNINGS="ignore")
    rows, results = [], {}
    for name in sys.argv[1:] or CASES:
        opts = {k: v for k, v in CASES[name].items() if k != "config"}  # 输入没有 padding：不做 repeat_kv
        est, when = memory.peak(memory.shape_of(CASES[name]["config"]),
                                memory.Opts(**opts, precision="fp32", overhead=0, gqa_repeat=False))
        p = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, env=env)
        out = [line[7:] for line in p.stdout.splitlines() if line.startswith("RESULT ")]
        r = json.loads(out[-1]) if out else {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
        ratio = round(r["measured_bytes"] / est, 3) if out else None
        results[name] = {**opts, "estimate_bytes": est, "estimate_phase": when, **r, "ratio": ratio}
        rows.append([name, f"{est / memory.GiB:.2f}", when, f"{r.get('measured_bytes', 0) / memory.GiB:.2f}",
                     f"{ratio:.2f}" if out else r["error"], f"{r.get('seconds', 0):.0f}"])
    print(console.table(["情形", "估计 (GiB)", "峰值时刻", "实测 (GiB)", "实测/估计", "用时 (秒)"], rows) + "\n")
    common.write_result({"machine": common.machine(), "results": results}, common.RESULTS / "memory.json")


if __name__ == "__main__":
    main()
