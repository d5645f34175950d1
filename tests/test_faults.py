"""一次真实运行会碰到的故障：写的时候磁盘满 / 配额用完 / 只读 / 文件夹被删，两次运行写同一个输出文件夹，
元数据文件损坏，分词器文件缺失。每一种都是一行中文、对的退出码、没有写了一半的东西、之前的结果不动。

磁盘满在写入的边界上模拟（safetensors 的 safe_save_file、torch.save 抛出它们在真实磁盘满时抛的异常）；
两次运行是两个真实的进程，用 outputs.pause_point 的钩子让第一次停在确定的地方，不靠睡眠。"""

import errno
import hashlib
import json
import os
import shutil
import signal
import sys

import pytest
from conftest import (ROOT, TINY, assert_one_line_error, offline_env, run_inline, run_script, run_until,
                      stage_args)

from qwen_rlhf import errors, outputs, policy


def disk_full_at_optimizer(monkeypatch) -> None:
    """torch.save 写 optimizer.pt 时磁盘满：抛 C++ 写入器的原话（RuntimeError，不带 errno），其余文件照常写。"""
    import torch

    real = torch.save

    def full_at_optimizer(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_at_optimizer)


def digest(folder) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def leftovers(parent, name) -> list:
    """这次运行写了一半、本该删掉的东西：临时文件夹、换下来的旧结果、导出文件夹。"""
    return [*parent.glob(f".{name}.tmp-*"), *parent.glob(f".{name}.old"),
            *parent.glob(f"{name}-trainer-checkpoints/export-*")]


# ---------------------------------------------------------------- 写的时候失败：不管哪个库抛出


@pytest.mark.parametrize("raised, code, words", [
    (lambda: __import__("safetensors").SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"), errors.EXIT_RESOURCE, "磁盘已满"),
    (lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),  # torch.save
     errors.EXIT_RESOURCE, "磁盘写入中断"),
    (lambda: OSError(errno.EDQUOT, "Disk quota exceeded"), errors.EXIT_RESOURCE, "磁盘配额已用完"),
    (lambda: OSError(errno.EROFS, "Read-only file system"), errors.EXIT_BAD_INPUT, "只读"),
])
def test_errors_run_turns_a_write_failure_from_any_library_into_one_line(capsys, raised, code, words):
    def main():
        raise raised()

    with pytest.raises(SystemExit) as e:
        errors.run(main)
    assert e.value.code == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("错误：") and words in err and "\n" not in err


def test_a_failure_that_is_not_a_write_failure_still_shows_its_traceback():
    def main():
        raise ValueError("程序缺陷")

    with pytest.raises(ValueError):
        errors.run(main)


def test_writing_turns_permission_denied_into_one_line_and_removes_the_partial_folder(tmp_path):
    partial = tmp_path / ".x.tmp-1"
    partial.mkdir()
    (partial / "half.safetensors").write_bytes(b"12")
    with pytest.raises(errors.UserError) as e, outputs.writing(tmp_path / "x", partial):
        raise PermissionError(errno.EACCES, "Permission denied", str(partial / "more"))
    assert e.value.code == errors.EXIT_BAD_INPUT and "没有写入权限" in e.value.message and not partial.exists()


