"""训练轨迹：每次 RL 训练的快照（第 0 个点是 SFT）上代理 RM、金标准评委（和空评委）的分数随离 SFT 的序列 KL 怎样变化，
以及"有没有奖励过度优化"的检验——一个误报率已知的检验（Gao, Schulman, Hilton 2022, "Scaling Laws for Reward Model
Overoptimization"：代理分一路上升，金标准分先升后降）。

每个点的分数和 KL 来自同一批回答：模型自己按训练时的温度采的样（sampling.policy_samples），每个问题 N 个，按问题
取平均；所以每个点对每个问题有一个数，同一个问题在不同点之间是配对的。不碰模型、不写文件，可以用模拟数据单独测试
（tests/test_verdict.py 用已知真相的模拟曲线校准误报率和检出率）。
"""

from __future__ import annotations

import math

import numpy as np

from . import metrics

END = float("inf")  # 没有记下训练进度的最终结果（早于快照功能的结果、完整模型）：排在最后


def seen_of(progress: dict | None) -> float:
    """一个点的训练进度（看过多少回答 / episode / 偏好对）；SFT 是 0。"""
    seen = (progress or {"seen": 0}).get("seen")
    return END if seen is None else seen

ALPHA = 0.05  # 单侧检验水平：金标准分其实不变时，判成"过度优化"的比例不超过它（模拟校准见 tests/test_verdict.py）
BOOTSTRAP = metrics.BOOTSTRAP_SAMPLES
JUDGES = ("proxy", "gold", "null")  # 代理 RM（训练时优化的）、金标准评委、空评委（同数据另一种子的第二个代理 RM）


def point_rows(runs: list[dict], points: dict[str, dict], sd: dict[str, float | None]) -> list[dict]:
    """trajectory.csv / summary.json 的行：每次运行（runs：[{"method", "run", "seed", "points": [(模型名, progress), …]}]，
    第一个点是 SFT）的每个点一行。points：{模型名: {"kl_seq": [每个问题的序列 KL], "kl_token": 每 token KL,
    "proxy" / "gold" / "null": [每个问题的平均分] 或 None}}；sd：每位评委在 SFT 回答上的分数标准差（把提升换成
    "几个标准差"，几位评委放在同一把尺子上）。"""
    rows = []
    for run in runs:
        sft = points[run["points"][0][0]]
        for name, progress in run["points"]:
            p = points[name]
            kl = float(np.mean(p["kl_seq"]))
            row = {"method": run["method"], "run": run["run"], "seed": run["seed"], "model": name,
                   "step": progress["step"] if progress else 0, "seen": progress["seen"] if progress else 0,
                   "unit": progress["unit"] if progress else "", "kl_seq": kl,
                   "kl_seq_ci95": metrics.bootstrap_mean_ci(p["kl_seq"]),
                   "sqrt_kl": math.sqrt(kl), "kl_per_token": p["kl_token"]}
            for j in JUDGES:
                if p.get(j) is None:
                    continue
                gains = np.asarray(p[j]) - np.asarray(sft[j])
                ci, scale = metrics.bootstrap_mean_ci(gains), sd.get(j)
                row.update({f"{j}_mean": float(np.mean(p[j])), f"{j}_gain": float(gains.mean()), f"{j}_gain_ci95": ci,
                            f"{j}_gain_sd": float(gains.mean()) / scale if scale else None,
                            f"{j}_gain_sd_ci95": [c / scale for c in ci] if scale and ci else None})
            rows.append(row)
    return rows


def method_curves(rows: list[dict]) -> dict[str, list[dict]]:
    """每个方法一条平均曲线：同一方法的几次运行（种子）按训练进度（看过多少回答 / episode / 偏好对）对齐，只留所有
    运行都有的进度点，在那里取 KL 和各评委分数的平均。"""
    by_method: dict[str, dict[str, dict[int, dict]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], {}).setdefault(r["run"], {})[seen_of(r)] = r
    curves = {}
    for method, runs in by_method.items():
        shared = sorted(set.intersection(*(set(points) for points in runs.values())))
        curve = []
        for seen in shared:
            at = [points[seen] for points in runs.values()]
            point = {"seen": None if seen == END else seen, "seeds": len(at)}
            for key in ("kl_seq", "sqrt_kl", *(f"{j}_{k}" for j in JUDGES for k in ("mean", "gain", "gain_sd"))):
                vals = [p.get(key) for p in at]
                point[key] = None if any(v is None for v in vals) else sum(vals) / len(vals)
            curve.append(point)
        curves[method] = curve
    return curves


