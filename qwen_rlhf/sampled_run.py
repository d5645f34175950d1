"""GRPO 和 RLOO 的同一个运行流程（train_grpo.py、train_rloo.py 各一行调用它）：两者只差训练器（优势的基线怎么算），
选项、数据、模型、奖励、快照与导出完全相同。actor = SFT 模型 + LoRA（和 PPO 同样的 LoRA），参考模型 = 关掉适配器的
同一模型，奖励 = 第 2 步的 RM（冻结，和 PPO、benchmark 同一个打分函数）。
"""

from __future__ import annotations

from . import data, device, models, options, outputs, recipes, rewards, sampled, training
from .cost import Cost
from .policy import frozen_dtype
from .policy_run import PolicyWiring
from .stages import STAGES

# TRL 的 GRPOTrainer / RLOOTrainer，只在采样时切到 eval（梯度检查点的问题，见 sampled.py）
TRAINERS = {"grpo": sampled.GRPOTrainer, "rloo": sampled.RLOOTrainer}


def main(stage: str):
    # ---------------------------------------------------------------- 选项
    cost = Cost()
    name, script = stage.upper(), STAGES[stage].script
    args, cfg, lora = recipes.parse(stage)  # 选项类与默认值在登记表 qwen_rlhf/stages.py 的这一项
    final = options.output_path(cfg.output_dir)
    outputs.check_writable(final, args.overwrite_output_dir)
    sft_path = options.input_path(args.sft_model_path)
    sft_info = outputs.check_kind(sft_path, ("sft",), "--sft_model_path")
    # 只用规则（--reward_funcs 不含 rm）时不读 --reward_model_path：没训练过 RM 也能跑，也不白占一份显存
    rm_path = options.input_path(args.reward_model_path) if rewards.RM in args.reward_funcs else None
    rm_info = outputs.check_reward_model(rm_path) if rm_path else None
    device.announce_device(stage, cfg.use_cpu, device.precision_of(cfg), model=sft_path)

    # ---------------------------------------------------------------- 数据
    rows = data.load_rows(args.dataset, args.strict, args.columns)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    outputs.check_same_split({"SFT": sft_info, "RM": rm_info}, split.fingerprint, script)
    tokenizer = models.load_tokenizer(sft_path, padding_side="left")  # 在提示后面直接生成：左填充
    examples = [data.sampled_example(r, args.system_prompt) for r in data.unique_questions(split.train)]
    examples = data.drop_long_prompts(tokenizer, examples, args.max_prompt_length, f"{name} 提示")
    data.say(f"[数据] {name} 使用 {len(examples)} 个训练问题；每个问题 {cfg.num_generations} 个回答。")

    # ---------------------------------------------------------------- 模型
    frozen = frozen_dtype(cfg.bf16)  # 只训练 LoRA：SFT 基座（也是参考模型）和 RM 在 bf16 时就用 bf16
    actor = models.load_causal_lm(sft_path, tokenizer, args.allow_pickle, dtype=frozen)
    rm = models.load_score_model(rm_path, tokenizer, args.allow_pickle, dtype=frozen).to(cfg.device) if rm_path else None
    models.check_same_family(tokenizer, {"SFT": actor, **({"RM": rm} if rm else {})})
    reward = rewards.build(stage, args, cfg, tokenizer, rm, load_rm=lambda p: models.load_score_model(
        p, tokenizer, args.allow_pickle, dtype=frozen).to(cfg.device))  # --reward_funcs 的各项（TRL 的 reward_funcs 约定）

    # ---------------------------------------------------------------- 训练
    from datasets import Dataset
    from transformers import set_seed

    wiring = PolicyWiring.for_trainer(cfg, final, stage, args.snapshots, seed=cfg.seed,
                                      split_fingerprint=split.fingerprint)
    # LoRA 适配器的随机初始化在 TRL 训练器的 __init__ 里（peft_config），Trainer 自己的 set_seed 在那之后：先播种，
    # 同样的选项和 --seed 得到同样的适配器、同样的训练
    set_seed(cfg.seed)
    trainer = TRAINERS[stage](
        model=actor, reward_funcs=reward.trl_funcs(), args=cfg, train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer, peft_config=lora.peft_config(), callbacks=wiring.callbacks,
    )
    stop = wiring.bind(trainer, lambda: trainer.accelerator.unwrap_model(trainer.model))
    training.fit(trainer, stop, cfg.resume_from_checkpoint)

    # ---------------------------------------------------------------- 保存
    training.save_result(
        trainer, final, stage, tokenizer,
        options.record(args, cfg, lora), cost,
        export=wiring.export(sft_path, tokenizer),
        answers=reward.answers * cfg.world_size, reward_model=str(rm_path) if rm_path else None, split_fingerprint=split.fingerprint,
        reward=reward.record(), optimizer_steps=trainer.state.global_step, progress=wiring.progress(trainer),
        tensorboard=str(wiring.tb),
    )
