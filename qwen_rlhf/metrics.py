"""评测的数字：每个回答一行的 `Answer` 列表 -> 得分提升、多样性、塌缩警告、汇总，以及 RM 能信几分。

不碰模型也不写文件，所以可以用手写数据单独测试；怎样写成文件和文字见 report.py。
"""

from __future__ import annotations

from dataclasses import dataclass

EMPTY = "（空）"  # 模型一开口就输出 <|im_end|> 时，警告和表格里显示这个
COLLAPSE_SHARE = 0.5  # 不同回复占比低于它：回答塌缩成几句固定的话


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
    gain: float | None = None  # 只有 ppo 行有：ppo 分数 - 同一问题的 sft 分数


def round4(x: float) -> float:
    return round(float(x), 4)


def has_gain(models: list[str]) -> bool:
    return "sft" in models and "ppo" in models


def add_gains(answers: list[Answer]) -> None:
    """给 ppo 的每一行填上相对 sft 的得分提升（同一个问题）。没有 sft 或 ppo 时什么都不做。"""
    sft = {a.question: a.score for a in answers if a.model == "sft"}
    for a in answers:
        if a.model == "ppo" and a.question in sft:
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

    ppo 塌缩而 sft 没有：奖励投机；sft 自己就塌缩（或没有 sft 可比）时不把账算到 PPO 头上。
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
    if model == "ppo" and sft_share is not None and sft_share >= threshold:
        return head + (f"SFT 的不同回复占比是 {sft_share:.0%}，PPO 陷入到单一模式的回答中：这是奖励投机（reward hacking）"
                       "——模型找到了几句 RM 打高分的话，不管问什么都这么答。RM 分数高不等于回答好，请看回复原文；"
                       "可以加大 kl_coef 或减少训练步数。")
    if model == "ppo" and sft_share is not None:
        return head + "SFT 模型本身就这样（同样雷同），不是 PPO 造成的。"
    return head + "模型本身就只会这几句（小模型或训练不足时常见）。"


# ---------------------------------------------------------------- 汇总


def summarize(answers: list[Answer], models: list[str], rm: dict) -> dict:
    """全部问题上的汇总数字（summary.json、终端表格和 report.md 都用它）。"""
    questions = list(dict.fromkeys(a.question for a in answers))

    def texts_of(m):
        return [a.response.strip() for a in answers if a.model == m]

    sources = {a.question: a.source for a in answers}
    per_model = {}
    for m in models:
        mine, texts = [a for a in answers if a.model == m], texts_of(m)
        per_model[m] = {
            "mean_score": mean(a.score for a in mine),
            "mean_score_by_source": {s: mean(a.score for a in mine if a.source == s)
                                     for s in dict.fromkeys(a.source for a in mine)},
            "mean_tokens": mean(a.tokens for a in mine),
            "empty_share": mean(float(not t) for t in texts),
            "unfinished_share": mean(float(not a.stopped) for a in mine),
            "distinct_share": distinct_share(texts),
            "distinct_2": distinct_2(texts),
        }
    summary = {
        "num_questions": len(questions),
        "num_by_source": {s: sum(1 for q in questions if sources[q] == s) for s in dict.fromkeys(sources.values())},
        "models": per_model,
        "ppo_vs_sft": None,
        "rm": rm,
        "warnings": [w for m in models if (w := collapse_warning(m, texts_of(m), texts_of("sft") or None))],
    }
    gains = [a.gain for a in answers if a.model == "ppo" and a.gain is not None]
    if has_gain(models) and gains:
        wins, ties = sum(g > 0 for g in gains), sum(g == 0 for g in gains)
        summary["ppo_vs_sft"] = {"mean_gain": mean(gains), "win_rate": wins / len(gains), "wins": wins, "ties": ties,
                                 "losses": len(gains) - wins - ties, "n": len(gains)}
    return summary


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
