"""PPO：端到端（适配器、合并模型、曲线、分数上升）、TRL 1.12 悄悄忽略的设置确实生效、SIGTERM / SIGKILL 之后
从检查点续训得到和没中断一模一样的结果。"""

import json
import shlex
import shutil
import signal
import sys

import pytest
import torch

from conftest import (ROOT, last_line, offline_env, quarter_means, read_by_step, read_scalars, read_steps, run_inline,
                      run_until, stage_args)
from qwen_rlhf import data, inference, models, outputs, ppo, rewards, sampling, scoring, training
from qwen_rlhf.policy import frozen_dtype

TB_TAGS = ["objective/scores", "objective/kl", "objective/entropy", "policy/entropy_avg", "loss/policy_avg",
           "loss/value_avg", "val/num_eos_tokens", "rollout/distinct_ratio", "rollout/response_length",
           "policy/grad_norm"]


def stage_info(folder):
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))


def test_adapter_is_written_trained_and_points_to_the_sft_folder_relative_to_its_checkpoint_tree(pipeline):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = pipeline["ppo"]
    config = json.loads((folder / "adapter_config.json").read_text())
    tree = folder.parent  # sft、rm、ppo 并排的那个文件夹（真实流程里是 checkpoint/）
    assert config["base_model_name_or_path"] == f"{tree.name}/sft"  # 相对放这棵树的文件夹：peft 按当前目录找
    assert stage_info(folder)["sft_path_from_adapter"] == "../sft"  # 我们自己的加载器按适配器文件夹找
    assert inference.resolve_adapter_base(folder) == pipeline["sft"].resolve()
    weights = load_file(str(folder / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(w) > 0 for w in lora_b)  # B 初始化为 0：非零说明训练过
    for f in (folder, folder / "merged"):  # 生成模型的分词器存成左填充
        assert AutoTokenizer.from_pretrained(str(f)).padding_side == "left"


def test_the_checkpoint_tree_copied_elsewhere_loads_with_plain_peft_and_merges_to_merged(pipeline, tmp_path,
                                                                                         monkeypatch):
    """把整棵 checkpoint 树拷到另一个文件夹、删掉原来的那份，在新位置旁边运行：peft 自己的 AutoPeftModelForCausalLM
    读得到，合并结果和 merged/ 逐位相同，基座读的是拷过去的那份 SFT。"""
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file

    name = pipeline["ppo"].parent.name
    original = tmp_path / "original" / name  # 会话共用的产物不能删：先拷一份自己的，再拷走、删掉这一份
    for stage in ("sft", "rm", "ppo"):
        shutil.copytree(pipeline[stage], original / stage)
    moved = tmp_path / "elsewhere" / name
    shutil.copytree(original, moved)
    shutil.rmtree(original)
    monkeypatch.chdir(moved.parent)
    model = AutoPeftModelForCausalLM.from_pretrained(f"{name}/ppo")
    assert (moved.parent / model.get_base_model().config._name_or_path).resolve() == (moved / "sft").resolve()
    merged = model.merge_and_unload().state_dict()
    expected = load_file(str(moved / "ppo" / "merged" / "model.safetensors"))
    for k, w in expected.items():
        assert torch.equal(merged[k], w), k
    assert inference.resolve_adapter_base(moved / "ppo") == (moved / "sft").resolve()


def test_merged_model_loads_and_stops_at_im_end_without_think(pipeline):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(pipeline["ppo"] / "merged"))  # 普通 from_pretrained 就能读
    loaded = inference.load_policy("ppo", pipeline["ppo"])
    assert loaded.folder == pipeline["ppo"] / "merged"
    tok = loaded.tokenizer
    prompts = [data.prompt_ids(tok, q) for q in ["你好", "今天星期几", "你是谁", "最近怎么样"] * 2]
    torch.manual_seed(0)
    responses = sampling.generate(loaded.model, tok, prompts, max_new_tokens=64, do_sample=True, temperature=0.7)
    assert any(r and r[-1] == tok.eos_token_id for r in responses)
    for r in responses:
        assert tok.eos_token_id not in r[:-1]  # 停在第一个 <|im_end|>
        assert "<think>" not in tok.decode(r)


