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
from .metrics import BASELINE, EMPTY, Answer, compared, method_curves, rm_trust
from .outputs import write_json
from .stages import STAGES

TABLE_HEADER = "| 问题 | 模型 | 回复 | RM得分 | 得分提升 |"  # 原仓库 README 表格的表头（提升 = 该模型 - SFT）
CSV_COLUMNS = ("question", "source", "model", "response", "score", "gain")
GOLD_COLUMNS = ("gold_score", "gold_gain")
TRAJECTORY_COLUMNS = ("method", "run", "seed", "model", "step", "seen", "unit", "proxy_mean", "proxy_ci_low",
                      "proxy_ci_high", "gold_mean", "gold_ci_low", "gold_ci_high", "kl_to_sft")
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
    gold = summary.get("gold") is not None
    head = ["模型", "平均RM得分", "95%区间", "相对SFT提升", "提升95%区间", "胜/平/负", "胜率",
            *(["金标准得分", "金标准95%区间", "金标准提升", "金标准提升95%区间"] if gold else []),
            "KL(对SFT,每token)", "训练花费"]
    rows = []
    for m, s in summary["models"].items():
        versus = "mean_gain_vs_sft" in s and s["n"]
        cost = s.get("training_cost")
        gold_cells = [format_num(s["gold_score"]), format_ci(s["gold_score_ci95"], ".2f"),
                      format_num(s.get("gold_gain_vs_sft"), "+.2f") if versus else "—",
                      format_ci(s.get("gold_gain_vs_sft_ci95")) if versus else "—"] if gold else []
        rows.append([m, format_num(s["mean_score"]), format_ci(s["mean_score_ci95"], ".2f"),
                     format_num(s["mean_gain_vs_sft"], "+.2f") if versus else "—",
                     format_ci(s["mean_gain_vs_sft_ci95"]) if versus else "—",
                     f"{s['wins']}/{s['ties']}/{s['losses']}" if versus else "—",
                     format_num(s["win_rate_vs_sft"], ".0%") if versus else "—", *gold_cells,
                     format_num(s.get("kl_to_sft"), ".3f"), Cost.words(cost) if cost else "—"])
    return head, rows


