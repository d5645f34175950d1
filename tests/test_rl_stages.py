"""GRPO / RLOO / DPO：端到端（产物种类、适配器 + merged/、stage.json 的花费、带阶段前缀的曲线）、chat 按名字找到它们、
错误种类或错误划分的输入在加载模型前就被拒绝、SIGTERM 之后按打印的命令续训、两个进程、采样时梯度检查点不丢上文。
每个运行只有几步（tiny 配方的 --max_steps 改小）：这里证明路径通，分数是否上升看 bench/ 与 compare 的结果。"""

import json
import shlex
import signal
import sys

import pytest
import torch
from conftest import (RL, ROOT, last_line, offline_env, read_scalars, read_steps, rl_args, run_inline, run_script,
                      run_until)

from qwen_rlhf import data, inference, models, outputs, policy
from qwen_rlhf.stages import STAGES

def stage_info(folder):
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("stage", RL)
def test_each_stage_writes_a_trained_adapter_a_merged_model_cost_and_its_own_curves(rl_runs, pipeline, stage):
    from safetensors.torch import load_file

    folder = rl_runs[stage].out
    info = stage_info(folder)
    assert info["stage"] == stage and outputs.kind_of(folder) == stage == outputs.kind_of(folder / "merged")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 64)  # tiny 配方的 LoRA，和 tiny PPO 相同
    assert (folder / "merged" / "model.safetensors").is_file()
    tree = folder.parent  # sft、rm 和这个阶段并排的文件夹（真实流程里是 checkpoint/）：peft 相对放它的文件夹找基座
    assert config["base_model_name_or_path"] == f"{tree.name}/sft"
    assert inference.resolve_adapter_base(folder) == pipeline["sft"].resolve()
    lora_b = [w for k, w in load_file(str(folder / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(w) > 0 for w in lora_b)  # B 初始化为 0：非零说明训练过
    loaded = inference.load_policy(stage, folder)  # chat / benchmark 的加载路径：优先 merged/
    assert loaded.folder == folder / "merged"
    speed = info["cost"]["throughput"]
    assert set(speed) == {STAGES[stage].throughput} and all(v > 0 for v in speed.values())
    assert info["cost"]["wall_s"] > 0 and info["optimizer_steps"] == 3
    scalars = read_scalars(info["tensorboard"])
    assert scalars and all(tag.startswith(f"{stage}/") for tag in scalars)
    assert len(scalars[f"{stage}/loss"]) == 3
    if stage == "dpo":
        assert info["num_pairs"] > 0 and len(scalars["dpo/rewards/margins"]) == 3
    else:  # RM 分数每步一个点；回答数 = 3 步 × 8 个
        assert len(scalars[f"{stage}/rewards/rm/mean"]) == 3
        assert info["answers"] == 3 * 8  # 吞吐的分子；分母是 Trainer 记的训练用时（不含加载），所以不和 wall_s 比


def test_chat_talks_to_a_new_stage_by_name(rl_runs, pipeline):
    r = run_inline("chat.py", "--model", "grpo", "--grpo_model_path", rl_runs["grpo"].out, "--prompt", "你好",
                   "--max_new_tokens", 4, "--seed", 0, tmp=pipeline["tmp"])
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]
    paths = inference.PolicyPaths(dpo_model_path=str(rl_runs["dpo"].out)).paths()
    name, folder, info = inference.policy_folder("dpo", paths, "unused")
    assert (name, folder, info["stage"]) == ("dpo", rl_runs["dpo"].out, "dpo")


@pytest.mark.parametrize("stage, option, wrong, message", [
    ("grpo", "--sft_model_path", "rm", "是奖励模型（RM），--sft_model_path 需要SFT 模型"),
    ("rloo", "--reward_model_path", "sft", "是SFT 模型，--reward_model_path 需要奖励模型（RM）"),
    ("dpo", "--sft_model_path", "ppo", "是PPO 模型，--sft_model_path 需要SFT 模型"),
])
def test_wrong_kind_inputs_are_refused_before_any_model_loads(pipeline, tmp_path, stage, option, wrong, message):
    args = rl_args(pipeline["tmp"], stage, tmp_path / "out")
    args[args.index(option) + 1] = pipeline[wrong]
    r = run_inline(f"train_{stage}.py", *args, tmp=tmp_path)
    assert r.returncode == 3 and message in last_line(r.stderr) and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage", RL)
def test_inputs_trained_on_another_split_are_refused(pipeline, tmp_path, stage):
    r = run_inline(f"train_{stage}.py", *rl_args(pipeline["tmp"], stage, tmp_path / "out", "--split_seed", 7), tmp=tmp_path)
    assert r.returncode == 3 and "数据或划分和这次不同" in last_line(r.stderr), r.stderr[-2000:]
    assert f"train_{stage}.py" in last_line(r.stderr) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage", RL)
def test_same_options_and_seed_give_the_same_adapter_bit_for_bit(rl_runs, pipeline, stage):
    """同样的选项、同样的 --seed 再训练一次：适配器和每个快照逐位相同。TRL 在训练器的 __init__ 里建 LoRA 适配器
    （随机初始化 A），Trainer 自己的 set_seed 在那之后，所以脚本要在建训练器之前播种。"""
    from safetensors.torch import load_file

    again = pipeline["tmp"] / f"{stage}-again"
    r = run_script(f"train_{stage}.py", *rl_args(pipeline["tmp"], stage, again), tmp=pipeline["tmp"])
    assert r.returncode == 0, r.stderr[-3000:]
    first = rl_runs[stage].out
    for a, b in [(first, again), *zip(policy.snapshots_of(first), policy.snapshots_of(again))]:
        wa, wb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), (a, b)
    assert len(policy.snapshots_of(again)) == 3


