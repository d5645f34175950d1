"""推理：按名字加载任一阶段的模型（base / sft / ppo / 路径），批量生成。

benchmark.py 和 chat.py 共用这里；RM 打分在 scoring.py（和 PPO 的奖励、RM 训练是同一个约定）。
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from .errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError
from .models import check_weights, load_causal_lm, load_score_model, load_tokenizer, resolve_model_source
from .options import ROOT, display_path, input_path
from .outputs import check_kind, read_json, stage_info
from .policy import SNAPSHOTS, snapshots_of
from .stages import STAGES, chat_stages


@dataclass
class Loaded:
    name: str  # 表格里显示的名字
    folder: Path  # 实际加载的文件夹
    model: object
    tokenizer: object


def _path_field(name: str):
    stage = STAGES[name]
    merged = "；对话优先用其中合并好的 merged/，评测把适配器挂在 SFT 上（好算离 SFT 的 KL）" if stage.adapter else ""
    return (f"{name}_model_path", str, field(default=f"checkpoint/{name}", metadata={
        "help": f"{stage.label}文件夹（{stage.script} 的产物{merged}）；模型名 {name} 用它"}))


# chat.py 和 benchmark.py 共用的"各阶段模型在哪"：登记表里每个能对话的训练阶段一个 --<阶段>_model_path，
# 字段由登记表生成（加一个阶段不用改这里），paths() 给 policy_folder 用
PolicyPaths = make_dataclass(
    "PolicyPaths", [_path_field(n) for n in chat_stages() if STAGES[n].script],
    namespace={"paths": lambda self: {n: getattr(self, f"{n}_model_path") for n in chat_stages() if STAGES[n].script}})


def policy_folder(spec: str, paths: dict[str, str], base_model: str) -> tuple[str, Path, dict | None]:
    """'base' / 'sft' / 'ppo' / 'ppo@step-50'（快照）/ 任意文件夹 -> (显示名, 文件夹, stage.json)；
    先检查是不是能对话的模型（不是 RM）。

    paths：{"sft": --sft_model_path, "ppo": --ppo_model_path}，chat.py 和 benchmark.py 用同样的选项名。
    """
    if "@" in spec:  # <阶段或结果文件夹>@step-N：训练中存下的快照
        head, _, step = spec.rpartition("@")
        name, parent, _ = policy_folder(head, paths, base_model)
        # 只认 snapshots/ 里直接的、写完了的 step-N：名字不拼进路径（ppo@../../sft 会走出 snapshots/，冒充快照加载别的模型）
        found = {p.name: p for p in snapshots_of(parent)}
        folder = found.get(step)
        if folder is None:
            have = list(found)
            raise UserError(f"{display_path(parent)} 里没有快照 {step}；"
                            + (f"有：{'、'.join(have)}。" if have else "这次训练没有存快照（训练时快照数为 0，或训练早于快照功能）。"),
                            EXIT_MISSING)
        return f"{name}@{step}", folder, check_kind(folder, chat_stages(), f"模型 {spec}")
    if spec == "base":
        folder = resolve_model_source(base_model)  # 本地文件夹的种类已在这里检查过（基座或 SFT）
        return "base", folder, stage_info(folder)
    if spec in paths:
        folder = input_path(paths[spec])
        return spec, folder, check_kind(folder, (spec,), f"--{spec}_model_path")
    if spec in STAGES:  # 例如 rm：不是对话模型
        raise UserError(f"{STAGES[spec].label}不能用来生成回答；可用 {' / '.join(chat_stages())}，或一个本地模型文件夹。",
                        EXIT_BAD_INPUT)
    folder = input_path(spec)
    info = check_kind(folder, chat_stages(), f"模型 {spec}")
    # 直接给的快照文件夹（…/grpo-seed1/snapshots/step-4）：名字里带上它属于哪次训练
    name = f"{folder.parent.parent.name}@{folder.name}" if folder.parent.name == SNAPSHOTS else folder.name
    return name, folder, info


def resolve_adapter_base(folder: Path) -> Path:
    """PPO 适配器的基座（SFT 模型）：先按 stage.json 里相对适配器文件夹的路径找（整个 checkpoint/ 拷走也成立），
    再试 adapter_config 里的路径（绝对路径，或相对放 checkpoint/ 的文件夹：见 policy.adapter_base_path），最后按仓库相对路径。"""
    config = read_json(folder / "adapter_config.json", f"请重新运行 python train_ppo.py，或改用合并好的完整模型 "
                       f"{display_path(folder / 'merged')}")
    info = stage_info(folder) or {}
    written = config.get("base_model_name_or_path") or ""
    candidates = [folder / info["sft_path_from_adapter"]] if info.get("sft_path_from_adapter") else []
    if written:
        candidates += [Path(written)] if Path(written).is_absolute() else [Path.cwd() / written, ROOT / written]
    if info.get("sft_path_in_repo"):
        candidates.append(ROOT / info["sft_path_in_repo"])
    for c in candidates:
        if (c / "config.json").is_file():
            return c.resolve()
    raise UserError(
        f"{display_path(folder)} 的基座模型（SFT）找不到了：{written}。把 SFT 模型放回原处，"
        "或使用合并好的完整模型 " + display_path(folder / "merged") + "。",
        EXIT_MISSING,
    )


def load_policy(name: str, folder: Path, allow_pickle: bool = False, dtype=None) -> Loaded:
    """加载可对话的模型（先用 policy_folder 检查过）。PPO 文件夹优先用合并好的 merged/，否则 SFT + 适配器现场合并。
    分词器左填充。"""
    if (folder / "merged" / "config.json").is_file():
        folder = folder / "merged"
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        model, tokenizer = open_adapter(folder, allow_pickle, dtype)
        model = model.merge_and_unload()
    else:
        if not (folder / "config.json").is_file():
            raise UserError(f"{display_path(folder)} 里没有 config.json，不是一个模型文件夹（可能没写完）。", EXIT_MISSING)
        tokenizer = load_tokenizer(folder, padding_side="left")
        model = load_causal_lm(folder, tokenizer, allow_pickle, dtype)
    model.eval()
    return Loaded(name, folder, model, tokenizer)


def tokenizer_folder(folder: Path) -> Path:
    """评测生成时用的分词器在哪（和 Policies.use 读的同一个）：适配器（结果或快照）用它的 SFT 基座的，完整模型用它自己的。"""
    return resolve_adapter_base(folder) if is_adapter(folder) else Path(folder)


def open_adapter(folder: Path, allow_pickle: bool = False, dtype=None):
    """适配器文件夹（结果或快照）-> (peft 模型 = 它的 SFT 基座 + 这个适配器，分词器)；基座按 resolve_adapter_base 找。
    没有合并：关掉适配器就是它自己的 SFT。"""
    from peft import PeftModel

    base = resolve_adapter_base(folder)
    tokenizer = load_tokenizer(base, padding_side="left")
    check_weights(folder, allow_pickle)
    return PeftModel.from_pretrained(load_causal_lm(base, tokenizer, allow_pickle, dtype), str(folder)), tokenizer


def load_reward(folder: Path, allow_pickle: bool = False, dtype=None) -> Loaded:
    """奖励模型（先用 check_kind 检查过是 rm）。右填充：分数读在最后一个非填充 token 上（scoring.score）。"""
    tokenizer = load_tokenizer(folder, padding_side="right")
    model = load_score_model(folder, tokenizer, allow_pickle, dtype)
    model.eval()
    return Loaded("rm", folder, model, tokenizer)


@contextlib.contextmanager
def fast_cpu_sampling():
    """生成时（transformers 的采样每个 token 调用一次 torch.multinomial(probs, 1)）把 CPU 上的这一步换成等价的逆 CDF 抽样。

    torch.multinomial 在 CPU 上对 15 万词表的一行要几十毫秒（先整行归一化、累加，再抽；见 pytorch/pytorch#43115 里对
    实现的说明），迷你模型的 PPO 约三成时间花在这里。累加概率后用一个均匀随机数 searchsorted，分布完全相同、
    快约 50 倍，随机数仍取自 torch 的全局发生器（同样的种子给同样的结果）。只换"CPU 张量、每行抽一个"这一种调用，
    GPU 和其他用法原样交给 torch。"""
    import torch

    original = torch.multinomial

    def multinomial(input, num_samples, replacement=False, *, generator=None, **kwargs):
        if input.device.type != "cpu" or num_samples != 1 or input.dim() != 2 or kwargs:
            return original(input, num_samples, replacement, generator=generator, **kwargs)
        cdf = input.float().cumsum(-1)  # (批, 词表)；和 torch.multinomial 自己一样在 fp32 里累加
        u = torch.rand(input.shape[0], 1, generator=generator) * cdf[:, -1:]
        # 第一个累加值 > u 的位置：概率为 0 的 token（top-k / top-p 滤掉的）累加值不增加，永远抽不到
        return torch.searchsorted(cdf, u, right=True).clamp_max_(input.shape[-1] - 1)

    torch.multinomial = multinomial
    try:
        yield
    finally:
        torch.multinomial = original


def is_adapter(folder: Path) -> bool:
    """LoRA 策略的结果或快照：文件夹里是适配器（合并好的完整模型在 merged/ 里，快照没有）。"""
    return (Path(folder) / "adapter_config.json").is_file()


@dataclass
class Candidate:
    """评测中的一个模型：用它生成，再用 kl(提示, 回答) 算它离 SFT 的精确 KL（每条回答每个位置一个值）；
    kl 为 None：它就是 SFT 本身（KL 为 0），或者没有 SFT 可比。"""

    name: str
    folder: Path
    model: object
    tokenizer: object
    kl: object = None


class Policies:
    """benchmark 依次评测的模型，放在同一个设备上。SFT 只加载一次，是所有模型的 KL 参考：
    - LoRA 阶段和它们的快照：适配器挂在这份 SFT 上（peft 的 load_adapter），参考 = 关掉适配器，内存里只有一份模型；
      换下一个适配器时删掉上一个。基座不是这份 SFT 的适配器（别的 SFT 训练的）：连同它自己的基座单独加载，参考 = 它自己
      关掉适配器。
    - 完整模型（base、别的本地文件夹）：单独加载在 SFT 旁边，用完就释放。"""

    def __init__(self, sft_folder: Path | None, device: str, allow_pickle: bool = False):
        self.sft_folder = Path(sft_folder).resolve() if sft_folder else None
        self.device, self.allow_pickle = device, allow_pickle
        self.sft = self.peft = self.tokenizer = None
        self.adapters = 0

    def reference(self):
        """SFT（需要时才加载）；挂过适配器后是那个 peft 模型（kl_to_reference 会关掉它的适配器）。"""
        if self.sft is None:
            self.tokenizer = load_tokenizer(self.sft_folder, padding_side="left")
            self.sft = load_causal_lm(self.sft_folder, self.tokenizer, self.allow_pickle).to(self.device).eval()
        return self.peft or self.sft

    def attach(self, folder: Path):
        """把 folder 的适配器挂到 SFT 上并设为当前的；上一个适配器删掉。"""
        from peft import PeftModel

        check_weights(folder, self.allow_pickle)
        self.adapters += 1
        name, previous = f"m{self.adapters}", self.peft.active_adapter if self.peft is not None else None
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.reference(), str(folder), adapter_name=name)
        else:
            self.peft.load_adapter(str(folder), adapter_name=name)
            self.peft.set_adapter(name)
            self.peft.delete_adapter(previous)
        return self.peft.to(self.device).eval()

    @contextlib.contextmanager
    def use(self, name: str, folder: Path):
        """with policies.use(名字, 文件夹) as c：c.model 生成、c.kl 算 KL。"""
        folder = Path(folder)
        if self.sft_folder is not None and folder.resolve() == self.sft_folder:
            model = self.reference()
            with (self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()):
                yield Candidate(name, folder, model, self.tokenizer)
            return
        if is_adapter(folder):
            base = resolve_adapter_base(folder)
            if base == self.sft_folder:
                model = self.attach(folder)
                yield Candidate(name, folder, model, self.tokenizer,
                                lambda p, r: kl_to_reference(model, self.tokenizer, p, r))
                return
            model, tokenizer = open_adapter(folder, self.allow_pickle)  # 别的 SFT 上训练的：它自己的基座是参考
            model = model.to(self.device).eval()
            yield Candidate(name, folder, model, tokenizer, lambda p, r: kl_to_reference(model, tokenizer, p, r))
            del model
            return
        loaded = load_policy(name, folder, self.allow_pickle)
        loaded.model.to(self.device)
        reference = self.reference() if self.sft_folder is not None else None
        kl = None if reference is None else (
            lambda p, r: kl_to_reference(loaded.model, loaded.tokenizer, p, r, reference=reference))
        yield Candidate(name, loaded.folder, loaded.model, loaded.tokenizer, kl)
        loaded.model = None

    def close(self) -> None:
        """评测生成完：放掉 SFT 和挂在上面的适配器（再放评委上去）。"""
        self.sft = self.peft = None


def left_pad(tokenizer, rows: list[list[int]]):
    """[(n_i,)] -> input_ids, attention_mask：用分词器自己的填充，左填充到同一长度，生成紧接在提示后面。"""
    batch = tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


class TopKTopP:
    """采样前对 logits 依次做温度、top-k、top-p（nucleus），和 transformers 自己的三个 warper 同样的算法、同样的顺序，
    只是 top-p 只在 top-k 留下的 k 个 token 里排序。

    transformers 的 TopPLogitsWarper 每一步都把整个词表排一次序（Qwen3 15 万个，其中 top-k 之后只有 k 个不是 -inf）：
    CPU 上迷你模型的评测有四成时间花在这次排序上。-inf 的那些 softmax 后本来就是 0，结果和 transformers 的一样
    （同样的种子给同样的回答，tests/test_benchmark.py 核对）。transformers 把用户给的 logits_processor 排在它自己的 warper
    前面，所以三步都在这里做，交给 generate 的 temperature / top_k / top_p 设成不起作用的值。"""

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
             **sampling) -> list[list[int]]:
    """批量生成，返回每条回复的 token（截到第一个 <|im_end|>，含它；没停下来的不含）。"""
    import torch

    ids, mask = left_pad(tokenizer, prompts)
    ids, mask = ids.to(model.device), mask.to(model.device)
    sampling = {k: v for k, v in sampling.items() if v is not None} if do_sample else {}
    processors = []
    if sampling.get("top_k") and sampling.get("top_p", 1.0) < 1.0:  # top-p 只在 top-k 留下的里面做（见 TopKTopP）
        processors = [TopKTopP(sampling.get("temperature", 1.0), sampling["top_k"], sampling["top_p"])]
        sampling.update(temperature=1.0, top_k=0, top_p=1.0)
    with torch.no_grad(), fast_cpu_sampling():
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
                         batch_size: int = 16, chunk_bytes: int = KL_CHUNK_BYTES, kl: bool = True) -> tuple[list, list]:
    """模型和参考（SFT）在每条回答每个位置上的两个量，一遍算完：
    - 精确 KL(模型 ‖ 参考)：Σ_v π(v|x,y<t) (log π(v|x,y<t) − log π_ref(v|x,y<t))，温度 1，对整个词表求和，不靠采样——
      所以不会是负数（和 TRL PPO 在采样 token 上记的 k1 估计不同，见 J. Schulman, "Approximating KL Divergence", 2020）；
    - 回答里那个 token 的 log π(y_t) − log π_ref(y_t)（DPO 的隐式奖励 = β × 它们的和）。
    位置 = 预测回答里每个 token 的那些位置（含 <|im_end|>）。返回 (kl, log_ratio)，每条回答一个列表；kl=False 时
    不算 KL（只要 log_ratio 的 DPO 诊断省掉对整个词表的那次求和），第一个是空列表。

    一批一次：模型和参考各跑一遍解码器（参考 = 关掉 LoRA，或旁边的 SFT），只取回答位置的隐藏状态，再按 chunk_bytes
    分块乘 lm_head、在 fp32 里 log_softmax：任何时刻最大的 fp32 张量是 (块里的位置数 × 词表)，完整的
    (批 × 长度 × 词表) logits 从不出现。"""
    import torch

    ref_model, disabled = reference_of(model, reference)
    decoder, head = split_lm(model)
    ref_decoder, ref_head = split_lm(ref_model)
    chunk = max(1, chunk_bytes // (4 * head.weight.shape[0]))
    want_kl = kl
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
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[rows, cols]  # (位置数, hidden)
            with disabled():
                ref_hidden = ref_decoder(input_ids=ids, attention_mask=mask).last_hidden_state[rows, cols]
            for s in range(0, len(rows), chunk):
                lp = torch.log_softmax(head(hidden[s:s + chunk]).float(), -1)  # (块, 词表)
                lq = torch.log_softmax(ref_head(ref_hidden[s:s + chunk]).float(), -1)
                if want_kl:
                    kl.append(torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1))
                t = targets[s:s + chunk, None]
                ratio.append((lp.gather(-1, t) - lq.gather(-1, t))[:, 0])
        # 数学上 KL 的每一项都 ≥ 0；两个分布几乎相同时 fp32 的舍入可能给出 -1e-9 这样的值
        kl = torch.cat(kl).clamp_min(0).cpu().tolist() if kl else []
        ratio = torch.cat(ratio).cpu().tolist() if ratio else []
        for r in rs:
            if want_kl:
                kl_out.append(kl[:len(r)])
                kl = kl[len(r):]
            ratio_out.append(ratio[:len(r)])
            ratio = ratio[len(r):]
    return kl_out, ratio_out


def kl_to_reference(model, tokenizer, prompts: list[list[int]], responses: list[list[int]], reference=None,
                    batch_size: int = 16, chunk_bytes: int = KL_CHUNK_BYTES) -> list[list[float]]:
    """每条回答每个位置上的精确 KL(模型 ‖ 参考)（见 compare_to_reference）。"""
    return compare_to_reference(model, tokenizer, prompts, responses, reference, batch_size, chunk_bytes)[0]


def check_sampling(do_sample: bool, temperature: float, top_p: float, top_k: int) -> None:
    """chat.py 与 benchmark.py 共用的采样参数检查（在加载模型之前）。"""
    if do_sample and not (temperature > 0 and 0 < top_p <= 1 and top_k >= 0):
        raise UserError("采样参数有误：需要 --temperature > 0、0 < --top_p ≤ 1、--top_k ≥ 0；"
                        "想要确定的输出请用 --do_sample false。", EXIT_BAD_INPUT)
