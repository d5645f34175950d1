"""第 3 步（和 PPO 对照）：GRPO。actor = SFT 模型 + LoRA（和 PPO 同样的 LoRA），参考模型 = 关掉适配器的同一模型，
奖励 = 第 2 步的 RM（冻结，和 PPO、benchmark 同一个打分函数）。没有 critic：每个问题采样 --num_generations 个回答，
优势 = 回答的分数减去这一组的均值（再除以组内标准差）。用 TRL 1.12 的 GRPOTrainer（只在采样时切到 eval，见 qwen_rlhf/sampled.py）。

    python train_grpo.py                                  # 默认：读 checkpoint/sft 和 checkpoint/rm，写到 checkpoint/grpo
    python train_grpo.py --per_device_train_batch_size 1 --gradient_accumulation_steps 8   # 显存更小的卡（每次更新仍是 8 个回答）
    python train_grpo.py --resume_from_checkpoint true    # 被 Ctrl-C / 关机打断后，从最新的检查点接着训练
    python train_grpo.py --config configs/tiny/grpo.yaml  # 离线小模型演示
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 train_grpo.py   # 多卡

默认和 PPO 同样的预算：125 个问题 × 8 个回答 = 1000 个回答（PPO 的 1000 个 episode），回答最长 200、温度 0.7、KL 0.05。
产物：checkpoint/grpo（LoRA 适配器 + 分词器 + stage.json）与 checkpoint/grpo/merged（合并后的完整模型）；
训练中每 --save_steps 步存一个可续训的检查点到 checkpoint/grpo-trainer-checkpoints/，成功后删除。
曲线：tensorboard/grpo/<时间>/，看 grpo/reward 是否上升、grpo/kl 是否失控、grpo/completions/mean_length 是否塌缩。
"""

from functools import partial

from qwen_rlhf import errors, sampled_run
from qwen_rlhf.stages import oom_hint

main = partial(sampled_run.main, "grpo")  # 和 train_rloo.py 同一个流程（qwen_rlhf/sampled_run.py），只差训练器

if __name__ == "__main__":
    errors.run(main, oom_hint("grpo"))
