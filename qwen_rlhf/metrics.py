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
    gold: float | None = None  # 金标准评委（--gold_model_path）的分数；没有金标准评委时为 None
    gold_gain: float | None = None  # 同上，金标准分数相对 SFT 的提升


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
            if a.gold is not None and sft[a.question].gold is not None:
                a.gold_gain = round4(a.gold - sft[a.question].gold)


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


def per_token_kl(kl_per_position: list[list[float]]) -> float | None:
    """每 token 的 KL(模型 ‖ SFT)：sampling.kl_to_reference 在每条回答每个位置上算出的精确 KL，所有回答的位置合在一起
    取平均（长回答按它的长度计权）。每一项都 ≥ 0，所以结果也 ≥ 0；没有任何位置时为 None。"""
    return mean(k for row in kl_per_position for k in row)


def summarize(answers: list[Answer], models: list[str], rm: dict, kl: dict[str, float | None] | None = None,
              costs: dict[str, dict | None] | None = None, methods: dict[str, str | None] | None = None,
              gold: dict | None = None, held_out: dict[str, dict | None] | None = None,
              stages: dict[str, str | None] | None = None) -> dict:
    """全部问题上的汇总数字（summary.json、终端表格和 report.md 都用它）。kl：{模型: 相对 SFT 的每 token KL}；
    costs：{模型: 它训练时 stage.json 里的 cost}；methods：{模型: 方法标签}（同一方法的几个种子合在一起看；通常就是
    阶段名，同一阶段有几种 KL 系数时带上系数）；stages：{模型: 它是哪个阶段训练的}（没给时 = methods）；
    gold：金标准评委在留出偏好对上的成绩单（rm_stats；没有金标准评委时 None）；held_out：{模型: stage.json 里它自己在
    留出偏好对上的诊断}（DPO 有）。"""
    questions = list(dict.fromkeys(a.question for a in answers))

    def texts_of(m):
        return [a.response.strip() for a in answers if a.model == m]

    sources = {a.question: a.source for a in answers}
    per_model = {}
    for m in models:
        mine, texts = [a for a in answers if a.model == m], texts_of(m)
        scores = [a.score for a in mine]
        per_model[m] = {
            "stage": (stages or methods or {}).get(m),
            "method": (methods or {}).get(m),
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
            "held_out": (held_out or {}).get(m),
        }
        if m in compared(models):
            per_model[m].update(versus_baseline([a.gain for a in mine if a.gain is not None]))
        if gold is not None:
            golds = [a.gold for a in mine]
            per_model[m].update(gold_score=mean(golds),
                                gold_score_ci95=bootstrap_ci(len(golds), lambda idx: mean(golds[i] for i in idx)))
            if m in compared(models):
                gains = [a.gold_gain for a in mine if a.gold_gain is not None]
                versus = versus_baseline(gains)
                per_model[m].update(gold_gain_vs_sft=versus["mean_gain_vs_sft"],
                                    gold_gain_vs_sft_ci95=versus["mean_gain_vs_sft_ci95"],
                                    gold_win_rate_vs_sft=versus["win_rate_vs_sft"])
    return {
        "num_questions": len(questions),
        "num_by_source": {s: sum(1 for q in questions if sources[q] == s) for s in dict.fromkeys(sources.values())},
        "baseline": BASELINE if BASELINE in models else None,
        "models": per_model,
        "by_method": by_method(per_model, methods or {}),
        "rm": rm,
        "gold": gold,
        "warnings": [w for m in models if (w := collapse_warning(m, texts_of(m), texts_of(BASELINE) or None))],
    }


# ---------------------------------------------------------------- 训练轨迹：代理分、金标准分与 KL


