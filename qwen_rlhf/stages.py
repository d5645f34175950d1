"""阶段登记表：一个阶段是什么（输入、TRL 的训练器和 Config、KL 系数的选项名、显存估算的公式、tiny 配方、
拒不拒绝 ZeRO-3、报告里的一段说明）只写在这里的一项。outputs / inference / training / recipes / memory / benchmark /
chat 的 --help、bench/gpu_check.py、bench/bench_rl_stages.py、scripts/compare.sh 和评测报告都读它
（tests/test_stages.py 登记一个玩具阶段，看它出现在每一处）。

加一个新阶段见 docs/details.md 的"加一个阶段"：脚本 + recipes.py 的选项与默认值 + 这里的一项（外加它的 tiny 配方）。
本模块在最底层，只用标准库：scripts/compare.sh 用系统的 python3 直接读它。
"""

from __future__ import annotations

from dataclasses import dataclass

from .paths import CHECKPOINT_DIR, ROOT

_LR_NAN = "多半是学习率过高或 fp16 溢出：减小 --learning_rate，或在支持的 GPU 上用 --bf16 true。"
_BATCH_OOM = ("减小 --per_device_train_batch_size（同时增大 --gradient_accumulation_steps 保持总批量），"
              "确认 --gradient_checkpointing true，或减小 --max_length")


_SAMPLED_OOM = ("减小 --per_device_train_batch_size（同时增大 --gradient_accumulation_steps，保持每次更新的回答数），"
                "确认 --gradient_checkpointing true，或减小 --max_completion_length")
_SAMPLED_NAN = "多半是学习率过高：减小 --learning_rate，或提高 --beta（KL 系数）；{name} 不要用 fp16。"

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
    throughput: str | None = None  # stage.json 的 cost 里表示吞吐的键
    oom_hint: str = "减小批量"
    nan_hint: str = ""
    about: str = ""  # 评测报告里一段大白话：这个方法和别的有什么不同（有没有 critic、在线还是离线、基线怎么来）；不写数字，
    # 数字（beta、每组几个回答）因次而异，报告从这次运行的 stage.json 读
    inputs: tuple[str, ...] = ()  # 训练时读哪些阶段的产物（选项名见 path_option；gpu_check 按它排先后）
    trainer: str | None = None  # 原样的 TRL 训练器 "模块:类名"（bench_rl_stages 拿我们的脚本和它比）
    config: str | None = None  # TRL 的 Config "模块:类名"（recipes.parse 解析选项用；用到时才导入）
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
          nan_hint=_LR_NAN, trainer="trl:SFTTrainer", config="trl:SFTConfig", memory_kind="sft",
          about="SFT：在少量粗鲁回答上做监督微调，是所有 RL 方法共同的起点和对照（基线）。"),
    Stage("rm", "奖励模型（RM）", "train_rm.py", can_chat=False, throughput="pairs_per_s", oom_hint=_BATCH_OOM,
          nan_hint=_LR_NAN, trainer="trl:RewardTrainer", config="trl:RewardConfig", memory_kind="rm"),
    Stage("ppo", "PPO 模型", "train_ppo.py", can_chat=True, adapter=True, throughput="episodes_per_s",
          oom_hint="减小 --per_device_train_batch_size 与 --local_rollout_forward_batch_size，"
                   "确认 --gradient_checkpointing true，或减小 --response_length",
          nan_hint="多半是学习率过高或奖励尺度太大：减小 --learning_rate，提高 --kl_coef；PPO 不要用 fp16。",
          inputs=("sft", "rm"), trainer="trl.experimental.ppo:PPOTrainer", config="trl.experimental.ppo:PPOConfig",
          kl_option="kl_coef", memory_kind="ppo",
          no_zero3="能跑完，但合并 LoRA 时基座的嵌入层是分片的，合并出的模型里嵌入层是空的；0.6B 模型用它也省不了显存",
          about="PPO：在线强化学习，每次更新先让模型自己回答一批问题、RM 打分；另训练一个 critic（价值模型）估计每个"
                "token 之后还能拿多少分，作为基线算优势；奖励里扣掉相对 SFT 的 KL，防止跑偏。"),
    # GRPO / RLOO：没有 critic，一个问题采样 --num_generations 个回答，用组内平均（RLOO：除自己以外的平均）当基线
    Stage("grpo", "GRPO 模型", "train_grpo.py", can_chat=True, adapter=True, throughput="answers_per_s",
          oom_hint=_SAMPLED_OOM, nan_hint=_SAMPLED_NAN.format(name="GRPO"), inputs=("sft", "rm"),
          trainer="trl:GRPOTrainer", config="qwen_rlhf.recipes:GRPOConfig", kl_option="beta", memory_kind="sampled",
          no_zero3=_SAMPLED_ZERO3,
          about="GRPO：在线强化学习，没有 critic。每个问题采一组回答、RM 打分，用这一组回答的平均分（再除以组内标准差）"
                "当基线：比同组平均好的回答被加强、差的被压低；KL（相对关掉适配器的 SFT）作为损失里的一项拉住它。"),
    Stage("rloo", "RLOO 模型", "train_rloo.py", can_chat=True, adapter=True, throughput="answers_per_s",
          oom_hint=_SAMPLED_OOM, nan_hint=_SAMPLED_NAN.format(name="RLOO"), inputs=("sft", "rm"),
          trainer="trl:RLOOTrainer", config="qwen_rlhf.recipes:RLOOConfig", kl_option="beta", memory_kind="sampled",
          no_zero3=_SAMPLED_ZERO3,
          about="RLOO：在线强化学习，没有 critic。和 GRPO 一样每个问题采一组回答，但每个回答的基线是同组其余回答的平均分"
                "（留一法，不除标准差）；KL 惩罚直接从奖励里扣掉，和 PPO 一样。"),
    # DPO：不采样、不用 RM，直接在训练集的偏好对上训练（吞吐按偏好对算，和 RM 一样）
    Stage("dpo", "DPO 模型", "train_dpo.py", can_chat=True, adapter=True, throughput="pairs_per_s",
          oom_hint="减小 --per_device_train_batch_size（同时增大 --gradient_accumulation_steps 保持总批量），"
                   "确认 --gradient_checkpointing true，或减小 --max_length",
          nan_hint="多半是学习率过高：减小 --learning_rate；不支持 bf16 的卡上不要用 fp16。", inputs=("sft",),
          trainer="trl:DPOTrainer", config="trl:DPOConfig", kl_option="beta", memory_kind="pairs",
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