def test_resume_true_skips_a_trainer_checkpoint_that_was_killed_half_written(tmp_path):
    """Trainer 直接写 checkpoint-N/，trainer_state.json 最后写：没有它的那个是写到一半被杀的，true 要挑上一个。"""
    from qwen_rlhf import training

    for step, complete in ((1, True), (2, True), (3, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}", encoding="utf-8")
    assert training.resume_arg("true", tmp_path) == str(tmp_path / "checkpoint-2")


def test_disk_full_while_saving_the_sft_result_leaves_nothing_half_written_and_the_earlier_result_intact(
        pipeline, tmp_path, monkeypatch):
    """safetensors 在磁盘满时抛 SafetensorError（不是 OSError）：一行中文、退出码 5；之前的结果逐字节不变，
    临时文件夹和导出文件夹都删掉了。"""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    out = tmp_path / "sft"
    shutil.copytree(pipeline["sft"], out)
    before = digest(out)

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    r = run_inline("train_sft.py", *stage_args("sft", pipeline["tmp"] / "tiny-qwen3", out, "--max_steps", 1,
                                               "--overwrite_output_dir", "true"), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_RESOURCE, "磁盘已满", "之前完成的结果没有被改动")
    assert digest(out) == before
    assert leftovers(tmp_path, "sft") == []


def test_disk_full_while_the_trainer_writes_a_checkpoint_drops_that_half_written_checkpoint(pipeline, tmp_path,
                                                                                           monkeypatch):
    """SFT / RM 的检查点由 Trainer 直接写进 checkpoint-N/：torch.save 写优化器时磁盘满，一行中文、退出码 5，
    写了一半的 checkpoint-1 删掉（否则 --resume_from_checkpoint true 会挑中它）。"""
    disk_full_at_optimizer(monkeypatch)
    out = tmp_path / "sft"
    r = run_inline("train_sft.py", *stage_args("sft", pipeline["tmp"] / "tiny-qwen3", out, "--max_steps", 2,
                                               "--save_strategy", "steps", "--save_steps", 1), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_RESOURCE, "磁盘写入中断")
    assert not out.exists() and not list((tmp_path / "sft-trainer-checkpoints").glob("checkpoint-*"))


def test_output_parent_deleted_during_the_save_is_one_line_and_leaves_nothing(pipeline, tmp_path, monkeypatch):
    """写结果时整个输出所在的文件夹被删掉（另一个终端里 rm -rf）：safetensors 自己报"No such file or directory"，
    这里变成一行中文、退出码 2，不留 traceback。"""
    import transformers.modeling_utils

    parent = tmp_path / "gone"
    real = transformers.modeling_utils.safe_save_file

    def delete_then_write(*a, **k):
        shutil.rmtree(parent)
        return real(*a, **k)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", delete_then_write)
    r = run_inline("train_sft.py", *stage_args("sft", pipeline["tmp"] / "tiny-qwen3", parent / "sft", "--max_steps", 1),
                   tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, "文件夹不见了")
    assert not parent.exists()


def test_disk_full_while_writing_a_ppo_checkpoint_removes_the_partial_checkpoint(pipeline, tmp_path, monkeypatch):
    """torch.save 在磁盘满时抛 RuntimeError（C++ 写入器的原话，不带 errno）：一行中文、退出码 5；写了一半的
    .checkpoint-1.tmp 删掉，没有冒充完成的 checkpoint-1，也没有最终结果（先于它写完的第 1 步的快照留着，和续训时一样）。"""
    disk_full_at_optimizer(monkeypatch)
    out = tmp_path / "ppo"
    r = run_inline("train_ppo.py", *stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", out, "--sft_model_path",
                                               pipeline["sft"], "--reward_model_path", pipeline["rm"],
                                               "--total_episodes", 32, "--save_steps", 1), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_RESOURCE, "磁盘写入中断", "checkpoint-1")
    work = tmp_path / "ppo-trainer-checkpoints"
    assert not out.exists() and [p.name for p in work.iterdir()] == ["snapshots"]
    assert [p.name for p in (work / "snapshots").iterdir()] == ["step-1"]


def test_read_only_output_folder_during_the_benchmark_report_leaves_no_half_report(pipeline, tmp_path, monkeypatch):
    """评测报告写到一半时磁盘变成只读（csv 已写、图写不了）：一行中文、退出码 2，这次的文件夹整个删掉，
    以前的评测结果不动。"""
    from qwen_rlhf import report

    out = tmp_path / "benchmark"
    earlier = out / "20200101-000000"
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text("{}", encoding="utf-8")

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(a[-1]))

    monkeypatch.setattr(report, "plot_scores", read_only)
    r = run_inline("benchmark.py", "--config", TINY / "benchmark.yaml", "--model_name_or_path", pipeline["tmp"] /
                   "tiny-qwen3", "--sft_model_path", pipeline["sft"], "--ppo_model_path", pipeline["ppo"],
                   "--reward_model_path", pipeline["rm"], "--output_dir", out, "--num_questions", 2, "--models", "sft",
                   tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, "只读")
    assert [p.name for p in out.iterdir()] == [earlier.name]


# ---------------------------------------------------------------- 一个输出文件夹同一时刻只属于一次运行


