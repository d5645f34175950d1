"""显存估算：SFT / RM / PPO 各阶段的单卡峰值显存，以及 24/32/80 GB 卡上放得下的最大每卡批量。

    python -m qwen_rlhf.memory [--json]               # Qwen3-0.6B，三个阶段，训练脚本的默认选项（--json 机器可读）
    python -m qwen_rlhf.memory --stage ppo -- --response_length 128 --per_device_train_batch_size 1
    python -m qwen_rlhf.memory --stage rm_lora                # train_rm.py --use_peft true（LoRA 训练的 RM）

`--` 之后是训练脚本自己的选项（含 --config 配方），和脚本一样由 qwen_rlhf.recipes 解析，默认值就是脚本的默认值。
权重、梯度、AdamW 状态、bf16 副本、激活、15 万词表的 logits、KV 缓存按 transformers 5 / TRL 1.12 的代码数出来，
bench/bench_memory.py 在 CPU 上用 fp32 实测核对；有 GPU 实测（bench/results/gpu_check.json）时以实测为准。
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import namedtuple
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import console, recipes
from .errors import EXIT_BAD_INPUT, UserError, run
from .stages import STAGES as REGISTRY
from .stages import oom_hint, training_stages
from .tiny import QWEN3_0_6B

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ROOT / "bench" / "results" / "gpu_check.json"
GiB = 1024**3
OVERHEAD = 1 * GiB  # CUDA 上下文 + cuBLAS 工作区 + 分配器碎片：经验值，不是算出来的
CARDS_GB = (24, 32, 80)
PROMPT_TOKENS = 64  # PPO 的提示按 64 token 估计（数据集的问题套上对话模板后大多更短）
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# 每个训练阶段都有一个估算（sft / rm / ppo / grpo / rloo / dpo）；公式按登记表里的 memory_kind 分：
# GRPO 和 RLOO 的显存形状相同（在线采样 + LoRA，没有 critic）
STAGES = training_stages()
# 同一个脚本的另一种做法，单列一项：名字 -> (阶段, 加在脚本选项前面的选项)。LoRA 训练的 RM 只有 LoRA 和打分头的
# 梯度与 AdamW 状态，和全参数的 RM 差得最多的就是这两项
VARIANTS = {"rm_lora": ("rm", ["--use_peft", "true"])}
ESTIMATED = (*STAGES, *VARIANTS)  # --stage all 估算的全部
Shape = namedtuple("Shape", "vocab hidden inter layers heads kv_heads head_dim tied bias")


def shape_of(cfg: dict) -> Shape:
    """从 config.json 的字典读取（缺省值与 transformers 的 Qwen3Config 一致）。"""
    heads = cfg["num_attention_heads"]
    return Shape(cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], heads,
                 cfg.get("num_key_value_heads") or heads, cfg.get("head_dim") or cfg["hidden_size"] // heads,
                 cfg.get("tie_word_embeddings", False), cfg.get("attention_bias", False))


def linears(m: Shape) -> dict[str, tuple[int, int]]:  # (输入宽度, 输出宽度)；Qwen3-0.6B 的 q 输出 2048，比 hidden 宽
    q, kv, h, i = m.heads * m.head_dim, m.kv_heads * m.head_dim, m.hidden, m.inter
    return dict(zip(LINEARS, [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]))


def matmul_params(m: Shape, lm_head: bool) -> int:  # autocast 各缓存一份 bf16：线性层 + lm_head 或打分头
    return m.layers * sum(i * o for i, o in linears(m).values()) + (m.vocab * m.hidden if lm_head else m.hidden)


def body_params(m: Shape) -> int:  # 嵌入 + 各层（线性层、两个 RMSNorm、q_norm/k_norm、偏置）+ 最后的 norm
    bias = m.heads * m.head_dim + 2 * m.kv_heads * m.head_dim + m.hidden if m.bias else 0
    layer = sum(i * o for i, o in linears(m).values()) + 2 * m.hidden + 2 * m.head_dim + bias
    return m.vocab * m.hidden + m.layers * layer + m.hidden


def causal_lm_params(m: Shape) -> int:  # lm_head 绑定嵌入时不另占参数
    return body_params(m) + (0 if m.tied else m.vocab * m.hidden)


def score_model_params(m: Shape) -> int:  # RM / critic：打分头 hidden × 1，无偏置
    return body_params(m) + m.hidden


def lora_params(m: Shape, r: int, targets) -> int:  # 每个目标层 A: in × r，B: r × out
    targets = LINEARS if "all-linear" in (targets or ()) else targets or ("q_proj", "v_proj")  # 后者是 PEFT 对 Qwen 的默认
    return m.layers * sum(r * (i + o) for name, (i, o) in linears(m).items() if name in targets)


def activation_bytes(m: Shape, tokens: int, precision: str, gc: bool, gqa_repeat: bool = True) -> int:
    """一次前向为反向保存的激活（按 transformers 5 的 Qwen3 逐个张量数；H/A/K/I = hidden、q 宽、kv 宽、MLP 宽）。

    每层每 token：fp32 = 4 × (6H + 5A + 4K + 4I)；bf16 autocast = 26H + 12A + 10K + 8I 字节（RMSNorm 在 fp32 里算，
    线性层输入各存一份 bf16）；gqa_repeat（有 padding mask 时 SDPA 前 repeat_kv）把 k、v 变成 A 宽；另加 logsumexp。
    开梯度检查点时每层只存 fp32 的输入 4H，反向时重算的那一层临时存在。最后的 norm + 头的输入 fp32 12H / bf16 10H。
    """
    H, A, K, I = m.hidden, m.heads * m.head_dim, m.kv_heads * m.head_dim, m.inter
    if precision == "fp32":
        layer = 4 * (6 * H + (7 * A + 2 * K if gqa_repeat else 5 * A + 4 * K) + 4 * I)
    else:
        layer = 26 * H + (16 * A + 6 * K if gqa_repeat else 12 * A + 10 * K) + 8 * I
    layer += 4 * m.heads
    final = (12 if precision == "fp32" else 10) * H
    return tokens * ((m.layers * 4 * H + layer if gc else m.layers * layer) + final)


@dataclass(frozen=True)
class Opts:
    """一个阶段里和显存有关的选项（从训练脚本的解析结果里取）。"""
    stage: str
    batch: int  # per_device_train_batch_size（RM：偏好对）
    grad_accum: int = 1
    gc: bool = True  # gradient_checkpointing
    precision: str = "bf16"
    max_length: int = 0  # SFT / RM
    rollout_batch: int = 0  # PPO：local_rollout_forward_batch_size
    response_length: int = 0
    lora_r: int = 0
    lora_targets: tuple | str | None = LINEARS
    prompt_length: int = PROMPT_TOKENS
    overhead: int = OVERHEAD
    gqa_repeat: bool = True
    kind: str = ""  # 登记表里的 memory_kind：用哪一个公式


def kind_of(stage: str) -> str:
    return REGISTRY[VARIANTS.get(stage, (stage,))[0]].memory_kind


def command(name: str) -> str:
    """一项估算对应的命令：train_rm.py，或变体的 train_rm.py --use_peft true。"""
    stage, extra = VARIANTS.get(name, (name, []))
    return " ".join([f"train_{stage}.py", *extra])


def phases(m: Shape, o: Opts) -> dict[str, dict[str, int]]:
    """各个候选时刻 → {项目: 字节}；峰值取最大的时刻。"""
    bf16 = o.precision == "bf16"
    if o.kind in ("sampled", "pairs"):
        return lora_phases(m, o)
    if o.kind in ("sft", "rm"):
        p = causal_lm_params(m) if o.kind == "sft" else score_model_params(m)
        seqs = o.batch * (1 if o.kind == "sft" else 2)  # RM 每对 chosen + rejected 两条一起前向
        fixed = {"权重": 4 * p, "梯度": 4 * p, "优化器状态": 8 * p,
                 "激活": activation_bytes(m, seqs * o.max_length, o.precision, o.gc, o.gqa_repeat)}
        if o.kind == "rm" and o.lora_r:
            # train_rm.py --use_peft true：基座 fp32 冻结，只有 LoRA 和打分头有梯度、AdamW 状态；autocast 只缓存要梯度的
            # 权重的 bf16 副本（冻结的每次现转）。LoRA 自己的激活（dropout 后的输入）没算：开梯度检查点时只在重算的那一层
            trainable = lora_params(m, o.lora_r, o.lora_targets) + m.hidden
            return {"训练": {**fixed, "权重": 4 * (p + trainable - m.hidden), "梯度": 4 * trainable,
                             "优化器状态": 8 * trainable, "bf16 权重副本": 2 * trainable * bf16}}
        if o.kind == "rm":  # 打分头只输出一个数，没有词表 logits
            return {"训练": {**fixed, "bf16 权重副本": 2 * matmul_params(m, False) * bf16}}
        # 词表 logits 每元素：前向末尾 = lm_head 输出（bf16 2）+ fp32 拷贝 4 + log_softmax 4；
        # 反向开始 = log_softmax 输出 + 它的梯度 + logits 的梯度 = 12。开检查点时反向开始只剩 lm_head 的 bf16 副本。
        copies = {"前向末尾": matmul_params(m, True), "反向开始": m.vocab * m.hidden if o.gc else matmul_params(m, True)}
        per_el = {"前向末尾": 10 if bf16 else 8, "反向开始": 12}
        return {t: {**fixed, "bf16 权重副本": 2 * copies[t] * bf16,
                    "词表 logits": seqs * o.max_length * m.vocab * per_el[t]} for t in per_el}
    # PPO（TRL 1.12）：policy = SFT 模型 + LoRA（参考模型 = 关掉适配器），critic 全参数 fp32，RM 冻结。
    # bf16 时 policy 的冻结基座和 RM 按 bf16 载入（rollout 也在 bf16 权重上跑），LoRA 与 critic 是 fp32 + AdamW。
    p_lm, p_sc, p_lora = causal_lm_params(m), score_model_params(m), lora_params(m, o.lora_r, o.lora_targets)
    frozen = 2 if bf16 else 4
    trainable = p_lora + p_sc
    local = o.batch * o.grad_accum  # 每卡一次 rollout 的条数
    rf = min(o.rollout_batch, local)  # 生成 / 打分时一次前向的条数
    seq = o.prompt_length + o.response_length
    base = {"权重": frozen * (p_lm + p_sc) + 4 * (p_lora + p_sc), "优化器状态": 8 * trainable}
    # generate 的 output_scores 是 fp32，TRL 把它们拼成 logitss，整个 PPO 更新期间都不释放
    rollout = local * o.response_length * m.vocab * 4
    # 训练 micro-batch 的词表 logits 每元素（f = 回复占比）：TRL 在 minibatch 结束才释放上一个的 logits / softmax；
    # 反向项在 CPU fp32 上用真的 PPOTrainer 实测核对过（bench/bench_memory.py 的 ppo-tiny）
    f = o.response_length / seq
    per_el = {"训练：前向末尾": 8 + 4 * f + 2 * bf16, "训练：反向": 8 + 16 * f}
    train_copies = matmul_params(m, False) + p_lora  # critic 与 LoRA 的 autocast 副本；冻结的基座不缓存
    act = 2 * activation_bytes(m, o.batch * seq, o.precision, o.gc, o.gqa_repeat)  # policy + critic
    out = {
        "rollout 生成": {**base, "rollout logits": 3 * rollout,  # 上一轮未释放 + 堆叠 + pad
                       "KV 缓存": 2 * m.layers * rf * m.kv_heads * m.head_dim * seq * frozen},
        "rollout 参考模型前向": {**base, "rollout logits": rollout, "词表 logits": rf * seq * m.vocab * frozen,
                             "激活": (m.layers + 1) * rf * seq * m.hidden * frozen},  # output_hidden_states
    }
    for t, k in per_el.items():
        kept = t == "训练：前向末尾" or not o.gc  # 开检查点时反向开始 autocast 缓存已清空
        out[t] = {**base, "梯度": 4 * trainable, "bf16 权重副本": 2 * train_copies * kept * bf16,
                  "rollout logits": rollout, "激活": act, "词表 logits": int(o.batch * seq * m.vocab * k)}
    return out


def lora_phases(m: Shape, o: Opts) -> dict[str, dict[str, int]]:
    """GRPO / RLOO（sampled）和 DPO（pairs）的粗估：和 PPO 一样的 LoRA actor（参考模型 = 关掉适配器），没有 critic。
    sampled：冻结的 RM + 一次生成 rollout_batch 条的 KV 缓存；训练时只对回答部分算词表 logits（TRL 的 logits_to_keep）。
    pairs：每对 chosen + rejected 两条一起前向（参考模型再前向一次，不存激活），整条序列都算词表 logits。
    没有 bench/bench_memory.py 的实测核对，只是量级。"""
    bf16 = o.precision == "bf16"
    frozen = 2 if bf16 else 4
    p_lm, p_lora = causal_lm_params(m), lora_params(m, o.lora_r, o.lora_targets)
    base = {"权重": frozen * p_lm + 4 * p_lora, "优化器状态": 8 * p_lora}
    if o.kind == "pairs":
        seqs, seq, scored = 2 * o.batch, o.max_length, o.max_length
    else:
        base["权重"] += frozen * score_model_params(m)  # RM
        seqs, seq, scored = o.batch, o.prompt_length + o.response_length, o.response_length
    train = {**base, "梯度": 4 * p_lora, "bf16 权重副本": 2 * p_lora * bf16,
             "激活": activation_bytes(m, seqs * seq, o.precision, o.gc, o.gqa_repeat),
             "词表 logits": seqs * scored * m.vocab * 12}  # 同 SFT 的"反向开始"：log_softmax 输出 + 梯度 + logits 梯度
    if o.kind == "pairs":
        return {"训练": train}
    seq = o.prompt_length + o.response_length
    generate = {**base, "KV 缓存": 2 * m.layers * o.rollout_batch * m.kv_heads * m.head_dim * seq * frozen,
                "词表 logits": 2 * o.rollout_batch * m.vocab * 4}
    return {"生成": generate, "训练": train}


def peak(m: Shape, o: Opts) -> tuple[int, str]:  # (最大时刻的各项之和 + 开销, 那个时刻)
    name, terms = max(phases(m, o).items(), key=lambda kv: sum(kv[1].values()))
    return sum(terms.values()) + o.overhead, name


def max_batch(m: Shape, o: Opts, gb: float) -> int:
    """放得下的最大每卡批量（其他选项不变）；峰值随批量单调增，先倍增再二分；批量 1 都放不下时为 0。"""
    def fits(n):
        return peak(m, replace(o, batch=n))[0] <= gb * GiB

    lo, hi = 0, 1
    while hi < 1 << 20 and fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def script_options(stage: str, argv=(), precision: str = "bf16") -> Opts:
    """用训练脚本同样的解析（qwen_rlhf.recipes：同名选项、同样的默认值和配方）解析 argv，取出和显存有关的几个。"""
    script, extra = VARIANTS.get(stage, (stage, []))
    name = f"train_{script}"
    try:
        parsed = recipes.parse(script, [*extra, *argv])
    except UserError as e:
        raise UserError(f"{name}.py 的选项：{e.message}（-- 之后的选项交给每个要估算的脚本，可用 --stage 只选一个）", e.code) from None
    cfg, kind = parsed[1], kind_of(stage)
    o = Opts(stage, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, bool(cfg.gradient_checkpointing),
             precision, max_length=getattr(cfg, "max_length", 0) or 0, kind=kind)
    if len(parsed) == 3 and getattr(parsed[0], "use_peft", True):  # LoRA 策略；RM 只在 --use_peft true 时
        t = parsed[2].lora_target_modules
        o = replace(o, lora_r=parsed[2].lora_r, lora_targets=tuple(t) if isinstance(t, list) else t)
    if kind == "ppo":
        o = replace(o, rollout_batch=cfg.local_rollout_forward_batch_size, response_length=cfg.response_length)
    elif kind == "sampled":  # 每个进程一次生成 per_device × steps_per_generation 条
        o = replace(o, rollout_batch=cfg.per_device_train_batch_size * cfg.steps_per_generation,
                    response_length=cfg.max_completion_length, max_length=0)
    if min(o.batch, o.grad_accum, o.max_length or o.response_length, o.rollout_batch or 1) <= 0:
        raise UserError(f"{name}.py 的批量、长度都必须大于 0。", EXIT_BAD_INPUT)
    return o


def estimate_peak_gib(stage: str, argv: list[str] = (), model_config: dict | None = None,
                      precision: str = "bf16") -> float:
    """某阶段在脚本默认选项（被 argv 覆盖）下的峰值显存估计（GiB，含 1 GiB CUDA 上下文 / 碎片）。"""
    return peak(shape_of(model_config or QWEN3_0_6B), script_options(stage, argv, precision))[0] / GiB


def measured(o: Opts) -> dict | None:
    """GPU 自检（bench/results/gpu_check.json）在 Qwen3-0.6B、同样选项下实测的这个阶段（GiB）；没有就是 None。"""
    try:
        d = json.loads(MEASURED.read_text(encoding="utf-8"))
        r = d["stages"][o.stage]
        same = (d["size"], d["device"], o.precision) == ("qwen3-0.6b", "cuda", "bf16") and \
            script_options(o.stage, r["argv"]) == o  # 自检只改步数和路径：选项与默认相同
        return {"gpu": d.get("gpu", "GPU"), "allocated": round(r["cuda_max_allocated_mb"] / 1024, 2),
                "reserved": round(r["cuda_max_reserved_mb"] / 1024, 2)} if same else None
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None


def stage_report(m: Shape, o: Opts) -> dict:
    est, when = peak(m, o)
    meas = measured(o)
    used = meas["allocated"] * GiB + o.overhead if meas else est  # 实测优先：分配峰值 + 同样的开销（同一口径）
    return {"stage": o.stage, "description": describe(o), "options": asdict(o), "estimate_gib": round(est / GiB, 2),
            "peak_phase": when, "terms_gib": {k: round(v / GiB, 2) for k, v in phases(m, o)[when].items()},
            "measured": meas, "peak_gib": round(used / GiB, 2),
            "cards": {str(c): {"fits": used <= c * GiB, "max_batch": max_batch(m, o, c)} for c in CARDS_GB}}


def describe(o: Opts) -> str:
    tail = f"，{'bf16 混合精度' if o.precision == 'bf16' else 'fp32'}，梯度检查点{'开' if o.gc else '关'}"
    lora = f"，LoRA r{o.lora_r}" if o.lora_r else ""
    if o.kind in ("sft", "rm", "pairs"):
        pairs = f"{o.batch} 对（{2 * o.batch} 条）" if o.kind != "sft" else f"{o.batch} 条"
        return f"每卡 {pairs} × {o.max_length} token（累积 {o.grad_accum}）" + lora + tail
    if o.kind == "sampled":
        return (f"每卡 {o.batch} 条 × 累积 {o.grad_accum}（一次生成 {o.rollout_batch} 条），提示约 {o.prompt_length} + "
                f"回答 {o.response_length} token" + lora + tail)
    local = o.batch * o.grad_accum
    return (f"每卡 {o.batch} 条 × 累积 {o.grad_accum}（rollout {local} 条，每次前向 {min(o.rollout_batch, local)} 条），"
            f"提示约 {o.prompt_length} + 回复 {o.response_length} token，LoRA r{o.lora_r}" + tail)


def format_stage(r: dict) -> str:
    terms = "、".join(f"{k} {v:.1f}" for k, v in r["terms_gib"].items() if v)
    out = [f"== {r['stage'].upper()}（{command(r['stage'])}）：{r['description']}",
           f"峰值估计 {r['estimate_gib']:.1f} GiB（峰值时刻「{r['peak_phase']}」：{terms}、CUDA 开销 "
           f"{r['options']['overhead'] / GiB:.1f}）"]
    if r["measured"]:
        mm = r["measured"]
        out.append(f"实测（{mm['gpu']}）：分配峰值 {mm['allocated']:.1f} GiB、保留峰值 {mm['reserved']:.1f} GiB；"
                   f"下表的「放得下」按实测分配峰值 + 开销 = {r['peak_gib']:.1f} GiB 判断")
    unit = "对" if r["options"]["kind"] in ("rm", "pairs") else "条"
    rows = [[f"{c} GB", "能" if v["fits"] else "不能", f"{v['max_batch']} {unit}"] for c, v in r["cards"].items()]
    return "\n".join([*out, console.table(["显卡", "当前选项放得下", "最大每卡批量"], rows)])


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"选项错误：{message}。用 --help 查看所有选项。", EXIT_BAD_INPUT)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, script_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = _Parser(prog="python -m qwen_rlhf.memory", epilog="-- 之后的选项原样交给训练脚本，例如 -- --max_length 256",
                description="估算各训练阶段（SFT / RM / PPO / GRPO / RLOO / DPO）的单卡峰值显存和 24/32/80 GB 卡上的最大每卡批量。")
    p.add_argument("--stage", choices=[*ESTIMATED, "all"], default="all",
                   help="估算哪个阶段（默认 all；rm_lora = train_rm.py --use_peft true）")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16 = fp32 主权重 + bf16 autocast（支持 bf16 的 GPU，默认）；fp32 = 全 fp32")
    p.add_argument("--json", action="store_true", help="输出 JSON")
    p.add_argument("--traceback", action="store_true", help="出错时打印完整 traceback")
    a = p.parse_args(own)
    m = shape_of(QWEN3_0_6B)
    stages = list(ESTIMATED) if a.stage == "all" else [a.stage]
    reports = [stage_report(m, script_options(s, script_argv, a.precision)) for s in stages]
    if a.json:
        model = {**m._asdict(), "causal_lm_params": causal_lm_params(m), "score_model_params": score_model_params(m)}
        print(json.dumps({"model": model, "stages": reports}, ensure_ascii=False, indent=2))
    else:
        print(f"模型：Qwen3-0.6B，{causal_lm_params(m) / 1e6:.1f}M 参数，词表 {m.vocab}；"
              "单位 GiB，估计含约 1 GiB 的 CUDA 上下文 / 碎片。\n")
        print("\n\n".join(format_stage(r) for r in reports))


if __name__ == "__main__":
    run(lambda: main(sys.argv[1:]), oom_hint("memory"))
