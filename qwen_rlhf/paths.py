"""仓库里的路径：根目录、checkpoint/、用户给的输入 / 输出路径怎么解析、给用户看的路径怎么写。

最底层：只用标准库（scripts/compare.sh 用系统的 python3 读阶段登记表、preflight 在还没装依赖的镜像上运行，都会导入它）。
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # 仓库根目录：所有默认路径都从这里算，与当前目录无关
CHECKPOINT_DIR = ROOT / "checkpoint"


def input_path(p: str | os.PathLike) -> Path:
    """用户给的输入路径：绝对路径原样用；相对路径先看当前目录，没有再从仓库根目录找。"""
    p = Path(p).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return ROOT / p


def output_path(p: str | os.PathLike) -> Path:
    """输出路径：相对路径一律相对仓库根目录，从哪里运行都写到同一个地方。"""
    p = Path(p).expanduser()
    return p if p.is_absolute() else ROOT / p


def display_path(p: str | os.PathLike) -> str:
    """给用户看的路径：仓库里的写成相对仓库根目录（checkpoint/sft），仓库外的原样。"""
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def drop_empty_dir(path: Path) -> None:
    """下载失败后删掉下载库先建好的空文件夹，免得 checkpoint/ 里留下看起来像下载过的空目录。"""
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def looks_like_local(name: str) -> bool:
    """是本地路径的写法（而不是 ModelScope / Hugging Face 的 "组织/名字"）。"""
    return name.startswith((".", "/", "~")) or name.startswith("checkpoint") or name.count("/") != 1
