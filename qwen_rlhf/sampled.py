"""GRPO / RLOO 共用：把我们的 RM 交给 TRL 的 `reward_funcs`（一个可调用对象），打分走唯一的 scoring.score；
以及 TRL 训练器在梯度检查点下采样出错的一处修正（GRPOTrainer / RLOOTrainer，见 _generate_in_eval_mode）。

TRL 也接受把 RM 模型直接放进 reward_funcs，但那样分数由 TRL 自己渲染、读取；这里用可调用对象，
PPO 的奖励、GRPO / RLOO 的奖励和 benchmark 的分数就是同一个函数算出来的。
"""

from __future__ import annotations

from trl import GRPOTrainer as _GRPOTrainer
from trl import RLOOTrainer as _RLOOTrainer

from . import scoring
from .sampling import fast_cpu_sampling


def _generate_in_eval_mode(trainer_cls):
    """TRL 的训练器，只改一处：采样回答时把各解码层临时切到 eval。

    Trainer.training_step 先 model.train() 再调用 _prepare_inputs，GRPO / RLOO 就在那里面 generate。开了梯度检查点
    （GRPOConfig / RLOOConfig 默认开）时 transformers 的 GradientCheckpointingLayer 在 train 模式下丢掉 past_key_values
    （huggingface/transformers#38913，PPO 的同一个问题见 huggingface/trl#3683）：从第二个 token 起就看不到上文。
    只切解码层（不切整个模型）：TRL 按 self.model.training 决定这批指标记在 train 还是 eval 下。层里的 LoRA dropout
    也随之关掉，和 vLLM 生成时一样；log 概率与训练照旧在 TRL 原来的模式下算。"""
    from transformers.modeling_layers import GradientCheckpointingLayer

    class Trainer(trainer_cls):
        def _generate(self, prompts):
            layers = [m for m in self.model.modules() if isinstance(m, GradientCheckpointingLayer) and m.training]
            for layer in layers:
                layer.eval()
            try:
                with fast_cpu_sampling():  # CPU 上 torch.multinomial 很慢，见 sampling.fast_cpu_sampling
                    return super()._generate(prompts)
            finally:
                for layer in layers:
                    layer.train()

    Trainer.__name__ = Trainer.__qualname__ = trainer_cls.__name__
    return Trainer


GRPOTrainer = _generate_in_eval_mode(_GRPOTrainer)
RLOOTrainer = _generate_in_eval_mode(_RLOOTrainer)


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
