"""训练阶段共用的 Trainer 回调与收尾：数值发散即停、Ctrl-C / SIGTERM 停在一步结束并存出可续训的检查点、
每个阶段自己一组 TensorBoard 曲线、stage.json 里记下花费。"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from .errors import ANYWHERE, EXIT_INTERRUPTED, NonFiniteError, UserError, os_error_code
from .paths import display_path, input_path
from .cost import trainer_throughput
from .options import per_update
from .outputs import STAGE_FILE, StagingDir, pause_point, tensorboard_dir, trainer_work_dir, write_stage_info, writing
from .policy import SNAPSHOTS, save_snapshot, snapshot_steps, snapshots_of
from .stages import STAGES, nan_hint

# 这些日志键一旦不是有限数，就说明训练已经发散
WATCHED_KEYS = ("loss", "eval_loss", "grad_norm", "objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg",
                "reward", "kl")  # 后两个：GRPO / RLOO 的奖励均值与 KL
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM（平台关机 / kill）"}


class FiniteGuard(TrainerCallback):
    """日志里的 loss / 分数 / KL 变成 NaN 或 inf 时立即停止（抛出用户错误，不保存结果）。"""

    def __init__(self, stage: str):
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, value in (logs or {}).items():
            if any(key.endswith(w) for w in WATCHED_KEYS) and isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteError(key, state.global_step, nan_hint(self.stage))


class StageTensorBoard(TensorBoardCallback):
    """transformers 的 TensorBoard 回调，只改两点：
    - 标签以阶段名开头（sft/loss、rm/loss、rm/eval/accuracy、ppo/objective/scores），`tensorboard --logdir tensorboard`
      里每个阶段一组卡片，SFT 的 loss（~12）和 RM 的 loss（~0.7）不再挤在同一根纵轴上；
    - 训练结束时不关掉写入器（只 flush）：之后的 trainer.evaluate() 接着写同一个事件文件，而不是新开一个。"""

    def __init__(self, stage: str, logdir: Path):
        super().__init__()
        self.stage, self.logging_dir = stage, str(logdir)

    def tag(self, key: str) -> str:
        return f"{self.stage}/" + (f"eval/{key[5:]}" if key.startswith("eval_") else key)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.tb_writer is None:
            self._init_summary_writer(args)
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float)):
                self.tb_writer.add_scalar(self.tag(key), value, state.global_step)
        self.tb_writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.tb_writer is not None:
            self.tb_writer.flush()


def use_stage_tensorboard(trainer, stage: str, logdir: Path) -> None:
    """report_to 里有 tensorboard 时，把 Trainer 自带的回调换成 StageTensorBoard（Trainer 自己的 add/remove_callback）。"""
    if "tensorboard" in (trainer.args.report_to or []):
        trainer.remove_callback(TensorBoardCallback)
        trainer.add_callback(StageTensorBoard(stage, logdir))


class StopRequested(Exception):
    """Ctrl-C / SIGTERM 之后，可续训的检查点已经存好：跳出训练循环。"""


class GracefulStop(TrainerCallback):
    """第一次 Ctrl-C 或 SIGTERM：这一步（PPO 是这一次更新）结束后存一个可续训的检查点，然后抛出 StopRequested；
    第二次 Ctrl-C：立即退出。云平台关机、余额用完时发的是 SIGTERM，和 Ctrl-C 一样对待。

    多进程（accelerate launch）：信号只到启动器，由它转发给各子进程，到达的时刻各不相同；用 accelerate 的
    set_trigger / check_trigger（各进程做一次 all-reduce）让所有进程在同一步一起停、一起存，否则先停的进程去存
    检查点，别的进程还在等下一步的梯度同步，两边互相等到启动器超时。要先 `bind(trainer)`。
    """

    def __init__(self):
        self.requested = None  # 收到的信号名
        self.accelerator = None
        self.scopes = contextlib.ExitStack()  # 只在这次训练期间生效的库补丁（prepare 放进来，restore 时撤掉）
        self._previous = {}
        self._main = True

    def bind(self, trainer) -> GracefulStop:
        self.accelerator = trainer.accelerator
        return self

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:  # 第二次 Ctrl-C：不再等待
            raise KeyboardInterrupt
        self.requested = self.requested or SIGNAL_NAMES[signum]
        self.accelerator.set_trigger()
        if self._main:
            print(f"\n[中断] 收到 {self.requested}：这一步结束后保存可续训的检查点并停止（再按一次 Ctrl-C 立即退出）。",
                  flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._main = state.is_world_process_zero
        for sig in SIGNAL_NAMES:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # 不在主线程（极少见）：保持默认行为
                pass

    def on_step_end(self, args, state, control, **kwargs):
        if self.accelerator.check_trigger():  # 所有进程都调用：一次 all-reduce
            self.requested = self.requested or "其他进程的停止信号"
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.requested:  # 检查点已经写完（Trainer 先 _save_checkpoint 再 on_save）
            self.restore()
            raise StopRequested

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        self.scopes.close()


class Snapshots(TrainerCallback):
    """--snapshots N：训练中在均匀的 N 个点（policy.snapshot_steps，最后一个在训练结束时）各存一个只有 LoRA 适配器的
    快照，评测的"得分-KL 轨迹"读它们（benchmark.py --trajectory）。训练中写在 <结果>-trainer-checkpoints/snapshots/
    （被打断、续训时还在），保存结果时 policy.save_policy 把它们链接进 <结果>/snapshots/。

    TRL 的 PPOTrainer 和 Trainer 一样在每次更新后调用 on_step_end，所以四个 LoRA 阶段用同一个回调；要先
    bind(取出 peft 模型的函数)。多进程时只有主进程写（LoRA 权重在各进程里相同）。"""

    def __init__(self, stage: str, count: int, final: Path, seen, **record):
        self.stage, self.count, self.seen, self.record = stage, count, seen, record
        self.folder = trainer_work_dir(final) / SNAPSHOTS
        self.policy = None

    def bind(self, policy) -> Snapshots:
        self.policy = policy
        return self

    def progress(self, state) -> dict:
        """第几步、一共几步、看过多少回答（PPO 的 episode、GRPO / RLOO 的回答、DPO 的偏好对）：快照和最终结果都记它。"""
        return {"step": state.global_step, "steps": state.max_steps, "seen": self.seen(state),
                "unit": STAGES[self.stage].throughput.removesuffix("_per_s")}

    def on_train_begin(self, args, state, control, **kwargs):
        """从头开始的运行（第 0 步）不接收别人的快照：上一次被打断、没有续训的运行（别的选项、别的种子）留在这里的
        step-N 会被搬进这次的结果，轨迹里混进两次运行。续训时这里已是检查点的步数（Trainer 在 on_train_begin 之前
        读回 trainer_state.json；PPO 由排在最前的 ppo._RestoreState 放回），保留这次运行自己的快照。"""
        if state.is_world_process_zero and state.global_step == 0 and self.folder.is_dir():
            stale = [p.name for p in snapshots_of(self.folder.parent)]  # snapshots_of 读 <文件夹>/snapshots/
            shutil.rmtree(self.folder)
            if stale:
                print(f"[快照] 这次从头训练：删掉上一次没完成的运行留下的快照 {'、'.join(stale)}。", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step in snapshot_steps(self.count, state.max_steps):
            save_snapshot(self.policy(), self.folder, state.global_step,
                          {"stage": self.stage, "progress": self.progress(state), **self.record})


def seen_per_step(cfg):
    """Trainer 派生的阶段到第 N 步为止看过多少样本（全部进程合计）：GRPO / RLOO 是生成的回答数（每批回答被用
    num_iterations 次），DPO 是偏好对数。"""
    per_step = per_update(cfg)
    reuse = getattr(cfg, "num_iterations", 1)
    return lambda state: state.global_step * per_step // reuse


COMPLETE_MARKERS = ("trainer_state.json", "resume.json")  # Trainer / 我们的 PPO 检查点最后写的文件


def last_complete_checkpoint(work: Path) -> str | None:
    """work 里步数最大的、写完了的 checkpoint-N。Trainer 直接写进 checkpoint-N/（不经临时文件夹），写到一半被杀的
    那个没有最后写的 trainer_state.json：跳过它，用上一个（transformers 的 get_last_checkpoint 只看名字）。"""
    found = [(int(m.group(1)), p) for p in (work.iterdir() if work.is_dir() else [])
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir()
             and any((p / f).is_file() for f in COMPLETE_MARKERS)]
    return str(max(found)[1]) if found else None


def resume_arg(value: str | bool | None, work: Path) -> str | None:
    """--resume_from_checkpoint：文件夹原样用；true = <结果>-trainer-checkpoints/ 里最新的、写完了的一个；没有就说清楚。"""
    if value is None or value is False or str(value).lower() == "false":
        return None
    if str(value).lower() == "true":
        last = last_complete_checkpoint(work)
        if last is None:
            raise UserError(f"{display_path(work)} 里没有可续训的检查点。去掉 --resume_from_checkpoint 重新训练。")
        return last
    path = input_path(value)
    if not path.is_dir():
        raise UserError(f"--resume_from_checkpoint {value} 不存在。用 true 表示 {display_path(work)} 里最新的一个。")
    if (path / STAGE_FILE).is_file():  # 训练结果或它的快照：只有权重，没有优化器和计数器
        raise UserError(f"--resume_from_checkpoint {value} 是训练结果或快照（有 {STAGE_FILE}），不是可续训的检查点；"
                        f"可续训的检查点在 {display_path(work)}/checkpoint-N/，用 true 表示最新的一个。")
    return str(path)


def resume_command(checkpoint: Path, world_size: int) -> str:
    """原样的命令行，把 --resume_from_checkpoint 换成刚存的检查点：复制粘贴就能接着训练。"""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--resume_from_checkpoint":
            skip = True
        elif not a.startswith("--resume_from_checkpoint="):
            argv.append(a)
    script = Path(sys.argv[0]).name
    launcher = f"accelerate launch --num_processes {world_size}（同样的 --config_file）" if world_size > 1 else "python"
    return f"{launcher} {shlex.join([script, *argv, '--resume_from_checkpoint', display_path(checkpoint)])}"


def interrupted(trainer, stop: GracefulStop) -> UserError:
    """停下之后：主进程说出进度存在哪、怎样续训（一次）；其他进程安静地以中断退出码结束。"""
    from transformers.trainer_utils import get_last_checkpoint

    end_processes(trainer.accelerator)  # 检查点已由所有进程一起写完；一起退出，谁也不在别人还在写时先走
    if not trainer.is_world_process_zero():
        sys.exit(EXIT_INTERRUPTED)
    last = get_last_checkpoint(trainer.args.output_dir) if Path(trainer.args.output_dir).is_dir() else None
    if last is None:  # DeepSpeed 下的 PPO 不写检查点
        return UserError(f"收到 {stop.requested}，训练已停下，之前完成的结果未被改动；这次运行没有可续训的检查点。",
                         EXIT_INTERRUPTED)
    last = Path(last)
    return UserError(f"收到 {stop.requested}，训练已停下，之前完成的结果未被改动；进度保存在 {display_path(last)}。"
                     f"继续训练：{resume_command(last, trainer.args.world_size)}", EXIT_INTERRUPTED)


def fit(trainer, stop: GracefulStop, resume: str | bool | None) -> None:
    """先说出全局批量，再 trainer.train()；被 Ctrl-C / SIGTERM 停下时说明进度存在哪里、怎样续训，并以中断退出码结束。"""
    resume = resume_arg(resume, Path(trainer.args.output_dir))
    announce_global_batch(trainer)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except StopRequested:
        raise interrupted(trainer, stop) from None
    except Exception as e:
        if os_error_code(e) in ANYWHERE:
            drop_partial_checkpoint(trainer)
        raise
    finally:
        stop.restore()  # 训练出错（NaN、显存不足）时 on_train_end 不会被调用：信号处理在这里交还


def drop_partial_checkpoint(trainer) -> None:
    """Trainer 直接写 checkpoint-N/（不经临时文件夹），trainer_state.json 最后写：磁盘满时没有它的那个是半成品，
    删掉，免得 --resume_from_checkpoint true 挑中它。"""
    if trainer.is_world_process_zero():
        partial = Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"
        if partial.is_dir() and not (partial / "trainer_state.json").is_file():
            shutil.rmtree(partial, ignore_errors=True)


def end_processes(accelerator) -> None:
    """多进程的收尾：所有进程等主进程写完（最终结果 / 检查点），再一起关掉进程组。

    否则先走的进程在退出时带着还开着的 gloo / NCCL 通信线程中止（"terminate called without an active exception"，
    SIGABRT），启动器随即停掉正在保存的主进程，整次运行的结果在最后一刻丢失。单进程时什么也不做。"""
    import torch.distributed as dist

    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def announce_global_batch(trainer) -> None:
    """主进程打印一次全局批量；数值用 Trainer 自己的算法（多卡、DeepSpeed 下都是它真正用的那个）。"""
    args = trainer.args
    if trainer.is_world_process_zero():
        # train_batch_size 是每个进程一步的批量（单进程多卡 DataParallel 时是每卡批量 × 卡数）
        print(f"[训练] 全局批量 {trainer.get_total_train_batch_size(args)}（{args.world_size} 个进程 × "
              f"每进程 {args.train_batch_size} × 累积 {args.gradient_accumulation_steps}）。", flush=True)


def warn_zero_ppo_not_resumable(cfg) -> None:
    """ZeRO-2 的 PPO 能训练、能写出最终结果，但不写可续训的检查点（优化器状态分在各进程里，
    qwen_rlhf/ppo.py 的 _save_checkpoint 只会存完整的优化器）：开始前由主进程说一次。"""
    plugin = getattr(cfg, "deepspeed_plugin", None)
    if plugin is not None and cfg.process_index == 0:
        print(f"[注意] DeepSpeed ZeRO-{plugin.zero_stage} 下的 PPO 不写可续训的检查点：被打断后只能从头训练。"
              "要能续训，请用 accelerate launch --config_file configs/accelerate/ddp.yaml（0.6B 模型的 PPO 用 DDP 放得下）。",
              flush=True)


def launch_info(args) -> dict:
    """怎样启动的（写进 stage.json）：进程数、设备、DeepSpeed ZeRO 阶段。对比速度或复现一次运行时要知道。"""
    plugin = getattr(args, "deepspeed_plugin", None)
    return {"num_processes": args.world_size, "device": args.device.type,
            "zero_stage": plugin.zero_stage if plugin is not None else None}


@contextlib.contextmanager
def no_dataset_fingerprints():
    """with 块里 datasets 不再给 map 算昂贵的指纹。TRL 的训练器用 datasets 的 map 处理数据（DPO 分词、加 EOS……），
    把分词器放在 map 的参数里；datasets 给每次 map 算"指纹"时要把参数整个 dill 序列化再哈希，Qwen3 的分词器（15 万
    词表）每次一秒多，迷你模型的 DPO 里这占了三成的用时（huggingface/datasets#1830）。指纹只用来找磁盘上的缓存，而
    我们的数据集都是内存里的 Dataset.from_list，map 的结果从不写缓存文件：换成 datasets 自己在无法哈希时用的随机指纹
    （它自己的随机数发生器，不动全局随机数），数据和结果都不变。出了 with 就换回来。"""
    import datasets.arrow_dataset
    import datasets.fingerprint

    original = datasets.fingerprint.update_fingerprint, datasets.arrow_dataset.update_fingerprint

    def random_fingerprint(*args, **kwargs) -> str:
        return datasets.fingerprint.generate_random_fingerprint()

    # Dataset.map 用的是 arrow_dataset 自己导入的那个名字，其余变换经 fingerprint 模块：两处都换
    datasets.arrow_dataset.update_fingerprint = datasets.fingerprint.update_fingerprint = random_fingerprint
    try:
        yield
    finally:
        datasets.fingerprint.update_fingerprint, datasets.arrow_dataset.update_fingerprint = original


def prepare(cfg, final: Path, stage: str) -> tuple[Path, GracefulStop]:
    """Trainer 的中间检查点写到 <结果>-trainer-checkpoints/，曲线写到 tensorboard/<阶段>/<时间>/；从这里到训练结束
    （fit 交还信号处理的同时），数据集不再算昂贵的指纹（no_dataset_fingerprints：训练器在 __init__ 里 map 数据集）。

    多进程时其他进程不显示 datasets 的进度条（Trainer 自己的进度条和日志本来就只在主进程）。
    """
    stop = GracefulStop()
    stop.scopes.enter_context(no_dataset_fingerprints())
    if cfg.process_index != 0:
        import datasets

        datasets.disable_progress_bars()
    cfg.output_dir = str(trainer_work_dir(final))
    return tensorboard_dir(stage, final), stop


def save_result(trainer, final: Path, stage: str, tokenizer, options: dict, cost, export=None, answers=None,
                throughput: dict | None = None, save_model=None, **info) -> None:
    """所有进程一起导出权重（ZeRO-3 要先把分片的参数收集起来，只在主进程调用会卡住或崩溃），
    文件只由主进程写：临时文件夹 → 写 stage.json → 改名就位；成功后删掉中间检查点省磁盘。

    export(tmp)：各阶段不同的那一步，在 trainer.save_model 的文件搬进 tmp 之后、写 stage.json 之前由主进程调用
    （LoRA 策略：policy.save_policy 写 merged/），返回的字典也写进 stage.json。answers：这次运行生成的回答数（GRPO / RLOO 的吞吐）。
    throughput：训练器自己量的吞吐（PPO 的 episode/s），不给时从 Trainer 的日志读（trainer_throughput）。
    save_model(文件夹)：代替 trainer.save_model 写权重（PPO：TRL 的 PPOTrainer.save_model 在 DeepSpeed 下坏了，见 train_ppo.py）。
    pause_point 的几个时刻（测试在那里杀进程）：final-save、staging、result-staged、result-saved。"""
    from accelerate.utils import broadcast_object_list

    # 这次运行自己的导出文件夹（主进程的进程号，所有进程用同一个名字）：被杀留下的由 outputs.recover 按进程号清掉
    export_dir = Path(trainer.args.output_dir) / broadcast_object_list([f"export-{os.getpid()}"])[0]
    with writing(final, export_dir):
        (save_model or trainer.save_model)(str(export_dir))  # 权重 + config + generation_config（eos = <|im_end|>）；只在主进程写
    if trainer.is_world_process_zero():
        record = cost.record(**(throughput if throughput is not None else trainer_throughput(trainer, stage, answers)))
        with writing(final, export_dir), StagingDir(final) as tmp:
            pause_point("final-save")
            for f in export_dir.iterdir():
                f.rename(tmp / f.name)  # 同一磁盘上改名，不复制
            export_dir.rmdir()  # 空了：结果改名就位后、删检查点前被杀时不留下它
            pause_point("staging")
            tokenizer.save_pretrained(str(tmp))
            if export is not None:
                info.update(export(tmp) or {})  # 例如 LoRA 策略的基座位置
            if answers:  # 生成了多少个回答（吞吐 answers_per_s 的分子），也写下来
                info["answers"] = answers
            write_stage_info(tmp, stage, options, launch=launch_info(trainer.args), cost=record, **info)
            pause_point("result-staged")
        pause_point("result-saved")
        # 结果（连同快照的链接）改名就位之后才删：之前任何一刻被杀，检查点和快照都还在（见 policy.stage_snapshots）
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
        merged = f"（合并好的完整模型在 {display_path(final / 'merged')}）" if (final / "merged").is_dir() else ""
        print(f"[完成] {stage} 已保存到 {display_path(final)}{merged}；{cost.words(record)}；曲线：tensorboard --logdir tensorboard",
              flush=True)
    end_processes(trainer.accelerator)
