"""评测报告：把 metrics.py 的数字写成一次运行的文件夹——results.csv、summary.json、图和 report.md。

终端和 report.md 共用这里的文字（汇总表、胜率、RM 可信度）；终端表格由 console.table 打印。
"""

from __future__ import annotations

import csv
import html
import itertools
from pathlib import Path

from .cost import Cost
from .data import COMMON_QUESTIONS
from .metrics import EMPTY, Answer, compared, rm_trust
from .outputs import write_json
from .stages import STAGES

TABLE_HEADER = "| 问题 | 模型 | 回复 | RM得分 | 得分提升 |"  # 原仓库 README 表格的表头（提升 = 该模型 - SFT）
CSV_COLUMNS = ("question", "source", "model", "response", "score", "gain")
BIG_GAIN = 1.0  # |提升| 不小于它时加粗
SCORES_PNG, GAINS_PNG, REWARD_KL_PNG = "scores.png", "gains.png", "reward_vs_kl.png"


# ---------------------------------------------------------------- 单元格


def format_gain(gain: float | None) -> str:
    """🔺+1.23 / 🔻-0.45；|提升| ≥ 1 时加粗（原仓库表格的写法）；没有提升（SFT 行）时为空。"""
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


def format_ci(ci: list[float] | None, fmt: str = "+.2f") -> str:
    return "—" if ci is None else f"[{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def versus_lines(summary: dict) -> list[str]:
    """每个和 SFT 比的模型一句：平均提升（95% 区间）、胜率与胜 / 平 / 负。"""
    lines = []
    for m, s in summary["models"].items():
        if "mean_gain_vs_sft" not in s or not s["n"]:
            continue
        lines.append(f"{m} 相对 SFT：平均得分提升 {s['mean_gain_vs_sft']:+.2f}（95% 区间 {format_ci(s['mean_gain_vs_sft_ci95'])}），"
                     f"胜率 {s['win_rate_vs_sft']:.0%}（{format_ci(s['win_rate_vs_sft_ci95'], '.0%')}；{s['n']} 题中更高 "
                     f"{s['wins']} 题、持平 {s['ties']} 题、更低 {s['losses']} 题）")
    return lines


def comparison_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """方法对比表：分数与区间、相对 SFT 的提升与胜率、KL、训练花费（终端和 report.md 共用）。"""
    head = ["模型", "平均RM得分", "95%区间", "相对SFT提升", "提升95%区间", "胜/平/负", "胜率", "KL(对SFT,每token)", "训练花费"]
    rows = []
    for m, s in summary["models"].items():
        versus = "mean_gain_vs_sft" in s and s["n"]
        cost = s.get("training_cost")
        rows.append([m, format_num(s["mean_score"]), format_ci(s["mean_score_ci95"], ".2f"),
                     format_num(s["mean_gain_vs_sft"], "+.2f") if versus else "—",
                     format_ci(s["mean_gain_vs_sft_ci95"]) if versus else "—",
                     f"{s['wins']}/{s['ties']}/{s['losses']}" if versus else "—",
                     format_num(s["win_rate_vs_sft"], ".0%") if versus else "—",
                     format_num(s.get("kl_to_sft"), ".3f"), Cost.words(cost) if cost else "—"])
    return head, rows


def method_rows(summary: dict) -> tuple[list[str], list[list[str]]] | None:
    """同一方法有几个模型（几个种子）时的跨种子表：均值 ± 标准差。每个方法只有一个模型时返回 None。"""
    groups = summary.get("by_method") or {}
    if not any(g["models"] > 1 for g in groups.values()):
        return None

    def pm(v, fmt):
        return "—" if v is None else f"{format(v[0], fmt)} ± {format(v[1], fmt.lstrip('+'))}"

    head = ["方法", "模型数（种子）", "平均RM得分", "相对SFT提升", "胜率", "KL(对SFT,每token)", "每个都比SFT高"]
    rows = [[m, str(g["models"]), pm(g["mean_score"], ".2f"), pm(g["mean_gain_vs_sft"], "+.2f"),
             pm(g["win_rate_vs_sft"], ".0%"), pm(g["kl_to_sft"], ".3f"), "是" if g["beats_sft_in_every_model"] else "否"]
            for m, g in groups.items()]
    return head, rows


def verdict(s: dict) -> str:
    """提升的 95% 区间 -> 一句话：明显更高 / 明显更低 / 在噪声之内。"""
    lo, hi = s["mean_gain_vs_sft_ci95"]
    if lo > 0:
        return f"区间整个在 0 以上，在这 {s['n']} 个问题上明显比 SFT 得分高"
    if hi < 0:
        return f"区间整个在 0 以下，在这 {s['n']} 个问题上明显比 SFT 得分低"
    return f"区间包含 0：差异在噪声之内，{s['n']} 个问题还分不出它和 SFT 谁更好"


