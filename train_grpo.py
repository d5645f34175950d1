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

from qwen_rlhf import data, device, errors, models, options, outputs, policy, recipes, rewards, training
from qwen_rlhf.cost import Cost
from qwen_rlhf.sampled import GRPOTrainer  # TRL 的 GRPOTrainer，只在采样时切到 eval（梯度检查点的问题，见 sampled.py）


def main():
    # ---------------------------------------------------------------- 选项
    cost = Cost()
    args, cfg, lora = recipes.parse("grpo")  # 选项与默认值在 qwen_rlhf/recipes.py
    final = options.output_path(cfg.output_dir)
    outputs.check_writable(final, args.overwrite_output_dir)
    sft_path, rm_path = options.input_path(args.sft_model_path), options.input_path(args.reward_model_path)
    sft_info = outputs.check_kind(sft_path, ("sft",), "--sft_model_path")
    rm_info = outputs.check_reward_model(rm_path)
    device.announce_device("grpo", cfg.use_cpu, device.precision_of(cfg), model=sft_path)

    # ---------------------------------------------------------------- 数据
    rows = data.load_rows(args.dataset, args.strict, args.columns)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    outputs.check_same_split({"SFT": sft_info, "RM": rm_info}, split.fingerprint, "train_grpo.py")
    tokenizer = models.load_tokenizer(sft_path, padding_side="left")  # 在提示后面直接生成：左填充
    examples = [data.sampled_example(r, args.system_prompt) for r in data.unique_questions(split.train)]
    examples = data.drop_long_prompts(tokenizer, examples, args.max_prompt_length, "GRPO 提示")
    data.say(f"[数据] GRPO 使用 {len(examples)} 个训练问题；每个问题 {cfg.num_generations} 个回答。")

    # ---------------------------------------------------------------- 模型
    frozen = policy.frozen_dtype(cfg.bf16)  # 只训练 LoRA：SFT 基座（也是参考模型）和 RM 在 bf16 时就用 bf16
    actor = models.load_causal_lm(sft_path, tokenizer, args.allow_pickle, dtype=frozen)
    rm = models.load_score_model(rm_path, tokenizer, args.allow_pickle, dtype=frozen)
    models.check_same_family(tokenizer, {"SFT": actor, "RM": rm})
    reward = rewards.build("grpo", args, cfg, tokenizer, rm.to(cfg.device), load_rm=lambda p: models.load_score_model(
        p, tokenizer, args.allow_pickle, dtype=frozen).to(cfg.device))  # --reward_funcs 的各项（TRL 的 reward_funcs 约定）

    # ---------------------------------------------------------------- 训练
    from datasets import Dataset
    from transformers import set_seed

    tb, stop = training.prepare(cfg, final, "grpo")
    # LoRA 适配器的随机初始化在 TRL 训练器的 __init__ 里（peft_config），Trainer 自己的 set_seed 在那之后：先播种，
    # 同样的选项和 --seed 得到同样的适配器、同样的训练
    set_seed(cfg.seed)
    snapshots = training.Snapshots("grpo", args.snapshots, final, training.seen_per_step(cfg), seed=cfg.seed,
                                   split_fingerprint=split.fingerprint)
    trainer = GRPOTrainer(
        model=actor, reward_funcs=reward.trl_funcs(), args=cfg, train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer, peft_config=lora.peft_config(),
        callbacks=[training.FiniteGuard("grpo"), stop, snapshots],
    )
    training.use_stage_tensorboard(trainer, "grpo", tb)
    snapshots.bind(lambda: trainer.accelerator.unwrap_model(trainer.model))
    training.fit(trainer, stop.bind(trainer), cfg.resume_from_checkpoint)

    # ---------------------------------------------------------------- 保存
    training.save_result(
        trainer, final, "grpo", tokenizer,
        {"script": options.to_jsonable(args), "training": cfg.to_dict(), "lora": options.to_jsonable(lora)}, cost,
        export=partial(policy.save_policy, sft_path=sft_path, tokenizer=tokenizer, snapshots=snapshots.folder),
        answers=reward.answers * cfg.world_size, reward_model=str(rm_path), split_fingerprint=split.fingerprint,
        reward=reward.record(),
        optimizer_steps=trainer.state.global_step, progress=snapshots.progress(trainer.state), tensorboard=str(tb),
    )


if __name__ == "__main__":
    errors.run(main, "grpo")
