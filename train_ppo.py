"""第 3 步：PPO。actor = SFT 模型 + LoRA（参考模型 = 同一模型关掉适配器），critic = 基座 + 打分头（全参数），
奖励 = 第 2 步的 RM（冻结）。用 TRL 1.12 的 trl.experimental.ppo.PPOTrainer，不自己写 PPO 循环。

    python train_ppo.py                                   # 默认：读 checkpoint/sft 和 checkpoint/rm，写到 checkpoint/ppo
    python train_ppo.py --response_length 128 --local_rollout_forward_batch_size 4   # 显存更小的卡
    python train_ppo.py --config configs/tiny/ppo.yaml    # 离线小模型演示
    torchrun --nproc_per_node 2 train_ppo.py ...          # 多卡（或 accelerate launch --config_file configs/accelerate/ddp.yaml）

产物：checkpoint/ppo（LoRA 适配器 + 分词器 + stage.json）与 checkpoint/ppo/merged（合并后的完整模型）；
曲线：tensorboard/ppo/<时间>/，看 objective/scores 是否上升、objective/kl 是否失控、rollout/distinct_ratio 是否塌缩。
"""

import shutil
from dataclasses import dataclass, field

from qwen_rlhf import data, errors, models, options, outputs, ppo, training  # noqa: I001  先于 trl.experimental 导入（见 __init__）
from qwen_rlhf.errors import EXIT_MISSING, UserError
from trl.experimental.ppo import PPOConfig

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class PPOArgs(options.CommonArgs):
    lora_r: int = field(default=32, metadata={"help": "LoRA 的秩 r"})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA 的 alpha（缩放 = alpha / r）"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA 的 dropout（PPO 训练时 TRL 会关掉所有 dropout）"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS), metadata={"help": "加 LoRA 的线性层名"}
    )
    critic_init: str = field(
        default="base", metadata={"help": "critic 的初始化：base = 基座 + 新打分头（原仓库做法）；rm = 从奖励模型开始",
                                  "choices": ["base", "rm"]}
    )
    max_prompt_length: int = field(default=256, metadata={"help": "提示超过这么多 token 的问题不参与 PPO（会打印数量）"})
    save_critic: bool = field(default=False, metadata={"help": "同时把训练后的 critic 保存到 <output_dir>/critic"})


# 复现原仓库：单卡 2 × 累积 4（minibatch 1 个，避开 TRL 的累积 × minibatch 计数错误），rollout 前向批量 8，
# 2 个 PPO epoch，lr 5e-6，vf_coef 0.5，cliprange 0.1 / 0.5，1000 个 episode，回复最长 200，kl 0.05
DEFAULTS = dict(
    output_dir="checkpoint/ppo", sft_model_path="checkpoint/sft", reward_model_path="checkpoint/rm",
    per_device_train_batch_size=2, gradient_accumulation_steps=4, num_mini_batches=1,
    local_rollout_forward_batch_size=8, num_ppo_epochs=2, learning_rate=5e-6, vf_coef=0.5, cliprange=0.1,
    cliprange_value=0.5, total_episodes=1000, response_length=200, kl_coef=0.05, stop_token="eos",
    missing_eos_penalty=1.0, report_to=["tensorboard"], logging_steps=1, save_strategy="no",
    num_sample_generations=0,
)


def check_options(args: PPOArgs, cfg: PPOConfig) -> None:
    """在加载任何模型之前检查会让 TRL 报错、卡死或悄悄算错的组合。"""
    if cfg.fp16:
        raise UserError("PPO 不支持 fp16（容易出现 NaN）：去掉 --fp16，GPU 支持时用 --bf16 true，否则用 fp32。")
    if cfg.response_length <= 0:
        raise UserError(f"--response_length 必须为正数，现在是 {cfg.response_length}。")
    if cfg.gradient_accumulation_steps > 1 and cfg.num_mini_batches > 1:
        # TRL 1.12 在这种组合下少算优化器步数（见 shared notes：累积 2 × minibatch 2 只更新 2 次而不是 4 次）
        raise UserError("--gradient_accumulation_steps 大于 1 时 --num_mini_batches 必须为 1（TRL 1.12 会少做优化器更新）。")
    local_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if local_batch % cfg.num_mini_batches:
        raise UserError(f"每卡 rollout 批量 {local_batch} 不能被 --num_mini_batches {cfg.num_mini_batches} 整除。")
    if args.max_prompt_length <= 0:
        raise UserError(f"--max_prompt_length 必须为正数，现在是 {args.max_prompt_length}。")


