"""SFT 与 RM 端到端（tiny 配方，真实脚本子进程）：产物能用 from_pretrained 读、loss 下降、RM 准确率高于随机、曲线都在。"""

import json

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from qwen_rlhf import outputs


def info(folder):
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))


def test_sft_checkpoint_loads_stops_at_im_end_and_loss_fell(pipeline):
    folder = pipeline["sft"]
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tok.pad_token == "<|endoftext|>"
    scalars = outputs.read_scalars(info(folder)["tensorboard"])
    losses = scalars["train/loss"]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 1.0, losses
    assert not (folder.parent / "sft-trainer-checkpoints").exists()  # 成功后中间检查点已删除
    saved = info(folder)["options"]
    assert saved["script"]["sft_fraction"] == 0.5 and saved["training"]["learning_rate"] == 0.005


def test_rm_checkpoint_loads_and_held_out_accuracy_is_logged_above_chance(pipeline):
    folder = pipeline["rm"]
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    assert model.config.num_labels == 1 and model.config.pad_token_id == 151643
    stage = info(folder)
    assert stage["eval"]["eval_accuracy"] > 0.7
    scalars = outputs.read_scalars(stage["tensorboard"])
    assert scalars["eval/accuracy"][-1] > 0.7 and "eval/margin" in scalars and "train/loss" in scalars
    assert "[评估] 留出偏好对准确率" in pipeline["runs"]["rm"].stdout
    assert stage["split_fingerprint"] == info(pipeline["sft"])["split_fingerprint"]
