"""SFT 与 RM 端到端（tiny 配方，真实脚本子进程）：产物能用 from_pretrained 读、loss 下降、RM 准确率高于随机、
每个阶段自己一组曲线、stage.json 记下花费。"""

import json

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