def test_a_second_run_into_a_folder_a_live_run_is_writing_is_refused_and_a_killed_runs_lock_does_not_block(
        pipeline, tmp_path):
    """两个真实的进程：第一次运行停在"权重已搬进临时文件夹"（pause_point），第二次写同一个文件夹立即被拒绝，
    一行说出第一次的进程号和开始时间；第一次被 SIGKILL 之后，它的锁随进程消失，第三次运行正常完成，
    并清掉第一次留下的临时文件夹和导出文件夹。"""
    out = tmp_path / "sft"
    args = stage_args("sft", pipeline["tmp"] / "tiny-qwen3", out, "--max_steps", 1)
    env = offline_env(tmp_path, **{outputs.PAUSE_ENV: "staging"})
    first, _ = run_until([sys.executable, ROOT / "train_sft.py", *args], env, "[pause] staging")
    try:
        assert leftovers(tmp_path, "sft")  # 它正写到一半
        second = run_inline("train_sft.py", *args, tmp=tmp_path)
        assert_one_line_error(second, errors.EXIT_BAD_INPUT, "正被另一次运行写入", f"进程 {first.pid}", "开始于")
        assert leftovers(tmp_path, "sft") and not out.exists()  # 第一次的东西一个都没被动
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(60)
    third = run_inline("train_sft.py", *args, tmp=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads((out / "stage.json").read_text(encoding="utf-8"))["stage"] == "sft"
    assert leftovers(tmp_path, "sft") == []


def test_a_run_is_refused_while_another_process_holds_the_lock_through_the_same_api(tiny_model, tmp_path):
    """测试进程自己用 outputs.lock_output 拿着锁：脚本（另一个进程）在加载任何模型之前拒绝，说出测试进程的进程号。"""
    out = tmp_path / "out"
    outputs.lock_output(out)
    try:
        r = run_script("train_sft.py", *stage_args("sft", tiny_model, out), tmp=tmp_path)
    finally:
        outputs.release_locks()
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, f"进程 {os.getpid()}", "--output_dir")
    assert not out.exists()


def test_only_the_main_process_takes_the_lock(tmp_path, monkeypatch):
    """多进程（accelerate launch）时锁属于这次运行：RANK 不为 0 的进程不拿锁，也不会被主进程的锁拒绝。"""
    monkeypatch.setenv("RANK", "1")
    outputs.check_writable(tmp_path / "out", overwrite=False)
    assert outputs._LOCKS == {} and not (tmp_path / ".out.lock").exists()


# ---------------------------------------------------------------- 损坏的元数据


DAMAGE = {"truncated": b'{"stage": "sf', "not_utf8": b"\xff\xfe\x00{", "not_an_object": b"[1, 2]"}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_stage_json_handed_to_ppo_is_one_line_naming_the_file(pipeline, tmp_path, damage):
    sft = tmp_path / "sft"
    shutil.copytree(pipeline["sft"], sft)
    (sft / "stage.json").write_bytes(DAMAGE[damage])
    r = run_inline("train_ppo.py", *stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", tmp_path / "ppo",
                                               "--sft_model_path", sft, "--reward_model_path", pipeline["rm"]),
                   tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_MISSING, "stage.json 已损坏", "重新")
    assert not (tmp_path / "ppo").exists()


def test_damaged_resume_json_is_one_line(pipeline, tmp_path):
    ckpt = tmp_path / "ppo-trainer-checkpoints" / "checkpoint-1"
    ckpt.mkdir(parents=True)
    (ckpt / "resume.json").write_bytes(DAMAGE["truncated"])
    r = run_inline("train_ppo.py", *stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", tmp_path / "ppo",
                                               "--sft_model_path", pipeline["sft"], "--reward_model_path",
                                               pipeline["rm"], "--resume_from_checkpoint", ckpt), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_MISSING, "resume.json 已损坏", "--resume_from_checkpoint")


def test_damaged_reward_model_stage_json_handed_to_the_benchmark_is_one_line(pipeline, tmp_path):
    rm = tmp_path / "rm"
    shutil.copytree(pipeline["rm"], rm)
    (rm / "stage.json").write_bytes(DAMAGE["not_utf8"])
    r = run_inline("benchmark.py", "--config", TINY / "benchmark.yaml", "--model_name_or_path",
                   pipeline["tmp"] / "tiny-qwen3", "--sft_model_path", pipeline["sft"], "--ppo_model_path",
                   pipeline["ppo"], "--reward_model_path", rm, "--output_dir", tmp_path / "bench", tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_MISSING, "rm/stage.json 已损坏")
    assert not (tmp_path / "bench").exists()


def test_damaged_adapter_config_handed_to_chat_is_one_line(pipeline, tmp_path):
    """只有适配器（没有 merged/）的 PPO 文件夹，adapter_config.json 坏了：chat 一行说出是哪个文件，建议用 merged/。"""
    ppo = tmp_path / "ppo"
    shutil.copytree(pipeline["ppo"], ppo, ignore=shutil.ignore_patterns("merged"))
    (ppo / "adapter_config.json").write_bytes(DAMAGE["truncated"])
    r = run_inline("chat.py", "--model", ppo, "--prompt", "你好", tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_MISSING, "adapter_config.json 已损坏", "merged")


# ---------------------------------------------------------------- 提示说出真正的原因、真正的选项


def test_missing_tokenizer_file_is_reported_as_missing_not_as_the_wrong_family(tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "tokenizer.json").unlink()
    r = run_inline("train_sft.py", *stage_args("sft", model, tmp_path / "out"), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_MISSING, "缺少分词器文件 tokenizer.json", "model")
    assert "Qwen3 系列" not in r.stderr


