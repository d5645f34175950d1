"""评测的图：每个模型的得分分布、每个问题的得分提升、得分对离 SFT 的距离（训练轨迹）。坐标轴用英文：默认字体没有中文字形。"""

from __future__ import annotations

from pathlib import Path

from .metrics import Answer, compared
from .trajectory import JUDGES, method_curves


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # 没有显示器的服务器上也能画
    import matplotlib.pyplot as plt

    return plt


def plot_scores(answers: list[Answer], models: list[str], path: Path) -> None:
    """每个模型的 RM 得分分布：箱线图 + 每个问题一个点。坐标轴用英文：默认字体没有中文字形。"""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(models), 4.2), dpi=110)
    data = [[a.score for a in answers if a.model == m] for m in models]
    ax.boxplot(data, showmeans=True, widths=0.5)
    ax.set_xticks(range(1, len(models) + 1), models)
    for i, scores in enumerate(data, 1):
        # 确定性的横向错开（不用随机数），两次运行画出同一张图
        offsets = [((j * 0.618) % 1 - 0.5) * 0.3 for j in range(len(scores))]
        ax.scatter([i + o for o in offsets], scores, s=10, alpha=0.5, color="tab:blue", zorder=3)
    ax.set_ylabel("RM score")
    ax.set_title("RM score per model (box: quartiles, triangle: mean)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_gains(answers: list[Answer], models: list[str], path: Path) -> None:
    """每个问题相对 SFT 的得分提升，每个模型一格、从小到大排好：一眼看出多少题变好、多少题变差。"""
    plt = _pyplot()
    others = compared(models)
    fig, axes = plt.subplots(1, len(others), figsize=(1 + 4.5 * len(others), 4.2), dpi=110, sharey=True, squeeze=False)
    for ax, m in zip(axes[0], others):
        gains = sorted(a.gain for a in answers if a.model == m and a.gain is not None)
        ax.bar(range(len(gains)), gains, width=0.85,
               color=["tab:green" if g > 0 else "tab:red" if g < 0 else "tab:gray" for g in gains])
        ax.axhline(0, color="black", linewidth=0.8)
        if gains:
            ax.axhline(sum(gains) / len(gains), color="tab:blue", linestyle="--", linewidth=1,
                       label=f"mean {sum(gains) / len(gains):+.2f}")
            ax.legend(loc="upper left")
        ax.set_xlabel(f"questions, sorted by gain (n={len(gains)})")
        ax.set_title(f"{m} - sft")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("RM score gain over SFT")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reward_vs_kl(summary: dict, path: Path) -> None:
    """每位评委一格（代理 RM；有金标准评委、空评委时各一格）：相对 SFT 的提升（以这位评委给 SFT 回答的分数标准差为
    单位，几位评委在同一把尺子上）对 √(序列 KL)（Gao et al. 2022 的横轴）。每个方法一种颜色，每次运行（种子）一条
    细线，按训练顺序从 SFT（原点，黑色星号）连到最终结果（大圆点）；同一方法有几个种子时，粗线是按训练进度对齐的平均。
    不给每个点写名字（会叠在一起），方法名在图例里；每个点的数字在 trajectory.csv / summary.json。
    坐标轴用英文：默认字体没有中文字形。"""
    plt = _pyplot()
    rows = summary["trajectory"]
    names = {"proxy": "proxy RM (optimised in training)", "gold": "gold RM (never optimised)",
             "null": "null RM (proxy's data, other seed)"}
    panels = [j for j in JUDGES if any(r.get(f"{j}_gain_sd") is not None for r in rows)]
    if not panels:
        return
    curves = method_curves(rows)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(curves)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), dpi=110, squeeze=False, sharey=True)
    for ax, key in zip(axes[0], panels):
        runs: dict[str, list[dict]] = {}
        for r in rows:
            runs.setdefault(r["run"], []).append(r)
        for run in runs.values():
            method = run[0]["method"]
            single = len({r["run"] for r in rows if r["method"] == method}) == 1
            xs, ys = [r["sqrt_kl"] for r in run], [r.get(f"{key}_gain_sd") for r in run]
            if any(v is None for v in xs + ys):
                continue
            cis = [r.get(f"{key}_gain_sd_ci95") for r in run]
            if single and all(cis):  # 只有一次运行：它自己画粗线，带区间
                ax.errorbar(xs, ys, yerr=[[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]],
                            color=colors[method], linewidth=2, marker="o", markersize=4, capsize=3, label=method)
            else:
                ax.plot(xs, ys, color=colors[method], linewidth=0.8, alpha=0.45, marker=".", markersize=4)
            ax.plot(xs[-1:], ys[-1:], "o", color=colors[method], markersize=8, alpha=0.9)
        for method, curve in curves.items():
            if curve and curve[0]["seeds"] > 1 and all(p["sqrt_kl"] is not None and p[f"{key}_gain_sd"] is not None
                                                       for p in curve):
                ax.plot([p["sqrt_kl"] for p in curve], [p[f"{key}_gain_sd"] for p in curve], color=colors[method],
                        linewidth=2.4, marker="o", markersize=4, label=f"{method} (mean of {curve[0]['seeds']} seeds)")
        ax.plot([0.0], [0.0], "*", color="black", markersize=14, label="SFT", zorder=5)
        ax.axhline(0, color="black", linewidth=0.6, linestyle=":")
        ax.set_xlabel("sqrt(KL to SFT per answer), answers sampled at the rollout temperature")
        ax.set_title(names[key], fontsize=10)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel("score gain over SFT, in SFT standard deviations")
    fig.suptitle("Score vs. distance from SFT, points in training order (big dot = end of training)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
