"""显存估算（qwen_rlhf/memory.py）：纯算术，几秒内跑完；只有一个测试建 TINY 模型来核对参数量公式。"""

import ast
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from qwen_rlhf import memory as M
from qwen_rlhf.tiny import QWEN3_0_6B, TINY

ROOT = Path(__file__).resolve().parent.parent
QWEN = M.ModelShape.from_config(QWEN3_0_6B)
SMALL = M.ModelShape.from_config(TINY)
STAGES = ("sft", "rm", "ppo")


def term(est: M.StageEstimate, key: str, phase: str | None = None) -> int:
    """某个时刻（默认峰值时刻）里一项的字节数。"""
    ph = est.peak_phase if phase is None else next(p for p in est.phases if p.name == phase)
    return next(t.bytes for t in ph.terms if t.key == key)


# ---------------------------------------------------------------------- 参数量


def test_qwen3_0_6b_parameter_count():
    # 嵌入 151936 × 1024 与 lm_head 共享；28 层 × 15,730,944；最后的 norm 1024
    assert M.embedding_params(QWEN) == 151936 * 1024
    assert M.layer_params(QWEN) == 15_730_944
    assert M.causal_lm_params(QWEN) == 596_049_920  # 「0.6B」
    assert M.score_model_params(QWEN) == 596_049_920 + 1024  # 打分头 hidden × 1，没有 lm_head
    assert M.lora_params(QWEN, 32) == 20_185_088  # r=32，7 个投影


@pytest.mark.parametrize("variant", [{}, {"tie_word_embeddings": False}, {"attention_bias": True}])
def test_parameter_formula_matches_transformers_exactly(variant):
    """公式对 TINY（以及不绑定嵌入、带注意力偏置的变体）和 transformers 真建出来的模型逐个参数相等。"""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification

    torch.manual_seed(0)
    cfg = {**TINY, **variant}
    shape = M.ModelShape.from_config(cfg)
    lm = Qwen3ForCausalLM(Qwen3Config(**cfg))
    assert sum(p.numel() for p in lm.parameters()) == M.causal_lm_params(shape)  # parameters() 对共享权重只数一次
    sc = Qwen3ForSequenceClassification(Qwen3Config(**cfg, num_labels=1))
    assert sum(p.numel() for p in sc.parameters()) == M.score_model_params(shape)
    lora = get_peft_model(lm, LoraConfig(r=32, target_modules=list(M.LORA_TARGETS), task_type="CAUSAL_LM"))
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == M.lora_params(shape, 32)


# ---------------------------------------------------------------------- 各项公式


def test_optimizer_is_two_fp32_states_per_trainable_parameter():
    assert M.adamw_bytes(1000) == 2 * 4 * 1000
    sft = M.estimate(QWEN, M.default_options("sft"))
    assert term(sft, "optimizer") == 2 * 4 * M.causal_lm_params(QWEN)
    assert term(sft, "gradients") == 4 * M.causal_lm_params(QWEN)
    ppo = M.estimate(QWEN, M.default_options("ppo"))
    trainable = M.lora_params(QWEN, 32) + M.score_model_params(QWEN)  # LoRA + critic 全参数，不含冻结的基座与 RM
    assert term(ppo, "optimizer") == 2 * 4 * trainable
    assert term(ppo, "gradients", "训练：反向") == 4 * trainable


def test_logits_scale_linearly_in_batch_and_sequence():
    v = QWEN.vocab
    base = M.logits_bytes(4, 500, v, 12)
    assert base == 4 * 500 * 151936 * 12
    assert M.logits_bytes(8, 500, v, 12) == 2 * base
    assert M.logits_bytes(4, 1000, v, 12) == 2 * base
    o = M.default_options("sft")
    for phase in ("前向末尾", "反向开始"):
        one = term(M.estimate(QWEN, o), "logits", phase)
        assert term(M.estimate(QWEN, replace(o, batch=8)), "logits", phase) == 2 * one
        assert term(M.estimate(QWEN, replace(o, max_length=1000)), "logits", phase) == 2 * one
    # PPO：生成时保留的 logits 随 rollout 条数与回复长度线性增长
    p = M.default_options("ppo")
    g = term(M.estimate(QWEN, p), "rollout_logits", "训练：反向")
    assert g == 8 * 200 * 151936 * 4
    assert term(M.estimate(QWEN, replace(p, response_length=400)), "rollout_logits", "训练：反向") == 2 * g
    assert term(M.estimate(QWEN, replace(p, grad_accum=8)), "rollout_logits", "训练：反向") == 2 * g