def test_ppo_curves_are_logged_once_per_update(pipeline):
    info = stage_info(pipeline["ppo"])
    scalars = read_scalars(info["tensorboard"])
    cfg = info["options"]["training"]
    updates = info["episodes"] // (cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"])
    for tag in TB_TAGS:
        assert len(scalars[f"ppo/{tag}"]) == updates, tag  # README 里写的名字就是 TensorBoard 里看到的名字
    assert all(0 < r <= 1 for r in scalars["ppo/rollout/distinct_ratio"])
    assert "FutureWarning" not in pipeline["runs"]["ppo"].stderr  # 终端里只有我们的行和进度条


def test_tiny_ppo_raises_the_mean_rm_score(pipeline):
    """tiny 配方：objective/scores 后 1/4 的均值高于前 1/4（调配方时 4 个种子都升了 0.24–0.51）。"""
    scores = read_scalars(stage_info(pipeline["ppo"])["tensorboard"])["ppo/objective/scores"]
    first, last = quarter_means(scores)
    assert last > first, (first, last, scores)


def test_optimizer_really_steps_epochs_times_minibatches_per_update(pipeline):
    info = stage_info(pipeline["ppo"])
    cfg = info["options"]["training"]
    updates = info["episodes"] // (cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"])
    assert info["optimizer_steps"] == updates * cfg["num_ppo_epochs"] * cfg["num_mini_batches"]


def test_refuses_a_train_set_smaller_than_one_rollout_batch(pipeline):
    r = run_inline("train_ppo.py", *stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", pipeline["tmp"] / "ppo-small",
                                               "--sft_model_path", pipeline["sft"], "--reward_model_path", pipeline["rm"],
                                               "--per_device_train_batch_size", 4096), tmp=pipeline["tmp"])
    assert r.returncode == 2
    assert "少于一个 rollout 批量" in last_line(r.stderr) and "Traceback" not in r.stderr
    assert not (pipeline["tmp"] / "ppo-small").exists()


def test_ppo_before_sft_names_the_script_to_run(tmp_path, tiny_model):
    r = run_inline("train_ppo.py", *stage_args("ppo", tiny_model, tmp_path / "ppo", "--sft_model_path",
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
                              peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"),
                              run_info={}, stop=training.GracefulStop(),
                              reward=rewards.TrainingReward([("rm", rewards.RMTerm("rm", reward, tok), 1.0)], 1.0,
                                                            tok.eos_token_id))


def test_gradient_checkpointing_is_on_for_policy_and_critic(trainer):
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert unwrapped.policy.get_base_model().is_activation_checkpointing
    assert unwrapped.value_model.is_activation_checkpointing


def test_rollout_generation_with_gradient_checkpointing_sees_the_whole_context(trainer):
    """train 模式 + 梯度检查点会让每层丢掉 KV cache；rollout 生成必须和不开检查点时逐 token 相同。"""
    from transformers import GenerationConfig

    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    tok = trainer.processing_class
    ids, mask = sampling.left_pad(tok, [data.ppo_example(tok, {"question": q})["input_ids"] for q in ["你好", "几点了"]])
    gen = GenerationConfig(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    policy.train()
    with torch.no_grad():
        # 与 PPOTrainer 1.12 的调用方式相同（经过 RLHFPPOTrainer 包的那层 generate）
        rollout = policy.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                  return_dict_in_generate=True, output_scores=True).sequences
    assert policy.training  # 生成完恢复 train 模式
    policy.get_base_model().activation_checkpointing_disable()
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


def test_reward_path_pointing_at_the_wrong_stage_is_refused(pipeline):
    r = run_inline("train_ppo.py", *stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", pipeline["tmp"] / "ppo-x",
                                               "--sft_model_path", pipeline["sft"], "--reward_model_path",
                                               pipeline["sft"]), tmp=pipeline["tmp"])
    assert r.returncode == 3
    assert "--reward_model_path 需要奖励模型" in last_line(r.stderr) and "Traceback" not in r.stderr


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
        inference.load_policy("ppo", moved)
    config["base_model_name_or_path"] = str(pipeline["sft"])  # 放回去：不用 merged/ 也能现场合并
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert inference.load_policy("ppo", moved).folder == moved


# ---------------------------------------------------------------- 被打断之后续训

# 4 次更新 × 每次 8 条：够在第 1、2 次更新之后打断再接上；同时存 critic，好和续训的结果逐个张量比较
SHORT = ["--per_device_train_batch_size", 8, "--total_episodes", 32, "--save_critic", "true"]


