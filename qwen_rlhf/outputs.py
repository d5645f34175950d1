"""安全的输出文件夹：先写到同级的临时文件夹，完整写完后再改名就位；已完成的结果绝不被半成品覆盖。"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

from .errors import UserError
from .models import STAGE_FILE, _rel
from .options import ROOT, main_process_first


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def recover(final: Path) -> None:
    """上次运行被杀留下的东西：在"旧结果移走、新结果还没改名"之间被杀就把旧结果放回原处；
    写到一半的临时文件夹（进程已不在）直接删掉，免得占满租来的磁盘。"""
    old = final.parent / f".{final.name}.old"
    if old.is_dir() and not final.exists():
        old.rename(final)
        print(f"[输出] 发现上次替换 {_rel(final)} 时被中断，已恢复原来的结果。")
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(final: Path, overwrite: bool) -> None:
    """在加载任何模型之前检查，免得训练几十分钟后才发现不能写。"""
    with main_process_first():  # 多进程时只让主进程改名 / 删除，免得几个进程同时搬同一个文件夹
        recover(final)
    if final.exists() and not final.is_dir():
        raise UserError(f"输出路径 {_rel(final)} 是一个文件，不是文件夹。请换一个 --output_dir。")
    if _is_nonempty_dir(final) and not overwrite:
        raise UserError(
            f"输出文件夹 {_rel(final)} 已存在且非空，为避免覆盖已完成的结果，本次没有运行。"
            "换一个 --output_dir，或加 --overwrite_output_dir true 覆盖它。"
        )


class StagingDir:
    """`with StagingDir(final) as tmp:` 在 tmp 里写；只有 with 块正常结束才替换 final。"""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = self.final.parent / f".{self.final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.final.exists():
            self.final.rename(old)  # 两次 rename 之间被杀：下次 recover() 会把 old 放回去
        self.tmp.rename(self.final)
        shutil.rmtree(old, ignore_errors=True)
        return False


def write_stage_info(folder: Path, stage: str, options: dict, **extra) -> None:
    """阶段产物的"完成证明"：用了哪些选项、数据划分指纹、来源路径。最后写，保证有它就说明写完了。"""
    info = {"stage": stage, "created": datetime.now().isoformat(timespec="seconds"), **extra, "options": options}
    (folder / STAGE_FILE).write_text(json.dumps(info, ensure_ascii=False, indent=2, default=str), encoding="utf-8")


def tensorboard_dir(stage: str) -> Path:
    """TensorBoard 目录 tensorboard/<阶段>/<时间>/；transformers 5 去掉了 logging_dir，只认这个环境变量。

    根目录可用环境变量 QWEN_RLHF_TENSORBOARD_ROOT 改（测试用它把曲线写到临时目录）。
    """
    root = Path(os.environ.get("QWEN_RLHF_TENSORBOARD_ROOT", ROOT / "tensorboard"))
    path = root / stage / time.strftime("%Y%m%d-%H%M%S")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    return path


def read_scalars(logdir: Path) -> dict[str, list[float]]:
    """读回一个 TensorBoard 目录里的全部标量：{tag: [按步排序的值]}。"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)] for tag in acc.Tags()["scalars"]}


def quarter_means(values: list[float]) -> tuple[float, float]:
    """前四分之一与后四分之一的均值：看曲线整体是升是降，不被单步噪声左右。"""
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q
