"""显存估算（qwen_rlhf/memory.py）：选项由训练脚本自己解析；公式对照手算和 transformers 真建出来的模型。"""

import json
from dataclasses import replace

import pytest

from qwen_rlhf import memory as M
from qwen_rlhf.errors import run
from qwen_rlhf.tiny import QWEN3_0_6B, TINY

QWEN = M.shape_of(QWEN3_0_6B)


def test_qwen3_0_6b_parameter_count():
    # 28 层 × 15,730,944 + 嵌入 151936 × 1024（与 lm_head 共享）+ 最后的 norm 1024 =「0.6B」
    assert M.causal_lm_params(QWEN) == 28 * 15_730_944 + 151936 * 1024 + 1024 == 596_049_920
    assert M.score_model_params(QWEN) == 596_049_920 + 1024  # 打分头 hidden × 1，没有 lm_head
    assert M.lora_params(QWEN, 32, M.LINEARS) == 20_185_088


@pytest.mark.parametrize("variant", [{}, {"tie_word_embeddings": False, "attention_bias": True}])
def test_parameter_formulas_match_models_built_by_transformers(variant):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification

    cfg = {**TINY, **variant}
    m = M.shape_of(cfg)
    lm = Qwen3ForCausalLM(Qwen3Config(**cfg))
    assert sum(p.numel() for p in lm.parameters()) == M.causal_lm_params(m)  # 共享的权重只数一次
    sc = Qwen3ForSequenceClassification(Qwen3Config(**cfg, num_labels=1))
    assert sum(p.numel() for p in sc.parameters()) == M.score_model_params(m)
    lora = get_peft_model(lm, LoraConfig(r=8, target_modules=["q_proj", "down_proj"], task_type="CAUSAL_LM"))
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == M.lora_params(m, 8, ["q_proj", "down_proj"])


def test_ppo_keeps_frozen_weights_in_bf16_and_trains_lora_and_critic_in_fp32():
    lm, sc, lora = M.causal_lm_params(QWEN), M.score_model_params(QWEN), M.lora_params(QWEN, 32, M.LINEARS)
    for precision, frozen in (("bf16", 2), ("fp32", 4)):
        for phase in M.phases(QWEN, M.script_options("ppo", precision=precision)).values():
            assert phase["权重"] == frozen * (lm + sc) + 4 * (lora + sc)  # policy 基座 + RM；LoRA + critic
            assert phase["优化器状态"] == 8 * (lora + sc)


def test_an_rm_trained_with_lora_keeps_gradients_and_adam_state_only_for_lora_and_the_score_head():
    lora = M.lora_params(QWEN, 32, M.LINEARS) + QWEN.hidden  # 默认 LoRA（同 PPO）+ 整层训练的打分头
    o = M.script_options("rm_lora")
    assert replace(o, stage="rm") == M.script_options("rm", ["--use_peft", "true"]) and o.lora_r == 32
    (terms,) = M.phases(QWEN, o).values()
    assert (terms["梯度"], terms["优化器状态"]) == (4 * lora, 8 * lora)
    assert terms["权重"] == 4 * (M.score_model_params(QWEN) + lora - QWEN.hidden)  # 打分头只数一次
    full = M.estimate_peak_gib("rm")
    assert M.estimate_peak_gib("rm_lora") < full - 6  # 全参数 RM 的梯度 + AdamW 状态约 6.7 GiB
    assert M.script_options("rm", ["--lora_r", "8"]).lora_r == 0  # 没有 --use_peft 时 LoRA 选项不影响估算


@pytest.mark.parametrize("stage", M.ESTIMATED)
def test_script_defaults_fit_a_24gb_card_and_max_batch_is_the_largest_that_fits(stage):
    o = M.script_options(stage)
    assert M.estimate_peak_gib(stage) <= 24 and M.max_batch(QWEN, o, 24) >= o.batch
    for gb in (24, 80):
        n = M.max_batch(QWEN, o, gb)
        assert M.peak(QWEN, replace(o, batch=n))[0] <= gb * M.GiB < M.peak(QWEN, replace(o, batch=n + 1))[0]
    assert M.max_batch(QWEN, o, 2) == 0  # 2 GB 连批量 1 都放不下（LoRA 阶段的冻结权重 bf16 也要 1.1 GiB 以上 + 开销）


def test_script_flags_and_recipes_reach_the_estimate():
    assert M.estimate_peak_gib("ppo", ["--response_length", "100"]) < M.estimate_peak_gib("ppo")
    for stage in M.ESTIMATED:
        assert M.estimate_peak_gib(stage, ["--gradient_checkpointing", "false"]) > M.estimate_peak_gib(stage)
    assert M.script_options("sft", ["--config", "configs/tiny/sft.yaml"]) != M.script_options("sft")


def test_cli_prints_a_card_table_per_stage_and_json(capsys):
    M.main([])
    out = capsys.readouterr().out
    assert [out.count(f"{gb} GB  ") for gb in (24, 32, 80)] == [len(M.ESTIMATED)] * 3
    assert all(f"== {name}" in out for name in ("SFT", "RM", "PPO", "GRPO", "RLOO", "DPO"))
    assert "== RM_LORA（train_rm.py --use_peft true）" in out
    M.main(["--json", "--stage", "rm", "--", "--max_length", "256"])
    rm = json.loads(capsys.readouterr().out)["stages"][0]
    assert rm["cards"]["24"]["max_batch"] == M.max_batch(QWEN, M.script_options("rm", ["--max_length", "256"]), 24)


def test_measured_peaks_are_shown_for_stages_run_with_the_same_options(tmp_path, monkeypatch, capsys):
    mb = {"cuda_max_allocated_mb": 12288.0, "cuda_max_reserved_mb": 13312.0}
    stages = {"sft": {"argv": ["--max_steps", "3", "--output_dir", "x"], **mb},
              "rm": {"argv": ["--per_device_train_batch_size", "1"], **mb}}  # 改了批量：不是同样的选项
    gpu = {"size": "qwen3-0.6b", "device": "cuda", "gpu": "H200", "stages": stages}
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    monkeypatch.setattr(M, "MEASURED", tmp_path / "gpu.json")
    M.main(["--json"])
    got = {s["stage"]: s for s in json.loads(capsys.readouterr().out)["stages"]}
    assert got["sft"]["measured"] == {"gpu": "H200", "allocated": 12.0, "reserved": 13.0}
    assert got["sft"]["peak_gib"] == 13.0  # 实测分配峰值 + 1 GiB 开销
    assert got["rm"]["measured"] is None and got["ppo"]["measured"] is None


@pytest.mark.parametrize("argv", [["--precision", "fp8"], ["--", "--no_such_flag", "1"],
                                  ["--stage", "sft", "--", "--max_length", "0"]])
def test_cli_errors_exit_2_with_one_chinese_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run(lambda: M.main(argv), "memory")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("错误：") and err.count("\n") == 1
