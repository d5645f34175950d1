"""GRPO / RLOO 共用：把我们的 RM 交给 TRL 的 `reward_funcs`（一个可调用对象），打分走唯一的 scoring.score。

TRL 也接受把 RM 模型直接放进 reward_funcs，但那样分数由 TRL 自己渲染、读取；这里用可调用对象，
PPO 的奖励、GRPO / RLOO 的奖励和 benchmark 的分数就是同一个函数算出来的。
"""

from __future__ import annotations

from . import scoring


class RMReward:
    """reward_funcs 里的一项：f(prompts, completions, completion_ids, **kw) -> 每个回答一个分数。

    prompts 是消息列表（data.sampled_example），completions 是 [{"role": "assistant", "content": 文本}]；
    回答文本 = content 去掉首尾空白。和 PPO 一样，回答写满 --max_completion_length 还没停（没有 <|im_end|>）的，
    分数减去 missing_eos_penalty。RM 只加载一次、冻结；answers 记下这个进程打过分的回答数（吞吐用）。"""

    __name__ = "rm"  # TRL 的曲线名：rewards/rm/mean

    def __init__(self, reward_model, tokenizer, missing_eos_penalty: float = 0.0, batch_size: int = 16):
        self.model, self.tokenizer = reward_model.eval().requires_grad_(False), tokenizer
        self.penalty, self.batch_size = missing_eos_penalty, batch_size
        self.answers = 0

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        answers = [c[-1]["content"].strip() for c in completions]
        scores = scoring.score(self.model, self.tokenizer, prompts, answers, self.batch_size)
        if completion_ids is not None and self.penalty:
            eos = self.tokenizer.eos_token_id
            scores = [s - (self.penalty if not ids or ids[-1] != eos else 0.0) for s, ids in zip(scores, completion_ids)]
        self.answers += len(answers)
        return scores
