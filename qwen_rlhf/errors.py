"""用户可以引起的错误：一种异常类型、一张退出码表、一个把它们变成一行中文提示的入口。

脚本的 `__main__` 只写 `run(main)`；任何 `UserError` 都变成一行 `错误：…` 和非零退出码，
不打印 traceback。`--traceback` 或环境变量 `QWEN_RLHF_DEBUG=1` 时原样抛出，方便排查。
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable

# 退出码：一处定义，测试和 README 都引用这里
EXIT_ERROR = 1  # 未预料的错误（程序缺陷），会打印 traceback
EXIT_BAD_INPUT = 2  # 选项、配方或数据文件有误
EXIT_MISSING = 3  # 缺少前一阶段的产物，或产物不匹配
EXIT_NETWORK = 4  # 需要下载但连不上 ModelScope / Hugging Face
EXIT_RESOURCE = 5  # 显存不足、磁盘已满
EXIT_NUMERIC = 6  # loss / reward 出现 NaN 或 inf
EXIT_ENVIRONMENT = 7  # 环境不对：机器上有 GPU 而 torch 用不了它（CPU 版 / CUDA 比驱动新）
EXIT_INTERRUPTED = 130  # Ctrl-C

DEBUG_ENV = "QWEN_RLHF_DEBUG"


class UserError(Exception):
    """一条给用户看的错误：说清楚哪里错了、该怎么做（一行中文）。"""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.message = " ".join(message.split())  # 保证只有一行
        self.code = code


class NonFiniteError(UserError):
    """训练数值发散（NaN/inf）。"""

    def __init__(self, what: str, step: int, hint: str):
        super().__init__(f"第 {step} 步的 {what} 变成了 NaN/inf，训练已停止，未保存任何结果。{hint}", EXIT_NUMERIC)


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--traceback" in argv


def fail(message: str, code: int) -> None:
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:  # 先关掉还开着的进度条，否则退出时它们会打印在错误信息之后
        # tqdm 没有公开"所有打开的进度条"的接口；_instances 是它自己的类属性（tqdm 4.67 核对过，
        # tests/test_robustness.py 的 test_open_progress_bars_are_closed_before_the_error 守着）
        for bar in list(getattr(tqdm.tqdm, "_instances", [])):
            bar.close()
    print(f"错误：{message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(main: Callable[[], None], stage: str) -> None:
    """运行脚本主函数，把用户能引起的失败变成一行中文错误和对应的退出码。"""
    from .stages import oom_hint  # stages 经 options 导入本模块：放在这里免得循环导入

    debug = debug_enabled()
    try:
        main()
    except UserError as e:
        if debug:
            raise
        fail(e.message, e.code)
    except KeyboardInterrupt:
        if debug:
            raise
        fail("已按 Ctrl-C 中断。", EXIT_INTERRUPTED)
    except MemoryError:
        if debug:
            raise
        fail(f"内存不足。可以：{oom_hint(stage)}。", EXIT_RESOURCE)
    except OSError as e:
        if debug or e.errno != errno.ENOSPC:
            raise
        fail(f"磁盘已满（{e.filename or ''}）。之前完成的结果没有被改动；请清理 checkpoint/ 或换一块数据盘后重试。", EXIT_RESOURCE)
    except Exception as e:  # noqa: BLE001  显存不足是 torch 的异常类型，这里按名字识别，免得在此导入 torch
        if not debug and type(e).__name__ == "OutOfMemoryError":
            fail(f"显存不足（CUDA out of memory）。可以：{oom_hint(stage)}。", EXIT_RESOURCE)
        raise