def method_rows(summary: dict) -> tuple[list[str], list[list[str]]] | None:
    """同一方法有几个模型（几个种子）时的跨种子表：均值 ± 标准差。每个方法只有一个模型时返回 None。"""
    groups = summary.get("by_method") or {}
    if not any(g["models"] > 1 for g in groups.values()):
        return None

    def pm(v, fmt):
        return "—" if v is None else f"{format(v[0], fmt)} ± {format(v[1], fmt.lstrip('+'))}"

    gold = any(g.get("gold_gain_vs_sft") is not None for g in groups.values())
    head = ["方法", "模型数（种子）", "平均RM得分", "相对SFT提升", "胜率", *(["金标准提升"] if gold else []),
            "KL(对SFT,每token)", "每个都比SFT高"]
    rows = [[m, str(g["models"]), pm(g["mean_score"], ".2f"), pm(g["mean_gain_vs_sft"], "+.2f"),
             pm(g["win_rate_vs_sft"], ".0%"), *([pm(g.get("gold_gain_vs_sft"), "+.2f")] if gold else []),
             pm(g["kl_to_sft"], ".3f"), "是" if g["beats_sft_in_every_model"] else "否"]
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


def gold_words(s: dict) -> str:
    """一个模型的金标准评委结论（没有金标准时为空）：代理 RM 说它更好、独立的评委却不认同时点出来。"""
    if s.get("gold_gain_vs_sft") is None:
        return ""
    lo, hi = s["gold_gain_vs_sft_ci95"]
    words = f"；金标准评委给的提升 {s['gold_gain_vs_sft']:+.2f}（{format_ci([lo, hi])}）"
    if s["mean_gain_vs_sft_ci95"][0] > 0 and lo <= 0:
        words += "——代理 RM 说它明显更好，独立的金标准评委却不认同：提高的可能是代理 RM 的漏洞，而不是回答本身"
    return words


def dpo_diagnosis(members: list[tuple[str, dict]], sft: dict | None) -> str:
    """DPO 自己在留出偏好对上的数字（train_dpo.py 写进 stage.json 的 held_out，几个种子取平均）-> 一句诊断：
    没学会偏好 / 学会了但把概率挪到了别处（DPO 常见的"似然位移"：Razin et al. 2024, "Unintentional Unalignment:
    Likelihood Displacement in Direct Preference Optimization"；Pal et al. 2024, Smaug）/ 学会了、RM 却不奖励。"""
    held = [s["held_out"] for _, s in members if s.get("held_out")]
    if not held:
        return ""

    def avg(key, rows=held):
        return sum(r[key] for r in rows) / len(rows)

    acc, d_chosen, d_rejected = avg("preference_accuracy"), avg("logp_chosen_change"), avg("logp_rejected_change")
    numbers = (f"留出 {held[0]['pairs']} 个偏好对上，隐式奖励的偏好准确率 {acc:.0%}（0.5 ≈ 瞎猜），"
               f"相对 SFT 的 log p(chosen) {d_chosen:+.2f}、log p(rejected) {d_rejected:+.2f}")
    shape = ""
    if sft is not None:
        empty = avg("empty_share", [s for _, s in members])
        tokens = avg("mean_tokens", [s for _, s in members])
        shape = (f"；评测回答里空回答占 {empty:.0%}（SFT {sft['empty_share']:.0%}），平均 {tokens:.1f} 个 token"
                 f"（SFT {sft['mean_tokens']:.1f}）")
    if acc < 0.6:
        return f"诊断：{numbers}——它没学会这份偏好{shape}。"
    if d_chosen < 0:
        return (f"诊断：{numbers}——它学会了区分 chosen 和 rejected，但 chosen 的概率也降了：DPO 只要求两者的差变大，"
                f"概率被挪到了两者以外的回答上（\"似然位移\"）{shape}。RM 分数低于 SFT 是这份挪动的结果，不是没学会。")
    return (f"诊断：{numbers}——它学会了偏好，chosen 的概率也升了{shape}；RM 分数若仍不比 SFT 高，"
            "说明它学到的东西这个 RM 不奖励。")


def method_paragraphs(summary: dict) -> list[str]:
    """每个方法一段大白话：它做法上的不同（登记表里的 about），加上这次的数字说明了什么（有金标准评委时它怎么看；
    DPO 加上它自己在留出偏好对上的诊断）。同一方法的几个模型（几个种子）合成一段。"""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for m, s in summary["models"].items():
        groups.setdefault(s.get("method") or s.get("stage") or m, []).append((m, s))
    sft = summary["models"].get(BASELINE)
    out = []
    for method, members in groups.items():
        stage = members[0][1].get("stage")
        about = STAGES[stage].about if stage in STAGES else "本地模型文件夹。"
        versus = [(m, s) for m, s in members if "mean_gain_vs_sft" in s and s["n"]]
        diagnosis = dpo_diagnosis(versus, sft)
        if not versus:
            out.append(f"**{method}**　{about}")
            continue
        if len(versus) == 1:
            m, s = versus[0]
            kl = s.get("kl_to_sft")
            kl_words = "" if kl is None else f"；离 SFT 的 KL 每 token {kl:.3f}（越大说明改动越多，分数可能是拿这份改动换来的）"
            out.append(f"**{method}**　{about}本次（{m}）：平均提升 {s['mean_gain_vs_sft']:+.2f}，"
                       f"95% 区间 {format_ci(s['mean_gain_vs_sft_ci95'])}——{verdict(s)}{gold_words(s)}{kl_words}。"
                       + diagnosis)
            continue
        gains = [s["mean_gain_vs_sft"] for _, s in versus]
        above = sum(s["mean_gain_vs_sft_ci95"][0] > 0 for _, s in versus)
        below = sum(s["mean_gain_vs_sft_ci95"][1] < 0 for _, s in versus)
        golds = [s["gold_gain_vs_sft"] for _, s in versus if s.get("gold_gain_vs_sft") is not None]
        gold_line = (f"金标准评委给的提升在 {min(golds):+.2f} 到 {max(golds):+.2f} 之间，"
                     f"{sum(s['gold_gain_vs_sft_ci95'][0] > 0 for _, s in versus)} 个的区间整个在 0 以上。"
                     if len(golds) == len(versus) else "")
        out.append(f"**{method}**　{about}本次 {len(versus)} 个模型（种子）的平均提升在 {min(gains):+.2f} 到 "
                   f"{max(gains):+.2f} 之间：{above} 个的区间整个在 0 以上（明显比 SFT 高），{below} 个整个在 0 以下，"
                   f"{len(versus) - above - below} 个包含 0（在噪声之内）。" + gold_line + diagnosis)
    return out


VERDICTS = {
    "overoptimised": "出现了奖励过度优化：金标准分在 KL≈{peak_kl:.3f} 处最高（比 SFT {peak_gold_gain:+.2f}），之后代理分继续"
                     "上升（最终比 SFT {proxy_gain:+.2f}，KL {final_kl:.3f}），金标准分却回落了 {gold_drop_after_peak:.2f}"
                     "（超过噪声 ±{gold_noise:.2f}）。",
    "gold_falls": "代理分上升 {proxy_gain:+.2f}，金标准分却从 SFT 起就在降（最终 {gold_gain:+.2f}，噪声 ±{gold_noise:.2f}）："
                  "花掉的这点 KL（{final_kl:.3f}）换来的提高，在独立的评委看来是变差。",
    "gold_flat": "代理分上升 {proxy_gain:+.2f}，金标准分在噪声之内没有变化（{gold_gain:+.2f}，噪声 ±{gold_noise:.2f}）："
                 "代理 RM 的提高没有得到独立评委的认同，但也没有看到明显的回落（KL 到 {final_kl:.3f}）。",
    "both_rise": "代理分（{proxy_gain:+.2f}）和金标准分（{gold_gain:+.2f}）一起上升到 KL {final_kl:.3f}：在这个训练预算内"
                 "没有看到过度优化。",
    "proxy_flat": "代理分本身没有明显上升（{proxy_gain:+.2f}，噪声 ±{proxy_noise:.2f}）：谈不上过度优化。",
    "no_gold": "代理分上升 {proxy_gain:+.2f}（KL {final_kl:.3f}）；没有金标准评委（--gold_model_path），看不出这份提高是不是真的。",
}


def trajectory_paragraphs(summary: dict) -> list[str]:
    """--trajectory：每个方法一句，读出这次的数字里有没有奖励过度优化（metrics.overoptimisation），最后一句总结。"""
    found = summary.get("overoptimisation") or {}
    if not found:
        return []
    lines = [f"**{method}**（{r['points']} 个点）：" + VERDICTS[r["verdict"]].format(**r) for method, r in found.items()]
    if not any("gold_gain" in r for r in found.values()):
        return lines
    shown = sum(r["verdict"] in ("overoptimised", "gold_falls") for r in found.values())
    lines.append(f"这次 {len(found)} 个方法里 {shown} 个的金标准分在代理分上升时回落或下降。"
                 + ("" if shown else "在这个模型和训练预算上没有看到奖励过度优化：金标准分没有掉头，照实报告，"
                                     "不为了画出这个现象去调配方（更大的 KL 或更长的训练可能会让它出现，例如 compare.sh 的 WEAK_KL=1）。"))
    return lines


def rm_line(rm: dict, who: str = "RM") -> str:
    return (f"{who}在 {rm['pairs']} 对留出偏好对上的准确率 {rm['accuracy']:.3f}，"
            f"平均分差（chosen - rejected）{rm['margin']:.2f}。{rm_trust(rm['accuracy'])}")


def judge_lines(summary: dict) -> list[str]:
    """两位评委的成绩单并排：代理 RM（RL 训练时优化的那个）和金标准评委（只用来评测）。"""
    lines = [rm_line(summary["rm"], "代理 RM（训练时优化的）" if summary.get("gold") else "RM ")]
    if summary.get("gold"):
        lines.append(rm_line(summary["gold"], "金标准评委（只用来评测）"))
    return lines


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
                   "差异在噪声之内。KL = 模型在它自己回答（非常见问题）的每个位置上，下一个 token 的完整分布和 SFT 的分布之间的"
                   "KL 散度（对整个词表求和、温度 1，不靠采样），再对所有位置取平均：一定 ≥ 0，0 = 和 SFT 完全一样。"
                   + ("金标准评委是另一个独立训练的 RM（策略训练时从没见过它），只用来评测。" if summary.get("gold") else "")
                   + "训练花费读自各模型的 stage.json。"), "",
                  *(p + "\n" for p in method_paragraphs(summary))]
        if (grouped := method_rows(summary)) is not None:
            ghead, grows = grouped
            lines += ["## 每个方法跨种子（均值 ± 标准差）", "",
                      "| " + " | ".join(ghead) + " |", "| --- |" + " ---: |" * (len(ghead) - 1),
                      *("| " + " | ".join(r) + " |" for r in grows), ""]
    if summary.get("overoptimisation"):
        lines += ["## 训练轨迹：代理分、金标准分与 KL", "",
                  ("每个 RL 方法训练中均匀存下的快照，和最终结果用同样的问题、同样的解码评测（trajectory.csv，"
                   f"图 {REWARD_KL_PNG}）。代理 RM 是训练时优化的那个，金标准评委独立训练、只用来评测：代理分一路上升而"
                   "金标准分先升后降，就是奖励过度优化（Gao et al. 2022）。同一方法的几个种子按快照对齐取平均，"
                   "噪声 = 最后一个点上相对 SFT 的提升的 95% 区间（配对自助法）的半宽。"), "",
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
    """每个回答一行；有金标准评委时多两列（它的分数和相对 SFT 的提升）。"""
    gold = any(a.gold is not None for a in answers)

    def num(x):
        return "" if x is None else f"{x:.4f}"

    # utf-8-sig：Excel 直接双击打开也不乱码
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS + (GOLD_COLUMNS if gold else ()))
        for a in answers:
            w.writerow([a.question, a.source, a.model, a.response, num(a.score), num(a.gain),
                        *((num(a.gold), num(a.gold_gain)) if gold else ())])


