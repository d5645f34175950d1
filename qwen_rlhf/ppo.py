"""TRL 1.12 的 PPOTrainer 加一层薄子类：补上它悄悄忽略的东西，不复制训练循环。

- 多进程（DDP）时 `model.policy` 不存在（huggingface/trl#2375）：把未包装的 policy / value_model 挂到包装器上。
- `max_grad_norm` 从不裁剪：包一层 optimizer.step，在真正更新参数前裁剪梯度。
- 记录每批 rollout 的"不同回复占比"和平均回复长度：看出奖励投机（所有问题都回同一句话）。
- 开了梯度检查点时，rollout 生成临时切到 eval：训练模式下每层会丢掉 KV cache，生成既慢又错（见 recording_generate）。
"""

from __future__ import annotations

import os
from statistics import mean

import torch
from trl.experimental.ppo import PPOTrainer

from .errors import EXIT_INTERRUPTED, UserError


class RLHFPPOTrainer(PPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unwrapped = self.accelerator.unwrap_model(self.model)
        if unwrapped is not self.model:
            # trl#2375: DDP 包装器上没有 .policy；直接写进 __dict__，不注册为子模块（参数已由 DDP 管理）
            self.model.__dict__["policy"] = unwrapped.policy
            self.model.__dict__["value_model"] = unwrapped.value_model
        self.optimizer_steps = 0  # 真正执行的优化器更新次数（测试用它核对梯度累积 × minibatch）
        self.last_grad_norm = float("nan")
        self.optimizer.step = self._clipped_step(self.optimizer.step)
        policy = unwrapped.policy
        policy.generate = self._recording_generate(policy.generate)
        self._responses: list[tuple[int, ...]] = []

    # ---------------------------------------------------------------- 梯度裁剪
    def _clipped_step(self, step):
        def clipped_step(*args, **kwargs):
            # accelerate 的优化器在梯度累积未完成时 step 是空操作；只在真正更新时裁剪并计数
            if self.accelerator.sync_gradients:
                if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                    norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
                    self.last_grad_norm = float(norm)
                self.optimizer_steps += 1
            return step(*args, **kwargs)

        return clipped_step

    # ---------------------------------------------------------------- rollout 统计
    def _recording_generate(self, generate):
        eos = self.processing_class.eos_token_id

        def recording_generate(*args, **kwargs):
            # PPO 全程在 train 模式；开了梯度检查点时 transformers 的 GradientCheckpointingLayer 在 train 模式下丢掉
            # past_key_values（huggingface/transformers#38913，症状见 huggingface/trl#3683），generate 以为有缓存、
            # 只喂最后一个 token：第二个 token 起就看不到上文。生成时切到 eval（TRL 已关掉 dropout，输出不变）。
            policy = self.accelerator.unwrap_model(self.model).policy
            was_training = policy.training
            policy.eval()
            try:
                out = generate(*args, **kwargs)
            finally:
                policy.train(was_training)
            context = kwargs["input_ids"].shape[1]
            sequences = out.sequences if hasattr(out, "sequences") else out  # TRL 要 return_dict_in_generate
            for row in sequences[:, context:].tolist():
                self._responses.append(tuple(row[: row.index(eos) + 1] if eos in row else row))
            return out

        return recording_generate

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._responses:
            logs["rollout/distinct_ratio"] = len(set(self._responses)) / len(self._responses)
            logs["rollout/response_length"] = mean(len(r) for r in self._responses)
            self._responses = []
        if self.optimizer_steps:
            logs["policy/grad_norm"] = self.last_grad_norm
        super().log(logs, *args, **kwargs)


def interrupted_error(folder) -> UserError:
    return UserError(
        f"PPO 已中断，之前完成的结果未被改动；已训练的部分保存在 {folder}（PPO 不支持续训，可用 chat.py --model {folder} 试聊）。",
        EXIT_INTERRUPTED,
    )


def enable_gradient_checkpointing(*models, kwargs: dict | None = None) -> None:
    """PPOTrainer 1.12 从不应用 gradient_checkpointing；在建 trainer 之前对 policy 和 critic 都打开。"""
    for m in models:
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or {"use_reentrant": False})
        m.config.use_cache = False


def set_mixed_precision(bf16: bool) -> None:
    """PPOTrainer 1.12 建 Accelerator 时不传精度；accelerate 会读这个环境变量（训练前向用 autocast）。"""
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else "no"


def rollout_dtype(bf16: bool):
    return torch.bfloat16 if bf16 else torch.float32


def save_policy(trainer, folder, sft_path, tokenizer) -> None:
    """写出 LoRA 适配器（基座路径写成绝对路径）和合并后的完整模型 merged/，chat / benchmark 两种都能读。"""
    import json

    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    policy.save_pretrained(str(folder))
    config_file = folder / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = str(sft_path.resolve())  # TRL 写的是传入的相对路径，换个目录就失效
    config_file.write_text(json.dumps(adapter_config, ensure_ascii=False, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(str(folder))
    merged = policy.merge_and_unload()
    merged.config.use_cache = True  # 训练时为梯度检查点关掉了；推理要打开
    merged.save_pretrained(str(folder / "merged"))
    tokenizer.save_pretrained(str(folder / "merged"))
