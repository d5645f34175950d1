"""用户能造成的失败：一行中文错误、非零退出码、没有 traceback、之前的结果完好。全部跑真实脚本：大多在测试进程里跑
`__main__`（run_inline，省掉 import）；信号、SIGKILL、下载失败在子进程里。"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import (ROOT, TINY, assert_group_gone, assert_one_line_error, offline_env, run_inline, run_script,
                      run_until, stage_args)
from qwen_rlhf import errors, models, outputs, stages


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


GOOD = '{"question": "在吗", "chosen": "滚", "rejected": "在的"}\n'


@pytest.mark.parametrize(
    "name, content, needles",
    [
        ("empty.jsonl", "", ["数据文件是空的"]),
        ("broken.jsonl", GOOD + "{oops\n", ["broken.jsonl:2", "不是合法的 JSON"]),
        ("cols.csv", "q,a\n在吗,滚\n", ["的列是 a,q", "对不上列 question,chosen,rejected", "--columns"]),
        ("nulls.jsonl", '{"question": null, "chosen": "滚", "rejected": "好"}\n', ["没有一行可用的数据"]),
    ],
)
def test_bad_data_files_are_refused_before_loading_a_model(tmp_path, tiny_model, name, content, needles):
    f = write(tmp_path / name, content)
    r = run_inline("train_sft.py", *stage_args("sft", tiny_model, tmp_path / "out", "--dataset", f), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, *needles)
    assert not (tmp_path / "out").exists()


def test_wrong_encoding_and_missing_file(tmp_path, tiny_model):
    f = tmp_path / "gbk.jsonl"
    f.write_bytes('{"question": "你好吗", "chosen": "滚", "rejected": "好"}\n'.encode("gbk"))
    r = run_inline("train_rm.py", *stage_args("rm", tiny_model, tmp_path / "out", "--dataset", f), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, "不是 UTF-8 编码")
    r = run_inline("train_rm.py", *stage_args("rm", tiny_model, tmp_path / "out", "--dataset", "no/such.jsonl"),
                   tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, "数据文件不存在")


def test_strict_mode_turns_skips_into_refusals(tmp_path, tiny_model):
    lines = (ROOT / "data" / "sample.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    f = write(tmp_path / "d.jsonl", "\n".join(lines[:20] + ['{"question": "  ", "chosen": "滚", "rejected": "好"}']
                                              + lines[20:]) + "\n")
    r = run_inline("train_sft.py", *stage_args("sft", tiny_model, tmp_path / "out", "--dataset", f, "--strict", "true"),
                   tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, "d.jsonl:21", "--strict")


@pytest.mark.parametrize(
    "script, extra, needles",
    [
        ("train_sft.py", ["--learnig_rate", "1e-5"], ["未知选项", "--learnig_rate"]),
        ("train_sft.py", ["--num_train_epochs", "two"], ["选项错误", "num_train_epochs"]),
        ("train_rm.py", ["--test_size", "0"], ["--test_size 必须在 (0,1) 之间"]),
        ("train_ppo.py", ["--gradient_accumulation_steps", "2", "--num_mini_batches", "2"], ["--num_mini_batches 必须为 1"]),
        ("train_ppo.py", ["--response_length", "0"], ["--response_length 必须为正数"]),
        ("train_ppo.py", ["--fp16", "true"], ["PPO 不支持 fp16"]),
    ],
)
def test_bad_options_fail_before_loading_a_model_with_one_line(tmp_path, tiny_model, monkeypatch, script, extra,
                                                               needles):
    recipe = {"train_sft.py": "sft", "train_rm.py": "rm", "train_ppo.py": "ppo"}[script]
    # 先把用 `from .models import load_causal_lm …` 绑定这些名字的模块导入好：第一次导入若发生在下面替换期间，
    # 它们会一直拿着替身，之后别的测试加载模型时得到 None
    import qwen_rlhf.inference  # noqa: F401

    loaded = []
    for name in ("load_causal_lm", "load_score_model", "load_tokenizer"):  # 在加载任何模型之前就报错：一个都不许调用
        monkeypatch.setattr(models, name, lambda *a, name=name, **k: loaded.append(name))
    r = run_inline(script, *stage_args(recipe, tiny_model, tmp_path / "out", *extra), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, *needles)
    assert loaded == []


def test_recipe_that_does_not_exist(tmp_path):
    r = run_inline("train_sft.py", "--config", "configs/tiny/nope.yaml", tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, "配方文件不存在")


def test_unreachable_hub_names_the_offline_options(tmp_path):
    r = run_script("train_sft.py", "--config", TINY / "sft.yaml", "--model_name_or_path", "nobody/none",
                   "--output_dir", tmp_path / "out", tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_NETWORK, "无法下载模型 nobody/none", "configs/tiny")


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path, tiny_model):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in tiny_model.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(str(tiny_model / "model.safetensors")), folder / "pytorch_model.bin")
    r = run_inline("train_sft.py", *stage_args("sft", folder, tmp_path / "out"), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, "--allow_pickle true")


def test_nan_loss_stops_with_step_and_saves_nothing(tmp_path, tiny_model):
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    r = run_inline("train_sft.py", *stage_args("sft", tiny_model, tmp_path / "out", "--learning_rate", "1e30",
                                               "--max_grad_norm", "0", "--logging_steps", "1", "--num_train_epochs", "1"),
                   tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_NUMERIC, "NaN/inf", "步", "--learning_rate")
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # 出错时也交还了 Ctrl-C / SIGTERM
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_and_keeps_the_earlier_result(pipeline):
    before = (pipeline["sft"] / "model.safetensors").read_bytes()
    r = run_inline("train_sft.py", *stage_args("sft", pipeline["tmp"] / "tiny-qwen3", pipeline["sft"]),
                   tmp=pipeline["tmp"])
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, "已存在且非空", "--overwrite_output_dir true")
    assert (pipeline["sft"] / "model.safetensors").read_bytes() == before


def test_checkpoints_of_the_wrong_kind_or_with_damaged_weights_are_refused_in_one_line(pipeline, tmp_path):
    """把 RM 当基座、把截断的权重当基座：一行中文、退出码 3、不留输出文件夹。"""
    r = run_inline("train_sft.py", *stage_args("sft", pipeline["rm"], tmp_path / "out"), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_MISSING, "是奖励模型（RM）", "--model_name_or_path 需要基座模型 / SFT 模型")
    broken = tmp_path / "broken"
    shutil.copytree(pipeline["tmp"] / "tiny-qwen3", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])  # 拷贝中断
    r = run_inline("train_rm.py", *stage_args("rm", broken, tmp_path / "out"), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_MISSING, "model.safetensors 已损坏", "重新")
    assert not (tmp_path / "out").exists()


def test_a_data_file_saved_with_a_bom_trains(tmp_path, tiny_model):
    f = tmp_path / "excel.csv"
    rows = [json.loads(x) for x in (ROOT / "data" / "sample.jsonl").read_text(encoding="utf-8").splitlines()[:60]]
    f.write_text("question,chosen,rejected\n" + "".join(f'{r["question"]},{r["chosen"]},{r["rejected"]}\n' for r in rows),
                 encoding="utf-8-sig")
    r = run_inline("train_sft.py", *stage_args("sft", tiny_model, tmp_path / "out", "--dataset", f, "--max_steps", 1),
                   tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "stage.json").read_text())["stage"] == "sft"


def test_open_progress_bars_are_closed_before_the_error(capsys):
    """errors.fail 通过 tqdm 的 _instances 关掉还开着的进度条（tqdm 没有公开接口）；tqdm 改了内部结构时这里会失败。"""
    from tqdm import tqdm

    bar = tqdm(total=10)
    bar.update(3)
    with pytest.raises(SystemExit):
        errors.fail("坏了", errors.EXIT_BAD_INPUT)
    assert bar.disable and not list(getattr(tqdm, "_instances", [1]))
    assert capsys.readouterr().err.strip().endswith("错误：坏了")


def _digest(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("moment", ["training", "saving"])
def test_sigkill_at_any_moment_leaves_a_complete_loadable_result(pipeline, tmp_path, moment):
    """先放一个完整的结果，再用 --overwrite_output_dir 重训，在训练中 / 正在写新结果时 SIGKILL。"""
    import shutil

    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rm"
    shutil.copytree(pipeline["rm"], out)
    before = _digest(out / "model.safetensors")
    cmd = [sys.executable, str(ROOT / "train_rm.py"),
           *map(str, stage_args("rm", pipeline["tmp"] / "tiny-qwen3", out, "--overwrite_output_dir", "true",
                                "--num_train_epochs", 20 if moment == "training" else 1))]  # 写结果之前不必久等
    # 停在确定的时刻，不靠睡眠和轮询：训练中 = 第一条 loss 日志之后；写新结果时 = 权重已搬进临时文件夹、stage.json 还没写
    # （outputs.pause_point 的钩子在那里停住，直到被杀）
    env = offline_env(tmp_path, **{outputs.PAUSE_ENV: "staging"})
    proc, _ = run_until([*cmd, "--logging_steps", "1"], env, "'loss'" if moment == "training" else "[pause] staging")
    proc.kill()
    proc.wait(60)
    if moment == "training":
        assert _digest(out / "model.safetensors") == before
    AutoModelForSequenceClassification.from_pretrained(str(out))  # 无论旧的还是新的，都是完整可读的
    assert json.loads((out / "stage.json").read_text())["stage"] == "rm"
    outputs.check_writable(out, overwrite=True)  # 下次运行前清掉被杀进程留下的临时文件夹（被杀进程的锁已随它消失）
    outputs.release_locks()
    assert not list(tmp_path.glob(".rm.tmp-*")) and not list(tmp_path.glob(".rm.old"))


def test_out_of_memory_and_disk_full_become_one_line_hints(capsys):
    import errno

    class OutOfMemoryError(RuntimeError):  # 与 torch.OutOfMemoryError 同名即可被识别
        pass

    def oom():
        raise OutOfMemoryError("CUDA out of memory")

    with pytest.raises(SystemExit) as e:
        errors.run(oom, stages.oom_hint("ppo"))
    assert e.value.code == errors.EXIT_RESOURCE
    assert "--response_length" in capsys.readouterr().err

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoint/.sft.tmp-1/model.safetensors")

    with pytest.raises(SystemExit) as e:
        errors.run(full)
    assert e.value.code == errors.EXIT_RESOURCE
    assert "磁盘已满" in capsys.readouterr().err


@pytest.mark.parametrize("env, line", [
    ({"METHODS": "grpo foo"}, '错误：METHODS 里的 "foo" 不是能对比的方法；可用的有 ppo grpo rloo dpo（例如 METHODS="grpo dpo"）。'),
    ({"SEEDS": "1 x"}, '错误：SEEDS 里的 "x" 不是非负整数（例如 SEEDS="1 2 3"）。')])
def test_compare_refuses_an_unknown_method_or_seed_before_setting_anything_up(tmp_path, env, line):
    """scripts/compare.sh 先按阶段登记表检查 METHODS（和 SEEDS），再建 venv、训练任何东西：一行中文、退出码 2，
    列出它认识的方法（以前要等所有准备做完才以 "can't open file …/train_foo.py" 失败）。"""
    venv = tmp_path / "venv"  # 检查没通过时不应该建它
    r = subprocess.run(["bash", str(ROOT / "scripts" / "compare.sh")], env={**os.environ, **env, "VENV": str(venv)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and not venv.exists(), r.stderr
    assert r.stderr.strip().splitlines() == [line]  # 每个参数一整行期望值：两种情况都真的被比较


FAKE_PYTHON = """#!/usr/bin/env bash
# 假的 .venv/bin/python：版本检查、建迷你基座直接成功；训练脚本记下自己开始了，一直跑到收到 SIGINT / SIGTERM（记下、退出，
# 像训练脚本那样退出码 130）
[ "$1" = "-c" ] && exit 0
name=$(basename "$1")
[ "$name" = make_tiny_model.py ] && exit 0
trap 'echo "$name" >> "$MARKS/stopped"; exit 130' INT TERM
echo "$name" >> "$MARKS/started"
while :; do sleep 0.1; done
"""


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm_to_the_script"])
@pytest.mark.parametrize("script, running, said", [
    ("compare.sh", ["train_rm.py", "train_sft.py"], "[对比] 已中断：后台的训练都已停下"),  # 金标准评委的 RM 和 SFT（JOBS=2）
    ("demo.sh", ["train_sft.py"], "[演示] 已中断")])
def test_interrupting_demo_or_compare_sh_stops_the_trainings_it_started(tmp_path, how, script, running, said):
    """ctrl_c：像终端那样把 SIGINT 发给整个进程组（训练自己也收到）；sigterm_to_the_script：只有脚本收到 SIGTERM（kill、
    timeout、服务管理器），以前脚本就此结束，正在跑的训练没人管、接着跑（compare.sh 的两个后台训练、demo.sh 的前台
    那一步），重跑时撞上它们的输出文件夹锁。两种情况：训练都停下，脚本说一行、退出码 130，组里一个进程也不剩。
    训练脚本换成假的（FAKE_PYTHON），不训练任何东西。"""
    repo, venv, marks = tmp_path / "repo", tmp_path / "venv", tmp_path / "marks"
    for d in ("scripts", "qwen_rlhf", "configs"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("requirements.txt", "requirements-dev.txt"):
        shutil.copy(ROOT / f, repo / f)
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    marks.mkdir()
    env = {**os.environ, "VENV": str(venv), "MARKS": str(marks)}
    proc = subprocess.Popen(["bash", str(repo / "scripts" / script)], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = marks / "started"
    deadline = time.time() + 60
    while not (started.exists() and len(started.read_text().split()) == len(running)):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    if how == "ctrl_c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == errors.EXIT_INTERRUPTED, err
    assert err.strip().splitlines()[-1].startswith(said), err
    stopped = marks / "stopped"
    assert stopped.exists()
    assert sorted(set(stopped.read_text().split())) == sorted(started.read_text().split()) == running
    assert_group_gone(proc.pid, "中断之后还有进程在跑")
