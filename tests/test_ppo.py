"""PPO：端到端（适配器、合并模型、曲线、分数上升），多进程，以及 TRL 1.12 悄悄忽略的设置确实生效。"""

import json
import os
import shutil
import sys

import pytest
import torch

from conftest import ROOT, last_line, offline_env, run_script, run_until, stage_args
from qwen_rlhf import data, inference, models, outputs, ppo

TB_TAGS = ["objective/scores", "objective/kl", "objective/entropy", "policy/entropy_avg", "loss/policy_avg",
           "loss/value_avg", "val/num_eos_tokens", "rollout/distinct_ratio", "rollout/response_length",
           "policy/grad_norm"]


def stage_info(folder):
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))


def test_adapter_is_written_trained_and_points_to_an_absolute_sft_path(pipeline):
    from safetensors.torch import load_file

    folder = pipeline["ppo"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert os.path.isabs(config["base_model_name_or_path"])
    assert os.path.samefile(config["base_model_name_or_path"], pipeline["sft"])
    weights = load_file(str(folder / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(w) > 0 for w in lora_b)  # B 初始化为 0：非零说明训练过


def test_merged_model_loads_and_stops_at_im_end_without_think(pipeline):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(pipeline["ppo"] / "merged"))  # 普通 from_pretrained 就能读
    loaded = inference.load_policy(str(pipeline["ppo"]))
    assert loaded.folder == pipeline["ppo"] / "merged"
    tok = loaded.tokenizer
    prompts = [data.prompt_ids(tok, q) for q in ["你好", "今天星期几", "你是谁", "最近怎么样"] * 2]
    torch.manual_seed(0)
    responses = inference.generate(loaded.model, tok, prompts, max_new_tokens=64, do_sample=True, temperature=0.7)
    assert any(r and r[-1] == tok.eos_token_id for r in responses)
    for r in responses:
        assert tok.eos_token_id not in r[:-1]  # 停在第一个 <|im_end|>
        assert "<think>" not in tok.decode(r)


def test_ppo_curves_are_logged_once_per_update(pipeline):
    info = stage_info(pipeline["ppo"])
    scalars = outputs.read_scalars(info["tensorboard"])
    cfg = info["options"]["training"]
    updates = info["episodes"] // (cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"])
    for tag in TB_TAGS:
        assert len(scalars[f"train/{tag}"]) == updates, tag
    assert all(0 < r <= 1 for r in scalars["train/rollout/distinct_ratio"])


def test_tiny_ppo_raises_the_mean_rm_score(pipeline):
    """tiny 配方：objective/scores 后 1/4 的均值高于前 1/4（调配方时 4 个种子都升了 0.24–0.51）。"""
    scores = outputs.read_scalars(stage_info(pipeline["ppo"])["tensorboard"])["train/objective/scores"]
    first, last = outputs.quarter_means(scores)
    assert last > first, (first, last, scores)


def test_optimizer_really_steps_epochs_times_minibatches_per_update(pipeline):
    info = stage_info(pipeline["ppo"])
    cfg = info["options"]["training"]
    updates = info["episodes"] // (cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"])
    assert info["optimizer_steps"] == updates * cfg["num_ppo_epochs"] * cfg["num_mini_batches"]


def test_refuses_a_train_set_smaller_than_one_rollout_batch(pipeline):
    r = run_script("train_ppo.py", *stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", pipeline["tmp"] / "ppo-small",
                                               "--sft_model_path", pipeline["sft"], "--reward_model_path", pipeline["rm"],
                                               "--per_device_train_batch_size", 4096), tmp=pipeline["tmp"])
    assert r.returncode == 2
    assert "少于一个 rollout 批量" in last_line(r.stderr) and "Traceback" not in r.stderr
    assert not (pipeline["tmp"] / "ppo-small").exists()


def test_ppo_before_sft_names_the_script_to_run(tmp_path, tiny_model):
    r = run_script("train_ppo.py", *stage_args("ppo", tiny_model, tmp_path / "ppo", "--sft_model_path",
                                               tmp_path / "nope"), tmp=tmp_path)
    assert r.returncode == 3
    assert "python train_sft.py" in last_line(r.stderr) and "Traceback" not in r.stderr


