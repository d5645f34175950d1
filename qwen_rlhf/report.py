"""评测报告：每个回答一行的结果表 -> 汇总数字、results.csv、summary.json、图和 report.md。

不碰模型，只处理 benchmark.py 收集好的 `Answer` 列表，所以可以用手写数据单独测试。
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

# 原仓库 README 表格里的十个常见问题，顺序照抄
COMMON_QUESTIONS = ("你好", "天气怎么样", "吃饭了吗", "今天星期几", "你是谁", "能帮我个忙吗", "最近怎么样",
                    "你在干什么", "现在几点了", "你会说英文吗")
TABLE_HEADER = "| 问题 | 模型 | 回复 | RM得分 | PPO得分提升 |"
CSV_COLUMNS = ("question", "source", "model", "response", "score", "gain")
EMPTY = "（空）"  # 模型一开口就输出 <|im_end|> 时，表格里显示这个
BIG_GAIN = 1.0  # |提升| 不小于它时加粗
COLLAPSE_SHARE = 0.5  # 不同回复占比低于它：回答塌缩成几句固定的话
SCORES_PNG, GAINS_PNG = "scores.png", "gains.png"


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


def rm_trust(accuracy: float) -> str:
    """RM 留出准确率 -> 一句话：分数能信几分。"""
    if accuracy >= 0.9:
        return "RM 能可靠地分出 chosen 和 rejected，下面的分数基本可信。"
    if accuracy >= 0.7:
        return "RM 有一定区分能力，但会看错一部分，分数上的小差距不要过度解读。"
    return "RM 在没见过的问题上接近瞎猜（0.5 即随机），下面的分数只能当参考。"


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


def read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def write_json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, default=str), encoding="utf-8")


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


# ---------------------------------------------------------------- 文本


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


def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def terminal_table(head: list[str], rows: list[list[str]]) -> str:
    """按显示宽度对齐（一个汉字占两格）的纯文本表格。"""
    widths = [max(_width(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r):
        return "  ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths)).rstrip()

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def render_markdown(answers: list[Answer], models: list[str], summary: dict, meta: dict, plots: dict) -> str:
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
    write_json({**meta, **summary}, folder / "summary.json")
    return report
