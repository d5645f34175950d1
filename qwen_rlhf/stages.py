"""阶段登记表：一个阶段是什么（输入、TRL 的训练器和 Config、项目选项类与默认值、KL 系数的选项名、显存估算的公式、
tiny 配方、拒不拒绝 ZeRO-3、报告里的一段说明）只写在这里的一项。outputs / inference / training / recipes / memory /
benchmark / chat 的 --help、bench/gpu_check.py、bench/bench_rl_stages.py、scripts/compare.sh 和评测报告都读它
（tests/test_stages.py 只登记一个玩具阶段，看它出现在每一处）。

加一个新阶段是三个文件，见 docs/details.md 的"加一个阶段"：脚本 train_<名字>.py、这里的一项、tiny 配方
configs/tiny/<名字>.yaml。
本模块在最底层，只用标准库：scripts/compare.sh 用系统的 python3 直接读它；类因此写成 "模块:类名"，默认值是普通的 dict。
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .paths import CHECKPOINT_DIR, ROOT

_LR_NAN = "多半是学习率过高或 fp16 溢出：减小 --learning_rate，或在支持的 GPU 上用 --bf16 true。"
_BATCH_OOM = ("减小 --per_device_train_batch_size（同时增大 --gradient_accumulation_steps 保持总批量），"
              "确认 --gradient_checkpointing true，或减小 --max_length")


_SAMPLED_OOM = ("减小 --per_device_train_batch_size（同时增大 --gradient_accumulation_steps，保持每次更新的回答数），"
                "确认 --gradient_checkpointing true，或减小 --max_completion_length")
_SAMPLED_NAN = "多半是学习率过高：减小 --learning_rate，或提高 --beta（KL 系数）；{name} 不要用 fp16。"
# GRPO / RLOO 和 PPO 同样的预算：所有进程合计 1000 个回答（--total_answers，= PPO 的 1000 个 episode，按进程数换成
# 步数，见 recipes.steps_for_answers）；单卡时每次更新 8 个回答（单卡 2 × 累积 4，= 1 个问题 × 8 个回答），125 次更新
# = 125 个问题 × 8；回答最长 200、采样温度 0.7（PPOConfig 的默认值，top_p 1 / top_k 0 同 PPO）、KL 系数 0.05
# （= PPO 的 kl_coef；GRPOConfig 默认 beta=0 根本没有 KL）、lr 5e-6。
# RLOO 也用 8 个回答一组（TRL 默认 2）：两者看到同样的问题、同样多的回答，差别只剩基线怎么算
# （GRPO：组内均值、除以组内标准差；RLOO：除自己以外另外 7 个的均值）。生成提示关闭思考（enable_thinking=False）。
_SAMPLED = dict(
    per_device_train_batch_size=2, gradient_accumulation_steps=4, num_generations=8,
    learning_rate=5e-6, beta=0.05, max_completion_length=200, temperature=0.7, top_p=1.0, top_k=0,
    chat_template_kwargs={"enable_thinking": False}, report_to=["tensorboard"], logging_steps=1,
    save_strategy="steps", save_steps=25, save_total_limit=1,
)

# 不能用 DeepSpeed ZeRO-3 的原因。configs/accelerate/zero3.yaml 的 zero3_init_flag 让进程里每个 from_pretrained
# 都在 deepspeed.zero.Init 下把参数分片（transformers 的 HfDeepSpeedConfig），不在 DeepSpeed 引擎里的模型拿到的是空分片。
_SAVE_POLICY_UNDER_ZERO3 = ("导出时主进程单独重新加载 SFT 基座合并 LoRA（policy.save_policy），其余进程在等，多半卡住，"
                            "最好也只是合并出空的模型")
_SAMPLED_ZERO3 = f"打分的 RM 不在 DeepSpeed 引擎里，第一次打分时它的权重是空的分片；{_SAVE_POLICY_UNDER_ZERO3}"


@dataclass(frozen=True)
class Stage:
    name: str  # 文件夹名、stage.json 的 "stage"、TensorBoard 标签前缀、benchmark / chat 里的模型名
    label: str  # 中文名
    script: str | None  # 产生它的脚本（base 没有）
    can_chat: bool  # 能对话、能参加评测（RM 不能）
    adapter: bool = False  # LoRA 策略：文件夹里是适配器 + merged/（合并好的完整模型）
    lora_option: bool = False  # 不是 LoRA 策略、但可以选用 LoRA（RM 的 --use_peft true：合并后存成完整模型）：也解析 LoRA 选项
    throughput: str | None = None  # stage.json 的 cost 里表示吞吐的键
    oom_hint: str = "减小批量"
    nan_hint: str = ""
    about: str = ""  # 评测报告里一段大白话：这个方法和别的有什么不同（有没有 critic、在线还是离线、基线怎么来）；不写数字，
    # 数字（beta、每组几个回答）因次而异，报告从这次运行的 stage.json 读
    inputs: tuple[str, ...] = ()  # 训练时读哪些阶段的产物（选项名见 path_option；gpu_check 按它排先后）
    trainer: str | None = None  # 原样的 TRL 训练器 "模块:类名"（bench_rl_stages 拿我们的脚本和它比）
    config: str | None = None  # TRL 的 Config "模块:类名"（recipes.parse 解析选项用；用到时才导入）
    args: str | None = None  # 本仓库的选项 dataclass "模块:类名"（在 qwen_rlhf/recipes.py；LoRA 策略另加 LoRAArgs）
    # 本阶段的默认值（优先级：命令行 > --config 配方 > 这里 > TRL 默认值）；output_dir 默认 checkpoint/<阶段名>，不必写
    defaults: dict = field(default_factory=dict)
    fp16: bool = True  # 不支持 bf16 的卡上能不能用 fp16 混合精度（在线采样的阶段容易 NaN：不能，用 fp32）
    kl_option: str | None = None  # KL 系数的选项名（PPO 叫 kl_coef，GRPO / RLOO / DPO 叫 beta：TRL 的名字）
    memory_kind: str | None = None  # 显存估算（python -m qwen_rlhf.memory）用哪一个公式：sft / rm / ppo / sampled / pairs
    no_zero3: str | None = None  # 不能用 DeepSpeed ZeRO-3 的原因（recipes.refuse_zero3 在加载模型之前拒绝）

    @property
    def folder(self):
        return CHECKPOINT_DIR / self.name if self.script else None

    @property
    def tiny_recipe(self):
        """离线演示 / 测试用的迷你配方 configs/tiny/<阶段>.yaml（base 没有）。"""
        return ROOT / "configs" / "tiny" / f"{self.name}.yaml" if self.script else None

    @property
    def command(self) -> str:
        return f"python {self.script}" if self.script else "下载或指定一个基座模型（--model_name_or_path）"

    @property
    def path_option(self) -> str:
        """所有脚本里指向这个阶段产物的同一个选项名。"""
        return "--model_name_or_path" if self.name == "base" else (
            "--reward_model_path" if self.name == "rm" else f"--{self.name}_model_path")


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("base", "基座模型", None, can_chat=True),
    Stage("sft", "SFT 模型", "train_sft.py", can_chat=True, throughput="tokens_per_s", oom_hint=_BATCH_OOM,
          nan_hint=_LR_NAN, trainer="trl:SFTTrainer", config="trl:SFTConfig", args="qwen_rlhf.recipes:SFTArgs",
          memory_kind="sft",
          # 复现原仓库的设置：lr 1e-5，单卡批量 4 × 累积 8，2 个 epoch，最长 500 token
          defaults=dict(
              learning_rate=1e-5, per_device_train_batch_size=4, gradient_accumulation_steps=8, num_train_epochs=2,
              max_length=500, completion_only_loss=True, report_to=["tensorboard"], logging_steps=5,
              save_total_limit=1, lr_scheduler_type="cosine", warmup_steps=0.03),
          about="SFT：在少量粗鲁回答上做监督微调，是所有 RL 方法共同的起点和对照（基线）。"),
    Stage("rm", "奖励模型（RM）", "train_rm.py", can_chat=False, throughput="pairs_per_s", oom_hint=_BATCH_OOM,
          nan_hint=_LR_NAN, trainer="trl:RewardTrainer", config="trl:RewardConfig", args="qwen_rlhf.recipes:RMArgs",
          memory_kind="rm", lora_option=True,
          # 复现原仓库：与 SFT 相同的批量和学习率（RewardConfig 默认 1e-4 对全参数 0.6B 太高），外加奖励居中。
          # --role gold / null 另有几项（recipes.ROLES）
          defaults=dict(
              learning_rate=1e-5, per_device_train_batch_size=4, gradient_accumulation_steps=8, num_train_epochs=2,
              max_length=500, center_rewards_coefficient=0.01, report_to=["tensorboard"], logging_steps=5,
              eval_strategy="steps", eval_steps=0.1, per_device_eval_batch_size=8, save_total_limit=1,
              lr_scheduler_type="cosine", warmup_steps=0.03)),
    Stage("ppo", "PPO 模型", "train_ppo.py", can_chat=True, adapter=True, throughput="episodes_per_s",
          oom_hint="减小 --per_device_train_batch_size 与 --local_rollout_forward_batch_size，"
                   "确认 --gradient_checkpointing true，或减小 --response_length",
          nan_hint="多半是学习率过高或奖励尺度太大：减小 --learning_rate，提高 --kl_coef；PPO 不要用 fp16。",
          inputs=("sft", "rm"), trainer="trl.experimental.ppo:PPOTrainer", config="trl.experimental.ppo:PPOConfig",
          args="qwen_rlhf.recipes:PPOArgs", fp16=False, kl_option="kl_coef", memory_kind="ppo",
          # 复现原仓库：单卡 2 × 累积 4（minibatch 1 个，避开 TRL 的累积 × minibatch 计数错误），rollout 前向批量 8，
          # 2 个 PPO epoch，lr 5e-6，vf_coef 0.5，cliprange 0.1 / 0.5，1000 个 episode，回复最长 200，kl 0.05。
          # 1000 个 episode = 125 次更新：每 25 次存一个可续训的检查点（Qwen3-0.6B 约 7 GB，见 README），只留最新的一个。
          defaults=dict(
              sft_model_path="checkpoint/sft", reward_model_path="checkpoint/rm",
              per_device_train_batch_size=2, gradient_accumulation_steps=4, num_mini_batches=1,
              local_rollout_forward_batch_size=8, num_ppo_epochs=2, learning_rate=5e-6, vf_coef=0.5, cliprange=0.1,
              cliprange_value=0.5, total_episodes=1000, response_length=200, kl_coef=0.05, stop_token="eos",
              missing_eos_penalty=1.0, report_to=["tensorboard"], logging_steps=1, save_strategy="steps", save_steps=25,
              save_total_limit=1, num_sample_generations=0),
          no_zero3="能跑完，但合并 LoRA 时基座的嵌入层是分片的，合并出的模型里嵌入层是空的；0.6B 模型用它也省不了显存",
          about="PPO：在线强化学习，每次更新先让模型自己回答一批问题、RM 打分；另训练一个 critic（价值模型）估计每个"
                "token 之后还能拿多少分，作为基线算优势；奖励里扣掉相对 SFT 的 KL，防止跑偏。"),
    # GRPO / RLOO：没有 critic，一个问题采样 --num_generations 个回答，用组内平均（RLOO：除自己以外的平均）当基线
    Stage("grpo", "GRPO 模型", "train_grpo.py", can_chat=True, adapter=True, throughput="answers_per_s",
          oom_hint=_SAMPLED_OOM, nan_hint=_SAMPLED_NAN.format(name="GRPO"), inputs=("sft", "rm"),
          trainer="trl:GRPOTrainer", config="qwen_rlhf.recipes:GRPOConfig", args="qwen_rlhf.recipes:SampledArgs",
          defaults=_SAMPLED, fp16=False, kl_option="beta", memory_kind="sampled",
          no_zero3=_SAMPLED_ZERO3,
          about="GRPO：在线强化学习，没有 critic。每个问题采一组回答、RM 打分，用这一组回答的平均分（再除以组内标准差）"
                "当基线：比同组平均好的回答被加强、差的被压低；KL（相对关掉适配器的 SFT）作为损失里的一项拉住它。"),
    Stage("rloo", "RLOO 模型", "train_rloo.py", can_chat=True, adapter=True, throughput="answers_per_s",
          oom_hint=_SAMPLED_OOM, nan_hint=_SAMPLED_NAN.format(name="RLOO"), inputs=("sft", "rm"),
          trainer="trl:RLOOTrainer", config="qwen_rlhf.recipes:RLOOConfig", args="qwen_rlhf.recipes:SampledArgs",
          defaults=_SAMPLED, fp16=False, kl_option="beta", memory_kind="sampled",
          no_zero3=_SAMPLED_ZERO3,
          about="RLOO：在线强化学习，没有 critic。和 GRPO 一样每个问题采一组回答，但每个回答的基线是同组其余回答的平均分"
                "（留一法，不除标准差）；KL 惩罚直接从奖励里扣掉，和 PPO 一样。"),
    # DPO：不采样、不用 RM，直接在训练集的偏好对上训练（吞吐按偏好对算，和 RM 一样）
    Stage("dpo", "DPO 模型", "train_dpo.py", can_chat=True, adapter=True, throughput="pairs_per_s",
          oom_hint="减小 --per_device_train_batch_size（同时增大 --gradient_accumulation_steps 保持总批量），"
                   "确认 --gradient_checkpointing true，或减小 --max_length",
          nan_hint="多半是学习率过高：减小 --learning_rate；不支持 bf16 的卡上不要用 fp16。", inputs=("sft",),
          trainer="trl:DPOTrainer", config="trl:DPOConfig", args="qwen_rlhf.recipes:DPOArgs", kl_option="beta",
          memory_kind="pairs",
          # 训练集的全部偏好对（RM 的训练数据），批量与 SFT / RM 相同（4 × 8 = 32 对一步），1 个 epoch，
          # lr 5e-6（= PPO 的，同一套 LoRA 设置），最长 500 token（同 SFT / RM），beta 用 TRL 的默认 0.1。
          defaults=dict(
              beta=0.1, learning_rate=5e-6, per_device_train_batch_size=4, gradient_accumulation_steps=8,
              num_train_epochs=1, max_length=500, report_to=["tensorboard"], logging_steps=5, save_strategy="steps",
              save_steps=0.25, save_total_limit=1, lr_scheduler_type="cosine", warmup_steps=0.03),
          no_zero3=_SAVE_POLICY_UNDER_ZERO3,
          about="DPO：离线方法，训练时不采样、也不用 RM：直接在训练集的偏好对上，让模型相对参考模型（关掉适配器的 SFT）"
                "更偏向 chosen、远离 rejected。评测用的 RM 分数是它从没直接优化过的目标，所以它和另外三种比的是"
                "\"从偏好数据里学到了多少 RM 也认同的东西\"。"),
)}

# 不是训练阶段、但也会显存不足的脚本
SCRIPT_OOM_HINTS = {"benchmark": "减小 --batch_size 或 --max_new_tokens", "chat": "减小 --max_new_tokens，或用 /clear 清空历史"}


def chat_stages() -> tuple[str, ...]:
    """能对话、能参加评测的阶段（base 在最前）。"""
    return tuple(name for name, s in STAGES.items() if s.can_chat)


def rl_stages() -> tuple[str, ...]:
    """在 SFT 之上训练的 LoRA 策略（benchmark 拿它们和 SFT 比）。"""
    return tuple(name for name, s in STAGES.items() if s.adapter)


def training_stages() -> tuple[str, ...]:
    """有训练脚本的阶段（sft / rm / ppo / grpo / rloo / dpo …）：memory、gpu_check 和 recipes 逐个读它们。"""
    return tuple(name for name, s in STAGES.items() if s.script)


def oom_hint(stage: str) -> str:
    return STAGES[stage].oom_hint if stage in STAGES else SCRIPT_OOM_HINTS.get(stage, "减小批量")


def nan_hint(stage: str) -> str:
    return STAGES[stage].nan_hint if stage in STAGES else ""
