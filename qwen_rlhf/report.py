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
from .metrics import EMPTY, Answer, compared
from .outputs import write_json
from .plots import plot_gains, plot_reward_vs_kl, plot_scores
from .trajectory import JUDGES
from .words import (KL_LINE, format_ci, judge_lines, method_paragraphs, source_words, trajectory_paragraphs,
                    versus_lines)

TABLE_HEADER = "| 问题 | 模型 | 回复 | RM得分 | 得分提升 |"  # 原仓库 README 表格的表头（提升 = 该模型 - SFT）
CSV_COLUMNS = ("question", "source", "model", "response", "score", "gain")
TRAJECTORY_COLUMNS = ("method", "run", "seed", "model", "step", "seen", "unit", "kl_seq", "kl_seq_ci_low",
                      "kl_seq_ci_high", "sqrt_kl", "kl_per_token")
TRAJECTORY_CSV = "trajectory.csv"
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
    rules = list(next(iter(summary["models"].values()), {}).get("rules") or {})  # 内置规则各一列（不加进 RM 得分）
    head = ["模型", "平均RM得分", "平均长度(token)", "未停下占比", "空回复占比", "不同回复占比", "distinct-2",
            *(f"规则:{r}" for r in rules), "训练奖励"]
    rows = []
    for m, s in summary["models"].items():
        rows.append([m, format_num(s["mean_score"]), format_num(s["mean_tokens"], ".1f"),
                     format_num(s["unfinished_share"], ".0%"), format_num(s["empty_share"], ".0%"),
                     format_num(s["distinct_share"], ".0%"), format_num(s["distinct_2"], ".3f"),
                     *(format_num(s["rules"][r], "+.3f") for r in rules), s.get("reward_terms") or "—"])
    return head, rows


JUDGE_HEADS = {"gold": "金标准", "null": "空评委"}


def comparison_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """方法对比表：分数与区间、相对 SFT 的提升与胜率（另两位评委的提升换成"几个 SFT 标准差"，和代理 RM 的并排）、
    序列 KL 与每 token KL、训练花费（终端和 report.md 共用）。"""
    others = [j for j in JUDGE_HEADS if summary.get(j) is not None]
    head = ["模型", "平均RM得分", "95%区间", "相对SFT提升", "提升95%区间", "胜/平/负", "胜率", "提升(SFT标准差)",
            *(f"{JUDGE_HEADS[j]}提升(SFT标准差)" for j in others), "序列KL(对SFT)", "序列KL 95%区间", "每token KL",
            "训练花费"]
    rows = []
    for m, s in summary["models"].items():
        versus = "mean_gain_vs_sft" in s and s["n"]
        cost = s.get("training_cost")
        scaled = [f"{format_num(s.get(f'{p}gain_in_sft_sd'), '+.2f')} {format_ci(s.get(f'{p}gain_in_sft_sd_ci95'))}"
                  if versus else "—" for p in ("", *(f"{j}_" for j in others))]
        rows.append([m, format_num(s["mean_score"]), format_ci(s["mean_score_ci95"], ".2f"),
                     format_num(s["mean_gain_vs_sft"], "+.2f") if versus else "—",
                     format_ci(s["mean_gain_vs_sft_ci95"]) if versus else "—",
                     f"{s['wins']}/{s['ties']}/{s['losses']}" if versus else "—",
                     format_num(s["win_rate_vs_sft"], ".0%") if versus else "—", *scaled,
                     format_num(s.get("kl_seq"), ".3f"), format_ci(s.get("kl_seq_ci95"), ".3f"),
                     format_num(s.get("kl_per_token"), ".4f"), Cost.words(cost) if cost else "—"])
    return head, rows


