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

    def __reduce__(self):  # 从子进程传回主进程（multiprocessing 用 pickle）时退出码不丢
        return type(self), (self.message, self.code)


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


# torch.save 写不下去时（磁盘满）抛的 RuntimeError 不带 errno，只有它的 C++ 写入器的原话
TORCH_WRITE = -1
TORCH_WRITE_TEXTS = ("PytorchStreamWriter failed writing", "inline_container.cc")

# 写文件失败的原因：errno -> (说法, 退出码, 做法)。safetensors 抛自己的 SafetensorError、torch.save 抛 RuntimeError，
# 都不是 OSError，只在文字里带着系统的说法（"No space left on device (os error 28)"）：两种都认。
WRITE_FAILURES = {
    errno.ENOSPC: ("磁盘已满", EXIT_RESOURCE, "请清理 checkpoint/ 或换一块数据盘后重试"),
    errno.EDQUOT: ("磁盘配额已用完", EXIT_RESOURCE, "请清理 checkpoint/、申请更大的配额或换一块数据盘后重试"),
    errno.EROFS: ("磁盘是只读的", EXIT_BAD_INPUT, "请换一个可写的输出文件夹"),
    errno.EACCES: ("没有写入权限", EXIT_BAD_INPUT, "请换一个可写的输出文件夹，或改文件夹的权限"),
    errno.ENOENT: ("要写入的文件夹不见了（被删除或移走）", EXIT_BAD_INPUT, "请确认输出文件夹所在的文件夹还在，然后重试"),
    TORCH_WRITE: ("磁盘写入中断（多半是磁盘已满或配额已用完）", EXIT_RESOURCE, "请清理 checkpoint/ 或换一块数据盘后重试"),
}
# 只会在写时出现的原因：任何地方抛出都按写失败报告（权限 / 不存在在读文件时也会出现，只在 outputs.writing() 里认）
ANYWHERE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, TORCH_WRITE)


def os_error_code(e: BaseException) -> int | None:
    """异常背后的系统错误码：OSError 的 errno，或 Rust / C++ 库写在文字里的 "(os error N)" / 系统原话。"""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    text = str(e)
    for code in WRITE_FAILURES:
        if code > 0 and (f"(os error {code})" in text or os.strerror(code) in text):
            return code
    if isinstance(e, RuntimeError) and any(t in text for t in TORCH_WRITE_TEXTS):
        return TORCH_WRITE
    return None


def write_error(e: BaseException, where: str | None, codes=tuple(WRITE_FAILURES), cleaned: bool = True) -> UserError | None:
    """写文件时的失败 -> 一行中文（写哪里失败、之前的结果没动、该做什么）；不是写失败返回 None。"""
    code = os_error_code(e)
    if code not in codes:
        return None
    what, exit_code, todo = WRITE_FAILURES[code]
    return UserError(f"{what}{f'，写 {where} 失败' if where else ''}；{'没写完的文件已删除，' if cleaned else ''}"
                     f"之前完成的结果没有被改动。{todo}。", exit_code)


def run(main: Callable[[], None], oom_hint: str = "减小批量") -> None:
    """运行脚本主函数，把用户能引起的失败变成一行中文错误和对应的退出码。oom_hint：内存 / 显存不足时说的做法，
    由脚本传入（stages.oom_hint(阶段)），本模块只用标准库、不读阶段登记表。"""
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
        fail(f"内存不足。可以：{oom_hint}。", EXIT_RESOURCE)
    except Exception as e:  # noqa: BLE001  显存不足是 torch 的异常类型，这里按名字识别，免得在此导入 torch
        if not debug and type(e).__name__ == "OutOfMemoryError":
            fail(f"显存不足（CUDA out of memory）。可以：{oom_hint}。", EXIT_RESOURCE)
        # 训练中途写检查点（Trainer 自己写）时磁盘满：不论哪个库抛出
        err = write_error(e, getattr(e, "filename", None), ANYWHERE, cleaned=False)
        if not debug and err is not None:
            fail(err.message, err.code)
        raise
    finally:
        outputs = sys.modules.get(f"{__package__}.outputs")
        if outputs is not None:  # 输出文件夹的锁：脚本在测试进程里运行（run_inline）时也要交还
            outputs.release_locks()
