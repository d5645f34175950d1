"""评测的数字：每个回答一行的 `Answer` 列表 -> 得分提升、多样性、塌缩警告、汇总，以及 RM 能信几分。

不碰模型也不写文件，所以可以用手写数据单独测试；怎样写成文件和文字见 report.py。
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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


def round4(x: float) -> float:
    return round(float(x), 4)


def compared(models: list[str]) -> list[str]:
    """和 SFT 比的模型（--models 里除 SFT 以外的）；没有 SFT 就没有可比的。"""
    return [m for m in models if m != BASELINE] if BASELINE in models else []


def add_gains(answers: list[Answer]) -> None:
    """给非 SFT 模型的每一行填上相对 SFT 的得分提升（同一个问题）。没有 SFT 时什么都不做。"""
    sft = {a.question: a.score for a in answers if a.model == BASELINE}
    for a in answers:
        if a.model != BASELINE and a.question in sft:
            a.gain = round4(a.score - sft[a.question])


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
    if model != BASELINE and sft_share is not None and sft_share >= threshold:
        return head + (f"SFT 的不同回复占比是 {sft_share:.0%}，{shown} 陷入到单一模式的回答中：这是奖励投机（reward hacking）"
                       "——模型找到了几句 RM 打高分的话，不管问什么都这么答。RM 分数高不等于回答好，请看回复原文；"
                       "可以加大 kl_coef 或减少训练步数。")
    if model != BASELINE and sft_share is not None:
        return head + f"SFT 模型本身就这样（同样雷同），不是 {shown} 造成的。"
    return head + "模型本身就只会这几句（小模型或训练不足时常见）。"


# ---------------------------------------------------------------- 汇总


def bootstrap_ci(n: int, stat, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> list[float] | None:
    """stat(下标列表) 的 95% 置信区间：有放回地重抽 n 个问题 samples 次，取 2.5% / 97.5% 分位。种子固定：同样的
    数据总给同样的区间。配对：同一次重抽里每个模型用的是同一批问题（调用者在 stat 里按下标取两个模型的分数）。"""
    if n == 0:
        return None
    rng = random.Random(seed)
    values = sorted(stat([rng.randrange(n) for _ in range(n)]) for _ in range(samples))
    return [values[int(0.025 * (samples - 1))], values[int(round(0.975 * (samples - 1)))]]


def versus_baseline(gains: list[float]) -> dict:
    """一个模型相对 SFT（每个问题一个提升值）：平均提升、胜率（分数更高的题占比，平局不算胜）及配对自助法的 95% 区间。"""
    n = len(gains)
    wins, ties = sum(g > 0 for g in gains), sum(g == 0 for g in gains)
    return {"mean_gain_vs_sft": mean(gains), "mean_gain_vs_sft_ci95": bootstrap_ci(n, lambda idx: mean(gains[i] for i in idx)),
            "win_rate_vs_sft": wins / n if n else None,
            "win_rate_vs_sft_ci95": bootstrap_ci(n, lambda idx: sum(gains[i] > 0 for i in idx) / n),
            "wins": wins, "ties": ties, "losses": n - wins - ties, "n": n}


def per_token_kl(model_logprobs: list[list[float]], sft_logprobs: list[list[float]]) -> float | None:
    """KL(模型 ‖ SFT) 的蒙特卡洛估计：在模型自己的回答上，每个 token 的 log p_模型 − log p_SFT，所有回答的 token 合在一起取平均。
    两个列表一一对应（同一条回答、同样的 token）。"""
    diffs = [m - s for ms, ss in zip(model_logprobs, sft_logprobs, strict=True) for m, s in zip(ms, ss, strict=True)]
    return mean(diffs)


def summarize(answers: list[Answer], models: list[str], rm: dict, kl: dict[str, float | None] | None = None,
              costs: dict[str, dict | None] | None = None, methods: dict[str, str | None] | None = None) -> dict:
    """全部问题上的汇总数字（summary.json、终端表格和 report.md 都用它）。kl：{模型: 相对 SFT 的每 token KL}；
    costs：{模型: 它训练时 stage.json 里的 cost}；methods：{模型: 它是哪个阶段训练的}（同一方法的几个种子合在一起看）。"""
    questions = list(dict.fromkeys(a.question for a in answers))

    def texts_of(m):
        return [a.response.strip() for a in answers if a.model == m]

    sources = {a.question: a.source for a in answers}
    per_model = {}
    for m in models:
        mine, texts = [a for a in answers if a.model == m], texts_of(m)
        scores = [a.score for a in mine]
        per_model[m] = {
            "stage": (methods or {}).get(m),
            "mean_score": mean(scores),
            "mean_score_ci95": bootstrap_ci(len(scores), lambda idx: mean(scores[i] for i in idx)),
            "mean_score_by_source": {s: mean(a.score for a in mine if a.source == s)
                                     for s in dict.fromkeys(a.source for a in mine)},
            "mean_tokens": mean(a.tokens for a in mine),
            "empty_share": mean(float(not t) for t in texts),
            "unfinished_share": mean(float(not a.stopped) for a in mine),
            "distinct_share": distinct_share(texts),
            "distinct_2": distinct_2(texts),
            "kl_to_sft": 0.0 if m == BASELINE else (kl or {}).get(m),
            "training_cost": (costs or {}).get(m),
        }
        if m in compared(models):
            per_model[m].update(versus_baseline([a.gain for a in mine if a.gain is not None]))
    return {
        "num_questions": len(questions),
        "num_by_source": {s: sum(1 for q in questions if sources[q] == s) for s in dict.fromkeys(sources.values())},
        "baseline": BASELINE if BASELINE in models else None,
        "models": per_model,
        "by_method": by_method(per_model, methods or {}),
        "rm": rm,
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
                     **{k: mean_sd([m[k] for m in ms]) for k in ("mean_score", "mean_gain_vs_sft", "win_rate_vs_sft",
                                                                  "kl_to_sft")},
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
