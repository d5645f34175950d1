"""RM 打分的唯一约定，和标准客户端（纯 transformers）算出的一样。

(对话, 回答) 的分数 = 分词器的对话模板渲染 [system?, user, assistant]（`enable_thinking=False`）得到的文本，
`AutoModelForSequenceClassification` 在最后一个非填充 token 上的 `logits[:, 0]`。Qwen3 的模板以 `<|im_end|>\\n`
结尾，所以分数读在那个 `\\n` 上——TRL 的 RewardTrainer、GRPOTrainer / RLOOTrainer（reward_funcs 是模型时）、
以及用户自己的脚本都是这样读的。

RM 训练（`encode`）、PPO 的奖励、GRPO / RLOO 的 reward_funcs、benchmark 都调用这里：四处看到的是同一串文本。
"""

from __future__ import annotations


def conversation(prompt: list[dict], answer: str) -> list[dict]:
    """提示消息（system? + user）+ 回答 -> 完整对话。"""
    return [*prompt, {"role": "assistant", "content": answer}]


def render(tokenizer, prompt: list[dict], answer: str) -> str:
    """标准客户端看到的文本：对话模板渲染整段对话（不加生成提示）。"""
    return tokenizer.apply_chat_template(conversation(prompt, answer), tokenize=False, enable_thinking=False)


def encode(tokenizer, prompt: list[dict], answer: str) -> list[int]:
    """render 的 token（RM 训练数据用它，打分时也用它：训练和打分读同一个位置）。"""
    return tokenizer(render(tokenizer, prompt, answer), add_special_tokens=False)["input_ids"]


def response_text(tokenizer, response_ids: list[int]) -> str:
    """生成的 token -> 报告里写的回答文本：截到第一个 `<|im_end|>`（不含），去掉特殊 token，去掉首尾空白。
    benchmark 写进 results.csv 的、PPO 交给 RM 打分的都是这串文本（所以 CSV 自己就能复现它的分数）。"""
    eos = tokenizer.eos_token_id
    ids = response_ids[: response_ids.index(eos)] if eos in response_ids else response_ids
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def score(reward_model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 16) -> list[float]:
    """RM 分数：每条 (提示消息, 回答文本) 用 encode 编码，右填充，模型自己在最后一个非填充 token 上读分。"""
    import torch

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts vs {len(answers)} answers")
    device = next(reward_model.parameters()).device
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        ids = [encode(tokenizer, p, a) for p, a in zip(prompts[start:start + batch_size], answers[start:start + batch_size])]
        batch = tokenizer.pad({"input_ids": ids}, padding_side="right", return_tensors="pt")
        with torch.no_grad():
            logits = reward_model(input_ids=batch["input_ids"].to(device),
                                  attention_mask=batch["attention_mask"].to(device)).logits
        out += logits[:, 0].float().cpu().tolist()
    return out
