"""显存估算：SFT / RM / PPO 三个阶段在一张 GPU 上的峰值显存，按来源拆开。

    python -m qwen_rlhf.memory                      # Qwen3-0.6B，三个阶段，脚本的默认选项
    python -m qwen_rlhf.memory --stage ppo --response_length 128 --rollout_batch 4
    python -m qwen_rlhf.memory --markdown           # README 可以直接粘贴的表格
    python -m qwen_rlhf.memory --json               # 机器可读

只做算术，不导入 torch、不需要 GPU。每一项都是一个小的纯函数，docstring 里写着公式；
常数（每个元素几个字节、CUDA 上下文多大）是按 transformers 5 / TRL 1.12 的代码逐个数出来的估计，
bench/bench_memory.py 在 CPU 上用 fp32 实测同一套公式（见那里的 estimate vs measured，误差在 5% 以内）；
bf16 autocast 特有的几项（bf16 权重副本、bf16 激活的系数）和 CUDA 开销没有在 GPU 上实测过。

约定：
- 权重按 fp32 载入（脚本就是这么做的），混合精度 = bf16 autocast：fp32 主权重 + 前向里的 bf16 副本。
- 注意力按 SDPA（flash / memory-efficient）算：不存 seq² 的注意力矩阵。若退回 math 实现（例如 eager 注意力），
  每层还要多 batch × heads × seq² × 字节，长序列时很大。
- 长度按上限算（SFT/RM 的 max_length、PPO 的 prompt + response_length），实际批次按最长样本填充，通常更小。
- 只估计单卡（每个进程）的显存；DDP 每张卡各放一份完整模型和优化器。
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .errors import EXIT_BAD_INPUT, UserError, run

GiB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2}
PRECISIONS = ("bf16", "fp32")
CUDA_OVERHEAD_GIB = 1.0  # CUDA 上下文 + cuBLAS 工作区 + 缓存分配器碎片：经验估计，不是算出来的
CARDS_GB = (24, 32, 80)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# 各阶段默认值 = train_sft.py / train_rm.py / train_ppo.py 的 DEFAULTS（tests/test_memory.py 核对两边一致）
SFT_DEFAULTS = dict(batch=4, max_length=500, grad_accum=8)
RM_DEFAULTS = dict(batch=4, max_length=500, grad_accum=8)
PPO_DEFAULTS = dict(batch=2, grad_accum=4, rollout_batch=8, response_length=200, prompt_length=64, lora_r=32)

FORWARD, BACKWARD = "forward", "backward"  # 训练里的两个峰值候选时刻：前向末尾（刚算完损失）、反向开始


# ====================================================================== 模型结构与参数量


@dataclass(frozen=True)
class ModelShape:
    """Qwen3 的结构参数（只取显存估算需要的几个）。"""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool = True
    attention_bias: bool = False

    @property
    def q_dim(self) -> int:
        """q 投影的输出宽度 = heads × head_dim（Qwen3-0.6B：16 × 128 = 2048，比 hidden 1024 还宽）。"""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """k / v 投影的输出宽度 = kv_heads × head_dim（GQA）。"""
        return self.kv_heads * self.head_dim

    @classmethod
    def from_config(cls, cfg: dict) -> "ModelShape":
        """从 config.json / Qwen3Config 的字典读取；缺省值与 transformers 的 Qwen3Config 一致。"""
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in required if k not in cfg]
        if missing:
            raise UserError(f"模型配置缺少字段 {', '.join(missing)}，不像是 Qwen3 的 config.json。", EXIT_BAD_INPUT)
        heads = int(cfg["num_attention_heads"])
        shape = cls(
            vocab=int(cfg["vocab_size"]), hidden=int(cfg["hidden_size"]), intermediate=int(cfg["intermediate_size"]),
            layers=int(cfg["num_hidden_layers"]), heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
            tied=bool(cfg.get("tie_word_embeddings", False)), attention_bias=bool(cfg.get("attention_bias", False)),
        )
        if min(shape.vocab, shape.hidden, shape.intermediate, shape.layers, shape.heads, shape.kv_heads,
               shape.head_dim) <= 0:
            raise UserError("模型配置里的尺寸必须都是正整数。", EXIT_BAD_INPUT)
        return shape


def linear_shapes(m: ModelShape) -> dict[str, tuple[int, int]]:
    """一层里 7 个线性层的 (输入宽度, 输出宽度)：q/k/v/o 注意力投影 + gate/up/down MLP。"""
    return {
        "q_proj": (m.hidden, m.q_dim), "k_proj": (m.hidden, m.kv_dim), "v_proj": (m.hidden, m.kv_dim),
        "o_proj": (m.q_dim, m.hidden),
        "gate_proj": (m.hidden, m.intermediate), "up_proj": (m.hidden, m.intermediate),
        "down_proj": (m.intermediate, m.hidden),
    }


def embedding_params(m: ModelShape) -> int:
    """词嵌入 = vocab × hidden（Qwen3-0.6B：151936 × 1024 ≈ 155.6M，占全部参数的 26%）。"""
    return m.vocab * m.hidden


def layer_params(m: ModelShape) -> int:
    """一层解码器 = 7 个线性层的 in × out + 两个 RMSNorm（2·hidden）+ q_norm/k_norm（2·head_dim）
    （+ attention_bias 时 q/k/v/o 的偏置 q_dim + 2·kv_dim + hidden）。"""
    n = sum(i * o for i, o in linear_shapes(m).values()) + 2 * m.hidden + 2 * m.head_dim
    if m.attention_bias:
        n += m.q_dim + 2 * m.kv_dim + m.hidden
    return n


def causal_lm_params(m: ModelShape) -> int:
    """Qwen3ForCausalLM = 嵌入 + layers × 每层 + 最后的 norm（hidden）+ lm_head（绑定嵌入时为 0，否则 vocab × hidden）。"""
    lm_head = 0 if m.tied else m.vocab * m.hidden
    return embedding_params(m) + m.layers * layer_params(m) + m.hidden + lm_head


def score_model_params(m: ModelShape, num_labels: int = 1) -> int:
    """Qwen3ForSequenceClassification（RM / critic）= 嵌入 + layers × 每层 + norm + 打分头 hidden × num_labels（无偏置）。"""
    return embedding_params(m) + m.layers * layer_params(m) + m.hidden + m.hidden * num_labels


def lora_params(m: ModelShape, r: int, targets=LORA_TARGETS) -> int:
    """LoRA = layers × Σ_目标线性层 r × (in + out)（A: in×r，B: r×out）。Qwen3-0.6B、r=32、7 个投影 ≈ 20.2M。"""
    shapes = linear_shapes(m)
    return m.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def matmul_weight_params(m: ModelShape, lm_head: bool = True) -> int:
    """参与矩阵乘的权重 = layers × Σ in × out（+ 因果 LM 的 lm_head vocab × hidden，绑定时就是嵌入矩阵；
    打分模型的 hidden × 1）。混合精度下 autocast 会把这些 fp32 权重各转一份 bf16。嵌入查表不做转换。"""
    per_layer = sum(i * o for i, o in linear_shapes(m).values())
    return m.layers * per_layer + (m.vocab * m.hidden if lm_head else m.hidden)


# ====================================================================== 权重、梯度、优化器


def weight_bytes(params: int, dtype: str = "fp32") -> int:
    """权重 = 参数量 × 每个参数的字节数（fp32 4，bf16 2）。"""
    return params * DTYPE_BYTES[dtype]


def gradient_bytes(trainable: int) -> int:
    """梯度 = 4 × 可训练参数（fp32 主权重的梯度也是 fp32；梯度累积期间一直存在）。"""
    return 4 * trainable


def adamw_bytes(trainable: int) -> int:
    """AdamW 状态 = 2（exp_avg、exp_avg_sq）× 4 字节 × 可训练参数。"""
    return 2 * 4 * trainable


def autocast_copy_bytes(matmul_params: int, precision: str) -> int:
    """autocast 的 bf16 权重副本 = 2 × 参与矩阵乘的可训练权重（只有 bf16 混合精度时有）。
    autocast 在前向期间缓存可训练 fp32 权重的 bf16 副本，直到退出 autocast；冻结的权重（PPO 里 policy 的基座、RM）
    每次用时临时转换，不缓存，这里不算。"""
    return 2 * matmul_params if precision == "bf16" else 0


def autocast_saved_params(m: ModelShape, moment: str, gradient_checkpointing: bool, lm_head: bool = True,
                          lm_head_trainable: bool = True) -> int:
    """在某个时刻仍然存在的 bf16 副本对应的权重数（再乘 2 字节 = autocast_copy_bytes）：

    前向末尾：所有可训练的矩阵乘权重都还在 autocast 缓存里 = matmul_weight_params
    反向开始：不开检查点时矩阵乘为反向保存了这些副本，仍是全部；开检查点时各层里保存的东西被丢掉、
              缓存在退出 autocast 时清空，只剩检查点之外的 lm_head（= vocab × hidden，绑定时是嵌入矩阵，冻结时为 0）
    """
    if moment == FORWARD or not gradient_checkpointing:
        return matmul_weight_params(m, lm_head)
    return m.vocab * m.hidden if (lm_head and lm_head_trainable) else 0


# ====================================================================== 激活


def layer_activation_bytes(m: ModelShape, precision: str = "bf16", gqa_repeat: bool = True) -> dict[str, int]:
    """一个 token 在一层解码器里为反向保存的字节数，按 transformers 5 的 Qwen3 代码逐个张量数出来。

    记 H = hidden，A = heads × head_dim，K = kv_heads × head_dim，I = intermediate。

    fp32（全部 4 字节）：
      hidden    = 4 × 6H  两个 RMSNorm 各存输入、归一化结果、线性层输入
      attention = 4 × (5A + 4K)  q、q_norm 后、RoPE 后、SDPA 输出、o_proj 输入；k、k_norm 后、RoPE 后、v
                  （gqa_repeat：有 padding mask 时 transformers 先 repeat_kv，SDPA 存的 k、v 变成 A 宽：4 × (7A + 2K)）
      mlp       = 4 × 4I  gate 输出、SiLU 输出、up 输出、乘积（down_proj 输入）
    bf16 autocast（RMSNorm 在 fp32 里算，线性层 / SDPA 的输入各转一份 bf16）：
      hidden    = 26H 字节   两个 RMSNorm 的 fp32 输入与结果 16H + q/k/v、gate/up 各自的 bf16 输入 10H
      attention = 12A + 10K 字节（gqa_repeat：16A + 6K）
      mlp       = 8I 字节    4 个 bf16 的 I 宽张量
    SDPA 的 logsumexp（每头 4 字节）计入 attention；不含 seq² 项（flash / memory-efficient 内核）。
    """
    H, A, K, I = m.hidden, m.q_dim, m.kv_dim, m.intermediate
    if precision == "fp32":
        attention = 4 * (7 * A + 2 * K) if gqa_repeat else 4 * (5 * A + 4 * K)
        return {"hidden": 4 * 6 * H, "attention": attention + 4 * m.heads, "mlp": 4 * 4 * I}
    attention = (16 * A + 6 * K) if gqa_repeat else (12 * A + 10 * K)
    return {"hidden": 26 * H, "attention": attention + 4 * m.heads, "mlp": 8 * I}


def final_activation_bytes(m: ModelShape, precision: str = "bf16") -> int:
    """最后的 RMSNorm + lm_head / 打分头输入，每个 token：fp32 12H（norm 输入、结果、输出）；bf16 10H（输出换成 bf16 副本）。"""
    return (12 if precision == "fp32" else 10) * m.hidden


def activation_bytes(m: ModelShape, tokens: int, precision: str = "bf16", gradient_checkpointing: bool = True,
                     gqa_repeat: bool = True) -> int:
    """一次前向为反向保存的激活（tokens = batch × seq）。

    不开梯度检查点：tokens × (layers × 每层 + 最后一层 norm)
    开梯度检查点：  tokens × (layers × 4H + 每层 + 最后一层 norm)
                    —— 每层只存 fp32 的输入（残差流是 fp32），反向时重算一层、那一层的激活临时存在。
    """
    per_layer = sum(layer_activation_bytes(m, precision, gqa_repeat).values())
    final = final_activation_bytes(m, precision)
    if gradient_checkpointing:
        return tokens * (m.layers * 4 * m.hidden + per_layer + final)
    return tokens * (m.layers * per_layer + final)


def hidden_states_bytes(m: ModelShape, tokens: int, dtype: str = "fp32") -> int:
    """output_hidden_states=True 时返回的全部隐状态 = (layers + 1) × tokens × hidden × 字节（PPO 的前向都这样调用）。"""
    return (m.layers + 1) * tokens * m.hidden * DTYPE_BYTES[dtype]


# ====================================================================== 词表 logits 与 KV 缓存


def logits_bytes(batch: int, seq: int, vocab: int, bytes_per_element: float) -> int:
    """词表 logits = batch × seq × vocab × 每个元素的字节数。Qwen3 的词表 151936，这是最大的一项：
    SFT 默认 4 × 500 × 151936 ≈ 3 亿个元素，每个元素 4 字节就是 1.1 GiB。"""
    return int(batch * seq * vocab * bytes_per_element)


def sft_logits_bytes_per_element(precision: str = "bf16", moment: str = BACKWARD) -> int:
    """SFT 每个 logits 元素（batch × seq × vocab 个）在某一时刻同时占用的字节数：

    反向开始 = 12（两种精度）：交叉熵的 fp32 log_softmax 输出 4（为反向保存）+ 它的梯度 4 + 回传到 logits 的梯度 4
    前向末尾 = fp32 8：logits 4 + log_softmax 输出 4
              bf16 10：lm_head 的 bf16 输出 2 + 损失函数里 logits.float() 的 fp32 拷贝 4 + log_softmax 输出 4
    （accelerate 把返回的 logits 转成 fp32 的那份、TRL 算熵的分块临时量，都在这两个时刻之间，不更大）
    """
    if moment == BACKWARD:
        return 12
    return 10 if precision == "bf16" else 8


def ppo_train_logits_bytes_per_element(precision: str, response_fraction: float, moment: str = BACKWARD) -> float:
    """PPO 训练一个 micro-batch 时，每个 (prompt + response) × vocab 元素的字节数，f = response / (prompt + response)。
    TRL 1.12 在 minibatch 结束才 del 上一个 micro-batch 的 output / prob_dist，所以它们和新的 micro-batch 重叠：

    前向末尾 = 4 + 4·f（上一个 micro-batch 的 fp32 logits 与熵的 softmax）+ 4（新的 fp32 logits）
               + 2（bf16 时 lm_head 的 bf16 原件，accelerate 转成 fp32 后释放）
    反向     = 8 + 16·f：fp32 logits 4 + 上一个的 softmax 4·f + selective_log_softmax 反向的逐行 / gather 梯度与
               它们的和（约 12·f）+ 切片梯度铺满整个序列 4。这一项在 CPU fp32 上用真的 PPOTrainer 实测核对过
               （bench/bench_memory.py 的 ppo-tiny），常数与 f 的分配是估计。
    """
    f = response_fraction
    if moment == BACKWARD:
        return 8 + 16 * f
    return 8 + 4 * f + (2 if precision == "bf16" else 0)


def ppo_rollout_logits_bytes(local_batch: int, response_length: int, vocab: int) -> int:
    """生成时 output_scores 保留的 logits = local_batch × response_length × vocab × 4（fp32）。
    TRL 把所有 rollout 子批的 logits 拼起来（batch_generation 里的 pad）放在 `logitss` 里，整个 PPO 更新期间都不释放。"""
    return local_batch * response_length * vocab * 4


def kv_cache_bytes(m: ModelShape, batch: int, seq: int, dtype: str = "fp32") -> int:
    """KV 缓存 = 2（K、V）× layers × batch × kv_heads × head_dim × seq × 字节。
    PPO 的 rollout 不在 autocast 里，policy 是 fp32，所以缓存也是 fp32。"""
    return 2 * m.layers * batch * m.kv_dim * seq * DTYPE_BYTES[dtype]


# ====================================================================== 阶段估算


@dataclass
class Term:
    key: str
    label: str
    bytes: int
    note: str = ""


@dataclass
class Phase:
    name: str
    terms: list[Term]

    @property
    def total(self) -> int:
        return sum(t.bytes for t in self.terms)


@dataclass
class StageOptions:
    """一个阶段的显存相关选项（默认值 = 脚本默认值）。"""

    stage: str
    batch: int
    max_length: int = 500  # SFT / RM
    grad_accum: int = 1
    precision: str = "bf16"
    gradient_checkpointing: bool = True
    # PPO
    rollout_batch: int = 8
    response_length: int = 200
    prompt_length: int = 64
    lora_r: int = 32
    overhead_gib: float = CUDA_OVERHEAD_GIB
    gqa_repeat: bool = True  # 有 padding mask 时 transformers 在 SDPA 前 repeat_kv

    @property
    def ppo_local_batch(self) -> int:
        """每卡一次 rollout 的序列数 = per_device_train_batch_size × gradient_accumulation_steps
        （TRL 1.12 的 local_batch_size；num_mini_batches 只把它再切分，不改变总数）。"""
        return self.batch * self.grad_accum


def default_options(stage: str, **overrides) -> StageOptions:
    """某个阶段的默认选项；overrides 里值为 None 的键忽略（命令行没给）。"""
    base = {"sft": SFT_DEFAULTS, "rm": RM_DEFAULTS, "ppo": PPO_DEFAULTS}[stage]
    kw = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    return StageOptions(stage=stage, **kw)


@dataclass
class StageEstimate:
    options: StageOptions
    phases: list[Phase]
    overhead: int

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)

    @property
    def peak(self) -> int:
        """峰值 = 最大的那个时刻的各项之和 + CUDA 上下文 / 分配器开销。"""
        return self.peak_phase.total + self.overhead


def _overhead(o: StageOptions) -> int:
    return int(o.overhead_gib * GiB)


def estimate_sft(m: ModelShape, o: StageOptions) -> StageEstimate:
    """SFT：全参数训练 Qwen3ForCausalLM。两个候选时刻（梯度累积中：梯度一直在）：
    前向末尾（刚算完损失：autocast 缓存里全部 bf16 副本 + logits 前向）与反向开始（交叉熵的 fp32 梯度）。"""
    p = causal_lm_params(m)
    tokens = o.batch * o.max_length
    phases = []
    for name, moment in (("前向末尾", FORWARD), ("反向开始", BACKWARD)):
        k = sft_logits_bytes_per_element(o.precision, moment)
        copies = autocast_saved_params(m, moment, o.gradient_checkpointing)
        phases.append(Phase(name, [
            Term("weights", "权重", weight_bytes(p), f"{p / 1e6:.1f}M 参数 × 4 字节（fp32）"),
            Term("gradients", "梯度", gradient_bytes(p), "4 × 可训练参数"),
            Term("optimizer", "优化器状态", adamw_bytes(p), "AdamW 2 个状态 × 4 字节"),
            Term("autocast", "bf16 权重副本", autocast_copy_bytes(copies, o.precision),
                 f"autocast：2 × {copies / 1e6:.0f}M 个矩阵乘权重"),
            Term("activations", "激活", activation_bytes(m, tokens, o.precision, o.gradient_checkpointing, o.gqa_repeat),
                 f"{o.batch} × {o.max_length} token × {m.layers} 层"),
            Term("logits", "词表 logits", logits_bytes(o.batch, o.max_length, m.vocab, k),
                 f"{o.batch} × {o.max_length} × {m.vocab} × {k} 字节"),
        ]))
    return StageEstimate(o, phases, _overhead(o))


def estimate_rm(m: ModelShape, o: StageOptions) -> StageEstimate:
    """RM：全参数训练 Qwen3ForSequenceClassification；每对偏好 chosen + rejected 两条序列一起前向，没有词表 logits。"""
    p = score_model_params(m)
    seqs = 2 * o.batch
    tokens = seqs * o.max_length
    terms = [
        Term("weights", "权重", weight_bytes(p), f"{p / 1e6:.1f}M 参数 × 4 字节（fp32）"),
        Term("gradients", "梯度", gradient_bytes(p), "4 × 可训练参数"),
        Term("optimizer", "优化器状态", adamw_bytes(p), "AdamW 2 个状态 × 4 字节"),
        Term("autocast", "bf16 权重副本", autocast_copy_bytes(matmul_weight_params(m, lm_head=False), o.precision),
             "autocast 缓存：2 × 矩阵乘权重"),
        Term("activations", "激活", activation_bytes(m, tokens, o.precision, o.gradient_checkpointing, o.gqa_repeat),
             f"{o.batch} 对 × 2 条 × {o.max_length} token × {m.layers} 层"),
        Term("logits", "词表 logits", 0, "打分头只输出 1 个数，没有词表 logits"),
    ]
    return StageEstimate(o, [Phase("训练", terms)], _overhead(o))


def estimate_ppo(m: ModelShape, o: StageOptions) -> StageEstimate:
    """PPO（TRL 1.12）：policy = fp32 模型 + LoRA，ref = 同一模型关掉适配器，critic = fp32 打分模型全参数训练，
    RM 冻结（bf16 时按 bf16 载入）。一个 AdamW 同时管 LoRA 和 critic。分两个时刻：

    rollout（no_grad，不在 autocast 里）：
      生成结束：上一轮的 logitss + 本轮 output_scores 堆叠 + pad 后的副本 = 3 × rollout logits，外加 KV 缓存
      参考模型前向：rollout logits + 整段序列的 fp32 logits（rollout 子批 × seq × vocab × 4）+ 全部隐状态
    训练（每个 micro-batch = per_device_train_batch_size 条，policy 与 critic 都前向 + 反向）：
      权重 + 梯度 + 优化器 + 仍未释放的 rollout logits + 两个模型的激活 + policy 的词表 logits，
      分前向末尾（critic 的 bf16 副本都在 autocast 缓存里）与反向（开检查点时副本已清掉）两个时刻
    """
    p_lm, p_sc, p_lora = causal_lm_params(m), score_model_params(m), lora_params(m, o.lora_r)
    trainable = p_lora + p_sc
    rm_dtype = "bf16" if o.precision == "bf16" else "fp32"
    seq = o.prompt_length + o.response_length
    rf = min(o.rollout_batch, o.ppo_local_batch)  # 生成 / 打分时一次前向的序列数
    weights = weight_bytes(p_lm + p_lora) + weight_bytes(p_sc) + weight_bytes(p_sc, rm_dtype)
    w_note = (f"policy {p_lm / 1e6:.0f}M + LoRA {p_lora / 1e6:.1f}M、critic {p_sc / 1e6:.0f}M（fp32），"
              f"RM {p_sc / 1e6:.0f}M（{rm_dtype}）")
    opt = Term("optimizer", "优化器状态", adamw_bytes(trainable), "AdamW：LoRA + critic 全参数")
    g = ppo_rollout_logits_bytes(o.ppo_local_batch, o.response_length, m.vocab)
    g_note = f"{o.ppo_local_batch} × {o.response_length} × {m.vocab} × 4 字节（output_scores，整个更新期间保留）"
    gen = [
        Term("weights", "权重", weights, w_note), opt,
        Term("rollout_logits", "rollout logits", 3 * g, "生成结束时 3 份：上一轮未释放 + 堆叠 + pad；每份 " + g_note),
        Term("kv_cache", "KV 缓存", kv_cache_bytes(m, rf, seq), f"{rf} 条 × {seq} token，fp32"),
    ]
    ref = [
        Term("weights", "权重", weights, w_note), opt,
        Term("rollout_logits", "rollout logits", g, g_note),
        Term("logits", "词表 logits", logits_bytes(rf, seq, m.vocab, 4), f"参考模型前向：{rf} × {seq} × {m.vocab} × 4 字节"),
        Term("activations", "激活", hidden_states_bytes(m, rf * seq), "output_hidden_states 的全部隐状态（no_grad）"),
    ]
    tokens = o.batch * seq
    act = 2 * activation_bytes(m, tokens, o.precision, o.gradient_checkpointing, o.gqa_repeat)
    phases = [Phase("rollout 生成", gen), Phase("rollout 参考模型前向", ref)]
    for name, moment in (("训练：前向末尾", FORWARD), ("训练：反向", BACKWARD)):
        k = ppo_train_logits_bytes_per_element(o.precision, o.response_length / seq, moment)
        # critic 全参数（打分头在检查点之外但只有 hidden × 1）；LoRA 权重都在层里；policy 的 lm_head 冻结
        copies = autocast_saved_params(m, moment, o.gradient_checkpointing, lm_head=False, lm_head_trainable=False)
        copies += p_lora if (moment == FORWARD or not o.gradient_checkpointing) else 0
        phases.append(Phase(name, [
            Term("weights", "权重", weights, w_note),
            Term("gradients", "梯度", gradient_bytes(trainable), "4 × (LoRA + critic)"), opt,
            Term("autocast", "bf16 权重副本", autocast_copy_bytes(copies, o.precision),
                 "critic 与 LoRA 的 autocast 副本（policy 基座冻结，不缓存）"),
            Term("rollout_logits", "rollout logits", g, g_note),
            Term("activations", "激活", act, f"policy + critic 各 {o.batch} × {seq} token"),
            Term("logits", "词表 logits", logits_bytes(o.batch, seq, m.vocab, k),
                 f"{o.batch} × {seq} × {m.vocab} × {k:.1f} 字节"),
        ]))
    return StageEstimate(o, phases, _overhead(o))


ESTIMATORS = {"sft": estimate_sft, "rm": estimate_rm, "ppo": estimate_ppo}
STAGE_NAMES = {"sft": "SFT", "rm": "RM", "ppo": "PPO"}


def estimate(m: ModelShape, o: StageOptions) -> StageEstimate:
    return ESTIMATORS[o.stage](m, o)


def fits(m: ModelShape, o: StageOptions, gpu_gb: float) -> bool:
    """峰值估计 ≤ 显卡显存（按 GiB 算：「24 GB」的 4090 实际是 24 GiB，「80 GB」的 A100 是 80 GiB）。"""
    return estimate(m, o).peak <= gpu_gb * GiB


def max_batch(m: ModelShape, o: StageOptions, gpu_gb: float, limit: int = 1 << 16) -> int:
    """放得下的最大每卡批量（SFT：条；RM：对；PPO：per_device_train_batch_size，累积步数等其他选项不变）。
    峰值随批量单调增，先倍增再二分；batch 1 都放不下时返回 0。"""
    if not fits(m, replace(o, batch=1), gpu_gb):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(m, replace(o, batch=hi), gpu_gb):
        lo, hi = hi, hi * 2
    if hi > limit:
        return lo
    while hi - lo > 1:  # fits(lo) 且 not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(m, replace(o, batch=mid), gpu_gb) else (lo, mid)
    return lo


# ====================================================================== 输出


def gib(n: float) -> str:
    return f"{n / GiB:.1f}"


def describe_options(o: StageOptions) -> str:
    gc = "开" if o.gradient_checkpointing else "关"
    prec = "bf16 混合精度" if o.precision == "bf16" else "fp32"
    if o.stage == "sft":
        return f"每卡 {o.batch} 条 × {o.max_length} token，{prec}，梯度检查点{gc}"
    if o.stage == "rm":
        return f"每卡 {o.batch} 对（{2 * o.batch} 条）× {o.max_length} token，{prec}，梯度检查点{gc}"
    return (f"每卡 {o.batch} 条 × 累积 {o.grad_accum}（rollout {o.ppo_local_batch} 条，每次前向 "
            f"{min(o.rollout_batch, o.ppo_local_batch)} 条），提示 {o.prompt_length} + 回复 {o.response_length} token，"
            f"LoRA r{o.lora_r}，{prec}，梯度检查点{gc}")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """对齐的纯文本表格（中文字符按 2 列宽算）。"""
    def width(s: str) -> int:
        return sum(2 if ord(c) > 0x2E7F else 1 for c in s)

    cols = [max(width(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(r):
        return "  ".join(c + " " * (w - width(c)) for c, w in zip(r, cols)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in cols), *map(line, rows)])


def stage_report(m: ModelShape, o: StageOptions, cards: list[float]) -> dict:
    """一个阶段的结果：检查点开 / 关两种估计，以及选定设置下各张卡能否放下、最大批量。"""
    on = estimate(m, replace(o, gradient_checkpointing=True))
    off = estimate(m, replace(o, gradient_checkpointing=False))
    chosen = on if o.gradient_checkpointing else off
    return {
        "stage": o.stage, "options": asdict(o), "description": describe_options(o),
        "estimates": {"gradient_checkpointing_on": on, "gradient_checkpointing_off": off},
        "peak_bytes": chosen.peak, "peak_phase": chosen.peak_phase.name,
        "cards": {str(c): {"fits": chosen.peak <= c * GiB, "max_batch": max_batch(m, o, c)} for c in cards},
    }


def format_stage(r: dict) -> str:
    on, off = r["estimates"]["gradient_checkpointing_on"], r["estimates"]["gradient_checkpointing_off"]
    o = r["options"]
    out = [f"== {STAGE_NAMES[r['stage']]}：{r['description']}"]
    for ph_on, ph_off in zip(on.phases, off.phases):
        rows = [[t.label, gib(t.bytes), gib(u.bytes), t.note] for t, u in zip(ph_on.terms, ph_off.terms)]
        rows.append(["小计", gib(ph_on.total), gib(ph_off.total), ""])
        if len(on.phases) > 1:
            out.append(f"-- 时刻：{ph_on.name}")
        out.append(_table(["项目", "检查点开 (GiB)", "检查点关 (GiB)", "说明"], rows))
    out.append(_table(["项目", "检查点开 (GiB)", "检查点关 (GiB)", "说明"], [
        ["CUDA 上下文/碎片", gib(on.overhead), gib(off.overhead), "估计值（不是算出来的）"],
        ["峰值估计", gib(on.peak), gib(off.peak), f"峰值时刻：{on.peak_phase.name} / {off.peak_phase.name}"],
    ]))
    gc = "开" if o["gradient_checkpointing"] else "关"
    unit = {"sft": "条", "rm": "对", "ppo": "条"}[r["stage"]]
    rows = [[f"{c} GB", "能" if v["fits"] else "不能", f"{v['max_batch']} {unit}"] for c, v in r["cards"].items()]
    out.append(f"按梯度检查点{gc}：")
    out.append(_table(["显卡", "默认批量放得下", "最大每卡批量"], rows))
    return "\n".join(out)


def markdown_table(reports: list[dict], cards: list[float]) -> str:
    """README 用的表：阶段 × （设置、峰值估计、各卡能否放下与最大每卡批量）。"""
    head = ["阶段", "设置", "峰值估计"]
    for c in cards:
        head += [f"{c:g} GB", f"{c:g} GB 最大每卡批量"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in reports:
        row = [STAGE_NAMES[r["stage"]], r["description"], f"{gib(r['peak_bytes'])} GiB"]
        for c in cards:
            v = r["cards"][str(c)]
            row += ["✅ 放得下" if v["fits"] else "❌ 放不下", str(v["max_batch"])]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"估算：`python -m qwen_rlhf.memory --markdown`；含约 {CUDA_OVERHEAD_GIB:g} GiB 的 CUDA 上下文/碎片估计值，"
                 "序列长度按上限算，实际通常更低。")
    return "\n".join(lines)


def to_json(reports: list[dict], m: ModelShape) -> dict:
    def est(e: StageEstimate) -> dict:
        return {"peak_bytes": e.peak, "peak_gib": round(e.peak / GiB, 2), "peak_phase": e.peak_phase.name,
                "overhead_bytes": e.overhead,
                "phases": [{"name": p.name, "total_bytes": p.total,
                            "terms": {t.key: t.bytes for t in p.terms}} for p in e.phases]}

    return {
        "model": {**asdict(m), "causal_lm_params": causal_lm_params(m), "score_model_params": score_model_params(m)},
        "stages": [{**{k: v for k, v in r.items() if k != "estimates"},
                    "peak_gib": round(r["peak_bytes"] / GiB, 2),
                    "gradient_checkpointing_on": est(r["estimates"]["gradient_checkpointing_on"]),
                    "gradient_checkpointing_off": est(r["estimates"]["gradient_checkpointing_off"])}
                   for r in reports],
    }


# ====================================================================== 命令行


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"选项错误：{message}。用 --help 查看所有选项。", EXIT_BAD_INPUT)


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"应为 true 或 false，收到 {s!r}")


def _positive(kind):
    def parse(s: str):
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"必须大于 0，收到 {s}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m qwen_rlhf.memory",
                description="估算 SFT / RM / PPO 各阶段的单卡峰值显存，并给出 24/32/80 GB 显卡上的最大每卡批量。",
                add_help=False)
    p.add_argument("-h", "--help", action="help", help="显示这段帮助并退出")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model_config", help="模型的 config.json（默认：内置的 Qwen3-0.6B 结构）")
    src.add_argument("--tiny", action="store_true", help="用离线演示的迷你 Qwen3 结构")
    p.add_argument("--stage", choices=["sft", "rm", "ppo", "all"], default="all", help="估算哪个阶段（默认 all）")
    p.add_argument("--batch", type=_positive(int),
                   help="每卡批量（per_device_train_batch_size；默认 SFT 4、RM 4 对、PPO 2）")
    p.add_argument("--max_length", type=_positive(int), help="SFT / RM 的最大序列长度（默认 500）")
    p.add_argument("--grad_accum", type=_positive(int),
                   help="梯度累积步数；PPO 里每卡 rollout 条数 = 批量 × 累积（默认 PPO 4）")
    p.add_argument("--rollout_batch", type=_positive(int),
                   help="PPO 的 local_rollout_forward_batch_size：生成和打分一次前向的条数（默认 8）")
    p.add_argument("--response_length", type=_positive(int), help="PPO 的最大回复长度（默认 200）")
    p.add_argument("--prompt_length", type=_positive(int), help="PPO 的提示长度（默认按 64 token 估计）")
    p.add_argument("--lora_r", type=_positive(int), help="PPO 的 LoRA 秩（默认 32，7 个投影层）")
    p.add_argument("--gradient_checkpointing", type=_bool, default=True,
                   help="是否开梯度检查点 true|false（默认 true，和脚本一致）；两种结果都会列出，这个决定最大批量按哪种算")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16",
                   help="bf16 = fp32 主权重 + bf16 autocast（GPU 默认）；fp32 = 全 fp32（和 CPU 实测对比用）")
    p.add_argument("--gpu_gb", type=_positive(float), default=24.0, help="显卡显存（GB，按 GiB 算；默认 24）")
    p.add_argument("--overhead_gb", type=float, default=CUDA_OVERHEAD_GIB,
                   help=f"CUDA 上下文 + 分配器碎片的估计（默认 {CUDA_OVERHEAD_GIB:g}）")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="输出 JSON")
    fmt.add_argument("--markdown", action="store_true", help="输出 README 可粘贴的 markdown 表格")
    p.add_argument("--traceback", action="store_true", help="出错时打印完整 traceback")
    return p


def load_shape(model_config: str | None, tiny: bool) -> ModelShape:
    from . import tiny as tiny_configs

    if tiny:
        return ModelShape.from_config(tiny_configs.TINY)
    if not model_config:
        return ModelShape.from_config(tiny_configs.QWEN3_0_6B)
    path = Path(model_config).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"找不到模型配置文件：{model_config}。", EXIT_BAD_INPUT)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"模型配置不是合法的 JSON：{path}（{e}）。", EXIT_BAD_INPUT) from None
    if not isinstance(cfg, dict):
        raise UserError(f"模型配置应是一个 JSON 对象：{path}。", EXIT_BAD_INPUT)
    return ModelShape.from_config(cfg.get("text_config", cfg))


def options_from_args(stage: str, a: argparse.Namespace) -> StageOptions:
    common = dict(batch=a.batch, grad_accum=a.grad_accum, precision=a.precision,
                  gradient_checkpointing=a.gradient_checkpointing, overhead_gib=a.overhead_gb)
    if stage == "ppo":
        return default_options(stage, **common, rollout_batch=a.rollout_batch, response_length=a.response_length,
                               prompt_length=a.prompt_length, lora_r=a.lora_r)
    return default_options(stage, **common, max_length=a.max_length)


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    if a.overhead_gb < 0:
        raise UserError("--overhead_gb 不能为负数。", EXIT_BAD_INPUT)
    m = load_shape(a.model_config, a.tiny)
    stages = ["sft", "rm", "ppo"] if a.stage == "all" else [a.stage]
    cards = sorted({*CARDS_GB, a.gpu_gb}) if not a.markdown else sorted({24, 80, a.gpu_gb})
    cards = [int(c) if float(c).is_integer() else c for c in cards]
    reports = [stage_report(m, options_from_args(s, a), cards) for s in stages]
    if a.json:
        print(json.dumps(to_json(reports, m), ensure_ascii=False, indent=2))
        return
    if a.markdown:
        print(markdown_table(reports, cards))
        return
    name = "迷你 Qwen3（--tiny）" if a.tiny else (a.model_config or "Qwen3-0.6B")
    print(f"模型：{name}，因果 LM {causal_lm_params(m) / 1e6:.1f}M 参数，打分模型 {score_model_params(m) / 1e6:.1f}M 参数，"
          f"词表 {m.vocab}，{m.layers} 层，hidden {m.hidden}")
    print("单位 GiB；估算值，含约 1 GiB 的 CUDA 上下文/碎片估计；注意力按 SDPA（无 seq² 项）算。\n")
    for r in reports:
        print(format_stage(r))
        print()
    target = str(cards[cards.index(a.gpu_gb)]) if a.gpu_gb in cards else str(a.gpu_gb)
    bad = [STAGE_NAMES[r["stage"]] for r in reports if not r["cards"][target]["fits"]]
    if bad:
        print(f"注意：按当前选项，{'、'.join(bad)} 在 {a.gpu_gb:g} GB 的卡上估计放不下；"
              f"可以减小 --batch / --max_length / --response_length / --rollout_batch，或确认梯度检查点开着。")


if __name__ == "__main__":
    run(lambda: main(sys.argv[1:]), "memory")
