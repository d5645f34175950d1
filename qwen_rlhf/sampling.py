"""生成与精确 KL：批量生成（用户自己的 `model.generate` 逐 token 复现得出来）、按训练温度从策略采样、
策略相对参考模型（SFT）在每个位置上对整个词表求和的 KL。

benchmark.py、chat.py 生成给人看、给评委打分的回答，走 torch 原本的采样（torch.multinomial），同样的种子、同样的解码、
同样的分批，纯 transformers 脚本得到一模一样的回答；只有没人拿来对照的采样（训练时的 rollout、估计 KL 用的样本）用
fast_cpu_sampling。
"""

from __future__ import annotations

import contextlib
import threading


@contextlib.contextmanager
def generating(model):
    """训练中采样回答（PPO 的 rollout、GRPO / RLOO 的一组回答）：把 model 里还在 train 模式的解码层临时切到 eval，
    并用 fast_cpu_sampling。

    训练器在 train 模式下 generate；开了梯度检查点时 transformers 的 GradientCheckpointingLayer 在 train 模式下丢掉
    past_key_values（huggingface/transformers#38913，PPO 里的症状见 huggingface/trl#3683）：从第二个 token 起就看不到
    上文。只切解码层（不切整个模型）：TRL 的 GRPO / RLOO 按 model.training 决定这批指标记在 train 还是 eval 下；Qwen3
    层外没有随模式变化的东西，所以和切整个模型一样。层里的 LoRA dropout 也随之关掉，和 vLLM 生成时一样。"""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.training]
    for layer in layers:
        layer.eval()
    try:
        with fast_cpu_sampling():  # CPU 上 torch.multinomial 很慢，见下
            yield
    finally:
        for layer in layers:
            layer.train()


@contextlib.contextmanager
def fast_cpu_sampling():
    """with 块里、只在进入它的线程里，把 CPU 上"每行抽一个"的 torch.multinomial(probs, 1) 换成逆 CDF 抽样。

    torch.multinomial 在 CPU 上用指数技巧 argmax(p / Exp(1))：每行对整个词表（Qwen3 15 万）各抽一个指数随机数，
    一行约 3 毫秒，迷你模型的 PPO 约三成时间花在这里。逆 CDF 每行只要一个均匀随机数、快约 50 倍，分布完全相同，
    但**随机数流不同**：同样的种子抽出的是另一串 token。所以只用在没人拿来对照的采样上（训练 rollout、KL 估计的样本），
    benchmark 和 chat 给人看的回答不用它。随机数仍取自 torch 的全局发生器（同样的种子给同样的训练）。
    torch 自己的检查照旧：有 NaN / inf / 负数的行、全是 0 的行交给 torch.multinomial，由它报它自己的错。"""
    import torch

    original = torch.multinomial
    owner = threading.get_ident()

    def valid(input) -> bool:  # torch.multinomial 自己查的：没有 NaN、inf、负数。aminmax 一遍读完（NaN 时两个都是 NaN，
        lo, hi = torch.aminmax(input)  # 比较都是 False）；逐元素比较再 all() 要多读写几遍整个词表，每步约 5 毫秒
        return bool(lo >= 0) and bool(hi < float("inf"))

    def multinomial(input, num_samples, replacement=False, *, generator=None, **kwargs):
        if (threading.get_ident() != owner or input.device.type != "cpu" or num_samples != 1 or input.dim() != 2
                or kwargs or not valid(input)):
            return original(input, num_samples, replacement, generator=generator, **kwargs)
        cdf = input.float().cumsum(-1)  # (批, 词表)；和 torch.multinomial 自己一样在 fp32 里累加
        if not bool((cdf[:, -1] > 0).all()):  # 整行都是 0：torch 报"概率之和 <= 0"，交给它
            return original(input, num_samples, replacement, generator=generator, **kwargs)
        u = torch.rand(input.shape[0], 1, generator=generator) * cdf[:, -1:]
        # 第一个累加值 > u 的位置：概率为 0 的 token（top-k / top-p 滤掉的）累加值不增加，永远抽不到
        return torch.searchsorted(cdf, u, right=True).clamp_max_(input.shape[-1] - 1)

    torch.multinomial = multinomial
    try:
        yield
    finally:
        torch.multinomial = original


def left_pad(tokenizer, rows: list[list[int]]):
    """[(n_i,)] -> input_ids, attention_mask：用分词器自己的填充，左填充到同一长度，生成紧接在提示后面。"""
    batch = tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


