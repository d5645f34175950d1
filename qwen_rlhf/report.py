"""评测报告：把 metrics.py 的数字写成一次运行的文件夹——results.csv、summary.json、图和 report.md。

终端和 report.md 共用这里的文字（汇总表、胜率、RM 可信度）；终端表格由 console.table 打印。
"""

from __future__ import annotations

import csv
import html
import itertools
from pathlib import Path

from .data import COMMON_QUESTIONS
from .metrics import EMPTY, Answer, rm_trust
from .outputs import write_json

TABLE_HEADER = "| 问题 | 模型 | 回复 | RM得分 | PPO得分提升 |"  # 原仓库 README 表格的表头
CSV_COLUMNS = ("question", "source", "model", "response", "score", "gain")
BIG_GAIN = 1.0  # |提升| 不小于它时加粗
SCORES_PNG, GAINS_PNG = "scores.png", "gains.png"


# ---------------------------------------------------------------- 单元格


def format_gain(gain: float | None) -> str:
    """🔺+1.23 / 🔻-0.45；|提升| ≥ 1 时加粗（原仓库表格的写法）；没有提升（非 PPO 行）时为空。"""
    if gain is None:
        return ""
    if round(abs(gain), 2) == 0:
        return "±0.00"
    text = f"🔺+{gain:.2f}" if gain > 0 else f"🔻{gain:.2f}"
    return f"**{text}**" if abs(gain) >= BIG_GAIN else text


def format_num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def md_cell(text: str) -> str:
    """放进 markdown 表格单元格：空回复显示（空），转义 HTML 和 |，换行改成 <br>。"""
    text = text.strip()
    if not text:
        return EMPTY
    text = html.escape(text, quote=False).replace("|", "\\|")
    return "<br>".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


# ---------------------------------------------------------------- 文字（终端和 report.md 共用）


def common_table(answers: list[Answer], models: list[str]) -> list[str]:
    """原仓库 README 的表格：十个常见问题，每个问题每个模型一行。"""
    lines = [TABLE_HEADER, "| --- | --- | --- | ---: | ---: |"]
    by_key = {(a.question, a.model): a for a in answers}
    for q in COMMON_QUESTIONS:
        for m in models:
            a = by_key.get((q, m))
            if a is not None:
                lines.append(f"| {md_cell(q)} | {m} | {md_cell(a.response)} | {a.score:.2f} | {format_gain(a.gain)} |")
    return lines


def summary_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """终端表格和 report.md 共用的汇总表。"""
    head = ["模型", "平均RM得分", "平均长度(token)", "未停下占比", "空回复占比", "不同回复占比", "distinct-2"]
    rows = []
    for m, s in summary["models"].items():
        rows.append([m, format_num(s["mean_score"]), format_num(s["mean_tokens"], ".1f"),
                     format_num(s["unfinished_share"], ".0%"), format_num(s["empty_share"], ".0%"),
                     format_num(s["distinct_share"], ".0%"), format_num(s["distinct_2"], ".3f")])
    return head, rows


def versus_line(summary: dict) -> str | None:
    v = summary["ppo_vs_sft"]
    if v is None:
        return None
    return (f"PPO 相对 SFT：平均得分提升 {v['mean_gain']:+.2f}，胜率 {v['win_rate']:.0%}"
            f"（{v['n']} 题中 PPO 更高 {v['wins']} 题、持平 {v['ties']} 题、更低 {v['losses']} 题）")


def rm_line(rm: dict) -> str:
    return (f"RM 在 {rm['pairs']} 对留出偏好对上的准确率 {rm['accuracy']:.3f}，"
            f"平均分差（chosen - rejected）{rm['margin']:.2f}。{rm_trust(rm['accuracy'])}")


def source_words(summary: dict) -> str:
    names = {"common": "常见", "held_out": "留出", "file": "文件"}
    parts = [f"{names.get(s, s)} {n}" for s, n in summary["num_by_source"].items()]
    return f"{summary['num_questions']} 个问题（{' + '.join(parts)}）"


