"""四个 LoRA 策略阶段（PPO / GRPO / RLOO / DPO）共用的接线：快照、NaN 守卫、Ctrl-C / SIGTERM 的停止、本阶段的
TensorBoard 文件夹、导出（适配器 + merged/ + 快照）和进度，一处写好，脚本只调用。

    wiring = policy_run.PolicyWiring.for_trainer(cfg, final, "grpo", args.snapshots, seed=cfg.seed, ...)
    trainer = GRPOTrainer(..., callbacks=wiring.callbacks)
    training.fit(trainer, wiring.bind(trainer, lambda: trainer.accelerator.unwrap_model(trainer.model)), ...)
    training.save_result(..., export=wiring.export(sft_path, tokenizer), progress=wiring.progress(trainer), ...)
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from . import policy, training


class PolicyWiring:
    """stop：训练器的停止回调（training.GracefulStop），tb：曲线写到哪里；record：快照的 stage.json 里多记的项。"""

    def __init__(self, stage: str, count: int, final: Path, seen, stop, tb: Path, **record):
        self.stage, self.stop, self.tb = stage, stop, tb
        self.snapshots = training.Snapshots(stage, count, final, seen, **record)

    @classmethod
    def for_trainer(cls, cfg, final: Path, stage: str, count: int, **record) -> PolicyWiring:
        """Trainer 派生的阶段（GRPO / RLOO / DPO）：training.prepare 定好检查点和曲线的位置，进度按 seen_per_step 数。"""
        tb, stop = training.prepare(cfg, final, stage)
        return cls(stage, count, final, training.seen_per_step(cfg), stop, tb, **record)

    @property
    def callbacks(self) -> list:
        return [training.FiniteGuard(self.stage), self.stop, self.snapshots]

    def bind(self, trainer, peft_model):
        """训练器建好之后：快照从 peft_model() 取 peft 模型，曲线写到本阶段的文件夹，停止信号交给训练器（返回 stop）。"""
        self.snapshots.bind(peft_model)
        training.use_stage_tensorboard(trainer, self.stage, self.tb)
        return self.stop.bind(trainer)

    def export(self, sft_path: Path, tokenizer, model=None):
        """唯一的导出（policy.save_policy），带上训练中存下的快照；export(文件夹) 返回写进 stage.json 的基座位置。"""
        return partial(policy.save_policy, sft_path=sft_path, tokenizer=tokenizer, model=model,
                       snapshots=self.snapshots.folder)

    def progress(self, trainer) -> dict:
        return self.snapshots.progress(trainer.state)