def ppo_args(pipeline, out, *extra) -> list:
    """train_ppo.py 的选项：tiny 配方 + SHORT；交给 run_script / run_inline，或前面加上 PPO 交给 run_until。"""
    return stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", out, "--sft_model_path", pipeline["sft"],
                      "--reward_model_path", pipeline["rm"], *SHORT, *extra)


PPO = [sys.executable, ROOT / "train_ppo.py"]


@pytest.fixture(scope="module")
def uninterrupted(pipeline):
    """同样的选项一口气跑完：续训的结果要和它一模一样。"""
    out = pipeline["tmp"] / "ppo-whole"
    r = run_inline("train_ppo.py", *ppo_args(pipeline, out), tmp=pipeline["tmp"])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def assert_same_as_uninterrupted(resumed, whole):
    """同样的 episode 数和优化器步数、每次更新的学习率和分数曲线相同（续训接着原来的步数画），最终的适配器和 critic
    逐位相同（CPU 上同样的线程数下 PyTorch 的运算是确定的，所以可以要求 bitwise 相等）。"""
    from safetensors.torch import load_file

    a, b = stage_info(whole), stage_info(resumed)
    assert (b["episodes"], b["optimizer_steps"]) == (a["episodes"], a["optimizer_steps"]) == (32, 4 * 2 * 2)
    assert b["resumed"] and b["resumed"]["at_update"] >= 1
    for tag in ("ppo/lr", "ppo/objective/scores"):
        assert read_by_step(b["tensorboard"], tag) == read_by_step(a["tensorboard"], tag), tag
    assert sorted(read_by_step(b["tensorboard"], "ppo/lr")) == list(range(1, 5))
    for name in ("adapter_model.safetensors", "critic/model.safetensors"):
        wa, wb = load_file(str(whole / name)), load_file(str(resumed / name))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k, (wa[k] - wb[k]).abs().max())


