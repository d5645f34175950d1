"""模型来源与安全加载；安全的输出文件夹。"""

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
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "127.0.0.1:9")
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


def test_read_stage_names_the_script_to_run(tmp_path):
    with pytest.raises(UserError, match="请先运行 python train_sft.py") as e:
        models.read_stage(tmp_path / "sft", "sft", "python train_sft.py")
    assert e.value.code == EXIT_MISSING
    (tmp_path / "sft").mkdir()
    with pytest.raises(UserError, match="不完整"):
        models.read_stage(tmp_path / "sft", "sft", "python train_sft.py")
