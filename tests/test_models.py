"""模型来源与安全加载；产物的种类；安全的输出文件夹。"""

import shutil

import pytest

from qwen_rlhf import models, outputs
from qwen_rlhf.errors import EXIT_MISSING, EXIT_NETWORK, UserError


def test_local_folder_is_used_without_network(tiny_model, monkeypatch):
    import modelscope

    monkeypatch.setattr(modelscope, "snapshot_download", lambda *a, **k: pytest.fail("不应联网"))
    assert models.resolve_model_source(str(tiny_model)) == tiny_model


def test_unreachable_hub_gives_one_clear_line_and_leaves_no_empty_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UserError) as e:
        models.resolve_model_source("nobody/no-such-model-xyz")
    assert e.value.code == EXIT_NETWORK
    assert "无法下载模型 nobody/no-such-model-xyz" in e.value.message and "configs/tiny" in e.value.message
    assert (tmp_path / "base").is_dir() and not (tmp_path / "base" / "nobody__no-such-model-xyz").exists()


def test_missing_local_folder_is_not_downloaded():
    with pytest.raises(UserError, match="模型文件夹不存在") as e:
        models.resolve_model_source("checkpoint/does-not-exist")
    assert e.value.code == EXIT_MISSING


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UserError, match="--allow_pickle true"):
        models.check_weights(tmp_path, allow_pickle=False)
    models.check_weights(tmp_path, allow_pickle=True)


def test_staging_dir_keeps_the_old_result_when_writing_fails(tmp_path):
    final = tmp_path / "sft"
    final.mkdir()
    (final / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError):
        with outputs.StagingDir(final) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (final / "model.safetensors").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["sft"]  # 临时文件夹已清理
    with outputs.StagingDir(final) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (final / "model.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["sft"]


def test_refuses_non_empty_output_and_recovers_interrupted_swap(tmp_path):
    final = tmp_path / "rm"
    final.mkdir()
    (final / "x").write_text("1")
    with pytest.raises(UserError, match="--overwrite_output_dir true"):
        outputs.check_writable(final, overwrite=False)
    outputs.check_writable(final, overwrite=True)
    final.rename(tmp_path / ".rm.old")  # 模拟在两次 rename 之间被杀
    outputs.check_writable(final, overwrite=True)
    assert (final / "x").read_text() == "1"


def test_every_checkpoint_kind_is_recognised_and_a_wrong_one_names_what_was_expected(pipeline, tmp_path):
    from qwen_rlhf.outputs import check_kind, kind_of

    assert [kind_of(pipeline[k]) for k in ("sft", "rm", "ppo")] == ["sft", "rm", "ppo"]
    assert kind_of(pipeline["ppo"] / "merged") == "ppo" and kind_of(pipeline["tmp"] / "tiny-qwen3") == "base"
    bare_rm = tmp_path / "bare-rm"  # 没有 stage.json 的打分模型：只能当 RM，绝不当对话模型
    shutil.copytree(pipeline["rm"], bare_rm)
    (bare_rm / "stage.json").unlink()
    assert kind_of(bare_rm) == "rm"
    with pytest.raises(UserError, match="是奖励模型（RM），--sft_model_path 需要SFT 模型") as e:
        check_kind(pipeline["rm"], ("sft",), "--sft_model_path")
    assert e.value.code == EXIT_MISSING
    with pytest.raises(UserError, match="请先运行 python train_sft.py"):
        check_kind(tmp_path / "nope", ("sft",), "--sft_model_path")
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="不完整"):
        check_kind(tmp_path / "half", ("sft",), "--sft_model_path")


def test_a_truncated_safetensors_file_is_detected_from_its_header(tiny_model, tmp_path):
    good = tiny_model / "model.safetensors"
    models.check_safetensors(good)
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="model.safetensors 已损坏") as e:
        models.check_safetensors(cut)
    assert e.value.code == EXIT_MISSING
    cut.write_bytes(b"\x00" * 4)  # 连文件头都不完整
    with pytest.raises(UserError, match="已损坏"):
        models.check_safetensors(cut)