def test_vocab_logits_coefficients():
    """每个 logits 元素的字节数（PPO 的反向项由 bench/bench_memory.py 的 CPU 实测核对过；改它要重跑 bench）。"""
    assert M.sft_logits_bytes_per_element("bf16", M.BACKWARD) == 12  # log_softmax 输出 + 它的梯度 + logits 的梯度
    assert M.sft_logits_bytes_per_element("fp32", M.FORWARD) == 8
    assert M.sft_logits_bytes_per_element("bf16", M.FORWARD) == 10
    assert M.ppo_train_logits_bytes_per_element("fp32", 1.0, M.BACKWARD) == 24
    assert M.ppo_train_logits_bytes_per_element("fp32", 0.5, M.FORWARD) == 10
    assert M.ppo_train_logits_bytes_per_element("bf16", 0.5, M.FORWARD) == 12


def test_vocab_logits_dominate_the_activation_terms():
    """15 万词表：SFT 默认设置下 logits 项比开检查点的全部激活大得多；PPO 生成结束时留着 3 份 rollout logits。"""
    sft = M.estimate(QWEN, M.default_options("sft"))
    assert term(sft, "logits", "反向开始") > 5 * term(sft, "activations", "反向开始")
    ppo = M.estimate(QWEN, M.default_options("ppo"))
    assert term(ppo, "rollout_logits", "rollout 生成") == 3 * M.ppo_rollout_logits_bytes(8, 200, QWEN.vocab)
    assert term(ppo, "rollout_logits", "rollout 生成") > 5 * term(ppo, "kv_cache", "rollout 生成")


def test_rm_has_no_vocab_logits_and_counts_two_sequences_per_pair():
    o = M.default_options("rm")
    est = M.estimate(QWEN, o)
    assert term(est, "logits") == 0
    # 4 对 × 2 条 = 和 8 条 SFT 序列的激活一样多
    assert term(est, "activations") == M.activation_bytes(QWEN, 8 * 500)


def test_gradient_checkpointing_reduces_activations_and_peak():
    for stage in STAGES:
        o = M.default_options(stage)
        on = M.estimate(QWEN, replace(o, gradient_checkpointing=True))
        off = M.estimate(QWEN, replace(o, gradient_checkpointing=False))
        assert term(on, "activations") < term(off, "activations"), stage
        assert on.peak < off.peak, stage
    # 不开检查点时激活 ∝ 层数；开了以后每层只剩 fp32 的输入
    tokens = 2000
    per_layer = sum(M.layer_activation_bytes(QWEN).values())
    assert M.activation_bytes(QWEN, tokens, gradient_checkpointing=False) >= QWEN.layers * per_layer * tokens
    assert M.activation_bytes(QWEN, tokens, gradient_checkpointing=True) < 3 * per_layer * tokens


def test_fp32_precision_has_no_autocast_copies_and_bigger_activations():
    o = M.default_options("sft")
    bf16 = M.estimate(QWEN, o)
    fp32 = M.estimate(QWEN, replace(o, precision="fp32"))
    assert term(bf16, "autocast") > 0 and term(fp32, "autocast") == 0
    assert term(fp32, "activations") > term(bf16, "activations")
    assert sum(M.layer_activation_bytes(QWEN, "fp32", gqa_repeat=False).values()) == 4 * (
        6 * 1024 + 5 * 2048 + 4 * 1024 + 4 * 3072) + 4 * 16


def test_kv_cache_formula():
    # 2 × 28 层 × 8 条 × (8 × 128) × 264 token × 4 字节
    assert M.kv_cache_bytes(QWEN, 8, 264) == 2 * 28 * 8 * 1024 * 264 * 4
    assert M.kv_cache_bytes(QWEN, 8, 264, "bf16") * 2 == M.kv_cache_bytes(QWEN, 8, 264)


