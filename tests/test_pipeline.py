"""SFT 与 RM 端到端（tiny 配方，真实脚本子进程）：产物能用 from_pretrained 读、loss 下降、RM 准确率高于随机、
每个阶段自己一组曲线、stage.json 记下花费。"""

import json

from conftest import last_line, read_scalars
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def info(folder):
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))


def test_sft_checkpoint_loads_stops_at_im_end_and_loss_fell(pipeline):
    folder = pipeline["sft"]
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tok.pad_token == "<|endoftext|>"
    scalars = read_scalars(info(folder)["tensorboard"])
    losses = scalars["sft/loss"]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 1.0, losses
    assert all(tag.startswith("sft/") for tag in scalars)  # 自己一组卡片，不和 RM 的 loss 挤在一根纵轴上
    assert not (folder.parent / "sft-trainer-checkpoints").exists()  # 成功后中间检查点已删除


def test_rm_checkpoint_loads_and_held_out_accuracy_is_logged_above_chance(pipeline):
    folder = pipeline["rm"]
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    assert model.config.num_labels == 1 and model.config.pad_token_id == 151643
    stage = info(folder)
    assert stage["eval"]["eval_accuracy"] > 0.7
    scalars = read_scalars(stage["tensorboard"])
    assert scalars["rm/eval/accuracy"][-1] > 0.7 and "rm/eval/margin" in scalars and "rm/loss" in scalars
    assert all(tag.startswith("rm/") for tag in scalars)
    from pathlib import Path

    assert len(list(Path(stage["tensorboard"]).glob("events.out.tfevents.*"))) == 1  # 训练后的 evaluate() 不另开文件
    assert "[评估] 留出偏好对准确率" in pipeline["runs"]["rm"].stdout
    assert stage["split_fingerprint"] == info(pipeline["sft"])["split_fingerprint"]


def test_every_stage_records_and_prints_what_it_cost(pipeline):
    for stage, unit, key in (("sft", "token/s", "tokens_per_s"), ("rm", "对/s", "pairs_per_s"),
                             ("ppo", "episode/s", "episodes_per_s")):
        cost = info(pipeline[stage])["cost"]
        assert cost["wall_s"] > 0 and cost["peak_rss_mb"] > 100 and cost["throughput"][key] > 0, (stage, cost)
        line = last_line(pipeline["runs"][stage].stdout)
        assert line.startswith("[完成]") and "用时" in line and "峰值内存" in line and unit in line, line
    assert info(pipeline["ppo"])["cost"]["throughput"]["rollout_tokens_per_s"] > 0
