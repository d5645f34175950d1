"""过度优化检验（trajectory.drop_after_peak）的校准：已知真相的模拟曲线。

噪声按实测的量级：32 个问题、4 / 5 / 6 个点（SFT + 快照 + 最终结果：迷你对比的 GRPO / RLOO / DPO 存 3 个快照、
迷你 PPO 4 个、真实默认 5 个）、每个回答的分数标准差 1.5、问题本身的难度标准差 1.0（同一问题在各点之间共享，配对后
抵消）、每个问题 2 个回答取平均（compare.sh 的 --kl_samples）。代理分和 KL 一路上升。
- 金标准分的真实值不变：判成"过度优化"的比例 ≤ 5%（检验的水平）；
- 金标准分按 Gao et al. (2022) 的 RL 形状 g(d) = d(α − β ln d)（d = √KL）先升后降，峰值提升 +2.0、之后回落约 0.8
  （我们的迷你对比里见过的量级：WEAK_KL 的 GRPO 峰值 +2.11），3 个种子：≥ 80% 被检出。
"""

import numpy as np
import pytest

from qwen_rlhf import trajectory

QUESTIONS, POINTS, ANSWER_SD, QUESTION_SD, PER_QUESTION = 32, 5, 1.5, 1.0, 2
SHIPPED_POINTS = (4, 5, 6)  # 迷你 GRPO / RLOO / DPO、迷你 PPO、真实默认（--snapshots 5）各自的点数


def sqrt_kl(points: int = POINTS) -> np.ndarray:
    return np.linspace(0.0, 1.6, points)  # 第 0 个点是 SFT


SQRT_KL = sqrt_kl()


def simulate(true_gold: np.ndarray, runs: int, rng, per_question: int = PER_QUESTION):
    """(运行, 点, 问题) 的金标准分与代理分、(运行, 点) 的 KL：真实曲线 + 问题难度 + 每个回答的噪声。"""
    points, d = len(true_gold), sqrt_kl(len(true_gold))
    noise_sd = ANSWER_SD / np.sqrt(per_question)
    difficulty = rng.normal(0, QUESTION_SD, QUESTIONS)
    gold = true_gold[None, :, None] + difficulty + rng.normal(0, noise_sd, (runs, points, QUESTIONS))
    proxy = 1.5 * d[None, :, None] + difficulty + rng.normal(0, noise_sd, (runs, points, QUESTIONS))
    kl = np.broadcast_to(d ** 2, (runs, points))
    return gold, proxy, kl


def gao_rl(d: np.ndarray, peak_at: float = 0.8, peak_gain: float = 2.0) -> np.ndarray:
    """g(d) = d(α − β ln d)，峰在 d = peak_at、峰值 peak_gain（d = 0 处为 0）。"""
    ratio = 1 + np.log(peak_at)  # α / β：峰在 e^(α/β − 1)
    beta = peak_gain / (peak_at * (ratio - np.log(peak_at)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, d * beta * (ratio - np.log(np.where(d > 0, d, 1))), 0.0)


def verdict_rate(true_gold, runs: int, trials: int, seed: int, per_question: int = PER_QUESTION) -> float:
    rng = np.random.default_rng(seed)
    found = 0
    for t in range(trials):
        gold, proxy, kl = simulate(true_gold, runs, rng, per_question)
        found += trajectory.drop_after_peak(gold, proxy, kl, samples=1000, seed=t)["verdict"] == "overoptimised"
    return found / trials


@pytest.mark.parametrize("points", SHIPPED_POINTS)
def test_flat_gold_is_called_overoptimised_at_most_at_the_stated_rate(points):
    """符号翻转检验的水平就是 alpha：金标准真的不变、几个种子的峰值又很少都落在最终点时，真实误报率贴着 5%（3 个种子、
    6 个点时模拟 4000 次约 5.2% ± 0.35%）。所以不要求模拟出的比例本身 ≤ 5%（那样过不过只看种子运气），而是要求它
    不显著高于 5%：2000 次模拟的蒙特卡洛标准误约 0.5%，比例超过 alpha + 2 个标准误（≈ 6%）就失败。"""
    trials = 2000
    limit = trajectory.ALPHA + 2 * np.sqrt(trajectory.ALPHA * (1 - trajectory.ALPHA) / trials)
    flat = np.zeros(points)
    for runs in (1, 3):
        rate = verdict_rate(flat, runs, trials=trials, seed=runs)
        assert rate <= limit, (points, runs, rate)


@pytest.mark.parametrize("points", SHIPPED_POINTS)
def test_a_planted_rise_then_fall_of_realistic_size_is_found_at_least_80_percent_of_the_time(points):
    curve = gao_rl(sqrt_kl(points))
    assert curve.argmax() not in (0, points - 1) and 0.5 < curve.max() - curve[-1] < 1.0  # 真的先升后降、回落适中
    assert verdict_rate(curve, runs=3, trials=1000, seed=7) >= 0.8, points


def test_a_fall_together_with_proxy_and_kl_is_not_called_overoptimisation():
    """金标准分回落，但代理分和 KL 也一起回落（策略退回 SFT 附近）：回落显著也不叫过度优化。"""
    rng = np.random.default_rng(0)
    true_gold = np.array([0.0, 2.0, 2.0, 0.5, 0.0])
    gold, proxy, kl = simulate(true_gold, 3, rng)
    proxy = proxy - 1.5 * SQRT_KL[None, :, None] + true_gold[None, :, None]  # 代理分跟着金标准分走
    kl = np.broadcast_to(np.array([0.0, 1.0, 1.0, 0.3, 0.1]), (3, POINTS))
    result = trajectory.drop_after_peak(gold, proxy, kl)
    assert result["verdict"] == "fell_back", result


def test_a_fall_while_kl_keeps_growing_and_proxy_falls_is_called_degraded_not_overoptimisation():
    """金标准分回落、KL 继续变大、代理分也回落（策略走远了、两个 RM 都不给高分，例如回答写满长度不再停下）：
    是"变坏"，既不是过度优化（代理分没涨），也不是"退回 SFT"（KL 没变小）。"""
    rng = np.random.default_rng(0)
    true_gold = np.array([0.0, 2.0, 2.0, 0.5, 0.0])
    gold, proxy, kl = simulate(true_gold, 3, rng)
    proxy = proxy - 1.5 * SQRT_KL[None, :, None] + true_gold[None, :, None]  # 代理分跟着金标准分走
    kl = np.broadcast_to(np.array([0.0, 1.0, 1.5, 10.0, 30.0]), (3, POINTS))  # KL 一路变大
    result = trajectory.drop_after_peak(gold, proxy, kl)
    assert result["verdict"] == "degraded", result
    assert result["kl_rise_after_peak"] > 0 and result["proxy_rise_after_peak"] < 0
