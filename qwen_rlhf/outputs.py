"""阶段产物：安全的输出文件夹，以及每个产物里的 stage.json（写、读、认出是哪个阶段的产物）。

输出怎样落盘（一次说清楚，别处只调用）：
1. 训练前 `check_writable(final)`：修复上次被杀留下的东西，拒绝覆盖已完成的结果（除非 --overwrite_output_dir）。
2. 训练中 Trainer 的可续训检查点写在结果旁边的 `<结果>-trainer-checkpoints/checkpoint-N/`（`trainer_work_dir`），
   从不写进结果文件夹本身；Ctrl-C / SIGTERM 后从这里续训。
3. 训练完先导出到 `<结果>-trainer-checkpoints/export/`，再 `StagingDir` 搬进同级的临时文件夹 `.<结果>.tmp-<pid>`，
   最后写 stage.json（"完成证明"），两次改名就位：旧结果 → `.<结果>.old`，临时文件夹 → 结果。
4. 成功后删掉 `<结果>-trainer-checkpoints/`。任何一步被杀，下次 `recover()` 都能回到"旧结果完好"或"新结果完整"。
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

from .errors import EXIT_MISSING, UserError
from .options import ROOT, display_path, main_process_first
from .stages import STAGES

STAGE_FILE = "stage.json"  # 每个阶段写完才有的文件：选项 + 划分指纹 + 来源 + 花费
# 产物的种类就是 stages.STAGES 里的阶段名；"base" 是没有 stage.json 的普通因果语言模型（下载的 Qwen3）。


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


# ---------------------------------------------------------------- 安全的输出文件夹


def recover(final: Path) -> None:
    """上次运行被杀留下的东西：在"旧结果移走、新结果还没改名"之间被杀就把旧结果放回原处；
    写到一半的临时文件夹（进程已不在）直接删掉，免得占满租来的磁盘。"""
    old = final.parent / f".{final.name}.old"
    if old.is_dir() and not final.exists():
        old.rename(final)
        print(f"[输出] 发现上次替换 {display_path(final)} 时被中断，已恢复原来的结果。")
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
        raise UserError(f"输出路径 {display_path(final)} 是一个文件，不是文件夹。请换一个 --output_dir。")
    if _is_nonempty_dir(final) and not overwrite:
        raise UserError(
            f"输出文件夹 {display_path(final)} 已存在且非空，为避免覆盖已完成的结果，本次没有运行。"
            "换一个 --output_dir，或加 --overwrite_output_dir true 覆盖它。"
        )


def trainer_work_dir(final: Path) -> Path:
    """Trainer 的中间检查点（可续训）放在结果旁边的独立文件夹，训练成功后删除以省磁盘。"""
    return final.parent / f"{final.name}-trainer-checkpoints"


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


# ---------------------------------------------------------------- stage.json


def write_stage_info(folder: Path, stage: str, options: dict, **extra) -> None:
    """阶段产物的"完成证明"：用了哪些选项、数据划分指纹、来源路径、花费。最后写，保证有它就说明写完了。"""
    info = {"stage": stage, "created": datetime.now().isoformat(timespec="seconds"), **extra, "options": options}
    write_json(folder / STAGE_FILE, info)


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, default=str), encoding="utf-8")


def stage_info(folder: Path) -> dict | None:
    """folder 的 stage.json；PPO 的 merged/ 读上一级的；没有就是 None。"""
    for f in (folder / STAGE_FILE, folder.parent / STAGE_FILE if folder.name == "merged" else None):
        if f is not None and f.is_file():
            return json.loads(f.read_text(encoding="utf-8-sig"))
    return None


def kind_of(folder: Path) -> str | None:
    """认出一个文件夹是哪种产物：sft / rm / ppo（看 stage.json），或 base（普通因果语言模型的 config.json）。
    认不出（半成品、不是模型）返回 None。"""
    info = stage_info(folder)
    if info is not None:
        return info.get("stage")
    config = folder / "config.json"
    if not config.is_file():
        return None
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "rm"  # 没有 stage.json 的打分模型：只能当 RM 看，绝不能当对话模型
    return "base"


def check_kind(folder: Path, expected: tuple[str, ...], option: str) -> dict | None:
    """所有读产物的脚本都用这一个检查：folder 必须是 expected 里的一种，否则一行中文说清楚要的是什么。
    返回 stage.json（base 模型没有，返回 None）。"""
    wanted = " / ".join(STAGES[k].label for k in expected)
    scripts = "、".join(STAGES[k].command for k in expected if k != "base")
    if not folder.is_dir():
        raise UserError(f"{option} 指向的 {display_path(folder)} 不存在；这里需要{wanted}。"
                        + (f"请先运行 {scripts}。" if scripts else ""), EXIT_MISSING)
    kind = kind_of(folder)
    if kind is None:
        raise UserError(f"{display_path(folder)} 不完整（没有 {STAGE_FILE} 也没有 config.json，可能训练中途被打断或没拷完）；"
                        f"{option} 需要{wanted}。" + (f"请重新运行 {scripts}。" if scripts else ""), EXIT_MISSING)
    if kind not in expected:
        name = STAGES[kind].label if kind in STAGES else f"{kind} 阶段的产物"
        raise UserError(f"{display_path(folder)} 是{name}，{option} 需要{wanted}。请检查路径"
                        + (f"，或先运行 {scripts}。" if scripts else "。"), EXIT_MISSING)
    return stage_info(folder)


def check_same_split(infos: dict[str, dict | None], fingerprint: str, script: str) -> None:
    """划分一致的唯一规则：有 stage.json 的产物（sft / rm / ppo）必须和这次的数据 + 划分指纹相同；
    没有 stage.json 的（基座模型）没有划分可比。"""
    for name, info in infos.items():
        if info is not None and info.get("split_fingerprint") != fingerprint:
            raise UserError(
                f"{name} 训练时用的数据或划分和这次不同（--dataset 的内容 / --split_seed / --test_size 不一致），"
                f"留出的问题可能被训练过。请用与训练时相同的选项运行 {script}。", EXIT_MISSING)


def tensorboard_dir(stage: str) -> Path:
    """TensorBoard 目录 tensorboard/<阶段>/<时间>/；transformers 5 去掉了 logging_dir，只认这个环境变量。

    根目录可用环境变量 QWEN_RLHF_TENSORBOARD_ROOT 改（测试用它把曲线写到临时目录）。
    """
    root = Path(os.environ.get("QWEN_RLHF_TENSORBOARD_ROOT", ROOT / "tensorboard"))
    path = root / stage / time.strftime("%Y%m%d-%H%M%S")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    return path
