"""chat.py：一问一答、管道多轮、坏输入、用不了的模型（缺失、半成品、权重截短、RM）的一行报错，以及在伪终端里的完整交互（命令、换模型、Ctrl-C、/exit）。

随机小模型只会说胡话，所以只检查结构（有没有回答、提示语、退出码），不检查内容。
"""

import codecs
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import sys
import termios
import time

import pytest
from conftest import ROOT, offline_env, run_inline

import chat
from qwen_rlhf import options, terminal
from qwen_rlhf.errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError

FAST = ["--max_new_tokens", "12", "--seed", "0"]


def chat_run(tmp_path, *args, stdin: bytes = b""):
    """在管道里运行 chat.py（stdin 按字节给；空输入等于立刻读到结尾）。"""
    return run_inline("chat.py", *args, tmp=tmp_path, stdin=stdin)


@pytest.fixture(scope="module")
def single(tiny_model, tmp_path_factory):
    """--prompt 一问一答的结果（固定种子），管道测试拿它对照第一轮回答。"""
    return chat_run(tmp_path_factory.mktemp("chat"), "--model", tiny_model, "--prompt", "你好", *FAST)


def test_prompt_mode_prints_one_answer_and_exits(single):
    out = single.stdout
    assert single.returncode == 0, single.stderr[-2000:]
    assert out.strip(), "没有输出回答"
    assert "<think>" not in out and "</think>" not in out
    assert "Traceback" not in single.stderr
    assert [x for x in single.stderr.splitlines() if x.startswith("设备：")] and "设备" not in out  # 设备那一行在 stderr


def test_pipe_mode_answers_every_line_in_one_conversation(tiny_model, tmp_path, single):
    r = chat_run(tmp_path, "--model", tiny_model, *FAST, stdin="你好\n\n你是谁？\n".encode())
    out = r.stdout
    assert r.returncode == 0, r.stderr[-2000:]
    first = single.stdout
    # 同一个种子：第一块和 --prompt 的回答相同，后面空一行；空行输入被忽略；第二个问题另有一块回答
    assert out.startswith(first + "\n"), out
    assert out[len(first):].strip(), "第二个问题没有回答"
    assert "<think>" not in out


def test_pipe_mode_survives_bad_bytes_control_chars_and_huge_lines(tiny_model, tmp_path):
    stdin = (b"\xff\xfe bad \x00\x1b[31m\x07 hi\r\n"  # 非 UTF-8 字节 + 控制字符
             + "长".encode() * 40000 + b"\n"  # 120 KB：截到 8000 字后仍超出小模型的 2048 上下文 -> 跳过
             + b"x" * 100_000 + b"\n"  # 100 KB：截到 8000 字后能放下 -> 回答
             + "最后一句\n".encode())
    r = chat_run(tmp_path, "--model", tiny_model, "--max_new_tokens", "4", "--seed", "0", stdin=stdin)
    err = r.stderr
    assert r.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    assert err.count("只保留前 8000 个") == 2, err
    assert "已跳过" in err, err
    blocks = [b for b in r.stdout.split("\n\n") if b.strip()]
    assert len(blocks) >= 2, r.stdout  # 跳过的那句之后对话照常继续（随机模型偶尔会输出空行，只要求至少两块）


def test_clean_strips_controls_and_truncates(capsys):
    assert terminal.clean(" a\x00b\x1b[31mc\td\ne\r\x7f ") == "ab[31mc\td\ne"
    assert len(terminal.clean("好" * 100_000)) == terminal.MAX_INPUT_CHARS
    assert "只保留前" in capsys.readouterr().err


def test_think_content_is_hidden_or_dimmed_and_never_kept(capsys, monkeypatch):
    chunks = ["<thi", "nk>\n想一想\n</th", "ink>\n\n答案", "是 42"]

    def show(show_think, tty):
        monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
        d = terminal.Display(None, show_think=show_think)
        for i, c in enumerate(chunks):
            d.on_finalized_text(c, stream_end=i == len(chunks) - 1)
        return capsys.readouterr().out

    assert show(False, True) == "答案是 42\n"  # 非思考模式：零散的 <think> 块整个不显示
    dimmed = show(True, True)
    assert "\x1b[2m想一想" in dimmed and dimmed.endswith("答案是 42\n") and "<think>" not in dimmed
    plain = show(True, False)  # 不是终端（管道）：不用转义码，用文字标出两段
    assert plain.startswith("[思考] 想一想") and "[回答] 答案是 42" in plain and "\x1b" not in plain
    assert terminal.final_answer("<think>\n想一想\n</think>\n\n答案") == "答案"
    assert terminal.final_answer("<think>\n没想完") == ""


@pytest.mark.parametrize("case", ["no_such_folder", "folder_without_config", "truncated_weights", "rm_by_name",
                                  "rm_folder"])
