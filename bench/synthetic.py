"""gpu_check 的合成数据：随机汉字拼成的问题和回答，分词后长度正好撑满 --max_length（显存的最坏情况）。"""

import random
from pathlib import Path

from qwen_rlhf import data

ROOT = Path(__file__).resolve().parent.parent


def text_with_tokens(tok, rng: random.Random, pool: list[str], n: int) -> str:
    """随机汉字串，分词后正好 n 个 token（相邻的字偶尔合并成一个 token，就再补字；补过头就去掉）。"""
    text = ""
    for _ in range(100):
        count = len(tok(text, add_special_tokens=False)["input_ids"])
        if count == n:
            return text
        text = text + "".join(rng.choice(pool) for _ in range(n - count)) if count < n else text[:-1]
    while len(tok(text, add_special_tokens=False)["input_ids"]) > n:
        text = text[:-1]
    return text


def rows(tok, rows: int, prompt_tokens: int, max_length: int, seed: int = 0) -> list[dict]:
    """问题的提示（含对话模板）正好 prompt_tokens 个 token；RM 的样本（提示 + 回答 + 模板结尾的 <|im_end|>\n，见
    qwen_rlhf/scoring.py）正好 max_length 个，SFT 的样本（到 <|im_end|> 为止）少一个。"""
    sample = (ROOT / "data" / "sample.jsonl").read_text(encoding="utf-8")
    pool = sorted({c for c in sample if "\u4e00" <= c <= "\u9fff"})
    rng = random.Random(seed)
    template = len(data.prompt_ids(tok, "好")) - len(tok("好", add_special_tokens=False)["input_ids"])
    answer = max_length - prompt_tokens - 2  # <|im_end|> 和其后的 \n
    return [{"question": text_with_tokens(tok, rng, pool, prompt_tokens - template),
             "chosen": text_with_tokens(tok, rng, pool, answer), "rejected": text_with_tokens(tok, rng, pool, answer)}
            for _ in range(rows)]
