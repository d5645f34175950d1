"""选项：配方加载、错误选项给出一行中文提示、PPO 的 LoRA 选项走 TRL 的 ModelConfig、只静音库自己的改名警告。"""

import warnings

import pytest

from conftest import ROOT
from qwen_rlhf import device, options, recipes
from qwen_rlhf.errors import UserError

CPU = device.precision_defaults()  # 这台机器没有 GPU：fp32
SFT_DEFAULTS = {**recipes.defaults("sft"), **CPU}


def test_recipe_overrides_defaults_and_flags_override_recipe():
    args, cfg = options.parse(recipes.types("sft"), SFT_DEFAULTS,
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
        options.parse(recipes.types("sft"), SFT_DEFAULTS, args=argv)
    assert "\n" not in e.value.message


def test_recipe_that_is_not_yaml_or_has_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n", encoding="utf-8")
    with pytest.raises(UserError, match="不是合法的 YAML"):
        options.parse(recipes.types("sft"), SFT_DEFAULTS, args=["--config", str(bad)])
    bad.write_text("response_length: 10\n", encoding="utf-8")
    with pytest.raises(UserError, match="不认识的键"):
        options.parse(recipes.types("sft"), SFT_DEFAULTS, args=["--config", str(bad)])


def test_relative_output_paths_resolve_from_the_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert options.output_path("checkpoint/sft") == options.ROOT / "checkpoint" / "sft"
    assert options.input_path("configs/tiny/sft.yaml") == options.ROOT / "configs" / "tiny" / "sft.yaml"


def test_lora_options_are_shared_by_every_lora_stage_and_options_we_do_not_support_do_not_exist():
    for stage in ("ppo", "grpo", "rloo", "dpo"):
        *_, lora = recipes.parse(stage, ["--lora_r", "8", "--use_rslora", "true"])
        peft = lora.peft_config()
        assert (peft.r, peft.lora_alpha, peft.use_rslora, peft.task_type) == (8, 8, True, "CAUSAL_LM")
    with pytest.raises(UserError, match="未知选项 \\['--load_in_4bit'"):
        recipes.parse("ppo", ["--load_in_4bit", "true"])


def test_only_the_library_rename_warnings_are_silenced(tiny_model):
    """transformers 5.23 的 gradient_checkpointing* 改名警告来自 TRL 的 Config 和 PPO 包装器：我们只过滤这几条。
    库改了措辞时这里会失败（过滤不再生效），提醒我们更新 qwen_rlhf/__init__.py 里的那一行。"""
    from transformers import AutoModelForCausalLM

    import re

    import qwen_rlhf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipes.parse("sft", ["--config", "configs/tiny/sft.yaml"])
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
        model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing
    future = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert len(future) >= 3 and all(re.match(qwen_rlhf.RENAMED_WARNINGS, m) for m in future), future


def test_the_dataset_fingerprint_patch_lives_only_for_one_training(tmp_path):
    """prepare 起到训练结束（GracefulStop.restore：fit 的 finally、on_train_end）为止，datasets 不算昂贵的指纹；之后
    datasets 的函数换回原来的，同一进程里别的代码不受影响。"""
    from types import SimpleNamespace

    import datasets.arrow_dataset
    import datasets.fingerprint

    from qwen_rlhf import training

    original = datasets.fingerprint.update_fingerprint, datasets.arrow_dataset.update_fingerprint
    cfg = SimpleNamespace(process_index=0, output_dir=None)
    _, stop = training.prepare(cfg, tmp_path / "result", "dpo")
    assert datasets.arrow_dataset.update_fingerprint is not original[1]
    assert datasets.fingerprint.update_fingerprint is not original[0]
    stop.restore()
    assert (datasets.fingerprint.update_fingerprint, datasets.arrow_dataset.update_fingerprint) == original


def test_every_extra_run_in_compare_sh_passes_options_its_stage_accepts():
    """compare.sh 的 RPO=1、RULES=1 等给训练脚本的额外选项，真的能被那个阶段解析（上一轮 RPO=1 用了 TRL 1.12 已经
    去掉的 --rpo_alpha，每个 DPO 都在开始时被拒绝，没有测试发现）；DPO + sft 损失的标签写出损失。"""
    import re

    import benchmark

    text = (ROOT / "scripts" / "compare.sh").read_text(encoding="utf-8")
    extras = re.findall(r'train (\w+) "\$out/[^"]+" "\$\w+" ([^;\n]+?)(?:; fi)?$', text, flags=re.M)
    literal = [(stage, opts.split("#")[0].split()) for stage, opts in extras if "$" not in opts.split("#")[0]]
    assert {s for s, _ in literal} >= {"dpo", "grpo"}, extras  # RPO=1 和 RULES=1 那两行
    for stage, opts in literal:
        parsed = recipes.parse(stage, opts)
        if "--loss_type" in opts:
            assert parsed[1].loss_type == ["sigmoid", "sft"] and parsed[1].loss_weights == [1.0, 1.0]
            label = benchmark.method_label(stage, {"loss_type": parsed[1].loss_type, "loss_weights": parsed[1].loss_weights})
            assert label == "dpo (loss=sigmoid+sft)"