@pytest.fixture
def trainer(tiny_model, tmp_path, monkeypatch):
    """直接在进程内建一个 RLHFPPOTrainer，检查模型本身（而不是相信配置）。"""
    from datasets import Dataset
    from peft import LoraConfig
    from trl.experimental.ppo import PPOConfig

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    tok = models.load_tokenizer(tiny_model, padding_side="left")
    policy = models.load_causal_lm(tiny_model, tok)
    critic = models.load_score_model(tiny_model, tok)
    reward = models.load_score_model(tiny_model, tok)
    ppo.enable_gradient_checkpointing(policy, critic)
    cfg = PPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, per_device_train_batch_size=2,
                    gradient_accumulation_steps=1, total_episodes=4, response_length=4, stop_token="eos",
                    max_grad_norm=0.5, report_to=[], num_sample_generations=0, save_strategy="no")
    rows = [data.ppo_example(tok, {"question": q}) for q in ["你好", "在吗", "几点了", "吃了吗"]]
    return ppo.RLHFPPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                              value_model=critic, train_dataset=Dataset.from_list(rows),
                              peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"))


def test_gradient_checkpointing_is_on_for_policy_and_critic(trainer):
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert unwrapped.policy.get_base_model().is_gradient_checkpointing
    assert unwrapped.value_model.is_gradient_checkpointing


def test_rollout_generation_with_gradient_checkpointing_sees_the_whole_context(trainer):
    """train 模式 + 梯度检查点会让每层丢掉 KV cache；rollout 生成必须和不开检查点时逐 token 相同。"""
    from transformers import GenerationConfig

    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    tok = trainer.processing_class
    ids, mask = inference.left_pad([data.ppo_example(tok, {"question": q})["input_ids"] for q in ["你好", "几点了"]],
                                   tok.pad_token_id)
    gen = GenerationConfig(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    policy.train()
    with torch.no_grad():
        # 与 PPOTrainer 1.12 的调用方式相同（经过 RLHFPPOTrainer 包的那层 generate）
        rollout = policy.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                  return_dict_in_generate=True, output_scores=True).sequences
    assert policy.training  # 生成完恢复 train 模式
    policy.get_base_model().gradient_checkpointing_disable()
    with torch.no_grad():
        expected = policy.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    assert torch.equal(rollout, expected)


def test_gradients_are_clipped_to_max_grad_norm(trainer):
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    trainer.optimizer.step()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert trainer.last_grad_norm > 100
    assert norm.item() == pytest.approx(0.5, rel=2e-2)  # fp32 对千万个元素求范数有 ~1% 的累加误差
    assert trainer.optimizer_steps == 1


def test_bf16_request_reaches_the_accelerator(monkeypatch):
    ppo.set_mixed_precision(True)
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "bf16"
    ppo.set_mixed_precision(False)
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"


def test_reward_path_pointing_at_the_wrong_stage_is_refused(pipeline):
    r = run_script("train_ppo.py", *stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", pipeline["tmp"] / "ppo-x",
                                               "--sft_model_path", pipeline["sft"], "--reward_model_path",
                                               pipeline["sft"]), tmp=pipeline["tmp"])
    assert r.returncode == 3
    assert "这里需要 rm 阶段的" in last_line(r.stderr) and "Traceback" not in r.stderr


def test_adapter_whose_sft_base_moved_gives_a_clear_error(pipeline, tmp_path):
    from qwen_rlhf.errors import UserError

    moved = tmp_path / "ppo"
    shutil.copytree(pipeline["ppo"], moved, ignore=shutil.ignore_patterns("merged"))
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone" / "sft")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    info = stage_info(moved)
    info["sft_path_in_repo"] = "checkpoint/gone/sft"
    (moved / "stage.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="基座模型（SFT）找不到了"):
        inference.load_policy(str(moved))
    config["base_model_name_or_path"] = str(pipeline["sft"])  # 放回去：不用 merged/ 也能现场合并
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert inference.load_policy(str(moved)).folder == moved


def test_ctrl_c_during_ppo_keeps_the_result_and_saves_the_partial_policy_aside(pipeline):
    import signal

    out = pipeline["tmp"] / "ppo-int"
    cmd = [sys.executable, str(ROOT / "train_ppo.py"), *map(str, stage_args(
        "ppo", pipeline["tmp"] / "tiny-qwen3", out, "--sft_model_path", pipeline["sft"],
        "--reward_model_path", pipeline["rm"], "--total_episodes", 100000))]
    proc, lines = run_until(cmd, offline_env(pipeline["tmp"]), "objective/scores")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(300) == 130
    assert not out.exists()
    partial = pipeline["tmp"] / "ppo-int-interrupted"
    assert stage_info(partial)["interrupted"] is True
    assert (partial / "adapter_model.safetensors").is_file() and (partial / "merged" / "config.json").is_file()
    assert "ppo-int-interrupted" in "".join(lines)
