"""第 3 步：PPO。actor = SFT 模型 + LoRA（参考模型 = 同一模型关掉适配器），critic = 基座 + 打分头（全参数），
奖励 = 第 2 步的 RM（冻结）。用 TRL 1.12 的 trl.experimental.ppo.PPOTrainer，不自己写 PPO 循环。

    python train_ppo.py                                   # 默认：读 checkpoint/sft 和 checkpoint/rm，写到 checkpoint/ppo
    python train_ppo.py --response_length 128 --local_rollout_forward_batch_size 4   # 显存更小的卡
    python train_ppo.py --resume_from_checkpoint true     # 被 Ctrl-C / 关机打断后，从最新的检查点接着训练
    python train_ppo.py --config configs/tiny/ppo.yaml    # 离线小模型演示
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 train_ppo.py   # 多卡

产物：checkpoint/ppo（LoRA 适配器 + 分词器 + stage.json）与 checkpoint/ppo/merged（合并后的完整模型）；
训练中每 --save_steps 次更新存一个可续训的检查点到 checkpoint/ppo-trainer-checkpoints/，成功后删除。
曲线：tensorboard/ppo/<时间>/，看 ppo/objective/scores 是否上升、ppo/objective/kl 是否失控、ppo/rollout/distinct_ratio 是否塌缩。
"""

from qwen_rlhf import data, device, errors, models, options, outputs, policy, ppo, recipes, rewards, training  # noqa: I001  先于 trl.experimental 导入（见 __init__）
from qwen_rlhf.cost import Cost
from qwen_rlhf.errors import UserError
from qwen_rlhf.recipes import PPOArgs
from qwen_rlhf.policy_run import PolicyWiring
from qwen_rlhf.stages import oom_hint
from trl.experimental.ppo import PPOConfig

# 续训时可以和原来不同的选项（只影响保存、日志和显示）；其余任何一个不同都拒绝续训
RESUME_FREE = {"output_dir", "resume_from_checkpoint", "overwrite_output_dir", "traceback", "save_steps",
               "save_total_limit", "save_strategy", "logging_steps", "report_to", "save_critic", "disable_tqdm"}


def check_options(args: PPOArgs, cfg: PPOConfig) -> None:
    """在加载任何模型之前检查会让 TRL 报错、卡死或悄悄算错的组合。"""
    if cfg.fp16:
        raise UserError("PPO 不支持 fp16（容易出现 NaN）：去掉 --fp16，GPU 支持时用 --bf16 true，否则用 fp32。")
    if cfg.response_length <= 0:
        raise UserError(f"--response_length 必须为正数，现在是 {cfg.response_length}。")
    if cfg.gradient_accumulation_steps > 1 and cfg.num_mini_batches > 1:
        # TRL 1.12 在这种组合下少做优化器更新（累积 2 × minibatch 2 只更新 2 次而不是 4 次）：它的 train() 把
        # accelerator.accumulate 套在 minibatch 循环里面（trl/experimental/ppo/ppo_trainer.py），两者的计数互相错开
        raise UserError("--gradient_accumulation_steps 大于 1 时 --num_mini_batches 必须为 1（TRL 1.12 会少做优化器更新）。")
    local_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if local_batch % cfg.num_mini_batches:
        raise UserError(f"每卡 rollout 批量 {local_batch} 不能被 --num_mini_batches {cfg.num_mini_batches} 整除。")
    if args.max_prompt_length <= 0:
        raise UserError(f"--max_prompt_length 必须为正数，现在是 {args.max_prompt_length}。")
    if args.critic_init not in ("base", "rm"):
        raise UserError(f"--critic_init 只能是 base 或 rm，现在是 {args.critic_init}。")


def run_info(args, cfg, lora, split, sft_info, rm_info, world: int) -> dict:
    """写进每个检查点的"这是哪一次运行"：续训时逐项核对，不同就拒绝（免得把两次不同的训练拼在一起）。"""
    import json

    opts = {k: v for o in (args, cfg, lora) for k, v in options.to_jsonable(o).items() if k not in RESUME_FREE}
    return {"options": json.loads(json.dumps(opts, default=str)), "split_fingerprint": split.fingerprint,
            "sft": [sft_info.get("created"), str(options.input_path(cfg.sft_model_path))],
            "rm": [rm_info.get("created"), str(options.input_path(cfg.reward_model_path))], "num_processes": world}