def method_rows(summary: dict) -> tuple[list[str], list[list[str]]] | None:
    """同一方法有几个模型（几个种子）时的跨种子表：均值 ± 标准差。每个方法只有一个模型时返回 None。"""
    groups = summary.get("by_method") or {}
    if not any(g["models"] > 1 for g in groups.values()):
        return None

    def pm(v, fmt):
        return "—" if v is None else f"{format(v[0], fmt)} ± {format(v[1], fmt.lstrip('+'))}"

    gold = any(g.get("gold_mean_gain_vs_sft") is not None for g in groups.values())
    head = ["方法", "模型数（种子）", "平均RM得分", "相对SFT提升", "胜率", *(["金标准提升"] if gold else []),
            "序列KL(对SFT)", "每token KL", "每个都比SFT高"]
    rows = [[m, str(g["models"]), pm(g["mean_score"], ".2f"), pm(g["mean_gain_vs_sft"], "+.2f"),
             pm(g["win_rate_vs_sft"], ".0%"), *([pm(g.get("gold_mean_gain_vs_sft"), "+.2f")] if gold else []),
             pm(g["kl_seq"], ".3f"), pm(g["kl_per_token"], ".4f"), "是" if g["beats_sft_in_every_model"] else "否"]
            for m, g in groups.items()]
    return head, rows


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
         " missing_eos_penalty，这里不扣）；不同回复占比 = 不同回答数 / 问题数；distinct-2 = 不同的相邻两字组合 / 全部两字组合；"
         "规则:名字 = 训练奖励里同名内置规则给回答的平均分（0 最好，见 README 的奖励表），和 RM 得分分开列、从不相加；"
         "训练奖励 = 这个模型训练时优化的各项 × 权重（stage.json）。"),
        "",
    ]
    lines += [v + "。\n" for v in versus_lines(summary)]
    if compared(models):
        chead, crows = comparison_rows(summary)
        lines += ["## 方法对比（相对 SFT）", "",
                  "| " + " | ".join(chead) + " |", "| --- |" + " ---: |" * (len(chead) - 1),
                  *("| " + " | ".join(r) + " |" for r in crows), "",
                  ("95% 区间：对问题做配对自助法重抽（2000 次，固定种子），每次所有模型用同一批问题；提升的区间碰到 0 就是"
                   "\"没有得到证实\"（差异在噪声之内），不是\"相反\"。提升(SFT标准差) = 提升 ÷ 这位评委给 SFT 回答的分数的"
                   "标准差：几位评委的分差尺度不同，这样才能放在一起比。" + KL_LINE
                   + ("金标准评委是另一个独立训练的 RM（策略训练时从没见过它），只用来评测；空评委是代理 RM 的数据和基座、"
                      "另一个种子，量出两个只差种子的 RM 本来就有多大分歧。" if summary.get("gold") else "")
                   + "训练花费读自各模型的 stage.json。"), "",
                  *(p + "\n" for p in method_paragraphs(summary))]
        if (grouped := method_rows(summary)) is not None:
            ghead, grows = grouped
            lines += ["## 每个方法跨种子（均值 ± 标准差）", "",
                      "| " + " | ".join(ghead) + " |", "| --- |" + " ---: |" * (len(ghead) - 1),
                      *("| " + " | ".join(r) + " |" for r in grows), ""]
    if summary.get("overoptimisation"):
        lines += ["## 训练轨迹：代理分、金标准分与 KL", "",
                  ("每个 RL 方法训练中均匀存下的快照和最终结果，按训练时的温度各自采样回答（每个问题 "
                   f"{meta['kl_sampling']['samples_per_question']} 个，温度 {meta['kl_sampling']['temperature']}），"
                   "同一批回答上量离 SFT 的序列 KL 和各评委的分数（trajectory.csv，"
                   f"图 {REWARD_KL_PNG}：横轴 √(序列 KL)，纵轴相对 SFT 的提升、以 SFT 标准差为单位）。代理 RM 是训练时优化的那个，"
                   "金标准评委独立训练、只用来评测：代理分一路上升而金标准分先升后降，就是奖励过度优化（Gao et al. 2022）。"
                   "同一方法的几个种子按训练进度（看过的回答数）对齐。"), "",
                  *(p + "\n" for p in trajectory_paragraphs(summary))]
    lines += [f"> ⚠️ {w}\n" for w in summary["warnings"]]
    lines += ["## 评委可信度", "", *(line + "\n" for line in judge_lines(summary)), "## 图", ""]
    if SCORES_PNG in plots:
        lines += [f"![每个模型的 RM 得分分布]({SCORES_PNG})", ""]
    if GAINS_PNG in plots:
        lines += [f"![每个问题相对 SFT 的得分提升]({GAINS_PNG})", "",
                  f"![RM 得分（和金标准分）与离 SFT 的 KL，每个方法一条线，按训练顺序]({REWARD_KL_PNG})", ""]
    else:
        lines += ["（--models 里没有 sft 或没有别的模型可比，不画得分提升图。）", ""]
    lines += ["全部回答见同一文件夹下的 `results.csv`，汇总数字见 `summary.json`"
              + ("，训练轨迹的每个点见 `trajectory.csv`。" if summary.get("overoptimisation") else "。"), ""]
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
    """每个回答一行；有金标准评委、空评委时各多两列（它的分数和相对 SFT 的提升）；每条内置规则一列（rule_<名字>）。"""
    extra = [j for j in ("gold", "null") if any(getattr(a, j) is not None for a in answers)]
    rules = list(answers[0].rules) if answers else []  # 每条内置规则一列：rule_repetition ……

    def num(x):
        return "" if x is None else f"{x:.4f}"

    # utf-8-sig：Excel 直接双击打开也不乱码
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS + tuple(c for j in extra for c in (f"{j}_score", f"{j}_gain"))
                   + tuple(f"rule_{r}" for r in rules))
        for a in answers:
            w.writerow([a.question, a.source, a.model, a.response, num(a.score), num(a.gain),
                        *(num(x) for j in extra for x in (getattr(a, j), getattr(a, f"{j}_gain"))),
                        *(num(a.rules[r]) for r in rules)])