class TopKTopP:
    """采样前对 logits 依次做温度、top-k、top-p（nucleus），和 transformers 自己的三个 warper 同样的算法、同样的顺序，
    只是 top-p 只在 top-k 留下的 k 个 token 里排序。

    transformers 的 TopPLogitsWarper 每一步都把整个词表排一次序（Qwen3 15 万个，其中 top-k 之后只有 k 个不是 -inf）：
    CPU 上迷你模型的评测有四成时间花在这次排序上。-inf 的那些 softmax 后本来就是 0，交给采样的概率和 transformers 的
    一样（同样的种子给同样的回答，tests/test_benchmark.py 核对）。transformers 把用户给的 logits_processor 排在它自己的
    warper 前面，所以三步都在这里做，交给 generate 的 temperature / top_k / top_p 设成不起作用的值。"""

    def __init__(self, temperature: float, top_k: int, top_p: float):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids, scores):
        import torch

        kept, index = (scores / self.temperature).topk(min(self.top_k, scores.shape[-1]), dim=-1)  # (批, k)，降序
        kept, index = kept.flip(-1), index.flip(-1)  # 升序，和 transformers 的排序方向一样
        remove = kept.softmax(dim=-1).cumsum(dim=-1) <= (1 - self.top_p)
        remove[..., -1:] = False  # 至少留一个（min_tokens_to_keep=1）
        out = torch.full_like(scores, -float("inf"))
        return out.scatter(-1, index, kept.masked_fill(remove, -float("inf")))


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, do_sample: bool = False,
             fast_sampling: bool = False, **sampling) -> list[list[int]]:
    """一批生成，返回每条回复的 token（截到第一个 <|im_end|>，含它；没停下来的不含）。

    fast_sampling=False（默认）：torch 原本的采样，和用户自己用同样的种子、同样的分批调用 model.generate 逐 token
    相同；True：fast_cpu_sampling（只给没人对照的采样）。"""
    import torch

    ids, mask = left_pad(tokenizer, prompts)
    ids, mask = ids.to(model.device), mask.to(model.device)
    sampling = {k: v for k, v in sampling.items() if v is not None} if do_sample else {}
    processors = []
    if sampling.get("top_k") and sampling.get("top_p", 1.0) < 1.0:  # top-p 只在 top-k 留下的里面做（见 TopKTopP）
        processors = [TopKTopP(sampling.get("temperature", 1.0), sampling["top_k"], sampling["top_p"])]
        sampling.update(temperature=1.0, top_k=0, top_p=1.0)
    with torch.no_grad(), (fast_cpu_sampling() if fast_sampling else contextlib.nullcontext()):
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, logits_processor=processors,
            **sampling, **({} if do_sample else {"temperature": None, "top_p": None, "top_k": None}),
        )
    responses = []
    for row in out[:, ids.shape[1]:].tolist():
        responses.append(row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else
                         [t for t in row if t != tokenizer.pad_token_id])
    return responses


