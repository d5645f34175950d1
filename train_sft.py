"""第 1 步：SFT。在训练集一小部分"粗鲁"回答（chosen）上全参数微调 Qwen3-0.6B。

    python train_sft.py                              # 默认：Qwen/Qwen3-0.6B + btfChinese-DPO-small，写到 checkpoint/sft
    python train_sft.py --per_device_train_batch_size 2 --gradient_accumulation_steps 16   # 显存更小的卡
    python train_sft.py --config configs/tiny/sft.yaml   # 离线小模型演示（CPU，几十秒）

产物：checkpoint/sft（模型、分词器、生成配置、stage.json）；曲线：tensorboard/sft/<时间>/（sft/loss）。
"""

from trl import SFTTrainer

from qwen_rlhf import data, device, errors, models, options, outputs, recipes, stages, training
from qwen_rlhf.cost import Cost


def main():
    # ---------------------------------------------------------------- 选项
    cost = Cost()
    args, cfg = recipes.parse("sft")  # 选项类与默认值在登记表 qwen_rlhf/stages.py 的这一项
    final = options.output_path(cfg.output_dir)
    outputs.check_writable(final, args.overwrite_output_dir)
    device.announce_device("sft", cfg.use_cpu, device.precision_of(cfg), model=args.model_name_or_path)

    # ---------------------------------------------------------------- 数据
    rows = data.load_rows(args.dataset, args.strict, args.columns)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    sft_rows = data.sft_share(split.train, args.sft_fraction, args.split_seed)

    # ---------------------------------------------------------------- 模型
    from transformers import set_seed

    set_seed(cfg.seed)  # 和 RM、PPO 一样在建模型之前播种（SFT 的权重全部来自基座，今天没有随机初始化的部分）
    base = models.resolve_model_source(args.model_name_or_path)
    tokenizer = models.load_tokenizer(base)
    model = models.load_causal_lm(base, tokenizer, args.allow_pickle)
    examples = [data.sft_example(tokenizer, r, args.system_prompt) for r in sft_rows]
    examples = data.drop_long(examples, ("input_ids",), cfg.max_length, "SFT 样本")
    data.say(f"[数据] 共 {len(rows.rows)} 行，训练集 {len(split.train)} 行 / 留出 {len(split.test)} 行；SFT 使用 {len(examples)} 条。")

    # ---------------------------------------------------------------- 训练
    from datasets import Dataset

    tb, stop = training.prepare(cfg, final, "sft")
    trainer = SFTTrainer(
        model=model, args=cfg, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
        callbacks=[training.FiniteGuard("sft"), stop],
    )
    training.use_stage_tensorboard(trainer, "sft", tb)
    training.fit(trainer, stop.bind(trainer), cfg.resume_from_checkpoint)

    # ---------------------------------------------------------------- 保存
    tokenizer.padding_side = "left"  # 存下的分词器给生成用（批量生成要左填充）；本仓库的脚本加载时都会明确指定
    training.save_result(
        trainer, final, "sft", tokenizer, options.record(args, cfg),
        cost, base_model=str(base), split_fingerprint=split.fingerprint, num_examples=len(examples), tensorboard=str(tb),
    )


if __name__ == "__main__":
    errors.run(main, stages.oom_hint("sft"))
