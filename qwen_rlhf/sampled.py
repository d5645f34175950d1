"""GRPO / RLOO 共用：TRL 训练器在梯度检查点下采样出错的一处修正（GRPOTrainer / RLOOTrainer，见 sampling.generating）。
奖励（交给 TRL 的 reward_funcs / reward_weights）在 qwen_rlhf/rewards.py，和 PPO 共用。
"""

from __future__ import annotations

from trl import GRPOTrainer as _GRPOTrainer
from trl import RLOOTrainer as _RLOOTrainer

from .sampling import generating


def _generate_in_eval_mode(trainer_cls):
    """TRL 的训练器，只改一处：采样回答时各解码层临时切到 eval（sampling.generating；GRPOConfig / RLOOConfig 默认开
    梯度检查点）。Trainer.training_step 先 model.train() 再调用 _prepare_inputs，GRPO / RLOO 就在那里面 generate；
    log 概率与训练照旧在 TRL 原来的模式下算。"""

    class Trainer(trainer_cls):
        def _generate(self, prompts):
            with generating(self.model):
                return super()._generate(prompts)

    Trainer.__name__ = Trainer.__qualname__ = trainer_cls.__name__
    return Trainer


GRPOTrainer = _generate_in_eval_mode(_GRPOTrainer)
RLOOTrainer = _generate_in_eval_mode(_RLOOTrainer)

