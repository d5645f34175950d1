"""SFT 与 RM 端到端（tiny 配方，真实脚本子进程）：产物能用 from_pretrained 读、loss 下降、RM 准确率高于随机、
每个阶段自己一组曲线、stage.json 记下花费。"""

import json

import pytest
import torch
from conftest import ROOT, last_line, read_scalars, run_inline, stage_args
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def info(folder):
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))


def test_sft_checkpoint_loads_stops_at_im_end_and_loss_fell(sft):
    folder = sft.folder
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "left"  # 生成模型的分词器存成左填充（批量生成要它）
    scalars = read_scalars(info(folder)["tensorboard"])
    losses = scalars["sft/loss"]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 1.0, losses
    assert all(tag.startswith("sft/") for tag in scalars)  # 自己一组卡片，不和 RM 的 loss 挤在一根纵轴上
    assert not (folder.parent / "sft-trainer-checkpoints").exists()  # 成功后中间检查点已删除


def test_rm_checkpoint_loads_and_held_out_accuracy_is_logged_above_chance(sft, rm):
    folder = rm.folder
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    assert model.config.num_labels == 1 and model.config.pad_token_id == 151643
    assert AutoTokenizer.from_pretrained(str(folder)).padding_side == "right"  # 分数读在最后一个非填充 token 上
    stage = info(folder)
    assert stage["eval"]["eval_accuracy"] > 0.7
    scalars = read_scalars(stage["tensorboard"])
    assert scalars["rm/eval/accuracy"][-1] > 0.7 and "rm/eval/margin" in scalars and "rm/loss" in scalars
    assert all(tag.startswith("rm/") for tag in scalars)
    from pathlib import Path

    assert len(list(Path(stage["tensorboard"]).glob("events.out.tfevents.*"))) == 1  # 训练后的 evaluate() 不另开文件
    assert "[评估] 留出偏好对准确率" in rm.run.stdout
    assert stage["split_fingerprint"] == info(sft.folder)["split_fingerprint"]
    assert stage["role"] == "proxy" and stage["fluency_pairs"] == 0  # 默认是 PPO 们优化的代理 RM


def test_an_rm_trained_with_lora_is_saved_merged_and_plain_transformers_gives_our_scores(rm_lora):
    """--use_peft true：输出文件夹是完整的打分模型（没有适配器文件），纯 transformers 读出的分数 = scoring.score 的，
    而且就是训练时的那个模型：在留出偏好对上重新打分，准确率和分差等于训练结束时 evaluate() 记下的（一批评估完）。"""
    from qwen_rlhf import data, models, scoring

    folder = rm_lora.folder
    stage = info(folder)
    assert stage["lora"]["r"] == 32 and stage["lora"]["alpha"] == 8 and "score" in stage["lora"]["modules_to_save"]
    assert stage["options"]["lora"]["lora_r"] == 32 and 0 < stage["trainable_params"] < 200_000  # 全参数约 1000 万
    assert not (folder / "adapter_config.json").exists() and (folder / "model.safetensors").is_file()

    tok = AutoTokenizer.from_pretrained(str(folder))
    plain = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    split = data.split_rows(data.load_rows("data/sample.jsonl").rows, 0.1, 42)  # tiny 配方的划分与 max_length
    held_out = [r for r in split.test if all(len(ids) <= 128 for ids in data.rm_example(tok, r).values())]
    prompts = [data.messages(r["question"]) for r in held_out]
    chosen, rejected = [r["chosen"] for r in held_out], [r["rejected"] for r in held_out]
    with torch.no_grad():
        theirs = [plain(**tok.apply_chat_template([*p, {"role": "assistant", "content": a}], enable_thinking=False,
                                                  return_tensors="pt", return_dict=True)).logits[0, 0].item()
                  for p, a in zip(prompts, chosen)]
    ours = models.load_score_model(folder, models.load_tokenizer(folder))
    assert scoring.score(ours, tok, prompts, chosen) == pytest.approx(theirs, abs=1e-5)

    margins = [c - r for c, r in zip(scoring.score(ours, tok, prompts, chosen), scoring.score(ours, tok, prompts, rejected))]
    assert sum(m > 0 for m in margins) / len(margins) == pytest.approx(stage["eval"]["eval_accuracy"], abs=1e-6)
    assert sum(margins) / len(margins) == pytest.approx(stage["eval"]["eval_margin"], abs=1e-4)


