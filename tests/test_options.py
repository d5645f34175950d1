"""选项：默认值复现原仓库、配方加载、错误选项给出一行中文提示。"""

import pytest
from trl import RewardConfig, SFTConfig
from trl.experimental.ppo import PPOConfig

import train_ppo
import train_rm
import train_sft
from qwen_rlhf import options
from qwen_rlhf.errors import UserError

CPU = options.precision_defaults()  # 这台机器没有 GPU：fp32
SFT_DEFAULTS = {**train_sft.DEFAULTS, **CPU}


def test_sft_defaults_reproduce_the_original_run():
    args, cfg = options.parse([train_sft.SFTArgs, SFTConfig], SFT_DEFAULTS, args=[])
    assert (cfg.learning_rate, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (1e-5, 4, 8)
    assert (cfg.num_train_epochs, cfg.max_length, cfg.output_dir) == (2, 500, "checkpoint/sft")
    assert args.model_name_or_path == "Qwen/Qwen3-0.6B" and args.sft_fraction == 0.1
    assert args.dataset == "jackmokaka/btfChinese-DPO-small"


def test_rm_defaults_reproduce_the_original_run():
    _, cfg = options.parse([train_rm.RMArgs, RewardConfig], {**train_rm.DEFAULTS, **CPU}, args=[])
    assert (cfg.learning_rate, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (1e-5, 4, 8)
    assert cfg.center_rewards_coefficient == 0.01 and cfg.max_length == 500


def test_ppo_defaults_reproduce_the_original_run():
    args, cfg = options.parse([train_ppo.PPOArgs, PPOConfig], {**train_ppo.DEFAULTS, **CPU}, args=[])
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.num_mini_batches) == (2, 4, 1)
    assert (cfg.local_rollout_forward_batch_size, cfg.num_ppo_epochs, cfg.learning_rate) == (8, 2, 5e-6)
    assert (cfg.vf_coef, cfg.cliprange, cfg.cliprange_value, cfg.kl_coef) == (0.5, 0.1, 0.5, 0.05)
    assert (cfg.total_episodes, cfg.response_length, cfg.stop_token) == (1000, 200, "eos")
    assert (args.lora_r, args.lora_alpha, args.lora_dropout) == (32, 8, 0.05)
    assert set(args.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_recipe_overrides_defaults_and_flags_override_recipe():
    args, cfg = options.parse([train_sft.SFTArgs, SFTConfig], SFT_DEFAULTS,
                              args=["--config", "configs/tiny/sft.yaml", "--num_train_epochs", "1"])
    assert args.model_name_or_path == "checkpoint/tiny/base" and cfg.use_cpu
    assert cfg.num_train_epochs == 1  # 命令行最优先
    assert cfg.max_length == 128  # 来自配方


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning_rat", "1e-5"], "未知选项 \\['--learning_rat'"),
        (["--learning_rate", "abc"], "选项错误：argument --learning_rate/--learning-rate: invalid float value"),
        (["--config", "configs/none.yaml"], "配方文件不存在：configs/none.yaml"),
        (["--test_size", "1.5"], "--test_size 必须在 \\(0,1\\) 之间"),
    ],
)
def test_bad_options_raise_one_line_user_errors(argv, message):
    with pytest.raises(UserError, match=message) as e:
        options.parse([train_sft.SFTArgs, SFTConfig], SFT_DEFAULTS, args=argv)
    assert "\n" not in e.value.message


def test_recipe_that_is_not_yaml_or_has_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n", encoding="utf-8")
    with pytest.raises(UserError, match="不是合法的 YAML"):
        options.parse([train_sft.SFTArgs, SFTConfig], SFT_DEFAULTS, args=["--config", str(bad)])
    bad.write_text("response_length: 10\n", encoding="utf-8")
    with pytest.raises(UserError, match="不认识的键"):
        options.parse([train_sft.SFTArgs, SFTConfig], SFT_DEFAULTS, args=["--config", str(bad)])


def test_relative_output_paths_resolve_from_the_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert options.output_path("checkpoint/sft") == options.ROOT / "checkpoint" / "sft"
    assert options.input_path("configs/tiny/sft.yaml") == options.ROOT / "configs" / "tiny" / "sft.yaml"
