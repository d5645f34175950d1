"""终端里的对话（chat.py 用）：清理输入、流式显示回答（思考部分灰色或隐藏，标签不显示）、Ctrl-C 只打断这一句。"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys

import torch
from transformers import StoppingCriteria, TextStreamer

MAX_INPUT_CHARS = 8000  # 一次粘贴 100 KB 也不会卡住：只保留开头
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # C0 控制字符（保留 \t 和 \n）和 DEL
THINK_TAGS = ("<think>", "</think>")


def note(text: str) -> None:
    """提示信息写到 stderr：管道模式下 stdout 里只有回答。"""
    print(f"（{text}）", file=sys.stderr, flush=True)


def clean(text: str) -> str:
    """去掉控制字符（终端转义、\\0、\\r 等），超长时只保留开头。"""
    text = CONTROL_CHARS.sub("", text).strip()
    if len(text) > MAX_INPUT_CHARS:
        note(f"输入有 {len(text)} 个字符，超过 {MAX_INPUT_CHARS}，只保留前 {MAX_INPUT_CHARS} 个")
        text = text[:MAX_INPUT_CHARS].strip()
    return text


def final_answer(text: str) -> str:
    """只留最终回答：去掉 <think>…</think>（没闭合的一直去到结尾）和落单的标签。历史里从不放思考内容。"""
    text = re.sub(r"<think>.*?(</think>|$)", "", text, flags=re.S)
    return text.replace("</think>", "").strip()


class Display(TextStreamer):
    """逐段把生成的文字写到 stdout：思考部分灰色（或隐藏），回答原样；标签本身从不显示。"""

    def __init__(self, tokenizer, show_think: bool, thinking: bool = False):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.show_think, self.thinking = show_think, thinking
        self.tty = sys.stdout.isatty()
        self.pending, self.fresh, self.last, self.thought = "", True, "\n", False

    def on_finalized_text(self, text: str, stream_end: bool = False):
        buf = self.pending + text
        while hits := [(buf.find(t), t) for t in THINK_TAGS if t in buf]:
            i, tag = min(hits)
            self.emit(buf[:i])
            buf = buf[i + len(tag):]
            self.switch(tag == "<think>")
        # 结尾可能是半个标签（"<thi"），先留着等下一段
        keep = 0 if stream_end else max((k for t in THINK_TAGS for k in range(1, len(t)) if buf.endswith(t[:k])),
                                        default=0)
        self.emit(buf[:len(buf) - keep])
        self.pending = buf[len(buf) - keep:]
        if stream_end and self.last != "\n":
            self.write("\n")

    def switch(self, thinking: bool):
        if thinking != self.thinking and self.show_think and not self.fresh:
            self.write("\n\n" if self.tty else "\n")
        self.thinking, self.fresh = thinking, True

    def emit(self, text: str):
        if self.thinking and not self.show_think:
            return
        if self.fresh:  # 每一段开头的空行不显示
            text = text.lstrip()
            if not text:
                return
            if self.thinking and not self.tty:
                self.write("[思考] ")
            elif not self.thinking and self.thought and not self.tty:
                self.write("[回答] ")
            self.fresh, self.thought = False, self.thought or self.thinking
        self.write(f"\x1b[2m{text}\x1b[0m" if self.thinking and self.tty else text)

    def write(self, text: str):
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.last = text[-1]


class CtrlC(StoppingCriteria):
    """生成时接管 Ctrl-C：第一次只举旗，生成在下一个 token 停下；第二次照常抛 KeyboardInterrupt 退出。"""

    def __init__(self):
        self.pressed = False

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.pressed, dtype=torch.bool, device=input_ids.device)

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self.press)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)

    def press(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True


@contextlib.contextmanager
def no_ctrl_echo():
    """生成时关掉终端的 ECHOCTL（相当于 stty -echoctl）：按 Ctrl-C 时终端不再把 "^C" 回显进回答；结束或出错时恢复。"""
    try:  # 只在本进程是终端的前台时改：后台进程改终端设置会收到 SIGTTOU 被挂起
        fd = sys.stdin.fileno()
        foreground = os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # 不是终端、已关闭、不是本进程的控制终端；Windows 没有 tcgetpgrp
        foreground = False
    if not foreground:
        yield
        return
    import termios  # 只有类 Unix 系统有；不是终端时根本走不到这里

    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHOCTL  # [3] 是 lflag
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