def test_unusable_model_is_refused_in_one_chinese_line(tmp_path, tiny_model, request, case):
    model, code, words = {
        "no_such_folder": ("/nonexistent/folder", EXIT_MISSING, "不存在"),
        "folder_without_config": (tmp_path / "half-written", EXIT_MISSING, "不完整"),  # 例如训练中途被打断
        "truncated_weights": (tmp_path / "cut", EXIT_MISSING, "model.safetensors"),  # 拷贝中断、磁盘写满
        # RM 不是对话模型：按名字、按文件夹都在加载前拒绝（以前会把 RM 当对话模型加载，输出乱码、退出码 0）
        "rm_by_name": ("rm", EXIT_BAD_INPUT, "奖励模型"),
        "rm_folder": (None, EXIT_MISSING, "奖励模型"),
    }[case]
    if case == "folder_without_config":
        model.mkdir()
        (model / "README.md").write_text("not a model")
    elif case == "truncated_weights":
        shutil.copytree(tiny_model, model)
        os.truncate(model / "model.safetensors", (model / "model.safetensors").stat().st_size // 2)
    elif case == "rm_folder":  # 只有这一格要训练好的 RM（会话共用的那个，只训练一次）
        model = request.getfixturevalue("rm").folder
    r = run_inline("chat.py", "--model", model, "--prompt", "你好", tmp=tmp_path)
    # 设备那一行在加载之前（权重是加载时才发现被截短的），不算错误输出
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("设备：")]
    assert r.returncode == code, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("错误：") and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not r.stdout.strip()


@pytest.mark.parametrize("argv", [["--top_p", "1.5"], ["--temperature", "0"], ["--max_new_tokens", "0"]])
def test_bad_sampling_options_are_rejected(argv):
    with pytest.raises(UserError) as e:
        options.parse([chat.ChatArgs], args=argv)
    assert e.value.code == EXIT_BAD_INPUT
    options.parse([chat.ChatArgs], args=[*argv, "--do_sample", "false"] if "--max_new_tokens" not in argv else [])


# ---------------------------------------------------------------- 伪终端里的交互


class Terminal:
    """用标准库 pty 驱动 chat.py：子进程以伪终端为控制终端，写 b"\\x03" 就是真的按了 Ctrl-C。"""

    def __init__(self, args, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # 子进程：换成 chat.py
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, str(ROOT / "chat.py"), *map(str, args)], env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # readline 需要窗口大小
        self.text, self.pos, self.status = "", 0, None
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # 一个汉字可能被拆在两次读里

    def read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # 子进程已退出
            return False
        self.text += self.decoder.decode(chunk)
        return bool(chunk)

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        """等到 pattern 出现在上次匹配之后；返回匹配，并把位置移到它后面。"""
        deadline = time.monotonic() + timeout
        while True:
            m = re.compile(pattern).search(self.text, self.pos)
            if m:
                self.pos = m.end()
                return m
            if time.monotonic() > deadline or not self.read(min(1.0, deadline - time.monotonic())) and \
                    self.exited():
                raise AssertionError(f"等不到 {pattern!r}；终端输出：\n{self.text[-3000:]}")

    def exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            self.status = status if pid else None
        return self.status is not None

    def send(self, data: bytes):
        os.write(self.fd, data)

    def close(self):
        if not self.exited():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


PROMPT = r"你："


def test_interactive_session_in_a_pseudo_terminal(tiny_model, pipeline, tmp_path):
    # 上下文 2048，回答上限 1500：不打断的话要生成很久，保证 Ctrl-C 一定落在回答中途
    term = Terminal(["--model", tiny_model, "--max_new_tokens", "1500"], offline_env(tmp_path, LANG="C.UTF-8"))
    try:
        term.expect(r"已加载 .*/help", timeout=120)
        term.expect(PROMPT)
        term.send("你好\r".encode())
        answer = term.expect(r"助手：\S+\s*\S+")  # 回答逐段出现（还没结束就能看到）
        term.send(b"\x03")  # 回答中途 Ctrl-C：只打断这一句，不退出
        stop = term.expect(r"已打断", timeout=60)
        shown = term.text[answer.start():stop.start()]
        assert "^C" not in shown, shown  # 终端不再把 Ctrl-C 回显进回答（以前是"助手：……^C（已打断…"）
        term.expect(PROMPT)
        time.sleep(1.0)  # 等 readline 接管终端后再按：提示符刚打印出来时按下的 Ctrl-C 可能被终端设置吞掉
        term.send(b"\x03")  # 提示符处的 Ctrl-C：清掉这一行，继续
        term.expect(r"Ctrl-D 退出")
        term.expect(PROMPT)
        term.send(b"/clear\r")
        term.expect(r"已清空对话历史")
        term.send("/system 你是助手\r".encode())
        term.expect(r"已设置系统提示词")
        term.send(f"/model {pipeline['rm']}\r".encode())  # RM 不能对话：拒绝，当前模型不变
        term.expect(f"没有切换，仍在用 {re.escape(tiny_model.name)}：.*奖励模型")
        term.send(b"/model\r")
        term.expect("文件夹：" + re.escape(str(tiny_model)))
        term.expect(r"参数量：[\d.]+M")
        term.send(f"/model {pipeline['sft']}\r".encode())
        term.expect(r"已切换到 sft（" + re.escape(str(pipeline["sft"])) + "）；对话历史已清空")
        term.send(b"/model\r")
        term.expect("文件夹：" + re.escape(str(pipeline["sft"])))
        term.send(b"/system\r")  # 换模型后系统提示词保留
        term.expect(r"当前系统提示词：你是助手")
        term.send(b"/help\r")
        term.expect(r"/clear")
        term.send(b"/exit\r")
        deadline = time.monotonic() + 30
        while not term.exited():
            assert time.monotonic() < deadline, "输入 /exit 后没有退出：\n" + term.text[-2000:]
            term.read(0.5)
        assert os.WIFEXITED(term.status) and os.WEXITSTATUS(term.status) == 0, term.text[-2000:]
        assert "Traceback" not in term.text
    finally:
        term.close()