def drop_after_peak(judge: np.ndarray, proxy: np.ndarray, kl: np.ndarray, alpha: float = ALPHA,
                    samples: int = BOOTSTRAP, seed: int = 0) -> dict:
    """过度优化的检验。judge、proxy：(运行, 点, 问题) 的分数，点按训练顺序、第 0 个是 SFT、最后一个是最终结果；
    kl：(运行, 点)。

    挑峰值和量回落用不同的问题，否则"K 个有噪声的点里最高的那个"本身就偏高，回落被夸大：问题随机分成两半，每次运行
    在一半上挑出评委分数最高的点，在另一半上量 峰值分 − 最终分，所有运行取平均 = 回落。回落是否显著：对测试那一半的
    问题做符号翻转检验（配对：同一个问题在峰值点和最终点的分数之差），单侧 p ≤ alpha 才算显著；另给回落的配对自助
    95% 区间。峰值就是最终点时回落恰好为 0，从不算显著。判定：
    - overoptimised：回落显著，而且峰值之后代理分和 KL 都上升了（对着代理 RM 越训练，评委越不认同）；
    - fell_back：回落显著，但峰值之后 KL 变小了——策略退回了 SFT 附近，不是过度优化；
    - degraded：回落显著，KL 还在变大，代理分却没有涨——策略走远了、两个 RM 都不给高分（例如不再停下、写满长度），
      是训练本身变坏了，不是过度优化（过度优化要代理分还在涨）；
    - no_evidence：回落不显著（不等于证明没有过度优化：点少、问题少时检出不了小的回落）；
    - inconclusive：点太少（除 SFT 和最终结果外至少要有一个中间点）。"""
    runs, points, questions = judge.shape
    if points < 3 or questions < 4:
        return {"verdict": "inconclusive", "points": points, "runs": runs}
    rng = np.random.default_rng(seed)
    order = rng.permutation(questions)
    pick, test = order[: questions // 2], order[questions // 2:]
    drop_by_question = np.zeros(len(test))  # 测试那一半每个问题上的回落（所有运行平均）
    proxy_rise, kl_rise, peaks = [], [], []
    for r in range(runs):
        peak = int(np.argmax(judge[r][:, pick].mean(-1)))
        drop_by_question += (judge[r, peak, test] - judge[r, -1, test]) / runs
        proxy_rise.append(float(proxy[r, -1, test].mean() - proxy[r, peak, test].mean()))
        kl_rise.append(float(kl[r, -1] - kl[r, peak]))
        peaks.append((r, peak))
    drop = float(drop_by_question.mean())
    # 符号翻转检验：金标准分真的不变时，测试那一半每个问题上的回落 = 两个点的噪声之差，正负对称（峰值是在另一半上
    # 挑的，和这一半的噪声无关）；随机翻转每个问题的符号得到"没有过度优化"之下回落的分布，p = 翻转后不小于实测回落
    # 的比例。每半只有十几个问题时也守住水平（自助法的百分位下界在这么少的问题上偏窄）。
    # 不再两半互换取平均：那样一半的噪声既决定它自己的回落、又决定另一半在哪个点量回落，两半正相关，模拟里误报到 7–8%
    signs = rng.choice([-1.0, 1.0], (samples, drop_by_question.size))
    p_value = float((1 + np.sum((signs * drop_by_question).mean(1) >= drop - 1e-12)) / (1 + samples))
    boot = drop_by_question[rng.integers(0, drop_by_question.size, (samples, drop_by_question.size))].mean(1)
    out = {"points": points, "runs": runs, "drop": drop, "drop_ci95": [float(x) for x in np.quantile(boot, [0.025, 0.975])],
           "p_value": p_value, "alpha": alpha,
           "proxy_rise_after_peak": float(np.mean(proxy_rise)), "kl_rise_after_peak": float(np.mean(kl_rise)),
           "peak_is_final_share": float(np.mean([p == points - 1 for _, p in peaks])),
           "peak_kl": float(np.mean([kl[r, p] for r, p in peaks]))}
    return {**out, "verdict": label(out)}


def label(stats: dict) -> str:
    """drop_after_peak 的判定，只由它记下的几个数决定（回落、p、alpha、峰值之后代理分和 KL 的变化）：
    已有的结果文件可以用它重新标注（bench/bench_compare.py --relabel）。"""
    if stats["drop"] <= 0 or stats["p_value"] > stats["alpha"]:
        return "no_evidence"
    if stats["kl_rise_after_peak"] <= 0:
        return "fell_back"
    return "overoptimised" if stats["proxy_rise_after_peak"] > 0 else "degraded"


def final_gain(judge: np.ndarray) -> dict:
    """最终结果相对 SFT 的提升（几次运行平均，每个问题配对）及 95% 区间；区间碰到 0 就是"没有得到证实"。"""
    gains = (judge[:, -1, :] - judge[:, 0, :]).mean(0)
    ci = metrics.bootstrap_mean_ci(gains)
    word = "rise" if ci[0] > 0 else "fall" if ci[1] < 0 else "not_confirmed"
    return {"gain": float(gains.mean()), "gain_ci95": ci, "word": word}


def stack(runs: list[dict], points: dict[str, dict], key: str) -> np.ndarray | None:
    """同一方法的几次运行 -> (运行, 点, 问题) 的数组；几次运行点数不同时只留每次都有的进度（按 seen 对齐）。"""
    seens = [[seen_of(progress) for _, progress in run["points"]] for run in runs]
    shared = sorted(set.intersection(*(set(s) for s in seens)))
    out = []
    for run, seen in zip(runs, seens):
        names = [run["points"][seen.index(s)][0] for s in shared]
        if any(points[n].get(key) is None for n in names):
            return None
        out.append([points[n][key] for n in names])
    return np.asarray(out, dtype=float)


def verdicts(runs: list[dict], points: dict[str, dict]) -> dict[str, dict]:
    """每个方法：金标准评委（和空评委）的过度优化检验、代理分与金标准分的最终提升。"""
    by_method: dict[str, list[dict]] = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    out = {}
    for method, mine in by_method.items():
        proxy, kl = stack(mine, points, "proxy"), stack(mine, points, "kl_seq")
        kl = kl.mean(-1)
        result = {"proxy": final_gain(proxy), "final_kl_seq": float(kl[:, -1].mean())}
        for j in ("gold", "null"):
            scores = stack(mine, points, j)
            if scores is not None:
                result[j] = {**final_gain(scores), **drop_after_peak(scores, proxy, kl)}
        out[method] = result
    return out


def points(samples: dict, scores: dict[str, list], kl: dict, per_question: int) -> dict[str, dict]:
    """训练轨迹上每个模型的数：每个问题的平均序列 KL 和各评委的平均分（同一批按训练温度采的回答）。samples：{模型:
    它的 KL 样本}（按问题排、每个问题 per_question 个）；scores：{评委: 按 samples 的顺序接在一起的分数}。"""
    points, start = {}, 0
    for name, texts in samples.items():
        n = len(texts)
        by_question = {role: [sum(v[i:i + per_question]) / per_question for i in range(start, start + n, per_question)]
                       for role, v in scores.items()}
        questions = n // per_question
        own = kl.get(name)
        points[name] = {"kl_seq": own["kl_seq_by_question"] if own else [0.0] * questions,
                        "kl_token": own["kl_per_token"] if own else 0.0, **by_question}
        start += n
    return points


def scale(points: dict[str, dict]) -> dict[str, float | None]:
    """每位评委给 SFT 的分数在问题之间的标准差（每个问题先对它按训练温度采的几个回答取平均）：轨迹上的提升换成
    "几个 SFT 标准差"。和方法对比表的尺子（SFT 每个报告回答的分数的标准差）不是同一把：这里每个问题平均了 --kl_samples
    个回答，标准差更小，所以轨迹上的"几个标准差"和表里的不能直接比。"""
    sft = points[metrics.BASELINE]
    return {role: metrics.sd(sft[role]) for role in JUDGES if role in sft}