def method_paragraphs(summary: dict) -> list[str]:
    """每个方法一段大白话：它做法上的不同（登记表里的 about），加上这次的数字说明了什么。同一方法的几个模型
    （几个种子）合成一段。"""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for m, s in summary["models"].items():
        groups.setdefault(s.get("stage") or m, []).append((m, s))
    out = []
    for method, members in groups.items():
        about = STAGES[method].about if method in STAGES else "本地模型文件夹。"
        versus = [(m, s) for m, s in members if "mean_gain_vs_sft" in s and s["n"]]
        if not versus:
            out.append(f"**{method}**　{about}")
            continue
        if len(versus) == 1:
            m, s = versus[0]
            kl = s.get("kl_to_sft")
            kl_words = "" if kl is None else f"；离 SFT 的 KL 每 token {kl:.3f}（越大说明改动越多，分数可能是拿这份改动换来的）"
            out.append(f"**{method}**　{about}本次（{m}）：平均提升 {s['mean_gain_vs_sft']:+.2f}，"
                       f"95% 区间 {format_ci(s['mean_gain_vs_sft_ci95'])}——{verdict(s)}{kl_words}。")
            continue
        gains = [s["mean_gain_vs_sft"] for _, s in versus]
        above = sum(s["mean_gain_vs_sft_ci95"][0] > 0 for _, s in versus)
        below = sum(s["mean_gain_vs_sft_ci95"][1] < 0 for _, s in versus)
        out.append(f"**{method}**　{about}本次 {len(versus)} 个模型（种子）的平均提升在 {min(gains):+.2f} 到 "
                   f"{max(gains):+.2f} 之间：{above} 个的区间整个在 0 以上（明显比 SFT 高），{below} 个整个在 0 以下，"
                   f"{len(versus) - above - below} 个包含 0（在噪声之内）。")
    return out


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
    lines += [v + "。\n" for v in versus_lines(summary)]
    if compared(models):
        chead, crows = comparison_rows(summary)
        lines += ["## 方法对比（相对 SFT）", "",
                  "| " + " | ".join(chead) + " |", "| --- |" + " ---: |" * (len(chead) - 1),
                  *("| " + " | ".join(r) + " |" for r in crows), "",
                  ("95% 区间：对问题做配对自助法重抽（2000 次，固定种子），每次所有模型用同一批问题；提升的区间包含 0 就说明"
                   "差异在噪声之内。KL = 在模型自己对非常见问题的回答上，每个 token 的 log p_模型 − log p_SFT 的平均"
                   "（用这次的解码方式生成的回答：温度低于 1、top-p / top-k 截断或贪心时它们不是从模型本来的分布里抽的，"
                   "这个估计可以小于 0，只看相对大小）。"
                   "训练花费读自各模型的 stage.json。"), "",
                  *(p + "\n" for p in method_paragraphs(summary))]
        if (grouped := method_rows(summary)) is not None:
            ghead, grows = grouped
            lines += ["## 每个方法跨种子（均值 ± 标准差）", "",
                      "| " + " | ".join(ghead) + " |", "| --- |" + " ---: |" * (len(ghead) - 1),
                      *("| " + " | ".join(r) + " |" for r in grows), ""]
    lines += [f"> ⚠️ {w}\n" for w in summary["warnings"]]
    lines += ["## 奖励模型可信度", "", rm_line(summary["rm"]), "", "## 图", ""]
    if SCORES_PNG in plots:
        lines += [f"![每个模型的 RM 得分分布]({SCORES_PNG})", ""]
    if GAINS_PNG in plots:
        lines += [f"![每个问题相对 SFT 的得分提升]({GAINS_PNG})", "", f"![RM 得分与离 SFT 的 KL]({REWARD_KL_PNG})", ""]
    else:
        lines += ["（--models 里没有 sft 或没有别的模型可比，不画得分提升图。）", ""]
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
    """每个模型一个点：横轴离 SFT 的 KL（每 token），纵轴平均 RM 得分，竖线是 95% 区间。左上角 = 改得少、分数高。"""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    seen: dict[tuple, int] = {}  # 落在同一点的模型（例如 SFT 的拷贝）：名字往下错开，不叠在一起
    for m, s in summary["models"].items():
        if s.get("kl_to_sft") is None or s["mean_score"] is None:
            continue
        lo, hi = s["mean_score_ci95"]
        ax.errorbar([s["kl_to_sft"]], [s["mean_score"]], yerr=[[s["mean_score"] - lo], [hi - s["mean_score"]]],
                    fmt="o", capsize=4)
        key = (round(s["kl_to_sft"], 3), round(s["mean_score"], 2))
        seen[key] = seen.get(key, -1) + 1
        ax.annotate(m, (s["kl_to_sft"], s["mean_score"]), textcoords="offset points", xytext=(6, 4 - 12 * seen[key]))
    ax.set_xlabel("KL to SFT per token (on the model's own answers)")
    ax.set_ylabel("mean RM score (95% CI)")
    ax.set_title("Reward vs. KL to SFT")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(folder: Path, answers: list[Answer], models: list[str], summary: dict, meta: dict) -> Path:
    """把所有产物写进 folder；summary.json 最后写：有它就说明这次评测完整写完了。"""
    write_csv(answers, folder / "results.csv")
    plots = {SCORES_PNG}
    plot_scores(answers, models, folder / SCORES_PNG)
    if compared(models):
        plot_gains(answers, models, folder / GAINS_PNG)
        plot_reward_vs_kl(summary, folder / REWARD_KL_PNG)
        plots.update((GAINS_PNG, REWARD_KL_PNG))
    report = folder / "report.md"
    report.write_text(render_markdown(answers, models, summary, meta, plots), encoding="utf-8")
    write_json(folder / "summary.json", {**meta, **summary})
    return report
