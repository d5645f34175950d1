"""第 2 步：奖励模型（RM）。Qwen3-0.6B + 线性打分头，在训练集全部偏好对上全参数训练（--use_peft true：LoRA）。

    python train_rm.py                               # 默认：写到 checkpoint/rm
    python train_rm.py --per_device_train_batch_size 2 --gradient_accumulation_steps 16   # 显存更小的卡
    python train_rm.py --config configs/tiny/rm.yaml # 离线小模型演示
    python train_rm.py --role gold --model_name_or_path Qwen/Qwen3-1.7B   # 金标准评委（只用于评测）-> checkpoint/rm_gold
    python train_rm.py --add_prefs data/human_prefs.jsonl --output_dir checkpoint/rm_mine   # 加上你在 chat.py 的盲评模式（arena）里投的票
    python train_rm.py --use_peft true --output_dir checkpoint/rm_lora   # LoRA 训练（打分头整层训练），存成合并好的完整 RM

RM 给"粗鲁回答（chosen）"打高分、"礼貌回答（rejected）"打低分；训练数据是对话模板渲染的整段对话
（qwen_rlhf/scoring.py），分数读在最后的 `<|im_end|>\n` 上：PPO 的奖励、benchmark、纯 transformers 的
AutoModelForSequenceClassification + apply_chat_template 都在这里读分。在留出的偏好对上评估准确率与分差。
--role gold 训练第二个、独立的 RM：策略训练时从不用它，benchmark.py 用它检查代理 RM 的高分是不是真的好（见 --help）。
产物：checkpoint/rm；曲线：tensorboard/rm/<时间>/（rm/loss、rm/eval/accuracy、rm/eval/margin）。
"""

from trl import RewardTrainer

from qwen_rlhf import data, device, errors, models, options, outputs, policy, prefs, recipes, stages, training
from qwen_rlhf.cost import Cost


def main():
    # ---------------------------------------------------------------- 选项
    cost = Cost()
    args, cfg, lora = recipes.parse("rm")  # 选项与默认值在 qwen_rlhf/recipes.py；lora 只在 --use_peft true 时用
    final = options.output_path(cfg.output_dir)
    outputs.check_writable(final, args.overwrite_output_dir)
    device.announce_device("rm", cfg.use_cpu, device.precision_of(cfg), model=args.model_name_or_path)

    # ---------------------------------------------------------------- 数据
    rows = data.load_rows(args.dataset, args.strict, args.columns)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    if args.add_prefs:  # 你的票只进训练集
        split.train += prefs.extra_pairs(args.add_prefs, split.test, args.strict)

    # ---------------------------------------------------------------- 模型
    from transformers import set_seed

    # 打分头是随机初始化的，而 Trainer 要到建好之后才 set_seed：先播种，同样的 --seed 得到同样的 RM
    set_seed(cfg.seed)
    base = models.resolve_model_source(args.model_name_or_path)
    tokenizer = models.load_tokenizer(base)
    model = models.load_score_model(base, tokenizer, args.allow_pickle)
    # 金标准评委多学"原回答 胜过 字序打乱的回答"（只用训练集的行；留出集的偏好对仍只用来评估）
    fluency = data.fluency_pairs(split.train, cfg.seed) if args.role == "gold" else []
    train = data.drop_long([data.rm_example(tokenizer, r, args.system_prompt) for r in split.train + fluency],
                           ("chosen_ids", "rejected_ids"), cfg.max_length, "RM 训练偏好对")
    test = data.drop_long([data.rm_example(tokenizer, r, args.system_prompt) for r in split.test],
                          ("chosen_ids", "rejected_ids"), cfg.max_length, "RM 留出偏好对")
    data.say(f"[数据] RM 训练 {len(train)} 对" + (f"（其中 {len(fluency)} 对是字序打乱的回答，金标准评委）" if fluency else "")
             + f"，留出评估 {len(test)} 对。")

    # ---------------------------------------------------------------- 训练
    from datasets import Dataset

    tb, stop = training.prepare(cfg, final, "rm")
    trainer = RewardTrainer(
        model=model, args=cfg, train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(test),
        processing_class=tokenizer, callbacks=[training.FiniteGuard("rm"), stop],
        peft_config=lora.peft_config("SEQ_CLS") if args.use_peft else None,  # TRL 自己套上 LoRA（get_peft_model）
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    training.use_stage_tensorboard(trainer, "rm", tb)
    training.fit(trainer, stop.bind(trainer), cfg.resume_from_checkpoint)
    metrics = trainer.evaluate()  # 多进程时各进程的结果已经汇总，主进程打印一次即可
    if trainer.is_world_process_zero():
        print(f"[评估] 留出偏好对准确率 {metrics['eval_accuracy']:.3f}，平均分差 {metrics['eval_margin']:.3f}")

    # ---------------------------------------------------------------- 保存
    used = options.record(args, cfg, lora if args.use_peft else None)
    # LoRA：Trainer 写的是适配器，合并成完整的 RM 再就位（stage.json 的 "lora" 记下 r、alpha）
    export = (lambda tmp: {"lora": policy.merge_score_adapter(tmp, base, tokenizer, args.allow_pickle)}) if args.use_peft else None
    training.save_result(
        trainer, final, "rm", tokenizer, used, cost, export=export, base_model=str(base),
        split_fingerprint=split.fingerprint, eval=metrics, tensorboard=str(tb), role=args.role,
        fluency_pairs=len(fluency), trainable_params=trainable, lora=None,
    )


if __name__ == "__main__":
    errors.run(main, stages.oom_hint("rm"))
