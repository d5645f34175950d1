"""每个训练阶段的选项：项目自己的 dataclass + TRL 的 Config（+ LoRA），按登记表（qwen_rlhf/stages.py）里本阶段的
一项解析：用哪个选项类、默认值、能不能用 fp16 都写在那一项里。

脚本（train_*.py）、显存估算（python -m qwen_rlhf.memory）和 GPU 自检都从这里读：库从不导入脚本。
优先级：命令行 > `--config 配方.yaml` > 登记表里的 defaults > TRL 默认值。
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass, field

import trl

from . import device, options, rewards
from .errors import EXIT_BAD_INPUT, UserError
from .policy import LoRAArgs
from .stages import STAGES


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


SFT_HELP = "SFT 模型文件夹（train_sft.py 的产物）：actor 从它开始，参考模型 = 它本身（关掉 LoRA）"
RM_HELP = "奖励模型文件夹（train_rm.py 的产物，冻结）：给每个回答打分"
ADD_PREFS_HELP = ("再加一份偏好数据：python chat.py --arena 投票写下的文件（默认 data/human_prefs.jsonl），其中的偏好对加进"
                  "训练集（平局、跳过不用；问题在留出集里的不用，所以划分不变，PPO 和 benchmark 照常认这个结果）。"
                  "只想用你的票训练：改用 --dataset data/human_prefs.jsonl")


REWARD_FUNCS_HELP = ("训练奖励的各项（TRL 的 reward_funcs 约定，见 README 的奖励表），例如 rm repetition：rm = 奖励模型文件夹"
                     "（reward_model_path）的 RM；内置规则 repetition / length / no_answer；另一个 RM 文件夹；自己的函数 "
                     "包.模块:函数 或 路径/文件.py:函数")
TARGET_LENGTH_HELP = "length 规则的目标回答长度（token 数）"


@dataclass
class SFTArgs(options.CommonArgs):
    sft_fraction: float = _help("SFT 使用训练集中多大比例的 chosen 回答，取值 (0,1]", default=0.1)


@dataclass
class RMArgs(options.CommonArgs):
    role: str = _help("proxy = 代理 RM（默认：PPO / GRPO / RLOO 训练时优化的奖励）；gold = 金标准评委：只给 benchmark.py "
                      "评测用（它的 gold_model_path 选项），策略训练时从不用它，默认换一个更大的基座（Qwen/Qwen3-1.7B，"
                      "写到 checkpoint/rm_gold、种子 1042），训练数据在训练集的偏好对之外，每行再加一对\"原回答 胜过 把它的字"
                      "打乱后的版本\"：它知道语无伦次不算好回答，代理 RM 没学过这一点；null = 空评委：和代理 RM 同样的基座、"
                      "同样的数据，只换种子（写到 checkpoint/rm_null、种子 2042），benchmark.py 用它量出\"只差种子的两个 RM "
                      "本来就有多大分歧\"", default="proxy")
    add_prefs: str | None = _help(ADD_PREFS_HELP, default=None)
    use_peft: bool = _help("用 LoRA 训练 RM：骨干的线性层加 LoRA（--lora_r 等选项，默认同 PPO），打分头整层训练（peft 的 "
                           "SEQ_CLS 任务自动把 score 放进 modules_to_save）；训练完合并成完整的 RM 写进输出文件夹，PPO、"
                           "benchmark、AutoModelForSequenceClassification 读它和读全参数 RM 一样。优化器状态只有 LoRA "
                           "和打分头的，显存省得多；学习率仍是 --learning_rate，不自动改", default=False)

    def __post_init__(self):
        super().__post_init__()
        if self.role not in ROLES:
            raise UserError(f"--role 只能是 proxy（代理 RM）、gold（金标准评委）或 null（空评委），现在是 {self.role}。",
                            EXIT_BAD_INPUT)


@dataclass
class PolicyArgs(options.DataArgs):
    """四个 LoRA 策略阶段（PPO / GRPO / RLOO / DPO）共有的项目选项。"""

    snapshots: int = _help("训练中均匀地存多少个只有 LoRA 适配器的快照（<结果>/snapshots/step-N/，最后一个在训练结束时；"
                           "benchmark.py 的 trajectory 选项用它们画得分-KL 轨迹，chat.py 里用 ppo@step-N 这样的名字和它们对话）；"
                           "0 = 不存", default=5)

    def __post_init__(self):
        super().__post_init__()
        if self.snapshots < 0:
            raise UserError(f"--snapshots 不能为负数，现在是 {self.snapshots}（0 = 不存快照）。",
                                    EXIT_BAD_INPUT)


@dataclass
class PPOArgs(PolicyArgs):
    model_name_or_path: str = _help(options.MODEL_HELP + "；critic 从它初始化", default=options.DEFAULT_MODEL)
    critic_init: str = _help("critic 的初始化：base = 基座 + 新打分头（原仓库做法）；rm = 从奖励模型开始", default="base")
    max_prompt_length: int = _help("提示超过这么多 token 的问题不参与 PPO（会打印数量）", default=256)
    save_critic: bool = _help("同时把训练后的 critic 保存到 <output_dir>/critic", default=False)
    reward_funcs: list[str] = _help(REWARD_FUNCS_HELP + "（PPO 必须含 rm）", default_factory=lambda: [rewards.RM])
    reward_weights: list[float] | None = _help("每项的权重（和 --reward_funcs 一样多；默认全部为 1）", default=None)
    target_length: int = _help(TARGET_LENGTH_HELP, default=rewards.DEFAULT_TARGET_LENGTH)


@dataclass
class SampledArgs(PolicyArgs):
    """GRPO / RLOO：在线采样、RM 打分（PPO 的 sft_model_path / reward_model_path 是 PPOConfig 自己的字段）。"""

    sft_model_path: str = _help(SFT_HELP, default="checkpoint/sft")
    reward_model_path: str = _help(RM_HELP + "（--reward_funcs 不含 rm、只用规则时不读它）", default="checkpoint/rm")
    max_prompt_length: int = _help("提示超过这么多 token 的问题不参与训练（会打印数量）", default=256)
    missing_eos_penalty: float = _help("回答到 --max_completion_length 还没停（没有 <|im_end|>）时从 RM 分数里减去多少"
                                       "（和 PPO 的 missing_eos_penalty 相同）", default=1.0)
    reward_funcs: list[str] = _help(REWARD_FUNCS_HELP + "（权重用 TRL 的 --reward_weights；可以不含 rm，只用规则）",
                                    default_factory=lambda: [rewards.RM])
    target_length: int = _help(TARGET_LENGTH_HELP, default=rewards.DEFAULT_TARGET_LENGTH)
    total_answers: int = _help("所有进程合计一共生成多少个回答（= PPO 的 total_episodes）：训练步数 = 它 ÷ 每步的回答数"
                               "（进程数 × --per_device_train_batch_size × --gradient_accumulation_steps），多卡时步数自动减少、"
                               "总预算不变。给了 --max_steps 时以 --max_steps 为准（每个进程的步数）", default=1000)


@dataclass
class DPOArgs(PolicyArgs):
    sft_model_path: str = _help(SFT_HELP, default="checkpoint/sft")
    add_prefs: str | None = _help(ADD_PREFS_HELP, default=None)


# ---------------------------------------------------------------- train_rm.py 的 --role

# train_rm.py --role gold / null 和代理 RM 不同的默认值。金标准评委：另一个文件夹、另一个种子、另一个（更大的）基座，
# 不是代理 RM 的"兄弟"（Gao et al. 2022 的金标准 RM 比代理大得多）；24 GB 的卡放不下 1.7B 的全参数 RM 时可以
# --model_name_or_path Qwen/Qwen3-0.6B，评测报告会说一行"同一个基座"。空评委：只换文件夹和种子
ROLES = {"proxy": {}, "gold": dict(output_dir="checkpoint/rm_gold", seed=1042, model_name_or_path="Qwen/Qwen3-1.7B"),
         "null": dict(output_dir="checkpoint/rm_null", seed=2042)}

def load_class(spec: str) -> type:
    """登记表里的 "模块:类名"，用到时才导入（trl.experimental.ppo 导入要好几秒）。"""
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def types(stage: str) -> list[type]:
    """stage 的选项类：[项目选项, TRL 的 Config[, LoRAArgs]]，都来自登记表的一项；LoRA 策略（adapter）和可选 LoRA 的
    阶段（lora_option：RM 的 --use_peft true）另加 LoRAArgs。
    GRPO / RLOO 的 Config 是本模块包过检查的子类（见 checked_sampled）。"""
    s = STAGES[stage]
    return [load_class(s.args), load_class(s.config), *([LoRAArgs] if s.adapter or s.lora_option else [])]


def defaults(stage: str) -> dict:
    """本阶段的默认值：登记表里的 defaults，输出文件夹默认 checkpoint/<阶段名>。"""
    return {"output_dir": f"checkpoint/{stage}", **STAGES[stage].defaults}


def kl_setting(stage: str) -> tuple[str, float] | None:
    """LoRA 策略阶段的 KL 系数：(选项名, 本仓库的默认值)；别的阶段 None。PPO 叫 kl_coef，GRPO / RLOO / DPO 叫 beta（TRL 的名字）。"""
    name = STAGES[stage].kl_option if stage in STAGES else None
    return (name, STAGES[stage].defaults.get(name)) if name else None


def parse(stage: str, argv: list[str] | None = None) -> tuple:
    """解析 stage 的选项：(项目选项, TRL Config[, LoRAArgs])。脚本、memory、gpu_check 都调用它。

    在任何模型加载之前，这里还拒绝本阶段用不了的 DeepSpeed ZeRO-3（refuse_zero3），并按进程数把 GRPO / RLOO 的
    回答预算换成步数（steps_for_answers）。"""
    base = {**defaults(stage), **device.precision_defaults(allow_fp16=STAGES[stage].fp16)}
    parsed = options.parse(types(stage), base, argv)
    if stage == "rm" and ROLES.get(parsed[0].role):  # 金标准评委 / 空评委的默认值（配方和命令行仍然优先）：再解析一次
        parsed = options.parse(types(stage), {**base, **ROLES[parsed[0].role]}, argv)
    refuse_zero3(stage, parsed[1], RM_LORA_ZERO3 if getattr(parsed[0], "use_peft", False) else None)
    if hasattr(parsed[0], "reward_funcs"):  # 训练奖励的各项：名字、导入、权重个数、金标准评委，都在加载模型之前查
        rewards.plan(stage, parsed[0].reward_funcs, rewards.weights_option(stage, *parsed[:2]), parsed[0].target_length)
    if hasattr(parsed[0], "total_answers") and parsed[1].max_steps <= 0:  # GRPO / RLOO：回答预算按进程数换成步数
        parsed[1].max_steps = steps_for_answers(parsed[0].total_answers, parsed[1])
    return parsed


# RM 的 LoRA 导出由主进程单独重新加载基座再合并（policy.merge_score_adapter），和 LoRA 策略的导出一样
RM_LORA_ZERO3 = "用 LoRA 训练时，导出由主进程单独重新加载基座合并 LoRA，其余进程在等，多半卡住；全参数的 RM 可以用"


def refuse_zero3(stage: str, cfg, reason: str | None = None) -> None:
    """登记表里写了 no_zero3 的阶段在 DeepSpeed ZeRO-3 下用一行中文拒绝（退出码 2），指向 ZeRO-2 / DDP。

    cfg.deepspeed_plugin 由 TrainingArguments 自己建好：accelerate launch 的 DeepSpeed 配置和 --deepspeed ds.json 都算。
    在解析选项之后、任何 from_pretrained 之前拒绝：zero.Init 一旦生效，加载的模型就已经被分片了。"""
    plugin = getattr(cfg, "deepspeed_plugin", None)
    reason = reason or STAGES[stage].no_zero3
    if reason and plugin is not None and plugin.zero_stage == 3:
        raise UserError(
            f"{stage.upper()} 不支持 DeepSpeed ZeRO-3（{reason}）。请改用 ZeRO-2（accelerate launch --config_file "
            f"configs/accelerate/zero2.yaml）或 DDP（--config_file configs/accelerate/ddp.yaml）。", EXIT_BAD_INPUT)


def steps_for_answers(total_answers: int, cfg) -> int:
    """GRPO / RLOO 的步数，使所有进程合计生成 total_answers 个回答，和 PPO 的 total_episodes 一样按全局算
    （PPO 是 ceil(total_episodes / 全局 rollout 批量)）。每个优化器步用掉 进程数 × 每卡批量 × 累积 个回答，
    每批回答被用 num_iterations 次（TRL 的 GRPOConfig / RLOOConfig）。"""
    if total_answers <= 0:
        raise UserError(f"--total_answers 必须是正整数（默认 1000，= PPO 的 total_episodes），现在是 {total_answers}。",
                        EXIT_BAD_INPUT)
    return math.ceil(total_answers * cfg.num_iterations / options.per_update(cfg))


def __getattr__(name: str):
    """recipes.GRPOConfig / recipes.RLOOConfig：checked_sampled 包过的 TRL 配置类（登记表里 GRPO / RLOO 用它们）。
    用到时才导入 TRL；放在模块属性上，是因为 Trainer 把配置 pickle 进检查点的 training_args.bin，pickle 按"模块.类名"找类。"""
    if name in ("GRPOConfig", "RLOOConfig"):
        return checked_sampled(getattr(trl, name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def checked_sampled(config: type) -> type:
    """TRL 的 GRPOConfig / RLOOConfig，只多一步：两种常见的取值错误先用一行中文说清改哪个选项、改成多少，
    而不是 TRL 的英文句子（组大小）或生成时的库 traceback（"max_new_tokens must be greater than 0"）。"""

    class Checked(config):
        def __post_init__(self):
            if self.max_completion_length is not None and self.max_completion_length <= 0:
                raise UserError(f"--max_completion_length 必须是正整数（每个回答最多生成多少个 token，默认 200），"
                                f"现在是 {self.max_completion_length}。", EXIT_BAD_INPUT)
            if self.num_generations is not None and self.num_generations < 2:
                raise UserError(f"--num_generations 至少是 2（同一个问题要几个回答才有组内基线，默认 8），"
                                f"现在是 {self.num_generations}。", EXIT_BAD_INPUT)
            try:
                super().__post_init__()
            except ValueError:
                explain_group_size(self)  # 是组大小的问题就换成中文；别的照原样（options.parse 再包一层）
                raise

    Checked.__name__ = Checked.__qualname__ = config.__name__
    return Checked


def explain_group_size(cfg) -> None:
    """TRL 在 __post_init__ 里算出每次生成的回答数（进程数 × 每卡批量 × steps_per_generation）后要求它能被
    num_generations 整除；不能时说出一个能用的 --num_generations（不超过原值的最大因数）。"""
    batch, group = cfg.generation_batch_size, cfg.num_generations
    if not batch or not group or batch % group == 0:
        return
    fits = [d for d in range(2, batch + 1) if batch % d == 0]
    good = max((d for d in fits if d <= group), default=min(fits, default=None))
    instead = f"改成 --num_generations {good}，或" if good else ""
    raise UserError(
        f"每次生成的回答数 {batch}（{cfg.world_size} 个进程 × --per_device_train_batch_size "
        f"{cfg.per_device_train_batch_size} × --steps_per_generation {cfg.steps_per_generation}，后者默认等于 "
        f"--gradient_accumulation_steps）不能被 --num_generations {group} 整除：同一个问题的 {group} 个回答必须在同一批里。"
        f"{instead}把 --per_device_train_batch_size 改成 {group} 的倍数。", EXIT_BAD_INPUT) from None
