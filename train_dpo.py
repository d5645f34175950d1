"""第 3 步（和 PPO 对照）：DPO。actor = SFT 模型 + LoRA（和 PPO 同样的 LoRA），参考模型 = 关掉适配器的同一模型。
不采样、不用 RM、没有 critic：直接在训练集的偏好对（RM 的训练数据，从不用留出集）上，让 chosen 相对参考模型的
log 概率比 rejected 的高。用 TRL 1.12 的 DPOTrainer，原样使用（beta 用 TRL 的默认 0.1）。

    python train_dpo.py                                   # 默认：读 checkpoint/sft，写到 checkpoint/dpo
    python train_dpo.py --per_device_train_batch_size 2 --gradient_accumulation_steps 16   # 显存更小的卡
    python train_dpo.py --resume_from_checkpoint true     # 被 Ctrl-C / 关机打断后，从最新的检查点接着训练
    python train_dpo.py --config configs/tiny/dpo.yaml    # 离线小模型演示
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 train_dpo.py   # 多卡

产物：checkpoint/dpo（LoRA 适配器 + 分词器 + stage.json）与 checkpoint/dpo/merged（合并后的完整模型）；
训练中的可续训检查点在 checkpoint/dpo-trainer-checkpoints/，成功后删除。
曲线：tensorboard/dpo/<时间>/，看 dpo/loss 是否从 0.693 往下走、dpo/rewards/accuracies 是否上升、dpo/rewards/margins 是否变大。
"""

from functools import partial

from trl import DPOTrainer

from qwen_rlhf import data, device, errors, models, options, outputs, policy, recipes, training
from qwen_rlhf.cost import Cost


def main():
    # ---------------------------------------------------------------- 选项
    cost = Cost()
    args, cfg, lora = recipes.parse("dpo")  # 选项与默认值在 qwen_rlhf/recipes.py
    final = options.output_path(cfg.output_dir)
    outputs.check_writable(final, args.overwrite_output_dir)
    sft_path = options.input_path(args.sft_model_path)
    sft_info = outputs.check_kind(sft_path, ("sft",), "--sft_model_path")
    device.announce_device("dpo", cfg.use_cpu, device.precision_of(cfg), model=sft_path)

    # ---------------------------------------------------------------- 数据
    rows = data.load_rows(args.dataset, args.strict, args.columns)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    outputs.check_same_split({"SFT": sft_info}, split.fingerprint, "train_dpo.py")
    examples = [data.dpo_example(r, args.system_prompt) for r in split.train]  # 只用训练集：留出集留给 benchmark
    data.say(f"[数据] DPO 使用训练集的 {len(examples)} 个偏好对（留出 {len(split.test)} 行不参与训练）。")

    # ---------------------------------------------------------------- 模型
    tokenizer = models.load_tokenizer(sft_path)
    actor = models.load_causal_lm(sft_path, tokenizer, args.allow_pickle, dtype=policy.frozen_dtype(cfg.bf16))

    # ---------------------------------------------------------------- 训练
    from datasets import Dataset

    tb, stop = training.prepare(cfg, final, "dpo")
    trainer = DPOTrainer(
        model=actor, args=cfg, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
        peft_config=lora.peft_config(), callbacks=[training.FiniteGuard("dpo"), stop],
    )
    training.use_stage_tensorboard(trainer, "dpo", tb)
    training.fit(trainer, stop.bind(trainer), cfg.resume_from_checkpoint)

    # ---------------------------------------------------------------- 保存
    training.save_result(
        trainer, final, "dpo", tokenizer,
        {"script": options.to_jsonable(args), "training": cfg.to_dict(), "lora": options.to_jsonable(lora)}, cost,
        export=partial(policy.save_policy, sft_path=sft_path, tokenizer=tokenizer),  # 也写下基座位置（sft_path…）
        split_fingerprint=split.fingerprint, num_pairs=len(examples), optimizer_steps=trainer.state.global_step,
        tensorboard=str(tb),
    )


if __name__ == "__main__":
    errors.run(main, "dpo")
