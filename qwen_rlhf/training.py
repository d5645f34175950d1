"""训练阶段共用的 Trainer 回调：数值发散即停、Ctrl-C 优雅停止并保存可续训的进度。"""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback

from .errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, NonFiniteError, UserError
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

    多进程（accelerate launch）：Ctrl-C 只到启动器（torchrun 让每个子进程自成一个会话），由它转发给各子进程，
    到达的时刻各不相同；各进程在同一步停下（见 on_step_end）。
    """

    def __init__(self, raise_on_stop: bool = False):
        self.requested = False
        self.raise_on_stop = raise_on_stop
        self._previous = None
        self._main = True

    def _handler(self, signum, frame):
        if self.requested:  # 第二次：不再等待
            raise KeyboardInterrupt
        self.requested = True
        if self._main:
            print("\n[中断] 收到 Ctrl-C：这一步结束后保存并停止（再按一次立即退出）。", flush=True)

    def _agreed(self, args) -> bool:
        """多进程时任何一个进程收到 Ctrl-C 都算：各进程一起在这一步停下。否则先停的进程去存检查点，
        别的进程还在等下一步的梯度同步，两边互相等到启动器超时杀掉。"""
        if args.world_size == 1:
            return self.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(self.requested)], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_begin(self, args, state, control, **kwargs):
        self._main = state.is_world_process_zero
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # 不在主线程（极少见）：保持默认行为
            self._previous = None

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            self.requested = True
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
    """先说出全局批量，再 trainer.train()；被 Ctrl-C 停下时说明进度存在哪里、怎样续训，并以中断退出码结束。"""
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    if resume is True and not _has_checkpoint(Path(trainer.args.output_dir)):
        raise UserError(f"{_rel(Path(trainer.args.output_dir))} 里没有可续训的检查点。去掉 --resume_from_checkpoint 重新训练。")
    announce_global_batch(trainer)
    trainer.train(resume_from_checkpoint=resume or None)
    if stop.requested:
        from transformers.trainer_utils import get_last_checkpoint

        if not trainer.is_world_process_zero():
            sys.exit(EXIT_INTERRUPTED)  # 续训提示由主进程说一次

        last = get_last_checkpoint(trainer.args.output_dir)
        raise UserError(
            f"训练已中断，之前完成的结果未被改动；进度保存在 {_rel(Path(last))}。"
            f"继续训练：python {script} …（同样的选项） --resume_from_checkpoint {_rel(Path(last))}",
            EXIT_INTERRUPTED,
        )


def announce_global_batch(trainer) -> None:
    """主进程打印一次全局批量；数值用 Trainer 自己的算法（多卡、DeepSpeed 下都是它真正用的那个）。"""
    args = trainer.args
    if trainer.is_world_process_zero():
        # train_batch_size 是每个进程一步的批量（单进程多卡 DataParallel 时是每卡批量 × 卡数）
        print(f"[训练] 全局批量 {trainer.get_total_train_batch_size(args)}（{args.world_size} 个进程 × "
              f"每进程 {args.train_batch_size} × 累积 {args.gradient_accumulation_steps}）。", flush=True)


def refuse_zero3_for_ppo(cfg) -> None:
    """PPO 不支持 DeepSpeed ZeRO-3：在加载任何模型之前用一行中文拒绝。

    cfg.deepspeed_plugin 由 TrainingArguments 自己建好：accelerate launch 的 DeepSpeed 配置和 --deepspeed ds.json 都算。
    """
    plugin = getattr(cfg, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        raise UserError(
            "PPO 不支持 DeepSpeed ZeRO-3（能跑完，但合并出的模型里嵌入层是空的；0.6B 模型用它也省不了显存）。"
            "请改用 accelerate launch --config_file configs/accelerate/zero2.yaml 或 ddp.yaml。", EXIT_BAD_INPUT)


def launch_info(args) -> dict:
    """怎样启动的（写进 stage.json）：进程数、设备、DeepSpeed ZeRO 阶段。对比速度或复现一次运行时要知道。"""
    plugin = getattr(args, "deepspeed_plugin", None)
    return {"num_processes": args.world_size, "device": args.device.type,
            "zero_stage": plugin.zero_stage if plugin is not None else None}


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def trainer_work_dir(final: Path) -> Path:
    """Trainer 的中间检查点（可续训）放在结果旁边的独立文件夹，训练成功后删除以省磁盘。"""
    return final.parent / f"{final.name}-trainer-checkpoints"


def prepare(cfg, final: Path, stage: str) -> tuple[Path, GracefulStop]:
    """Trainer 的中间检查点写到 <结果>-trainer-checkpoints/，曲线写到 tensorboard/<阶段>/<时间>/。

    多进程时其他进程不显示 datasets 的进度条（Trainer 自己的进度条和日志本来就只在主进程）。
    """
    from .outputs import tensorboard_dir

    if cfg.process_index != 0:
        import datasets

        datasets.disable_progress_bars()
    cfg.output_dir = str(trainer_work_dir(final))
    return tensorboard_dir(stage), GracefulStop()


def save_result(trainer, final: Path, stage: str, tokenizer, options: dict, **info) -> None:
    """所有进程一起导出权重（ZeRO-3 要先把分片的参数收集起来，只在主进程调用会卡住或崩溃），
    文件只由主进程写：临时文件夹 → 写 stage.json → 改名就位；成功后删掉中间检查点省磁盘。"""
    import shutil

    from .outputs import StagingDir, write_stage_info

    export = Path(trainer.args.output_dir) / "export"  # 每个进程算出的是同一个路径
    if trainer.is_world_process_zero():
        shutil.rmtree(export, ignore_errors=True)  # 上次被杀留下的文件不能混进这次的结果
    trainer.save_model(str(export))  # 权重 + config + generation_config（eos = <|im_end|>）；Trainer 只在主进程写
    if not trainer.is_world_process_zero():
        return
    with StagingDir(final) as tmp:
        for f in export.iterdir():
            f.rename(tmp / f.name)  # 同一磁盘上改名，不复制
        tokenizer.save_pretrained(str(tmp))
        write_stage_info(tmp, stage, options, launch=launch_info(trainer.args), **info)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    print(f"[完成] {stage} 已保存到 {_rel(final)}；曲线：tensorboard --logdir tensorboard")