def main():
    # ---------------------------------------------------------------- 选项
    args, cfg = options.parse([PPOArgs, PPOConfig], {**DEFAULTS, **options.precision_defaults(allow_fp16=False)})
    check_options(args, cfg)
    training.refuse_zero3_for_ppo(cfg)
    final = options.output_path(cfg.output_dir)
    outputs.check_writable(final, args.overwrite_output_dir)
    sft_path, rm_path = options.input_path(cfg.sft_model_path), options.input_path(cfg.reward_model_path)
    sft_info = models.read_stage(sft_path, "sft", "python train_sft.py")
    rm_info = models.read_stage(rm_path, "rm", "python train_rm.py")

    # ---------------------------------------------------------------- 数据
    from accelerate import PartialState

    rows = data.load_rows(args.dataset, args.strict)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    for name, info in (("SFT", sft_info), ("RM", rm_info)):
        if info.get("split_fingerprint") != split.fingerprint:
            raise UserError(
                f"{name} 训练时用的数据或划分和这次不同（--dataset 的内容 / --split_seed / --test_size 不一致），"
                "留出的问题可能被训练过。请用与前两步相同的选项运行。", EXIT_MISSING)
    tokenizer = models.load_tokenizer(sft_path, padding_side="left")  # PPO 在提示后面直接生成：必须左填充
    examples = [data.ppo_example(tokenizer, r, args.system_prompt) for r in data.unique_questions(split.train)]
    examples = data.drop_long(examples, ("input_ids",), args.max_prompt_length, "PPO 提示")
    world = PartialState().num_processes
    rollout_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    if len(examples) < rollout_batch:
        raise UserError(f"PPO 训练问题只有 {len(examples)} 个，少于一个 rollout 批量 {rollout_batch}"
                        f"（{world} 个进程 × 每卡 {cfg.per_device_train_batch_size} × 累积 {cfg.gradient_accumulation_steps}），"
                        "TRL 会一直等数据。请用更多数据或减小批量。")
    data.say(f"[数据] PPO 使用 {len(examples)} 个训练问题；全局 rollout 批量 {rollout_batch}，共 {cfg.total_episodes} 个 episode。")

    # ---------------------------------------------------------------- 模型
    from peft import LoraConfig

    base = models.resolve_model_source(args.model_name_or_path)
    policy = models.load_causal_lm(sft_path, tokenizer, args.allow_pickle)
    reward = models.load_score_model(rm_path, tokenizer, args.allow_pickle, dtype=ppo.rollout_dtype(cfg.bf16))
    critic = models.load_score_model(rm_path if args.critic_init == "rm" else base, tokenizer, args.allow_pickle)
    models.check_same_family(tokenizer, {"SFT": policy, "RM": reward, "critic": critic})
    if cfg.gradient_checkpointing:
        ppo.enable_gradient_checkpointing(policy, critic, kwargs=cfg.gradient_checkpointing_kwargs)
    ppo.set_mixed_precision(cfg.bf16)
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                             target_modules=args.lora_target_modules, task_type="CAUSAL_LM")

    # ---------------------------------------------------------------- 训练
    from datasets import Dataset

    tb = outputs.tensorboard_dir("ppo")
    cfg.output_dir = str(final.parent / f".{final.name}.trainer")  # TRL 会建这个目录；save_strategy=no 时里面是空的
    trainer = ppo.RLHFPPOTrainer(
        args=cfg, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
        value_model=critic, train_dataset=Dataset.from_list(examples), peft_config=peft_config,
        callbacks=[training.FiniteGuard("ppo"), training.GracefulStop(raise_on_stop=True)],
    )
    interrupted = False
    try:
        trainer.train()
    except training.StopRequested:
        interrupted = True
    finally:
        shutil.rmtree(cfg.output_dir, ignore_errors=True)

    # ---------------------------------------------------------------- 保存
    target = final.parent / f"{final.name}-interrupted" if interrupted else final
    if interrupted:  # 所有进程都要调用：里面的 main_process_first 是一次同步，只有主进程调用会卡住它
        outputs.check_writable(target, overwrite=True)
    if trainer.is_world_process_zero():
        with outputs.StagingDir(target) as tmp:
            ppo.save_policy(trainer, tmp, sft_path, tokenizer)
            if args.save_critic:
                trainer.accelerator.unwrap_model(trainer.model).value_model.save_pretrained(str(tmp / "critic"))
            outputs.write_stage_info(
                tmp, "ppo", {"script": options.to_jsonable(args), "training": cfg.to_dict()},
                sft_path=str(sft_path.resolve()), sft_path_in_repo=models._rel(sft_path), reward_model=str(rm_path),
                base_model=str(base), split_fingerprint=split.fingerprint, interrupted=interrupted,
                optimizer_steps=trainer.optimizer_steps, episodes=trainer.state.episode, tensorboard=str(tb),
                launch=training.launch_info(cfg),
            )
        if interrupted:
            raise ppo.interrupted_error(models._rel(target))
        print(f"[完成] PPO 适配器已保存到 {models._rel(final)}，合并后的完整模型在 {models._rel(final / 'merged')}。")


if __name__ == "__main__":
    errors.run(main, "ppo")