# ---------------------------------------------------------------------- 默认选项放得下 24 GB


@pytest.mark.parametrize("stage", STAGES)
def test_default_options_fit_a_24gb_card_with_checkpointing(stage):
    o = M.default_options(stage)
    assert o.gradient_checkpointing
    est = M.estimate(QWEN, o)
    assert est.peak <= 24 * M.GiB, f"{stage} 估计 {est.peak / M.GiB:.1f} GiB"
    assert M.max_batch(QWEN, o, 24) >= o.batch


@pytest.mark.parametrize("stage", STAGES)
def test_max_batch_is_the_largest_that_fits(stage):
    o = M.default_options(stage)
    for gb in (24, 80):
        n = M.max_batch(QWEN, o, gb)
        assert n >= 1
        assert M.fits(QWEN, replace(o, batch=n), gb)
        assert not M.fits(QWEN, replace(o, batch=n + 1), gb)
    assert M.max_batch(QWEN, o, 80) > M.max_batch(QWEN, o, 24)
    assert M.max_batch(QWEN, o, 4) == 0  # 4 GB 连 batch 1 都放不下


def _script_defaults(script: str) -> dict:
    """不 import 脚本（会拉起 TRL），直接从源码里读 DEFAULTS 字典。"""
    tree = ast.parse((ROOT / script).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULTS" for t in node.targets):
            call = node.value
            return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    raise AssertionError(f"{script} 里没有 DEFAULTS")


def _dataclass_default(script: str, name: str):
    tree = ast.parse((ROOT / script).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            return next(ast.literal_eval(kw.value) for kw in node.value.keywords if kw.arg == "default")
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{script} 里没有 {name}")


def test_stage_defaults_match_the_training_scripts():
    for script, d in (("train_sft.py", M.SFT_DEFAULTS), ("train_rm.py", M.RM_DEFAULTS)):
        s = _script_defaults(script)
        assert d["batch"] == s["per_device_train_batch_size"], script
        assert d["max_length"] == s["max_length"], script
        assert d["grad_accum"] == s["gradient_accumulation_steps"], script
    s = _script_defaults("train_ppo.py")
    assert M.PPO_DEFAULTS["batch"] == s["per_device_train_batch_size"]
    assert M.PPO_DEFAULTS["grad_accum"] == s["gradient_accumulation_steps"]
    assert M.PPO_DEFAULTS["rollout_batch"] == s["local_rollout_forward_batch_size"]
    assert M.PPO_DEFAULTS["response_length"] == s["response_length"]
    assert M.PPO_DEFAULTS["lora_r"] == _dataclass_default("train_ppo.py", "lora_r")
    assert list(M.LORA_TARGETS) == _dataclass_default("train_ppo.py", "LORA_TARGETS")


# ---------------------------------------------------------------------- 命令行


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "qwen_rlhf.memory", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_markdown_table():
    r = _cli("--markdown")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| 阶段 |") and "24 GB" in rows[0] and "80 GB" in rows[0]
    assert [row.split("|")[1].strip() for row in rows[2:]] == ["SFT", "RM", "PPO"]
    assert all("GiB" in row for row in rows[2:])


def test_cli_text_and_json():
    r = _cli("--stage", "ppo", "--gradient_checkpointing", "false", "--gpu_gb", "40")
    assert r.returncode == 0, r.stderr
    assert "PPO" in r.stdout and "峰值估计" in r.stdout and "40 GB" in r.stdout
    r = _cli("--json", "--tiny")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["model"]["causal_lm_params"] == M.causal_lm_params(SMALL)
    assert [s["stage"] for s in data["stages"]] == list(STAGES)
    assert all(s["cards"]["24"]["fits"] for s in data["stages"])


def test_cli_model_config_file_and_errors(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(QWEN3_0_6B), encoding="utf-8")
    r = _cli("--model_config", str(tmp_path), "--stage", "sft", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"]["causal_lm_params"] == 596_049_920
    r = _cli("--model_config", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and r.stderr.startswith("错误：")
    r = _cli("--batch", "0")
    assert r.returncode == 2 and r.stderr.startswith("错误：")
    r = _cli("--gradient_checkpointing", "maybe")
    assert r.returncode == 2 and "错误：" in r.stderr