def test_a_run_killed_then_shut_down_resumes_to_exactly_the_uninterrupted_result(pipeline, uninterrupted, tmp_path):
    """同一次运行先后被两种方式打断，最后和一口气跑完的结果逐位相同：
    1. 每次更新都存；第 2 个检查点正在写的时候 SIGKILL（断电、OOM killer）：第 1 个仍然完整可用。
    2. 续训前换了选项或数据：退出码 2、一行说清楚哪里不同、检查点一个文件都不动。
    3. 用原来的选项续训（true = 最新的检查点），这次被云平台关机的 SIGTERM 打断：这次更新结束后存检查点，打印一条续训命令。
    4. 照着那条命令运行：跑完，结果和没中断的一样，检查点文件夹删掉。"""
    out = pipeline["tmp"] / "ppo-resume"
    work = pipeline["tmp"] / "ppo-resume-trainer-checkpoints"
    env = offline_env(pipeline["tmp"])
    # outputs.pause_point：写第 2 个检查点写到一半（适配器写完、critic 和优化器还没写）时停住，等到这一行再 SIGKILL
    paused = {**env, outputs.PAUSE_ENV: "ppo-checkpoint-2"}
    proc, _ = run_until([*PPO, *ppo_args(pipeline, out, "--save_steps", 1)], paused, "[pause] ppo-checkpoint-2")
    assert (work / ".checkpoint-2.tmp" / "adapter").is_dir() and not (work / "checkpoint-2").exists()
    proc.kill()
    proc.wait(60)
    assert (work / "checkpoint-1" / ppo.RESUME_FILE).is_file() and not out.exists()
    before = sorted(p.relative_to(work) for p in work.rglob("*"))

    changed = run_inline("train_ppo.py", *ppo_args(pipeline, out, "--resume_from_checkpoint", "true", "--learning_rate",
                                                   0.01), tmp=pipeline["tmp"])
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "--learning_rate" in last_line(changed.stderr) and "不能接着训练" in last_line(changed.stderr)
    other_data = tmp_path / "d.jsonl"
    rows = (ROOT / "data" / "sample.jsonl").read_text(encoding="utf-8").splitlines()
    other_data.write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")  # 少一行：划分指纹不同
    changed = run_inline("train_ppo.py", *ppo_args(pipeline, out, "--resume_from_checkpoint", "true", "--dataset",
                                                   other_data), tmp=pipeline["tmp"])
    assert changed.returncode == 2 and "数据或划分" in last_line(changed.stderr), changed.stderr[-2000:]
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before and not out.exists()  # 什么都没写

    proc, lines = run_until([*PPO, *ppo_args(pipeline, out, "--save_steps", 1, "--resume_from_checkpoint", "true")], env,
                            "objective/scores")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(300) == 130
    line = last_line("".join(lines))
    assert line.startswith("错误：收到 SIGTERM") and "Traceback" not in "".join(lines), line
    assert not out.exists()
    command = shlex.split(line.split("继续训练：", 1)[1])
    assert command[:2] == ["python", "train_ppo.py"]
    r = run_inline("train_ppo.py", *command[2:], tmp=pipeline["tmp"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_as_uninterrupted(out, uninterrupted)
    steps = read_steps(stage_info(out)["tensorboard"], "ppo/objective/scores")
    assert [s for s in steps if s != 2] == [1, 3, 4]  # 只有第 2 步可能画两次：被 SIGKILL 的运行画了它、却没存下来
    assert not work.exists()


def test_bf16_frozen_weights_give_the_same_rollout_log_probs_and_rm_scores_as_fp32(pipeline):
    """--bf16 时 PPO 的冻结权重（SFT 基座 = 参考模型、RM）用 bf16，LoRA 留在 fp32（peft 默认）。同样的回复在两种精度下：
    每个 token 的 log 概率相差 < 0.05（PPO 的 ratio = exp(差)，0.05 是 cliprange 0.1 的一半；迷你模型上实测最大 0.007），
    RM 分数相差 < 0.05（分数在 ±2 之间，实测最大 0.006）。bf16 尾数 8 位，单次舍入约 0.2%，层数越多累积越多：
    真实尺寸的数字看 GPU 自检。"""
    from peft import PeftModel

    tok = models.load_tokenizer(pipeline["sft"], padding_side="left")
    prompts = [data.prompt_ids(tok, q) for q in ["你好", "今天星期几", "你是谁", "最近怎么样", "天气怎么样", "吃饭了吗"]]

    def policy(dtype):
        m = PeftModel.from_pretrained(models.load_causal_lm(pipeline["sft"], tok, dtype=dtype), str(pipeline["ppo"]))
        return m.eval()

    fp32, bf16 = policy(torch.float32), policy(frozen_dtype(True))
    assert {p.dtype for n, p in bf16.named_parameters() if "lora_" in n} == {torch.float32}
    assert bf16.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    torch.manual_seed(0)
    responses = sampling.generate(fp32, tok, prompts, 16, do_sample=True, temperature=1.0)
    ids, mask = sampling.left_pad(tok, [p + r for p, r in zip(prompts, responses)])

    def response_log_probs(model):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        return torch.cat([lp[i, ids.shape[1] - 1 - len(r):] for i, r in enumerate(responses)])

    assert (response_log_probs(fp32) - response_log_probs(bf16)).abs().max() < 0.05
    questions = [data.messages(q) for q in ["你好", "今天星期几", "你是谁", "最近怎么样", "天气怎么样", "吃饭了吗"]]
    texts = [scoring.response_text(tok, r) for r in responses]
    scores = [torch.tensor(scoring.score(models.load_score_model(pipeline["rm"], tok, dtype=d), tok, questions, texts))
              for d in (torch.float32, torch.bfloat16)]
    assert (scores[0] - scores[1]).abs().max() < 0.05


def test_train_scores_with_the_reward_module_and_turns_off_trls_own_eos_penalty(trainer, monkeypatch):
    """missing_eos 只扣一次：train() 期间 TRL 自己那次（按 token 扣 missing_eos_penalty）关掉，交给 rewards.MissingEOS；之后复原。"""
    from trl.experimental.ppo import PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    seen = {}
    monkeypatch.setattr(PPOTrainer, "train", lambda self: seen.update(penalty=self.args.missing_eos_penalty,
                                                                      get_reward=trl_ppo.get_reward))
    original, trainer.args.missing_eos_penalty = trl_ppo.get_reward, 1.0
    trainer.train()
    assert seen["penalty"] is None and seen["get_reward"] is not original
    assert trainer.args.missing_eos_penalty == 1.0 and trl_ppo.get_reward is original
