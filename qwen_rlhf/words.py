"""评测报告里的话：每个模型、每个方法、每位评委的一句（终端和 report.md 共用）。数字都从 summary 读，不写进句子模板。"""

from __future__ import annotations

from .metrics import BASELINE, rm_trust
from .stages import STAGES


def format_ci(ci: list[float] | None, fmt: str = "+.2f") -> str:
    return "—" if ci is None else f"[{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def verdict(s: dict) -> str:
    """提升的 95% 区间 -> 一句话：明显更高 / 明显更低 / 在噪声之内。"""
    lo, hi = s["mean_gain_vs_sft_ci95"]
    if lo > 0:
        return f"区间整个在 0 以上，在这 {s['n']} 个问题上明显比 SFT 得分高"
    if hi < 0:
        return f"区间整个在 0 以下，在这 {s['n']} 个问题上明显比 SFT 得分低"
    return f"区间包含 0：差异在噪声之内，{s['n']} 个问题还分不出它和 SFT 谁更好"


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


def confirmed(ci: list[float] | None) -> str:
    """一个提升的 95% 区间 -> 证实上升 / 证实下降 / 没有得到证实（区间碰到 0：不是"不认同"，是"分不出来"）。"""
    if ci is None:
        return "—"
    return "证实更高" if ci[0] > 0 else "证实更低" if ci[1] < 0 else "没有得到证实"


def judge_words(s: dict) -> str:
    """一个模型在另两位评委眼里（没有它们时为空）。几位评委的分差尺度不同，放在同一把尺子上比：提升除以这位评委给
    SFT 回答的分数的标准差（"几个 SFT 标准差"）。"""
    out = ""
    for prefix, label in (("gold_", "金标准评委"), ("null_", "空评委")):
        if s.get(f"{prefix}gain_in_sft_sd") is None:
            continue
        out += (f"；{label}：提升 {s[f'{prefix}mean_gain_vs_sft']:+.2f}（{format_ci(s[f'{prefix}mean_gain_vs_sft_ci95'])}，"
                f"{confirmed(s[f'{prefix}mean_gain_vs_sft_ci95'])}），"
                f"合 {s[f'{prefix}gain_in_sft_sd']:+.2f} 个 SFT 标准差（代理 RM {s['gain_in_sft_sd']:+.2f}）")
    if s.get("gold_gain_in_sft_sd") is not None and s.get("null_gain_in_sft_sd") is not None:
        gold_gap = abs(s["gain_in_sft_sd"] - s["gold_gain_in_sft_sd"])
        null_gap = abs(s["gain_in_sft_sd"] - s["null_gain_in_sft_sd"])
        out += (f"；金标准与代理 RM 差 {gold_gap:.2f} 个标准差，空评委与代理 RM 差 {null_gap:.2f}（只差种子的两个 RM 本来就有的"
                + ("分歧）：金标准的分歧超出了这份噪声" if gold_gap > null_gap else "分歧）：金标准的分歧没有超出这份噪声，不算证据"))
    return out


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
            kl = s.get("kl_seq")
            kl_words = "" if kl is None else (f"；离 SFT 的序列 KL {kl:.2f}（每 token {s['kl_per_token']:.3f}；越大说明改动越多，"
                                              "分数可能是拿这份改动换来的）")
            out.append(f"**{method}**　{about}本次（{m}）：平均提升 {s['mean_gain_vs_sft']:+.2f}，"
                       f"95% 区间 {format_ci(s['mean_gain_vs_sft_ci95'])}——{verdict(s)}{judge_words(s)}{kl_words}。"
                       + diagnosis)
            continue
        gains = [s["mean_gain_vs_sft"] for _, s in versus]
        above = sum(s["mean_gain_vs_sft_ci95"][0] > 0 for _, s in versus)
        below = sum(s["mean_gain_vs_sft_ci95"][1] < 0 for _, s in versus)
        golds = [s["gold_mean_gain_vs_sft"] for _, s in versus if s.get("gold_mean_gain_vs_sft") is not None]
        gold_line = (f"金标准评委给的提升在 {min(golds):+.2f} 到 {max(golds):+.2f} 之间，"
                     f"{sum(s['gold_mean_gain_vs_sft_ci95'][0] > 0 for _, s in versus)} 个证实更高、其余没有得到证实或更低。"
                     if len(golds) == len(versus) else "")
        out.append(f"**{method}**　{about}本次 {len(versus)} 个模型（种子）的平均提升在 {min(gains):+.2f} 到 "
                   f"{max(gains):+.2f} 之间：{above} 个的区间整个在 0 以上（明显比 SFT 高），{below} 个整个在 0 以下，"
                   f"{len(versus) - above - below} 个包含 0（在噪声之内）。" + gold_line + diagnosis)
    return out