def write_trajectory_csv(rows: list[dict], path: Path) -> None:
    """trajectory.csv：每个方法每次运行的每个点（SFT 是第 0 步）：代理分与金标准分（均值和 95% 区间）、精确 KL。"""
    def num(x, fmt=".4f"):
        return "" if x is None else format(x, fmt)

    with path.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRAJECTORY_COLUMNS)
        for r in rows:
            proxy, gold = r["proxy_ci95"] or [None, None], r["gold_ci95"] or [None, None]
            w.writerow([r["method"], r["run"], "" if r["seed"] is None else r["seed"], r["model"],
                        "" if r["step"] is None else r["step"], "" if r["seen"] is None else r["seen"], r["unit"],
                        num(r["proxy_mean"]), num(proxy[0]), num(proxy[1]), num(r["gold_mean"]), num(gold[0]),
                        num(gold[1]), num(r["kl_to_sft"], ".6f")])


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
    """代理 RM 分（有金标准评委时右边再一格金标准分）对离 SFT 的精确 KL：每个方法一种颜色，每次运行（种子）一条细线，
    按训练顺序从 SFT（KL 0，黑色星号）连到最终结果（大圆点）；同一方法有几个种子时，粗线是按快照对齐的平均。
    不给每个点写名字（会叠在一起），方法名在图例里；每个点的数字在 trajectory.csv / summary.json。
    坐标轴用英文：默认字体没有中文字形。"""
    plt = _pyplot()
    rows = summary["trajectory"]
    panels = [("proxy", "proxy RM score (optimised in training)")]
    if any(r["gold_mean"] is not None for r in rows):
        panels.append(("gold", "gold RM score (never optimised)"))
    curves = method_curves(rows)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(curves)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), dpi=110, squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels):
        runs: dict[str, list[dict]] = {}
        for r in rows:
            runs.setdefault(r["run"], []).append(r)
        for run in runs.values():
            method = run[0]["method"]
            single = len({r["run"] for r in rows if r["method"] == method}) == 1
            xs, ys = [r["kl_to_sft"] for r in run], [r[f"{key}_mean"] for r in run]
            if any(v is None for v in xs + ys):
                continue
            if single:  # 只有一次运行：它自己画粗线，带区间
                cis = [r[f"{key}_ci95"] for r in run]
                ax.errorbar(xs, ys, yerr=[[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]],
                            color=colors[method], linewidth=2, marker="o", markersize=4, capsize=3, label=method)
            else:
                ax.plot(xs, ys, color=colors[method], linewidth=0.8, alpha=0.45, marker=".", markersize=4)
            ax.plot(xs[-1:], ys[-1:], "o", color=colors[method], markersize=8, alpha=0.9)
        for method, curve in curves.items():
            if curve[0]["seeds"] > 1 and all(p["kl"] is not None and p[key] is not None for p in curve):
                ax.plot([p["kl"] for p in curve], [p[key] for p in curve], color=colors[method], linewidth=2.4,
                        marker="o", markersize=4, label=f"{method} (mean of {curve[0]['seeds']} seeds)")
        sft = next((r for r in rows if r["model"] == BASELINE and r[f"{key}_mean"] is not None), None)
        if sft is not None:
            ax.plot([0.0], [sft[f"{key}_mean"]], "*", color="black", markersize=14, label="SFT", zorder=5)
            ax.axhline(sft[f"{key}_mean"], color="black", linewidth=0.6, linestyle=":")
        ax.set_xlabel("KL to SFT per token (exact, on the model's own answers)")
        ax.set_ylabel(f"mean {ylabel}")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Score vs. KL to SFT, points in training order (big dot = end of training)")
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
    if summary.get("overoptimisation"):  # --trajectory
        write_trajectory_csv(summary["trajectory"], folder / TRAJECTORY_CSV)
    report = folder / "report.md"
    report.write_text(render_markdown(answers, models, summary, meta, plots), encoding="utf-8")
    write_json(folder / "summary.json", {**meta, **summary})
    return report