def trajectory_rows(answers: list[Answer], runs: list[dict], kl: dict[str, float | None]) -> list[dict]:
    """runs：[{"method": 方法标签, "run": 最终模型名, "seed": 种子, "points": [(模型名, progress 或 None), …]}]，
    points 按训练顺序，第一个是 SFT（第 0 步，progress 为 None）。每个点一行：代理 RM 与金标准评委的平均分及 95% 区间、
    相对 SFT 的提升的配对区间（对问题自助重抽，和方法对比表同一个算法）、离 SFT 的精确 KL（每 token）。"""
    by_model: dict[str, list[Answer]] = {}
    for a in answers:
        by_model.setdefault(a.model, []).append(a)

    def stats(values):
        if not values or any(v is None for v in values):
            return None, None
        return mean(values), bootstrap_ci(len(values), lambda idx: mean(values[i] for i in idx))

    cache: dict[str, tuple] = {}
    rows = []
    for run in runs:
        for name, progress in run["points"]:
            if name not in cache:
                mine = by_model[name]
                gains = [0.0] * len(mine) if name == BASELINE else [a.gain for a in mine]
                gold_gains = [0.0 if a.gold is not None else None for a in mine] if name == BASELINE else \
                    [a.gold_gain for a in mine]
                cache[name] = (*stats([a.score for a in mine]), *stats([a.gold for a in mine]), stats(gains)[1],
                               stats(gold_gains)[1])
            proxy, proxy_ci, gold, gold_ci, gain_ci, gold_gain_ci = cache[name]
            rows.append({"method": run["method"], "run": run["run"], "seed": run["seed"], "model": name,
                         "step": progress["step"] if progress else 0, "seen": progress["seen"] if progress else 0,
                         "unit": progress["unit"] if progress else "", "proxy_mean": proxy, "proxy_ci95": proxy_ci,
                         "proxy_gain_ci95": gain_ci, "gold_mean": gold, "gold_ci95": gold_ci,
                         "gold_gain_ci95": gold_gain_ci, "kl_to_sft": 0.0 if name == BASELINE else kl.get(name)})
    return rows


def method_curves(rows: list[dict]) -> dict[str, list[dict]]:
    """每个方法一条曲线：同一方法的几次运行（种子）按"第几个点"对齐取平均（第 0 个点是 SFT）；噪声 = 每个点相对 SFT
    的提升的配对 95% 区间的半宽，几次运行取平均。几次运行的点数不同时取最短的。"""
    runs: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        runs.setdefault(r["method"], {}).setdefault(r["run"], []).append(r)
    curves = {}
    for method, by_run in runs.items():
        n = min(len(points) for points in by_run.values())
        curve = []
        for i in range(n):
            at = [points[i] for points in by_run.values()]

            def avg(key, at=at):
                vals = [p[key] for p in at]
                return None if any(v is None for v in vals) else sum(vals) / len(vals)

            def half(key, at=at):
                cis = [p[key] for p in at]
                return None if any(c is None for c in cis) else sum((c[1] - c[0]) / 2 for c in cis) / len(cis)

            curve.append({"kl": avg("kl_to_sft"), "proxy": avg("proxy_mean"), "gold": avg("gold_mean"),
                          "proxy_half": half("proxy_gain_ci95"), "gold_half": half("gold_gain_ci95"), "seeds": len(at)})
        curves[method] = curve
    return curves


def overoptimisation(curve: list[dict]) -> dict:
    """从一条方法曲线读出这次有没有"奖励过度优化"（Gao et al. 2022, Scaling Laws for Reward Model Overoptimization）：
    代理分一路上升，金标准分先升后降或不升。噪声 = 最后一个点上"相对 SFT 的提升"的配对 95% 区间半宽（对问题重抽，
    几个种子取平均）。

    verdict：proxy_flat（代理分自己都没明显上升）/ overoptimised（金标准分在某个 KL 处最高，之后降了超过噪声）/
    gold_falls（金标准分从 SFT 起就在降）/ gold_flat（代理分升了，金标准分在噪声之内没变）/ both_rise（一起升）。"""
    first, last = curve[0], curve[-1]
    out = {"proxy_gain": last["proxy"] - first["proxy"], "final_kl": last["kl"], "points": len(curve),
           "proxy_noise": last["proxy_half"], "gold_noise": last["gold_half"]}
    rose = out["proxy_gain"] > (last["proxy_half"] or 0)
    if last["gold"] is None:
        return {**out, "verdict": "no_gold" if rose else "proxy_flat"}
    peak = max(range(len(curve)), key=lambda i: curve[i]["gold"])
    out.update(gold_gain=last["gold"] - first["gold"], peak_index=peak, peak_kl=curve[peak]["kl"],
               peak_gold_gain=curve[peak]["gold"] - first["gold"], gold_drop_after_peak=curve[peak]["gold"] - last["gold"])
    noise = last["gold_half"] or 0
    if not rose:
        verdict = "proxy_flat"
    elif out["gold_drop_after_peak"] > noise:
        verdict = "overoptimised" if peak > 0 else "gold_falls"
    elif abs(out["gold_gain"]) <= noise:
        verdict = "gold_flat"
    else:
        verdict = "both_rise" if out["gold_gain"] > 0 else "gold_falls"
    return {**out, "verdict": verdict}


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
                                                                      "kl_to_sft", "gold_score", "gold_gain_vs_sft")},
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