def write_trajectory_csv(rows: list[dict], path: Path) -> None:
    """trajectory.csv：每个方法每次运行的每个点（SFT 是第 0 步）：序列 KL（及区间）、√KL、每 token KL，每位评委的
    平均分、相对 SFT 的提升及区间、以 SFT 标准差为单位的提升。"""
    def num(x, fmt=".4f"):
        return "" if x is None else format(x, fmt)

    judges = [j for j in JUDGES if any(f"{j}_mean" in r for r in rows)]
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRAJECTORY_COLUMNS + tuple(f"{j}_{k}" for j in judges for k in (
            "mean", "gain", "gain_ci_low", "gain_ci_high", "gain_in_sft_sd")))
        for r in rows:
            kl_ci = r["kl_seq_ci95"] or [None, None]
            cells = [r["method"], r["run"], "" if r["seed"] is None else r["seed"], r["model"],
                     "" if r["step"] is None else r["step"], "" if r["seen"] == float("inf") else r["seen"], r["unit"],
                     num(r["kl_seq"], ".6f"), num(kl_ci[0], ".6f"), num(kl_ci[1], ".6f"), num(r["sqrt_kl"]),
                     num(r["kl_per_token"], ".6f")]
            for j in judges:
                ci = r.get(f"{j}_gain_ci95") or [None, None]
                cells += [num(r.get(f"{j}_mean")), num(r.get(f"{j}_gain")), num(ci[0]), num(ci[1]),
                          num(r.get(f"{j}_gain_sd"))]
            w.writerow(cells)


def write_report(folder: Path, answers: list[Answer], models: list[str], summary: dict, meta: dict) -> Path:
    """把所有产物写进 folder；summary.json 最后写：有它就说明这次评测完整写完了。"""
    write_csv(answers, folder / "results.csv")
    plots = {SCORES_PNG}
    plot_scores(answers, models, folder / SCORES_PNG)
    if compared(models):
        plot_gains(answers, models, folder / GAINS_PNG)
        plot_reward_vs_kl(summary, folder / REWARD_KL_PNG)
        plots.update((GAINS_PNG, REWARD_KL_PNG))
    if summary.get("overoptimisation"):  # --trajectory
        write_trajectory_csv(summary["trajectory"], folder / TRAJECTORY_CSV)
    report = folder / "report.md"
    report.write_text(render_markdown(answers, models, summary, meta, plots), encoding="utf-8")
    write_json(folder / "summary.json", {**meta, **summary})
    return report
