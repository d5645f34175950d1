"""rollout 生成速度：PPO 的大部分时间花在生成上。比较 KV cache 开 / 关、每次生成的批量、
生成时 policy 权重的精度（fp32 vs bf16，同样的提示），以及"train 模式 + 梯度检查点"
（TRL 1.12 不打补丁时的路径：每层丢掉 KV cache）。

    .venv/bin/python bench/bench_rollout.py                      # 离线 tiny 模型（临时目录里现建）
    .venv/bin/python bench/bench_rollout.py --model checkpoint/sft --response_length 200   # 真模型（GPU 上）

结果写到 bench/results/rollout.json。只比较同一台机器上的相对快慢；tiny 模型的绝对数字没有意义。
精度一项：train_ppo.py 的 rollout 用 fp32 权重生成（bf16 只是训练前向的 autocast）。CPU 上 bf16 可能反而更慢
（多数 CPU 没有 bf16 矩阵乘单元，要先转换）；GPU 上的数字看 bench/gpu_check.py 在 GPU 上的 PPO rollout token/s，
或在 GPU 上用 --model 跑本脚本。
"""

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import GenerationConfig  # noqa: E402

import common  # noqa: E402  bench/common.py
from qwen_rlhf import data, models, sampling, tiny  # noqa: E402


def timed_generate(model, ids, mask, gen, batch: int) -> float:
    """按 batch 切块生成（与 TRL 的 local_rollout_forward_batch_size 同义），返回秒数。"""
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, ids.shape[0], batch):
            model.generate(input_ids=ids[i:i + batch], attention_mask=mask[i:i + batch], generation_config=gen)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="模型文件夹；不给则现建一个 tiny 随机模型")
    parser.add_argument("--prompts", type=int, default=16, help="一次 rollout 的提示数")
    parser.add_argument("--response_length", type=int, default=64)
    a = parser.parse_args()

    folder = Path(a.model) if a.model else tiny.build(Path(tempfile.mkdtemp(prefix="bench-rollout-")) / "tiny")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = models.load_tokenizer(folder, padding_side="left")
    model = models.load_causal_lm(folder, tok).to(device)
    rows = data.load_rows(str(ROOT / "data" / "sample.jsonl"), False).rows[: a.prompts]
    ids, mask = sampling.left_pad(tok, [data.ppo_example(tok, r)["input_ids"] for r in rows])
    ids, mask = ids.to(device), mask.to(device)
    # 固定生成满 response_length 个 token，各方案的工作量相同
    gen = dict(max_new_tokens=a.response_length, min_new_tokens=a.response_length, do_sample=False,
               pad_token_id=tok.pad_token_id)
    tokens = a.prompts * a.response_length

    cases = {}
    model.eval()
    timed_generate(model, ids, mask, GenerationConfig(**gen), 8)  # 预热
    for batch in (1, 2, 8, a.prompts):
        cases[f"kv_cache_batch_{batch}"] = timed_generate(model, ids, mask, GenerationConfig(**gen), batch)
    cases["no_kv_cache_batch_8"] = timed_generate(model, ids, mask, GenerationConfig(**gen, use_cache=False), 8)
    # 同样的提示、同样的批量（PPO 默认的 rollout 前向批量 8），只换权重精度
    half = copy.deepcopy(model).to(torch.bfloat16)
    timed_generate(half, ids, mask, GenerationConfig(**gen), 8)  # 预热
    dtypes = {"fp32": timed_generate(model, ids, mask, GenerationConfig(**gen), 8),  # 紧挨着测，机器负载一样
              "bf16": timed_generate(half, ids, mask, GenerationConfig(**gen), 8)}
    del half
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # 不打补丁的 TRL 1.12：rollout 在 train 模式下生成，检查点层丢掉缓存（而且输出是错的）
    cases["train_mode_grad_ckpt_batch_8"] = timed_generate(model, ids, mask, GenerationConfig(**gen), 8)

    result = {
        "machine": common.machine(torch.cuda.get_device_name() if device == "cuda" else "no GPU"),
        "model": str(folder) if a.model else "tiny (random)",
        "prompts": a.prompts, "response_length": a.response_length,
        "tokens_per_s": {k: round(tokens / v, 1) for k, v in cases.items()},
        "dtype_tokens_per_s_batch_8": {k: round(tokens / v, 1) for k, v in dtypes.items()},
    }
    common.write_result(result, common.RESULTS / "rollout.json")


if __name__ == "__main__":
    main()