VERDICTS = {
    "overoptimised": "出现了奖励过度优化：峰值之后代理分继续上升（{proxy_rise_after_peak:+.2f}）、KL 继续变大，{judge}却回落了 "
                     "{drop:.2f}（95% 区间 {drop_ci}，p = {p_value:.3f}）。",
    "fell_back": "{judge}回落了 {drop:.2f}（p = {p_value:.3f}），但峰值之后 KL 也变小了（{kl_rise_after_peak:+.2f}）："
                 "策略退回了 SFT 附近，不是过度优化。",
    "degraded": "{judge}回落了 {drop:.2f}（p = {p_value:.3f}），峰值之后 KL 还在变大（{kl_rise_after_peak:+.2f}），"
                "代理分却没有涨（{proxy_rise_after_peak:+.2f}）：策略走远了，两个 RM 都不给高分——训练本身变坏了"
                "（看看回答是不是不再停下、写满长度或塌成一句话），不是过度优化（过度优化要代理分还在涨）。",
    "no_evidence": "没有过度优化的证据：{judge}在峰值之后的回落 {drop:+.2f}（95% 区间 {drop_ci}，p = {p_value:.3f}）不显著"
                   "（这不等于证明没有：点少、问题少时小的回落检不出来）。",
    "inconclusive": "点太少（{points} 个），判断不了：至少要 SFT、一个中间快照和最终结果（--snapshots ≥ 2）。",
}
GAIN_WORDS = {"rise": "证实更高", "fall": "证实更低", "not_confirmed": "没有得到证实（区间碰到 0）"}


def trajectory_paragraphs(summary: dict) -> list[str]:
    """--trajectory：每个方法一句，读出有没有奖励过度优化（trajectory.verdicts）；第一句说判定的误报率。"""
    found = summary.get("overoptimisation") or {}
    if not found:
        return []
    alpha = next((r[j]["alpha"] for r in found.values() for j in ("gold", "null") if "alpha" in r.get(j, {})), None)
    lines = [] if alpha is None else [
        f"判定方法：每次运行在一半问题上挑出评委分最高的快照，在另一半问题上量它到最终结果的回落，几个种子合在一起做"
        f"单侧符号翻转检验；金标准分其实不变时，判成\"过度优化\"的比例不超过 {alpha:.0%}（模拟校准：tests/test_verdict.py）。"]
    for method, r in found.items():
        words = (f"**{method}**：最终相对 SFT，代理分 {r['proxy']['gain']:+.2f}（{GAIN_WORDS[r['proxy']['word']]}），"
                 f"序列 KL {r['final_kl_seq']:.2f}")
        for j, label in (("gold", "金标准分"), ("null", "空评委分")):
            if j not in r:
                continue
            g = r[j]
            words += f"{'' if words.endswith('。') else '；'}{label} {g['gain']:+.2f}（{GAIN_WORDS[g['word']]}）"
            args = {**g, "judge": label, "drop_ci": format_ci(g.get("drop_ci95"))}
            words += "。" + (VERDICTS[g["verdict"]].format(**args) if j == "gold" else
                            f"空评委的同一检验：{'过度优化' if g['verdict'] == 'overoptimised' else '没有判成过度优化'}"
                            "（它和代理 RM 只差种子：如果它也判成过度优化，这份回落多半是种子噪声而不是代理 RM 的漏洞）。")
        if "gold" not in r:
            words += "；没有金标准评委（--gold_model_path），看不出代理分的提高是不是真的。"
        lines.append(words)
    return lines


def rm_line(rm: dict, who: str = "RM") -> str:
    return (f"{who}在 {rm['pairs']} 对留出偏好对上的准确率 {rm['accuracy']:.3f}，"
            f"平均分差（chosen - rejected）{rm['margin']:.2f}。{rm_trust(rm['accuracy'])}")


def judge_lines(summary: dict) -> list[str]:
    """几位评委的成绩单并排：代理 RM（RL 训练时优化的那个）、金标准评委和空评委（只用来评测）；金标准评委和代理 RM
    用的是同一个基座时说一行。"""
    lines = [rm_line(summary["rm"], "代理 RM（训练时优化的）" if summary.get("gold") else "RM ")]
    if summary.get("gold"):
        lines.append(rm_line(summary["gold"], "金标准评委（只用来评测）"))
    if summary.get("null"):
        lines.append(rm_line(summary["null"], "空评委（代理 RM 的数据和基座、另一个种子）"))
    base = summary.get("gold_base") or {}
    if summary.get("gold") and base.get("same"):
        lines.append(f"⚠️ 金标准评委和代理 RM 用的是同一个基座（{base['proxy']}）：两者只差种子和一份额外数据，更像兄弟而不是"
                     "独立的评委；请用 python train_rm.py --role gold 的默认基座（更大的模型）重新训练金标准评委。")
    return lines


KL_LINE = ("KL：每个模型按训练时的温度（不做 top-k / top-p）自己采样回答，在每个位置上对整个词表求和算 KL(模型 ‖ SFT)"
           "（两个分布按同一温度缩放、不靠采样，一定 ≥ 0），再对整条回答求和 = 序列 KL，即训练约束的那个量；表里另给每 token "
           "的平均。TRL 的 PPO 曲线 objective/kl 是同一个序列 KL 的单样本估计（采样 token 上 log π − log π_SFT 之和），"
           "所以会跳、可以为负；GRPO 的 kl 曲线是每 token 的 k3 估计。训练轨迹的横轴是 √(序列 KL)（Gao et al. 2022）。")


def source_words(summary: dict) -> str:
    names = {"common": "常见", "held_out": "留出", "file": "文件"}
    parts = [f"{names.get(s, s)} {n}" for s, n in summary["num_by_source"].items()]
    return f"{summary['num_questions']} 个问题（{' + '.join(parts)}）"