def test_grpo_stopped_by_sigterm_resumes_from_the_printed_command_and_finishes(rl_runs, pipeline):
    """平台关机的 SIGTERM：这一步结束后存 Trainer 检查点、打印续训命令、退出码 130、结果文件夹不出现；
    照着命令运行：从检查点接着跑完，曲线接着原来的步数，适配器和一口气跑完的逐位相同。（以前差到 0.14：适配器在播种
    之前建好，两次运行的 LoRA 初始值不同；续训恢复了权重，但被打断的那次本来就是另一个初始值开始的。）"""
    from safetensors.torch import load_file

    out = pipeline["tmp"] / "grpo-resume"
    env = offline_env(pipeline["tmp"])
    proc, lines = run_until([sys.executable, ROOT / "train_grpo.py", *rl_args(pipeline["tmp"], "grpo", out)], env, "'loss'")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(300) == 130
    line = last_line("".join(lines))
    assert line.startswith("错误：收到 SIGTERM") and "Traceback" not in "".join(lines), line
    assert not out.exists() and list((pipeline["tmp"] / "grpo-resume-trainer-checkpoints").glob("checkpoint-*"))
    command = shlex.split(line.split("继续训练：", 1)[1])
    assert command[:2] == ["python", "train_grpo.py"]
    r = run_inline("train_grpo.py", *command[2:], tmp=pipeline["tmp"])
    assert r.returncode == 0, r.stderr[-3000:]
    info = stage_info(out)
    assert info["optimizer_steps"] == 3 and read_steps(info["tensorboard"], "grpo/loss")[-1] == 3
    assert not (pipeline["tmp"] / "grpo-resume-trainer-checkpoints").exists()
    # 被打断之前存下的快照也活下来了，和续训后存的一起搬进结果里：每步一个（tiny 配方 4 个快照 > 3 步）
    assert [p.name for p in policy.snapshots_of(out)] == ["step-1", "step-2", "step-3"]
    resumed = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [w for k, w in resumed.items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(w) > 0 for w in lora_b)  # B 初始化为 0：非零说明训练过
    whole = load_file(str(rl_runs["grpo"].out / "adapter_model.safetensors"))  # 一口气跑完的同一个配置
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_dpo_on_two_processes_has_the_single_process_shape(rl_runs, pipeline):
    from test_distributed import file_names, launch

    out = pipeline["tmp"] / "dpo-ddp"
    r = launch("ddp", "train_dpo.py", 29677, *rl_args(pipeline["tmp"], "dpo", out, "--max_steps", 2), tmp=pipeline["tmp"])
    assert r.returncode == 0, r.stderr[-3000:]
    single, info = stage_info(rl_runs["dpo"].out), stage_info(out)
    assert info["launch"] == {"num_processes": 2, "device": "cpu", "zero_stage": None}
    assert file_names(out) == file_names(rl_runs["dpo"].out) and set(info) == set(single)
    assert set(read_scalars(info["tensorboard"])) == set(read_scalars(single["tensorboard"]))
    assert r.stdout.count("[完成]") == 1 and r.stdout.count("[数据] DPO 使用") == 1


def test_sampling_with_gradient_checkpointing_in_train_mode_sees_the_whole_context(tiny_model, tmp_path):
    """GRPOConfig 默认开梯度检查点，TRL 在 train 模式下采样：我们的 GRPOTrainer 采样出的 token 必须和不开检查点时一样。"""
    from datasets import Dataset
    from trl import GRPOConfig

    from qwen_rlhf.policy import LoRAArgs
    from qwen_rlhf.sampled import GRPOTrainer

    tok = models.load_tokenizer(tiny_model, padding_side="left")
    cfg = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=4,
                     num_generations=2, max_completion_length=12, report_to=[], gradient_checkpointing=True,
                     chat_template_kwargs={"enable_thinking": False})
    trainer = GRPOTrainer(model=models.load_causal_lm(tiny_model, tok), reward_funcs=lambda completions, **k: [0.0]
                          * len(completions), args=cfg, processing_class=tok, peft_config=LoRAArgs(lora_r=4).peft_config(),
                          train_dataset=Dataset.from_list([data.sampled_example({"question": "你好"})] * 4))
    prompts = [data.sampled_example({"question": q})["prompt"] for q in ("你好", "今天星期几")]
    model = trainer.accelerator.unwrap_model(trainer.model)

    def sample():
        torch.manual_seed(0)
        model.train()
        return trainer._generate(prompts)[1]  # completion_ids

    checkpointed = sample()
    assert all(m.training for m in model.modules())  # 采样完各层回到 train 模式
    model.get_base_model().activation_checkpointing_disable()
    assert sample() == checkpointed