def test_ppo_with_every_prompt_too_long_names_its_own_option(pipeline, tmp_path):
    """PPO 的上限叫 --max_prompt_length（PPO 没有 --max_length）：提示里说的就是它。"""
    r = run_inline("train_ppo.py", *stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", tmp_path / "ppo",
                                               "--sft_model_path", pipeline["sft"], "--reward_model_path",
                                               pipeline["rm"], "--max_prompt_length", 1), tmp=tmp_path)
    assert_one_line_error(r, errors.EXIT_BAD_INPUT, "请调大 --max_prompt_length")


# ---------------------------------------------------------------- 快照是数据：保存时被杀不丢，从头训练不混进别人的


def test_a_kill_at_any_moment_of_ppos_final_save_keeps_every_snapshot(work, sft, rm, tmp_path):
    """PPO 最后保存的每一步被杀（SIGTERM：平台关机；SIGKILL：断电）：临时文件夹刚建好、快照已放进临时文件夹、整个结果
    已在临时文件夹里（还没改名）、结果已改名就位（中间检查点还没删）。每次照 README 说的续训（--resume_from_checkpoint
    true），最后的结果有全部快照。两次更新、每次一个快照、第 1 次后存检查点：以前快照是"搬"进临时文件夹的，在那之后
    被杀，续训时 recover 删掉死进程的临时文件夹，step-1 跟着没了，结果里只剩续训重做的 step-2。"""
    out, checkpoints = tmp_path / "ppo", tmp_path / "ppo-trainer-checkpoints"
    args = [sys.executable, ROOT / "train_ppo.py",
            *stage_args("ppo", work / "tiny-qwen3", out, "--sft_model_path", sft.folder, "--reward_model_path",
                        rm.folder, "--total_episodes", 32, "--save_steps", 1, "--snapshots", 2)]
    steps = ["step-1", "step-2"]
    for i, (moment, sig) in enumerate([("final-save", signal.SIGTERM), ("snapshots-staged", signal.SIGTERM),
                                       ("result-staged", signal.SIGKILL), ("result-saved", signal.SIGKILL)]):
        resume = ["--resume_from_checkpoint", "true"] if i else []
        proc, lines = run_until([*args, *resume], offline_env(tmp_path, **{outputs.PAUSE_ENV: moment}),
                                f"[pause] {moment}")
        proc.send_signal(sig)
        assert proc.wait(60) == -sig, "".join(lines)[-3000:]
        if moment != "result-saved":  # 之前的状态：没有结果，检查点和全部快照都在
            assert not out.exists() and (checkpoints / "checkpoint-1").is_dir(), moment
            assert [p.name for p in policy.snapshots_of(checkpoints)] == steps, moment
    # 新结果完整：全部快照，各自的基座路径已改好
    assert [p.name for p in policy.snapshots_of(out)] == steps
    for n, snap in enumerate(policy.snapshots_of(out), 1):
        record = json.loads((snap / "stage.json").read_text(encoding="utf-8"))
        assert record["progress"]["step"] == n and (snap / record["sft_path_from_adapter"]).resolve() == \
            sft.folder.resolve()
        assert (snap / "adapter_model.safetensors").is_file()
    assert json.loads((out / "stage.json").read_text(encoding="utf-8"))["resumed"]
    assert not leftovers(tmp_path, "ppo")


def test_a_fresh_run_never_adopts_snapshots_left_by_an_interrupted_earlier_run(work, sft, tmp_path):
    """上一次被打断、没有续训的运行（别的种子）留下的 step-N：从头开始的运行删掉它们（说一行），结果里只有自己的快照。
    以前它们被搬进新的结果，轨迹里混进两次运行。"""
    out = tmp_path / "dpo"
    stale = tmp_path / "dpo-trainer-checkpoints" / "snapshots"
    for name in ("step-1", "step-7"):
        (stale / name).mkdir(parents=True)
        (stale / name / "stage.json").write_text(json.dumps({"stage": "dpo", "seed": 999}), encoding="utf-8")
    args = stage_args("dpo", work / "tiny-qwen3", out, "--sft_model_path", sft.folder, "--max_steps", 2)
    i = args.index("--model_name_or_path")  # DPO 没有基座选项：actor 就是 SFT
    r = run_inline("train_dpo.py", *args[:i], *args[i + 2:], tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "删掉上一次没完成的运行留下的快照 step-1、step-7" in r.stdout
    assert [p.name for p in policy.snapshots_of(out)] == ["step-1", "step-2"]
    assert all(json.loads((p / "stage.json").read_text(encoding="utf-8"))["seed"] != 999
               for p in policy.snapshots_of(out))