def test_ppo_starts_its_critic_from_an_rm_trained_with_lora(sft, rm_lora, tmp_path):
    """--critic_init rm 读合并好的 LoRA RM 和读全参数 RM 一样：学习率 0 时存下的 critic 逐位等于这个 RM。"""
    from safetensors.torch import load_file

    out = tmp_path / "ppo"
    r = run_inline("train_ppo.py", *stage_args("ppo", sft.folder.parent / "tiny-qwen3", out, "--sft_model_path", sft.folder,
                                               "--reward_model_path", rm_lora.folder, "--critic_init", "rm",
                                               "--learning_rate", 0, "--total_episodes", 16, "--response_length", 4,
                                               "--snapshots", 0, "--save_critic", "true"), tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    critic, reward = load_file(str(out / "critic" / "model.safetensors")), load_file(str(rm_lora.folder / "model.safetensors"))
    assert critic.keys() == reward.keys() and all(torch.equal(critic[k], reward[k]) for k in critic)
    assert info(out)["reward_model"] == str(rm_lora.folder)


def test_every_stage_records_and_prints_what_it_cost(pipeline):
    for stage, unit, key in (("sft", "token/s", "tokens_per_s"), ("rm", "对/s", "pairs_per_s"),
                             ("ppo", "episode/s", "episodes_per_s")):
        cost = info(pipeline[stage])["cost"]
        assert cost["wall_s"] > 0 and cost["peak_rss_mb"] > 100 and cost["throughput"][key] > 0, (stage, cost)
        line = last_line(pipeline["runs"][stage].stdout)
        assert line.startswith("[完成]") and "用时" in line and "峰值内存" in line and unit in line, line
    assert info(pipeline["ppo"])["cost"]["throughput"]["rollout_tokens_per_s"] > 0


def test_same_seed_gives_a_bitwise_equal_reward_model_and_another_seed_a_different_one(tiny_model, tmp_path):
    """打分头是随机初始化的：种子必须在建模型之前播下（CPU 上同样的线程数下运算是确定的，可以要求逐位相等）。"""
    from safetensors.torch import load_file

    def rm(name, seed):
        out = tmp_path / name
        r = run_inline("train_rm.py", *stage_args("rm", tiny_model, out, "--seed", seed, "--max_steps", 2), tmp=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        return load_file(str(out / "model.safetensors"))

    a, b, c = rm("a", 1), rm("b", 1), rm("c", 2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["score.weight"], c["score.weight"])


def test_a_dataset_with_other_column_names_trains_through_columns_and_is_refused_without(tiny_model, tmp_path):
    """--columns 对应过的数据和用本仓库列名的同一份数据是同一批行（数据指纹相同）；不对应就一行拒绝、什么都不写。"""
    from qwen_rlhf import data

    rows = [json.loads(line) for line in (ROOT / "data" / "sample.jsonl").read_text(encoding="utf-8").splitlines()]
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text("".join(json.dumps({"instruction": r["question"], "good": r["chosen"], "bad": r["rejected"]},
                                         ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "rm"
    r = run_inline("train_rm.py", *stage_args("rm", tiny_model, out, "--dataset", theirs, "--max_steps", 1,
                                              "--columns", "question=instruction,chosen=good,rejected=bad"), tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ours = data.split_rows(data.load_rows("data/sample.jsonl").rows, 0.1, 42)  # tiny 配方：test_size 0.1，默认 split_seed
    assert info(out)["split_fingerprint"] == ours.fingerprint
    r = run_inline("train_rm.py", *stage_args("rm", tiny_model, tmp_path / "rm2", "--dataset", theirs), tmp=tmp_path)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "的列是 bad,good,instruction" in lines[0], r.stderr[-3000:]
    assert not (tmp_path / "rm2").exists()
