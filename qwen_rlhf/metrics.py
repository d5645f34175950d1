"""评测的数字：每个回答一行的 `Answer` 列表 -> 得分提升、多样性、塌缩警告、汇总，以及 RM 能信几分。

不碰模型也不写文件，所以可以用手写数据单独测试；怎样写成文件和文字见 report.py。
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .stages import STAGES

EMPTY = "（空）"  # 模型一开口就输出 <|im_end|> 时，警告和表格里显示这个
COLLAPSE_SHARE = 0.5  # 不同回复占比低于它：回答塌缩成几句固定的话


BASELINE = "sft"  # 得分提升、胜率、KL 都相对它
BOOTSTRAP_SAMPLES = 2000


@dataclass
class Answer:
    """一个模型对一个问题的回答。score / gain 已经四舍五入到 4 位：CSV、报告、汇总用的是同一个数。"""

    question: str
    source: str  # common / held_out / file
    model: str
    response: str
    score: float
    tokens: int  # 回复长度（token，不含 <|im_end|>）
    stopped: bool = True  # 在 --max_new_tokens 之内输出了 <|im_end|>
    gain: float | None = None  # 只有非 SFT 的行有：该模型分数 - 同一问题的 SFT 分数
    gold: float | None = None  # 金标准评委（--gold_model_path）的分数；没有金标准评委时为 None
    gold_gain: float | None = None  # 同上，金标准分数相对 SFT 的提升
    null: float | None = None  # 空评委（--null_model_path：同数据、另一种子的第二个代理 RM）的分数
    null_gain: float | None = None
    rules: dict[str, float] = field(default_factory=dict)  # 内置规则（rewards.RULES）给这个回答的分数，各自一列，不加进 score


def round4(x: float) -> float:
    return round(float(x), 4)


def compared(models: list[str]) -> list[str]:
    """和 SFT 比的模型（--models 里除 SFT 以外的）；没有 SFT 就没有可比的。"""
    return [m for m in models if m != BASELINE] if BASELINE in models else []


def add_gains(answers: list[Answer]) -> None:
    """给非 SFT 模型的每一行填上相对 SFT 的得分提升（同一个问题；有金标准分数时它的提升也填上）。没有 SFT 时什么都不做。"""
    sft = {a.question: a for a in answers if a.model == BASELINE}
    for a in answers:
        if a.model != BASELINE and a.question in sft:
            a.gain = round4(a.score - sft[a.question].score)
            for judge in ("gold", "null"):
                if getattr(a, judge) is not None and getattr(sft[a.question], judge) is not None:
                    setattr(a, f"{judge}_gain", round4(getattr(a, judge) - getattr(sft[a.question], judge)))


# ---------------------------------------------------------------- 单项指标


def mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def distinct_share(responses: list[str]) -> float | None:
    """不同回复占比：1.0 = 每个问题的回答都不一样；很低 = 翻来覆去几句话。空回复也算一种。"""
    return len(set(responses)) / len(responses) if responses else None


def distinct_2(responses: list[str]) -> float | None:
    """distinct-2（按字）：全部回复里不同的相邻两字组合 / 两字组合总数。一个两字组合都没有（全是空或单字）时为 None。"""
    bigrams = [r[i:i + 2] for r in responses for i in range(len(r) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else None


def collapse_warning(model: str, responses: list[str], sft_responses: list[str] | None = None,
                     threshold: float = COLLAPSE_SHARE) -> str | None:
    """回答塌缩成几句固定的话时给出一句大白话警告；没塌缩返回 None。

    RL 模型塌缩而 SFT 没有：奖励投机；SFT 自己就塌缩（或没有 SFT 可比）时不把账算到 RL 头上。
    """
    share = distinct_share(responses)
    if share is None or share >= threshold:
        return None
    top, count = max(((r, responses.count(r)) for r in set(responses)), key=lambda rc: (rc[1], rc[0]))
    quote = top if len(top) <= 20 else top[:20] + "…"
    head = (f"{model} 的回复高度雷同：{len(responses)} 个问题只有 {len(set(responses))} 种不同的回答"
            f"（不同回复占比 {share:.0%}），最常见的「{quote or EMPTY}」出现了 {count} 次"
            f"{'（一开口就输出 <|im_end|>）' if not top else ''}。")
    sft_share = distinct_share(sft_responses) if sft_responses else None
    shown = model.upper() if model.isalpha() else model  # 阶段名写成 PPO / GRPO，本地文件夹名原样
    knob = STAGES[model].kl_option if model in STAGES else None  # 本地文件夹：不知道是哪个阶段，不点选项名
    if model != BASELINE and sft_share is not None and sft_share >= threshold:
        return head + (f"SFT 的不同回复占比是 {sft_share:.0%}，{shown} 陷入到单一模式的回答中：这是奖励投机（reward hacking）"
                       "——模型找到了几句 RM 打高分的话，不管问什么都这么答。RM 分数高不等于回答好，请看回复原文；"
                       f"可以加大 KL 系数{f'（--{knob}）' if knob else ''}或减少训练步数。")
    if model != BASELINE and sft_share is not None:
        return head + f"SFT 模型本身就这样（同样雷同），不是 {shown} 造成的。"
    return head + "模型本身就只会这几句（小模型或训练不足时常见）。"


# ---------------------------------------------------------------- 汇总


def bootstrap_mean_ci(values, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> list[float] | None:
    """每个问题（或每张票）一个数 -> 均值的 95% 置信区间：有放回地重抽 samples 次，取 2.5% / 97.5% 分位。种子固定：
    同样的数据总给同样的区间；同样多的数重抽的是同一批下标，所以两个模型的区间是配对的（同一次重抽用同一批问题）。
    没有数、或其中有 NaN 时为 None。numpy 一次抽完：评测每个模型算好几个区间，逐个用 Python 抽要几秒。"""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or np.isnan(v).any():
        return None
    idx = np.random.default_rng(seed).integers(0, v.size, (samples, v.size))
    lo, hi = np.quantile(v[idx].mean(1), [0.025, 0.975])
    return [float(lo), float(hi)]


def versus_baseline(gains: list[float]) -> dict:
    """一个模型相对 SFT（每个问题一个提升值）：平均提升、胜率（分数更高的题占比，平局不算胜）及配对自助法的 95% 区间。"""
    n = len(gains)
    wins, ties = sum(g > 0 for g in gains), sum(g == 0 for g in gains)
    return {"mean_gain_vs_sft": mean(gains), "mean_gain_vs_sft_ci95": bootstrap_mean_ci(gains),
            "win_rate_vs_sft": wins / n if n else None,
            "win_rate_vs_sft_ci95": bootstrap_mean_ci([g > 0 for g in gains]),
            "wins": wins, "ties": ties, "losses": n - wins - ties, "n": n}


def kl_stats(kl_per_position: list[list[float]], per_question: int) -> dict:
    """sampling.kl_to_reference 在模型自己按训练温度采的回答上、每个位置算出的精确 KL（每一项都 ≥ 0）-> 
    - kl_seq：每条回答的 KL 之和（序列 KL，训练约束的正是它：TRL 的 PPO 把它从奖励里扣掉）的平均，及 95% 区间
      （同一问题的 per_question 个回答先取平均，再对问题重抽）；
    - kl_per_token：所有回答的位置合在一起的平均（长回答按长度计权）；回答变短时它不变，序列 KL 会变小。
    - kl_seq_by_question：每个问题的平均序列 KL（训练轨迹用）。"""
    seq = [sum(row) for row in kl_per_position]
    by_question = [mean(seq[i:i + per_question]) for i in range(0, len(seq), per_question)]
    positions = [k for row in kl_per_position for k in row]
    return {"kl_seq": mean(by_question), "kl_seq_ci95": bootstrap_mean_ci(by_question),
            "kl_per_token": mean(positions), "kl_seq_by_question": by_question}


JUDGES = {"score": "", "gold": "gold_", "null": "null_"}  # Answer 的字段 -> summary 里键的前缀（代理 RM 没有前缀）


def sd(xs: list[float]) -> float | None:
    """样本标准差；少于两个值或全都相同时为 None（不能拿来当尺子）。"""
    if len(xs) < 2:
        return None
    m = mean(xs)
    value = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
    return value or None


def judge_versus(mine: list[Answer], field: str, scale: float | None) -> dict:
    """一位评委眼里一个模型相对 SFT：提升、胜率及区间，和"几个 SFT 标准差"的提升（scale = 这位评委给 SFT 回答的分数的
    标准差）。几位评委的分差尺度不同（一位的分差可能是另一位的 1.5 倍），换成标准差才能放在一起比。"""
    gains = [getattr(a, "gain" if field == "score" else f"{field}_gain") for a in mine]
    versus = versus_baseline([g for g in gains if g is not None])
    ci = versus["mean_gain_vs_sft_ci95"]
    return {**versus, "gain_in_sft_sd": None if scale is None or versus["mean_gain_vs_sft"] is None
            else versus["mean_gain_vs_sft"] / scale,
            "gain_in_sft_sd_ci95": None if scale is None or ci is None else [c / scale for c in ci]}


def summarize(answers: list[Answer], models: list[str], rm: dict, kl: dict[str, dict] | None = None,
              costs: dict[str, dict | None] | None = None, methods: dict[str, str | None] | None = None,
              judges: dict[str, dict] | None = None, held_out: dict[str, dict | None] | None = None,
              stages: dict[str, str | None] | None = None) -> dict:
    """全部问题上的汇总数字（summary.json、终端表格和 report.md 都用它）。kl：{模型: metrics.kl_stats 的结果}（SFT 自己
    是 0）；costs：{模型: 它训练时 stage.json 里的 cost}；methods：{模型: 方法标签}（同一方法的几个种子合在一起看；通常
    就是阶段名，同一阶段有几种 KL 系数时带上系数）；stages：{模型: 它是哪个阶段训练的}（没给时 = methods）；
    judges：{"gold" / "null": 那位评委在留出偏好对上的成绩单（rm_stats）}（没有的评委不给）；held_out：{模型: stage.json
    里它自己在留出偏好对上的诊断}（DPO 有）。"""
    questions = list(dict.fromkeys(a.question for a in answers))
    judges = judges or {}

    def texts_of(m):
        return [a.response.strip() for a in answers if a.model == m]

    sources = {a.question: a.source for a in answers}
    fields = ["score", *judges]
    scale = {f: sd([getattr(a, f) for a in answers if a.model == BASELINE]) for f in fields}
    per_model = {}
    for m in models:
        mine, texts = [a for a in answers if a.model == m], texts_of(m)
        scores = [a.score for a in mine]
        own_kl = {"kl_seq": 0.0, "kl_seq_ci95": [0.0, 0.0], "kl_per_token": 0.0} if m == BASELINE else \
            {k: v for k, v in ((kl or {}).get(m) or {}).items() if k != "kl_seq_by_question"}
        per_model[m] = {
            "stage": (stages or methods or {}).get(m),
            "method": (methods or {}).get(m),
            "mean_score": mean(scores),
            "mean_score_ci95": bootstrap_mean_ci(scores),
            "mean_score_by_source": {s: mean(a.score for a in mine if a.source == s)
                                     for s in dict.fromkeys(a.source for a in mine)},
            "mean_tokens": mean(a.tokens for a in mine),
            "empty_share": mean(float(not t) for t in texts),
            "unfinished_share": mean(float(not a.stopped) for a in mine),
            "distinct_share": distinct_share(texts),
            "distinct_2": distinct_2(texts),
            "rules": {r: mean(a.rules[r] for a in mine) for r in (mine[0].rules if mine else {})},  # 规则各自的均值
            "kl_seq": own_kl.get("kl_seq"), "kl_seq_ci95": own_kl.get("kl_seq_ci95"),
            "kl_per_token": own_kl.get("kl_per_token"),
            "training_cost": (costs or {}).get(m),
            "held_out": (held_out or {}).get(m),
        }
        for field in judges:
            values = [getattr(a, field) for a in mine]
            per_model[m].update({f"{field}_score": mean(values), f"{field}_score_ci95": bootstrap_mean_ci(values)})
        if m in compared(models):
            for field in fields:
                versus = judge_versus(mine, field, scale[field])
                prefix = JUDGES[field]
                per_model[m].update({f"{prefix}{k}": v for k, v in versus.items()
                                     if not prefix or k in ("mean_gain_vs_sft", "mean_gain_vs_sft_ci95", "win_rate_vs_sft",
                                                            "gain_in_sft_sd", "gain_in_sft_sd_ci95")})
    return {
        "num_questions": len(questions),
        "num_by_source": {s: sum(1 for q in questions if sources[q] == s) for s in dict.fromkeys(sources.values())},
        "baseline": BASELINE if BASELINE in models else None,
        "models": per_model,
        "by_method": by_method(per_model, methods or {}),
        "rm": rm,
        "gold": judges.get("gold"),
        "null": judges.get("null"),
        "judge_sft_sd": {("proxy" if f == "score" else f): scale[f] for f in fields},
        "warnings": [w for m in models if (w := collapse_warning(m, texts_of(m), texts_of(BASELINE) or None))],
    }


def mean_sd(xs: list[float | None]) -> list[float] | None:
    """[均值, 样本标准差]（只有一个值时标准差为 0）；有缺失就是 None。"""
    if not xs or any(x is None for x in xs):
        return None
    m = sum(xs) / len(xs)
    return [m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0]


def by_method(per_model: dict[str, dict], methods: dict[str, str | None]) -> dict[str, dict]:
    """同一方法（stage.json 里的阶段）的几个模型——通常是几个种子——合在一起：各项的 [均值, 标准差]，以及每个种子
    是否都比 SFT 高。methods：{模型名: 阶段}；SFT 自己不算。"""
    groups: dict[str, list[dict]] = {}
    for name, m in per_model.items():
        if "mean_gain_vs_sft" in m:
            groups.setdefault(methods.get(name) or name, []).append(m)
    return {method: {"models": len(ms),
                     **{k: mean_sd([m.get(k) for m in ms]) for k in ("mean_score", "mean_gain_vs_sft", "win_rate_vs_sft",
                                                                      "kl_seq", "kl_per_token", "gold_score",
                                                                      "gold_mean_gain_vs_sft", "gain_in_sft_sd",
                                                                      "gold_gain_in_sft_sd", "null_gain_in_sft_sd")},
                     "beats_sft_in_every_model": all((m["mean_gain_vs_sft"] or 0) > 0 for m in ms)}
            for method, ms in groups.items()}


def rm_stats(folder: str, chosen: list[float], rejected: list[float]) -> dict:
    """RM 自己的成绩单：留出偏好对上 chosen 得分高于 rejected 的比例（准确率）和平均分差。"""
    n = len(chosen)
    return {"folder": folder, "pairs": n, "accuracy": sum(c > r for c, r in zip(chosen, rejected)) / n,
            "margin": sum(c - r for c, r in zip(chosen, rejected)) / n}


def rm_trust(accuracy: float) -> str:
    """RM 留出准确率 -> 一句话：分数能信几分。"""
    if accuracy >= 0.9:
        return "RM 能可靠地分出 chosen 和 rejected，下面的分数基本可信。"
    if accuracy >= 0.7:
        return "RM 有一定区分能力，但会看错一部分，分数上的小差距不要过度解读。"
    return "RM 在没见过的问题上接近瞎猜（0.5 即随机），下面的分数只能当参考。"
