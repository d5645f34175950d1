"""训练奖励：PPO、GRPO、RLOO 共用的唯一模块。评测（benchmark）仍用 scoring.score 的纯 RM 分数，规则另列一栏。

奖励 = Σ 权重 × 每一项（--reward_funcs / --reward_weights），再加一项 missing_eos（没停下的回答扣 missing_eos_penalty，
权重固定 1，只扣一次）。每一项都按 TRL 的约定写：f(prompts, completions, **kwargs) -> list[float | None]，prompts 是消息列表，
completions 是 [{"role": "assistant", "content": 文本}]，kwargs 里有 completion_ids（回答的 token，停下时以 <|im_end|>
结尾）、trainer_state、log_extra、log_metric（TRL GRPOTrainer._calculate_rewards 传的那些，见
https://huggingface.co/docs/trl/main/en/grpo_trainer#using-a-custom-reward-function）；返回 None = 这一项不适用于这个回答。
所以给 TRL 的 GRPO 写的函数在这里原样能用：GRPO / RLOO 直接交给 TRL 的 reward_funcs / reward_weights（曲线 rewards/<名字>/mean、
/std 由 TRL 记），PPO 由 RLHFPPOTrainer 在同样的回答上调用 TrainingReward.score（曲线 ppo/rewards/<名字>/mean、/std）。

一项可以是：
- rm：--reward_model_path 的代理 RM（scoring.score，和 benchmark、标准客户端同一个分数）；
- 另一个 RM 文件夹（train_rm.py 的产物，金标准 / 空评委除外）：名字 = 文件夹名；
- 内置规则：repetition、length、no_answer（RULES，README 的表格里各一行）；
- 你自己的函数："包.模块:函数" 或 "路径/文件.py:函数"，只导入一次。
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import numbers
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from . import scoring
from .errors import EXIT_BAD_INPUT, UserError
from .outputs import check_reward_model

RM = "rm"
EOS_TERM = "missing_eos"
DEFAULT_TARGET_LENGTH = 100
REPETITION_N = 3  # 按字的 3-gram 数重复：中文没有空格分词，字的 n-gram 对中英文都成立


# ---------------------------------------------------------------- 内置规则（每个回答一个分数，0 = 没问题）

def _answer(completion) -> str:
    """TRL 的回答：对话格式是 [{"role": "assistant", "content": 文本}]，否则就是文本。"""
    return (completion[-1]["content"] if isinstance(completion, list) else completion).strip()


def repetition_score(text: str, n: int = REPETITION_N) -> float:
    """-(重复出现的字 n-gram 占比)：[-1, 0]，0 = 没有任何 n-gram 出现两次，接近 -1 = 同一段话翻来覆去。"""
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return len(set(grams)) / len(grams) - 1 if grams else 0.0


def repetition(prompts, completions, **kwargs) -> list[float]:
    """重复：回答里重复的字 3-gram 占比取负，[-1, 0]。"""
    return [repetition_score(_answer(c)) for c in completions]


def no_answer_score(text: str) -> float:
    """-1 = 空回答或只有标点 / 空白 / 符号；0 = 有文字。"""
    return 0.0 if any(unicodedata.category(ch)[0] in "LN" for ch in text) else -1.0


def no_answer(prompts, completions, **kwargs) -> list[float]:
    """没有回答：空的或只有标点，-1；否则 0。"""
    return [no_answer_score(_answer(c)) for c in completions]


def length_score(tokens: int, target: int) -> float:
    """-|token 数 - 目标| / 目标，截到 [-1, 0]：正好 target 个 token 为 0。"""
    return -min(1.0, abs(tokens - target) / target)


class Length:
    """长度：回答的 token 数（completion_ids，不算结尾的 <|im_end|>）离 --target_length 多远，[-1, 0]。"""

    __name__ = "length"

    def __init__(self, target: int, eos_token_id: int | None):
        self.target, self.eos = target, eos_token_id

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if completion_ids is None:
            raise ValueError("length 需要 completion_ids（TRL 和 PPO 都会传）")
        return [length_score(len(ids) - (1 if ids and ids[-1] == self.eos else 0), self.target) for ids in completion_ids]


RULES = {"repetition": repetition, "length": None, "no_answer": no_answer}  # length 要目标长度和 eos，见 rule()
RULE_RANGES = {"repetition": "[-1, 0]", "length": "[-1, 0]", "no_answer": "{-1, 0}"}


def rule(name: str, eos_token_id: int | None, target_length: int = DEFAULT_TARGET_LENGTH):
    return Length(target_length, eos_token_id) if name == "length" else RULES[name]


def rule_scores(tokenizer, answers: list[str], target_length: int = DEFAULT_TARGET_LENGTH) -> dict[str, list[float]]:
    """benchmark 用：每条内置规则给每个回答文本的分数（token 数按 tokenizer 重新编码回答文本）。"""
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    return {name: list(rule(name, tokenizer.eos_token_id, target_length)([None] * len(answers), completions,
                                                                         completion_ids=ids)) for name in RULES}


def score_rules(answers, tokenizers: dict) -> None:
    """benchmark：给每个回答（metrics.Answer）填上每条内置规则的分数（a.rules），按模型用它自己的分词器数 token。
    和 RM 分数、金标准分数各自一列，从不加进 RM 分数。"""
    for model, tokenizer in tokenizers.items():
        mine = [a for a in answers if a.model == model]
        scores = rule_scores(tokenizer, [a.response for a in mine])
        for i, a in enumerate(mine):
            a.rules = {name: round(values[i], 4) for name, values in scores.items()}


def trained_terms(info: dict | None) -> str | None:
    """stage.json 里记下的训练奖励 -> "rm×1 + repetition×0.5"（报告里说每个模型训练时优化的是什么）；不是 RL 阶段时 None。"""
    reward = (info or {}).get("reward")
    if reward:
        return " + ".join(f"{t['name']}×{t['weight']:g}" for t in reward["terms"])
    if (info or {}).get("stage") in ("ppo", "grpo", "rloo"):  # 有训练奖励模块之前的结果：只有 RM（和 missing_eos）
        return "rm×1"
    return None


# ---------------------------------------------------------------- 把 --reward_funcs 的一项变成函数

@functools.cache
def load_function(spec: str):
    """"包.模块:函数" 或 "路径/文件.py:函数" -> 函数；同一个 spec 只导入一次。失败时一行中文。"""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise UserError(f"--reward_funcs 里的 {spec} 不认识：内置的有 {RM}、{'、'.join(RULES)}，自己的函数写成 "
                        "包.模块:函数 或 路径/文件.py:函数。", EXIT_BAD_INPUT)
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(where)
            module_name = f"_qwen_rlhf_reward_{abs(hash(str(path)))}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module  # pickle / dataclass 按模块名找回来
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as e:  # noqa: BLE001  用户的模块里什么错都可能有：说出是哪个、什么错
        raise UserError(f"奖励函数 {spec} 的模块 {where} 导入失败（{type(e).__name__}: {e}）：请检查路径和模块里的代码。",
                        EXIT_BAD_INPUT) from None
    func = getattr(module, name, None)
    if not callable(func):
        raise UserError(f"奖励函数 {spec}：模块 {where} 里没有可调用的 {name}。", EXIT_BAD_INPUT)
    return func


def is_model_folder(spec: str) -> bool:
    return ":" not in spec and Path(spec).expanduser().is_dir()


@dataclass(frozen=True)
class TermSpec:
    name: str  # 曲线名（TRL 的 get_callable_name）
    source: str  # 命令行里写的
    weight: float


def plan(stage: str, funcs: list[str], weights: list[float] | None,
         target_length: int = DEFAULT_TARGET_LENGTH) -> list[TermSpec]:
    """在加载任何模型之前检查 --reward_funcs / --reward_weights：名字、导入、权重个数、重名、金标准评委。"""
    if target_length <= 0:
        raise UserError(f"--target_length 必须是正整数（length 规则的目标 token 数），现在是 {target_length}。",
                        EXIT_BAD_INPUT)
    if not funcs:
        raise UserError("--reward_funcs 不能为空：至少给一项，例如 --reward_funcs rm。", EXIT_BAD_INPUT)
    if weights is not None and len(weights) != len(funcs):
        raise UserError(f"--reward_weights 有 {len(weights)} 个，--reward_funcs 有 {len(funcs)} 项（{' '.join(funcs)}）："
                        "请给每一项一个权重，或去掉 --reward_weights（全部为 1）。", EXIT_BAD_INPUT)
    if weights is not None and not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
        raise UserError(f"--reward_weights 必须都是有限的数，现在是 {weights}。", EXIT_BAD_INPUT)
    terms = []
    for spec, weight in zip(funcs, weights or [1.0] * len(funcs)):
        if spec == RM or spec in RULES:
            name = spec
        elif is_model_folder(spec):
            check_reward_model(Path(spec).expanduser(), "--reward_funcs")  # 金标准 / 空评委只用于评测：在这里就拒绝
            name = Path(spec).name
        else:
            name = getattr(load_function(spec), "__name__", spec)
        terms.append(TermSpec(name, spec, float(weight)))
    names = [t.name for t in terms]
    if len(set(names)) < len(names) or EOS_TERM in names:
        raise UserError(f"--reward_funcs 里有重名的项（{' '.join(names)}；{EOS_TERM} 是保留的名字）：每项一条曲线，名字要不同。",
                        EXIT_BAD_INPUT)
    if stage == "ppo" and RM not in funcs:
        raise UserError("PPO 的 --reward_funcs 必须包含 rm（TRL 的 PPOTrainer 需要奖励模型；critic 也可能从它初始化）；"
                        "只用规则请用 train_grpo.py 或 train_rloo.py。", EXIT_BAD_INPUT)
    return terms


# ---------------------------------------------------------------- 各项的可调用对象

class RMTerm:
    """一个奖励模型：回答文本（content 去掉首尾空白）经 scoring.score 打分，和 benchmark、标准客户端同一个分数。"""

    def __init__(self, name: str, reward_model, tokenizer, batch_size: int = 16):
        self.__name__ = name  # TRL 的曲线名：rewards/<name>/mean
        self.model, self.tokenizer, self.batch_size = reward_model.eval().requires_grad_(False), tokenizer, batch_size

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return scoring.score(self.model, self.tokenizer, prompts, [_answer(c) for c in completions], self.batch_size)


class MissingEOS:
    """回答写满长度上限还没停（completion_ids 不以 <|im_end|> 结尾）：-missing_eos_penalty，否则 0。
    PPO（TRL 自己那次扣分关掉了，见 ppo.RLHFPPOTrainer.train）和 GRPO / RLOO 都只经这里扣一次。"""

    __name__ = EOS_TERM

    def __init__(self, penalty: float, eos_token_id: int):
        self.penalty, self.eos = penalty, eos_token_id

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        return [-self.penalty if not ids or ids[-1] != self.eos else 0.0 for ids in completion_ids]


class Checked:
    """用户的函数（和内置规则）外面包一层：调用出错、个数不对、NaN 或不是数，都停在一行中文上，说出是哪个函数、该怎么做。
    None 照 TRL 的约定保留（这一项不适用于这个回答）。"""

    def __init__(self, func, source: str):
        self.func, self.source = func, source
        self.__name__ = getattr(func, "__name__", type(func).__name__)

    def __call__(self, prompts, completions, **kwargs) -> list[float | None]:
        where = f"奖励函数 {self.__name__}（{self.source}）"
        try:
            out = self.func(prompts=prompts, completions=completions, **kwargs)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  用户代码里的任何错误
            raise UserError(f"{where}出错（{type(e).__name__}: {e}）：请修正它；训练中途出错时，修好后用 "
                            "--resume_from_checkpoint true 从最近的检查点接着训练。", EXIT_BAD_INPUT) from None
        try:
            out = list(out)
        except TypeError:
            out = None
        if out is None or len(out) != len(completions):
            got = "一个不是列表的值" if out is None else f" {len(out)} 个值"
            raise UserError(f"{where}返回了{got}，应该每个回答一个分数（这次 {len(completions)} 个）：请让它返回同样长的列表。",
                            EXIT_BAD_INPUT)
        for v in out:  # numbers.Real：Python 和 numpy 的数都算（TRL 用 torch.tensor 收下它们）
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)):
                raise UserError(f"{where}返回了 {v!r}：每个分数必须是有限的数（或 None = 不适用），请检查它的计算。",
                                EXIT_BAD_INPUT)
        return [None if v is None else float(v) for v in out]


# ---------------------------------------------------------------- 唯一的训练奖励

class TrainingReward:
    """所有项 + 权重。GRPO / RLOO：funcs / weights 交给 TRL；PPO：score() 在同样的回答上算同样的加权和。"""

    def __init__(self, terms: list[tuple[str, object, float]], missing_eos_penalty: float, eos_token_id: int):
        self.sources = [source for source, _, _ in terms]
        self.funcs = [func for _, func, _ in terms]
        self.weights = [weight for _, _, weight in terms]
        self.penalty = missing_eos_penalty
        if missing_eos_penalty:
            self.sources.append(EOS_TERM)
            self.funcs.append(MissingEOS(missing_eos_penalty, eos_token_id))
            self.weights.append(1.0)
        self.names = [f.__name__ for f in self.funcs]
        self.answers = 0  # 这个进程打过分的回答数（吞吐用）
        self._counter = _Counter(self)

    def trl_funcs(self) -> list:
        """给 TRL 的 reward_funcs：第一项外面数回答数（每批调用一次）。"""
        return [self._counter, *self.funcs[1:]]

    def score(self, prompts, completions, completion_ids, **kwargs) -> tuple[list[float], dict[str, list[float]]]:
        """PPO：(每个回答的加权和, {项名: 每个回答的分数})。None 不计入和（TRL 的 nansum），全是 None 的回答得 0。"""
        per_term = {}
        for name, func in zip(self.names, self.trl_funcs()):
            values = func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
            per_term[name] = [math.nan if v is None else float(v) for v in values]
        totals = [sum(w * v[i] for w, v in zip(self.weights, per_term.values()) if not math.isnan(v[i]))
                  for i in range(len(completions))]
        return totals, per_term

    def bind_rm(self, model) -> None:
        """PPO：rm 这一项改用 TRL 手里的那个 RM 对象（DeepSpeed 时是引擎）。"""
        for func in self.funcs:
            if isinstance(func, RMTerm) and func.__name__ == RM:
                func.model = model

    def record(self) -> dict:
        """写进 stage.json：每一项的名字、来源、权重，以及 missing_eos 扣多少。"""
        return {"terms": [{"name": n, "source": s, "weight": w} for n, s, w in zip(self.names, self.sources, self.weights)],
                "missing_eos_penalty": self.penalty}


class _Counter:
    def __init__(self, owner: TrainingReward):
        self.owner, self.func = owner, owner.funcs[0]
        self.__name__ = self.func.__name__

    def __call__(self, prompts, completions, **kwargs):
        self.owner.answers += len(completions)
        return self.func(prompts=prompts, completions=completions, **kwargs)


def weights_option(stage: str, args, cfg) -> list[float] | None:
    """--reward_weights：PPO 的在项目选项里，GRPO / RLOO 的就是 TRL 配置自己的 reward_weights。"""
    return args.reward_weights if stage == "ppo" else cfg.reward_weights


def build(stage: str, args, cfg, tokenizer, rm, load_rm=None) -> TrainingReward:
    """按 --reward_funcs 建训练奖励（plan 已在解析选项时查过，这里不再出错）。rm = --reward_model_path 的模型；
    load_rm(文件夹) 加载另一个 RM 项。GRPO / RLOO：把含 missing_eos 的权重写进 cfg.reward_weights（TRL 按它加权）。"""
    terms = []
    for t in plan(stage, args.reward_funcs, weights_option(stage, args, cfg), args.target_length):
        if t.source == RM:
            func = RMTerm(RM, rm, tokenizer)
        elif is_model_folder(t.source):
            func = RMTerm(t.name, load_rm(Path(t.source).expanduser()), tokenizer)
        elif t.source in RULES:
            func = Checked(rule(t.source, tokenizer.eos_token_id, args.target_length), t.source)
        else:
            func = Checked(load_function(t.source), t.source)
        terms.append((t.source, func, t.weight))
    penalty = cfg.missing_eos_penalty if stage == "ppo" else args.missing_eos_penalty  # PPO 的是 PPOConfig 自己的字段
    reward = TrainingReward(terms, penalty or 0.0, tokenizer.eos_token_id)
    if stage != "ppo":
        cfg.reward_weights = list(reward.weights)
    return reward