def policy_samples(model, tokenizer, prompts: list[list[int]], per_prompt: int, temperature: float,
                   max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """从策略本身按训练时的温度采样（不做 top-k / top-p：训练约束的正是这个分布）：每个提示 per_prompt 个回答，
    按 [提示 0 的第 1 个, 提示 0 的第 2 个, …, 提示 1 的第 1 个, …] 排列。估计序列 KL 用，没人拿它和别的脚本对照，
    用快的抽样（fast_cpu_sampling）。调用者先播种。"""
    rows = [p for p in prompts for _ in range(per_prompt)]
    out = []
    for start in range(0, len(rows), batch_size):
        out += generate(model, tokenizer, rows[start:start + batch_size], max_new_tokens, do_sample=True,
                        fast_sampling=True, temperature=temperature, top_k=0, top_p=1.0)
    return out


# 精确 KL 一次算多少个位置：每个位置一行词表大小（Qwen3 15 万）的 fp32，约 0.6 MB；64 MB 的块约 110 个位置
KL_CHUNK_BYTES = 64 * 2**20


def split_lm(model):
    """(解码器, lm_head)：先只算隐藏状态（批 × 长度 × hidden，小），再按位置分块乘 lm_head，
    完整的 (批 × 长度 × 词表) logits 从不出现。peft 模型取它包着的基座（LoRA 层已注入其中，disable_adapter 照样生效）。
    Qwen3 的 forward 在 lm_head 之后不再改 logits（没有 softcap），所以分块算出的和 model(...).logits 相同。"""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def reference_of(model, reference):
    """参考分布（SFT）怎么来：(参考模型, 进入参考状态的上下文工厂)。没给 reference 时 model 必须是 peft 的 LoRA 模型，
    参考 = 同一个模型关掉适配器（内存里只有一份）；给了就用它（完整模型的评测：SFT 单独加载在旁边），它若挂着适配器
    也一样关掉。"""
    ref = model if reference is None else reference
    if hasattr(ref, "disable_adapter"):
        return ref, ref.disable_adapter  # 每批进入一次：peft 的上下文管理器只能用一次
    if reference is None:
        raise ValueError("reference is required for a model without a LoRA adapter")
    return ref, contextlib.nullcontext


def compare_to_reference(model, tokenizer, prompts: list[list[int]], responses: list[list[int]], reference=None,
                         batch_size: int = 16, chunk_bytes: int = KL_CHUNK_BYTES, kl: bool = True,
                         temperature: float = 1.0, ratio: bool = True) -> tuple[list, list]:
    """模型和参考（SFT）在每条回答每个位置上的两个量，一遍算完：
    - 精确 KL(模型_T ‖ 参考_T)：Σ_v π_T(v|x,y<t) (log π_T(v|x,y<t) − log π_ref,T(v|x,y<t))，两个分布都按 temperature
      缩放 logits（训练时 rollout 的温度），对整个词表求和、不靠采样——所以不会是负数，也没有 k1 / k3 估计的采样噪声
      （J. Schulman, "Approximating KL Divergence", 2020）；
    - 回答里那个 token 的 log π(y_t) − log π_ref(y_t)（温度 1；DPO 的隐式奖励 = β × 它们的和）。
    位置 = 预测回答里每个 token 的那些位置（含 <|im_end|>）。返回 (kl, log_ratio)，每条回答一个列表；kl=False 时
    不算 KL（只要 log_ratio 的 DPO 诊断省掉对整个词表的那次求和），第一个是空列表；ratio=False 时不算 log_ratio
    （只要 KL 的评测省掉两次 logsumexp），第二个是空列表。

    一批 batch_size 条：模型和参考各跑一遍解码器（不建 KV 缓存：一次前向用不着它，Qwen3-0.6B 上一批要多占约 1 GB），
    只取回答位置的隐藏状态，再按 chunk_bytes 分块乘 lm_head、在 fp32 里 log_softmax：完整的 (批 × 长度 × 词表)
    logits 从不出现。"""
    import torch

    ref_model, disabled = reference_of(model, reference)
    decoder, head = split_lm(model)
    ref_decoder, ref_head = split_lm(ref_model)
    chunk = max(1, chunk_bytes // (4 * head.weight.shape[0]))
    want_kl, want_ratio = kl, ratio
    kl_out: list[list[float]] = []
    ratio_out: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        ps, rs = prompts[start:start + batch_size], responses[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [p + r for p, r in zip(ps, rs)]}, padding_side="right", return_tensors="pt")
        ids, mask = batch["input_ids"].to(head.weight.device), batch["attention_mask"].to(head.weight.device)
        # 位置 t 的输出预测第 t+1 个 token：回答 r 的 token 由位置 len(p)-1 … len(p)+len(r)-2 预测
        rows = torch.tensor([i for i, (p, r) in enumerate(zip(ps, rs)) for _ in r], dtype=torch.long)
        cols = torch.tensor([len(p) - 1 + j for p, r in zip(ps, rs) for j in range(len(r))], dtype=torch.long)
        targets = torch.tensor([t for r in rs for t in r], dtype=torch.long, device=ids.device)
        kl, ratio = [], []
        with torch.no_grad():
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[rows, cols]
            with disabled():
                ref_hidden = ref_decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[rows, cols]
            for s in range(0, len(rows), chunk):
                logits, ref_logits = head(hidden[s:s + chunk]).float(), ref_head(ref_hidden[s:s + chunk]).float()
                if want_ratio:
                    t = targets[s:s + chunk, None]  # 给定 token 的 log 概率（温度 1）= logit − logsumexp
                    ratio.append((logits.gather(-1, t) - logits.logsumexp(-1, keepdim=True)
                                  - ref_logits.gather(-1, t) + ref_logits.logsumexp(-1, keepdim=True))[:, 0])
                if want_kl:  # (块, 词表) 的 log 概率，温度 T；原地除、原地减：每块少分配、少读写几遍整个词表
                    lp = torch.log_softmax(logits.div_(temperature), -1)
                    lq = torch.log_softmax(ref_logits.div_(temperature), -1)
                    kl.append(torch.linalg.vecdot(lp.exp(), lp.sub_(lq)))  # Σ_v p (log p − log q)
        # 数学上 KL 的每一项都 ≥ 0；两个分布几乎相同时 fp32 的舍入可能给出 -1e-9 这样的值
        kl = torch.cat(kl).clamp_min(0).cpu().tolist() if kl else []
        ratio = torch.cat(ratio).cpu().tolist() if ratio else []
        for r in rs:
            if want_kl:
                kl_out.append(kl[:len(r)])
                kl = kl[len(r):]
            if want_ratio:
                ratio_out.append(ratio[:len(r)])
                ratio = ratio[len(r):]
    return kl_out, ratio_out


def kl_to_reference(model, tokenizer, prompts: list[list[int]], responses: list[list[int]], reference=None,
                    batch_size: int = 16, chunk_bytes: int = KL_CHUNK_BYTES, temperature: float = 1.0) -> list[list[float]]:
    """每条回答每个位置上的精确 KL(模型_T ‖ 参考_T)（见 compare_to_reference）。"""
    return compare_to_reference(model, tokenizer, prompts, responses, reference, batch_size, chunk_bytes,
                                temperature=temperature, ratio=False)[0]
