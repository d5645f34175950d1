"""第 3 步（和 PPO 对照）：DPO。actor = SFT 模型 + LoRA（和 PPO 同样的 LoRA），参考模型 = 关掉适配器的同一模型。
不采样、不用 RM、没有 critic：直接在训练集的偏好对（RM 的训练数据，从不用留出集）上，让 chosen 相对参考模型的
log 概率比 rejected 的高。用 TRL 1.12 的 DPOTrainer，原样使用（beta 用 TRL 的默认 0.1）。

    python train_dpo.py                                   # 默认：读 checkpoint/sft，写到 checkpoint/dpo
    python train_dpo.py --per_device_train_batch_size 2 --gradient_accumulation_steps 16   # 显存更小的卡
    python train_dpo.py --resume_from_checkpoint true     # 被 Ctrl-C / 关机打断后，从最新的检查点接着训练
    python train_dpo.py --config configs/tiny/dpo.yaml    # 离线小模型演示
    python train_dpo.py --add_prefs data/human_prefs.jsonl --output_dir checkpoint/dpo_mine   # 加上你在 chat.py 的盲评模式（arena）里投的票
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 train_dpo.py   # 多卡

产物：checkpoint/dpo（LoRA 适配器 + 分词器 + stage.json）与 checkpoint/dpo/merged（合并后的完整模型）；
训练中的可续训检查点在 checkpoint/dpo-trainer-checkpoints/，成功后删除。
曲线：tensorboard/dpo/<时间>/，看 dpo/loss 是否从 0.693 往下走、dpo/rewards/accuracies 是否上升、dpo/rewards/margins 是否变大。
"""

from trl import DPOTrainer

from qwen_rlhf import data, device, errors, models, options, outputs, policy, policy_run, prefs, recipes, sampling, stages
from qwen_rlhf import training
from qwen_rlhf.cost import Cost


def held_out_diagnosis(trainer, tokenizer, rows: list[dict], beta: float, system: str | None) -> dict:
    """训练结束后在留出偏好对上诊断一次（主进程；参考 = 关掉适配器的 SFT，和训练时 TRL 用的参考相同）：
    - 隐式奖励 β·(log π − log π_SFT)（整句回答，含 <|im_end|> 和其后的换行，和 TRL 训练时的分词相同）的偏好准确率：chosen 的比 rejected 的高的比例
      （0.5 ≈ 瞎猜；一点没变时奖励全为 0、准确率 0）；
    - log p(chosen)、log p(rejected) 相对 SFT 平均变了多少：两个都下降而准确率高，说明它学会了区分，却把概率挪到了
      两者以外的地方（例如更早结束）。
    和评测的精确 KL 同一遍计算（sampling.compare_to_reference：只在回答的位置上乘 lm_head），比 TRL 的 evaluate 省掉
    提示位置的 logits。"""
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    pairs = [data.dpo_token_ids(tokenizer, data.dpo_example(r, system)) for r in rows]  # 和训练时 TRL 的分词相同
    prompts = [p for p, _, _ in pairs] * 2
    answers = [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    _, ratios = sampling.compare_to_reference(model, tokenizer, prompts, answers, kl=False)
    model.train(was_training)
    chosen, rejected = [sum(x) for x in ratios[: len(rows)]], [sum(x) for x in ratios[len(rows):]]
    result = {"pairs": len(rows), "beta": beta,
              "preference_accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(rows),
              "logp_chosen_change": sum(chosen) / len(rows), "logp_rejected_change": sum(rejected) / len(rows)}
    print(f"[诊断] 留出 {len(rows)} 个偏好对：隐式奖励准确率 {result['preference_accuracy']:.3f}；相对 SFT，"
          f"log p(chosen) {result['logp_chosen_change']:+.2f}、log p(rejected) {result['logp_rejected_change']:+.2f}。",
          flush=True)
    return result


def main():
    # ---------------------------------------------------------------- 选项
    cost = Cost()
    args, cfg, lora = recipes.parse("dpo")  # 选项类与默认值在登记表 qwen_rlhf/stages.py 的这一项
    final = options.output_path(cfg.output_dir)
    outputs.check_writable(final, args.overwrite_output_dir)
    sft_path = options.input_path(args.sft_model_path)
    sft_info = outputs.check_kind(sft_path, ("sft",), "--sft_model_path")
    device.announce_device("dpo", cfg.use_cpu, device.precision_of(cfg), model=sft_path)

    # ---------------------------------------------------------------- 数据
    rows = data.load_rows(args.dataset, args.strict, args.columns)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    outputs.check_same_split({"SFT": sft_info}, split.fingerprint, "train_dpo.py")
    if args.add_prefs:  # 你的票只进训练集
        split.train += prefs.extra_pairs(args.add_prefs, split.test, args.strict)
    examples = [data.dpo_example(r, args.system_prompt) for r in split.train]  # 只用训练集：留出集留给 benchmark
    data.say(f"[数据] DPO 使用训练集的 {len(examples)} 个偏好对（留出 {len(split.test)} 行不参与训练）。")

    # ---------------------------------------------------------------- 模型
    tokenizer = models.load_tokenizer(sft_path)
    actor = models.load_causal_lm(sft_path, tokenizer, args.allow_pickle, dtype=policy.frozen_dtype(cfg.bf16))

    # ---------------------------------------------------------------- 训练
    from datasets import Dataset
    from transformers import set_seed

    wiring = policy_run.PolicyWiring.for_trainer(cfg, final, "dpo", args.snapshots, seed=cfg.seed,
                                                 split_fingerprint=split.fingerprint)
    # LoRA 适配器的随机初始化在 TRL 训练器的 __init__ 里（peft_config），Trainer 自己的 set_seed 在那之后：先播种，
    # 同样的选项和 --seed 得到同样的适配器、同样的训练
    set_seed(cfg.seed)
    trainer = DPOTrainer(
        model=actor, args=cfg, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
        peft_config=lora.peft_config(), callbacks=wiring.callbacks,
    )
    stop = wiring.bind(trainer, lambda: trainer.accelerator.unwrap_model(trainer.model))
    training.fit(trainer, stop, cfg.resume_from_checkpoint)
    # 诊断：留出偏好对（从不用来训练）上的隐式奖励准确率、log p(chosen) / log p(rejected) 相对 SFT 的变化：
    # 分得清"没学会偏好"和"学会了、但把概率挪到了别处"
    diagnosis = held_out_diagnosis(trainer, tokenizer, split.test, cfg.beta, args.system_prompt) \
        if split.test and trainer.is_world_process_zero() else None

    # ---------------------------------------------------------------- 保存
    training.save_result(
        trainer, final, "dpo", tokenizer,
        options.record(args, cfg, lora), cost,
        export=wiring.export(sft_path, tokenizer),
        split_fingerprint=split.fingerprint, num_pairs=len(examples), optimizer_steps=trainer.state.global_step,
        progress=wiring.progress(trainer), held_out=diagnosis, tensorboard=str(wiring.tb),
    )


if __name__ == "__main__":
    errors.run(main, stages.oom_hint("dpo"))
