"""训练阶段共用的 Trainer 回调：数值发散即停、Ctrl-C 优雅停止并保存可续训的进度。"""

from __future__ import annotations

import math
import signal
from pathlib import Path

from transformers import TrainerCallback

from .errors import EXIT_INTERRUPTED, NonFiniteError, UserError
from .models import _rel

# 这些日志键一旦不是有限数，就说明训练已经发散
WATCHED_KEYS = ("loss", "eval_loss", "grad_norm", "objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg")
NAN_HINT = {
    "sft": "多半是学习率过高或 fp16 溢出：减小 --learning_rate，或在支持的 GPU 上用 --bf16 true。",
    "rm": "多半是学习率过高或 fp16 溢出：减小 --learning_rate，或在支持的 GPU 上用 --bf16 true。",
    "ppo": "多半是学习率过高或奖励尺度太大：减小 --learning_rate，提高 --kl_coef；PPO 不要用 fp16。",
}


class FiniteGuard(TrainerCallback):
    """日志里的 loss / 分数 / KL 变成 NaN 或 inf 时立即停止（抛出用户错误，不保存结果）。"""

    def __init__(self, stage: str):
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, value in (logs or {}).items():
            if any(key.endswith(w) for w in WATCHED_KEYS) and isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteError(key, state.global_step, NAN_HINT.get(self.stage, ""))


class StopRequested(Exception):
    """Ctrl-C 之后，在一步（PPO 是一次更新）结束时跳出训练循环。"""


class GracefulStop(TrainerCallback):
    """第一次 Ctrl-C：当前这一步结束后停止；第二次 Ctrl-C：立即退出。

    Trainer（SFT / RM）：保存一个可续训的检查点后正常结束 train()。
    PPO（raise_on_stop=True）：TRL 1.12 的 PPO 循环不看 should_training_stop，而 should_save 会连优化器状态一起存，
    所以改为抛出 StopRequested，由脚本自己保存已训练的策略。
    """

    def __init__(self, raise_on_stop: bool = False):
        self.requested = False
        self.raise_on_stop = raise_on_stop
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:  # 第二次：不再等待
            raise KeyboardInterrupt
        self.requested = True
        print("\n[中断] 收到 Ctrl-C：这一步结束后保存并停止（再按一次立即退出）。", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # 不在主线程（极少见）：保持默认行为
            self._previous = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            if self.raise_on_stop:
                self.on_train_end(args, state, control)
                raise StopRequested
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def fit(trainer, stop: GracefulStop, resume: str | bool | None, script: str) -> None:
    """trainer.train()；被 Ctrl-C 停下时说明进度存在哪里、怎样续训，并以中断退出码结束。"""
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    if resume is True and not _has_checkpoint(Path(trainer.args.output_dir)):
        raise UserError(f"{_rel(Path(trainer.args.output_dir))} 里没有可续训的检查点。去掉 --resume_from_checkpoint 重新训练。")
    trainer.train(resume_from_checkpoint=resume or None)
    if stop.requested:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(trainer.args.output_dir)
        raise UserError(
            f"训练已中断，之前完成的结果未被改动；进度保存在 {_rel(Path(last))}。"
            f"继续训练：python {script} …（同样的选项） --resume_from_checkpoint {_rel(Path(last))}",
            EXIT_INTERRUPTED,
        )


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def trainer_work_dir(final: Path) -> Path:
    """Trainer 的中间检查点（可续训）放在结果旁边的独立文件夹，训练成功后删除以省磁盘。"""
    return final.parent / f"{final.name}-trainer-checkpoints"


def prepare(cfg, final: Path, stage: str) -> tuple[Path, GracefulStop]:
    """Trainer 的中间检查点写到 <结果>-trainer-checkpoints/，曲线写到 tensorboard/<阶段>/<时间>/。"""
    from .outputs import tensorboard_dir

    cfg.output_dir = str(trainer_work_dir(final))
    return tensorboard_dir(stage), GracefulStop()


def save_result(trainer, final: Path, stage: str, tokenizer, options: dict, **info) -> None:
    """只在主进程：写到临时文件夹 → 写 stage.json → 改名就位；成功后删掉中间检查点省磁盘。"""
    import shutil

    from .outputs import StagingDir, write_stage_info

    if not trainer.is_world_process_zero():
        return
    with StagingDir(final) as tmp:
        trainer.save_model(str(tmp))  # 权重 + config + generation_config（eos = <|im_end|>）
        tokenizer.save_pretrained(str(tmp))
        write_stage_info(tmp, stage, options, **info)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    print(f"[完成] {stage} 已保存到 {_rel(final)}；曲线：tensorboard --logdir tensorboard")