def check_resumable(checkpoint, info: dict) -> dict:
    """续训前（加载模型之前）核对检查点：同样的选项、数据划分、SFT / RM、进程数。返回检查点里的记录。"""
    file = checkpoint / ppo.RESUME_FILE
    if not file.is_file():
        raise UserError(f"{options.display_path(checkpoint)} 不是 train_ppo.py 写的可续训检查点（缺少 {ppo.RESUME_FILE}）。")
    saved = outputs.read_json(file, ppo.RESUME_DAMAGED)
    diffs = [f"--{k}: {saved['options'].get(k)} → {v}" for k, v in info["options"].items() if saved["options"].get(k) != v]
    names = {"split_fingerprint": "数据或划分（--dataset / --split_seed / --test_size）", "sft": "SFT 模型",
             "rm": "奖励模型", "num_processes": "进程数"}
    diffs += [f"{names[k]}不同" for k in names if saved.get(k) != info[k]]
    if diffs:
        raise UserError(f"检查点 {options.display_path(checkpoint)} 来自另一次不同的训练（{'；'.join(diffs[:3])}），不能接着训练。"
                        "请用原来的选项，或去掉 --resume_from_checkpoint 重新开始。")
    return saved


def main():
    # ---------------------------------------------------------------- 选项
    cost = Cost()
    args, cfg, lora = recipes.parse("ppo")  # 选项类与默认值在登记表 qwen_rlhf/stages.py 的这一项
    check_options(args, cfg)
    training.warn_zero_ppo_not_resumable(cfg)
    final = options.output_path(cfg.output_dir)
    work = outputs.trainer_work_dir(final)
    outputs.check_writable(final, args.overwrite_output_dir)
    sft_path, rm_path = options.input_path(cfg.sft_model_path), options.input_path(cfg.reward_model_path)
    sft_info = outputs.check_kind(sft_path, ("sft",), "--sft_model_path")
    rm_info = outputs.check_reward_model(rm_path)
    device.announce_device("ppo", cfg.use_cpu, device.precision_of(cfg), model=sft_path)

    # ---------------------------------------------------------------- 数据
    from accelerate import PartialState

    rows = data.load_rows(args.dataset, args.strict, args.columns)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    world = PartialState().num_processes
    info = run_info(args, cfg, lora, split, sft_info, rm_info, world)
    resume = training.resume_arg(cfg.resume_from_checkpoint, work)
    saved = check_resumable(options.input_path(resume), info) if resume else None  # 先于划分检查：说清楚是哪一项不同
    outputs.check_same_split({"SFT": sft_info, "RM": rm_info}, split.fingerprint, "train_ppo.py")
    tokenizer = models.load_tokenizer(sft_path, padding_side="left")  # PPO 在提示后面直接生成：必须左填充
    examples = [data.ppo_example(tokenizer, r, args.system_prompt) for r in data.unique_questions(split.train)]
    examples = data.drop_long(examples, ("input_ids",), args.max_prompt_length, "PPO 提示",
                              "--max_prompt_length")
    rollout_batch = options.per_update(cfg, world)  # PPOConfig 的 world_size 要等训练器建好才有
    if len(examples) < rollout_batch:
        raise UserError(f"PPO 训练问题只有 {len(examples)} 个，少于一个 rollout 批量 {rollout_batch}"
                        f"（{world} 个进程 × 每卡 {cfg.per_device_train_batch_size} × 累积 {cfg.gradient_accumulation_steps}），"
                        "TRL 会一直等数据。请用更多数据或减小批量。")
    data.say(f"[数据] PPO 使用 {len(examples)} 个训练问题；全局 rollout 批量 {rollout_batch}，共 {cfg.total_episodes} 个 episode。")

    # ---------------------------------------------------------------- 模型
    from transformers import set_seed

    # Trainer 会在建模型前 set_seed，TRL 1.12 的 PPOTrainer 不会：LoRA 的随机初始化、critic 新打分头、minibatch 的
    # 打乱（numpy）于是每次都不同，同样的 --seed 跑两次结果也不同，续训更无从"和没中断一样"。
    set_seed(cfg.seed)
    base = models.resolve_model_source(args.model_name_or_path)
    frozen = policy.frozen_dtype(cfg.bf16)  # 只训练 LoRA：SFT 基座（也是参考模型）和 RM 在 bf16 时就用 bf16
    actor = models.load_causal_lm(sft_path, tokenizer, args.allow_pickle, dtype=frozen)
    reward = models.load_score_model(rm_path, tokenizer, args.allow_pickle, dtype=frozen)
    critic = models.load_score_model(rm_path if args.critic_init == "rm" else base, tokenizer, args.allow_pickle)
    models.check_same_family(tokenizer, {"SFT": actor, "RM": reward, "critic": critic})
    training_reward = rewards.build("ppo", args, cfg, tokenizer, reward, load_rm=lambda p: models.load_score_model(
        p, tokenizer, args.allow_pickle, dtype=frozen).to(cfg.device))  # --reward_funcs 的各项，和 GRPO / RLOO 同一个模块
    if cfg.gradient_checkpointing:
        ppo.enable_gradient_checkpointing(actor, critic, kwargs=cfg.gradient_checkpointing_kwargs)
    ppo.set_mixed_precision(cfg.bf16)

    # ---------------------------------------------------------------- 训练
    from datasets import Dataset

    tb = options.input_path(saved["tensorboard"]) if saved else outputs.tensorboard_dir("ppo", final)  # 续训：接着原来的曲线画
    info["tensorboard"] = str(tb)
    cfg.output_dir = str(work)
    wiring = PolicyWiring("ppo", args.snapshots, final, lambda state: state.episode, training.GracefulStop(), tb,
                          seed=cfg.seed, split_fingerprint=split.fingerprint)
    trainer = ppo.RLHFPPOTrainer(
        args=cfg, processing_class=tokenizer, model=actor, ref_model=None, reward_model=reward,
        value_model=critic, train_dataset=Dataset.from_list(examples), peft_config=lora.peft_config(),
        callbacks=wiring.callbacks, run_info=info, stop=wiring.stop, reward=training_reward,
    )
    stop = wiring.bind(trainer, lambda: trainer.accelerator.unwrap_model(trainer.model).policy)
    if resume:
        trainer.resume(options.input_path(resume))
    try:
        trainer.train()
    except training.StopRequested:
        raise training.interrupted(trainer, stop) from None

    # ---------------------------------------------------------------- 保存
    # 适配器由 peft 自己的 save_pretrained 写（只在主进程）。不用 TRL 的 PPOTrainer.save_model：它在 DeepSpeed 下把
    # self.deepspeed 换成 policy 模型再交给 Trainer.save_model，transformers 5 在那里读 self.deepspeed.config.get(...)，
    # 拿到的是 Qwen3Config，AttributeError（ZeRO-2 的 PPO 保存时崩溃）
    def save_adapter(folder):
        if trainer.is_world_process_zero():
            trainer.accelerator.unwrap_model(trainer.model).policy.save_pretrained(folder)

    def export(tmp):  # 适配器已写进 tmp：这里加 merged/、快照和（--save_critic）critic
        if args.save_critic:
            trainer.accelerator.unwrap_model(trainer.model).value_model.save_pretrained(str(tmp / "critic"))
        return wiring.export(sft_path, tokenizer)(tmp)

    done = trainer.state.episode - (saved["episode"] if saved else 0)  # 续训时只算这一次跑的
    training.save_result(
        trainer, final, "ppo", tokenizer, options.record(args, cfg, lora), cost, export=export, save_model=save_adapter,
        throughput=dict(episodes_per_s=done / trainer.train_seconds,
                        rollout_tokens_per_s=trainer.rollout_tokens / max(trainer.rollout_seconds, 1e-9)),
        reward_model=str(rm_path), reward=training_reward.record(), base_model=str(base),
        split_fingerprint=split.fingerprint, optimizer_steps=trainer.optimizer_steps, episodes=trainer.state.episode,
        progress=wiring.progress(trainer), tensorboard=str(tb),
        resumed={"checkpoint": options.display_path(resume), "at_update": saved["global_step"]} if saved else None,
    )


if __name__ == "__main__":
    errors.run(main, oom_hint("ppo"))
