"""GRPO / RLOO 共用：TRL 训练器在梯度检查点下采样出错的一处修正（GRPOTrainer / RLOOTrainer，见 _generate_in_eval_mode）。
奖励（交给 TRL 的 reward_funcs / reward_weights）在 qwen_rlhf/rewards.py，和 PPO 共用。
"""

from __future__ import annotations

from trl import GRPOTrainer as _GRPOTrainer
from trl import RLOOTrainer as _RLOOTrainer

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