def render_markdown(answers: list[Answer], models: list[str], summary: dict, meta: dict, plots: set) -> str:
    head, rows = summary_rows(summary)
    model_list = "、".join(f"{m}（`{meta['folders'][m]}`）" for m in models)
    lines = [
        f"# 评测报告 {meta['run']}",
        "",
        (f"{source_words(summary)}；模型：{model_list}；"
         f"{meta['decoding']}；打分：`{meta['rm_folder']}`。RM 得分越高 = 越像数据里的 chosen 回答。"),
        "",
        "## 常见问题",
        "",
        *common_table(answers, models),
        "",
        f"## 汇总（全部 {summary['num_questions']} 个问题）",
        "",
        "| " + " | ".join(head) + " |",
        "| --- |" + " ---: |" * (len(head) - 1),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        ("未停下 = 写满 --max_new_tokens 还没输出 `<|im_end|>`，分数读在最后一个 token 上（PPO 训练时这类回答还会被扣"
         " missing_eos_penalty，这里不扣）；不同回复占比 = 不同回答数 / 问题数；distinct-2 = 不同的相邻两字组合 / 全部两字组合。"),
        "",
    ]
    if (v := versus_line(summary)) is not None:
        lines += [v + "。", ""]
    lines += [f"> ⚠️ {w}\n" for w in summary["warnings"]]
    lines += ["## 奖励模型可信度", "", rm_line(summary["rm"]), "", "## 图", ""]
    if SCORES_PNG in plots:
        lines += [f"![每个模型的 RM 得分分布]({SCORES_PNG})", ""]
    if GAINS_PNG in plots:
        lines += [f"![每个问题 SFT→PPO 的得分提升]({GAINS_PNG})", ""]
    else:
        lines += ["（--models 里没有同时包含 sft 和 ppo，不画得分提升图。）", ""]
    lines += ["全部回答见同一文件夹下的 `results.csv`，汇总数字见 `summary.json`。", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- 文件


def new_run_folder(root: Path, stamp: str) -> Path:
    """<root>/<时间>/，已存在就加 -2、-3……；mkdir 本身就是占位，两个同时运行的评测也不会写到一起。"""
    root.mkdir(parents=True, exist_ok=True)
    for i in itertools.count(1):
        folder = root / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def write_csv(answers: list[Answer], path: Path) -> None:
    # utf-8-sig：Excel 直接双击打开也不乱码
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for a in answers:
            w.writerow([a.question, a.source, a.model, a.response, f"{a.score:.4f}",
                        "" if a.gain is None else f"{a.gain:.4f}"])


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


def plot_gains(answers: list[Answer], path: Path) -> None:
    """每个问题 PPO 相对 SFT 的得分提升，从小到大排好：一眼看出多少题变好、多少题变差。"""
    plt = _pyplot()
    gains = sorted(a.gain for a in answers if a.model == "ppo" and a.gain is not None)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.bar(range(len(gains)), gains, color=["tab:green" if g > 0 else "tab:red" if g < 0 else "tab:gray" for g in gains], width=0.85)
    ax.axhline(0, color="black", linewidth=0.8)
    if gains:
        ax.axhline(sum(gains) / len(gains), color="tab:blue", linestyle="--", linewidth=1,
                   label=f"mean {sum(gains) / len(gains):+.2f}")
        ax.legend(loc="upper left")
    ax.set_xlabel(f"questions, sorted by gain (n={len(gains)})")
    ax.set_ylabel("PPO score - SFT score")
    ax.set_title("Per-question RM score gain, SFT -> PPO")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(folder: Path, answers: list[Answer], models: list[str], summary: dict, meta: dict) -> Path:
    """把所有产物写进 folder；summary.json 最后写：有它就说明这次评测完整写完了。"""
    write_csv(answers, folder / "results.csv")
    plots = {SCORES_PNG}
    plot_scores(answers, models, folder / SCORES_PNG)
    if summary["ppo_vs_sft"] is not None:
        plot_gains(answers, folder / GAINS_PNG)
        plots.add(GAINS_PNG)
    report = folder / "report.md"
    report.write_text(render_markdown(answers, models, summary, meta, plots), encoding="utf-8")
    write_json(folder / "summary.json", {**meta, **summary})
    return report
