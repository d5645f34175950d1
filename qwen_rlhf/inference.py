"""推理：按名字加载任一阶段的模型（base / sft / ppo / 路径），批量生成。

benchmark.py 和 chat.py 共用这里；RM 打分在 scoring.py（和 PPO 的奖励、RM 训练是同一个约定）。
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from .errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError
from .models import check_weights, load_causal_lm, load_score_model, load_tokenizer, resolve_model_source
from .paths import ROOT, display_path, input_path
from .outputs import check_kind, read_json, stage_info
from .policy import SNAPSHOTS, snapshots_of
from .sampling import kl_to_reference
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



def is_adapter(folder: Path) -> bool:
    """LoRA 策略的结果或快照：文件夹里是适配器（合并好的完整模型在 merged/ 里，快照没有）。"""
    return (Path(folder) / "adapter_config.json").is_file()


@dataclass
class Candidate:
    """评测中的一个模型：用它生成，再用 kl(提示, 回答, 温度) 算它离 SFT 的精确 KL（每条回答每个位置一个值）；
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

    def __init__(self, sft_folder: Path | None, device: str, allow_pickle: bool = False, batch_size: int = 16):
        self.sft_folder = Path(sft_folder).resolve() if sft_folder else None
        self.device, self.allow_pickle, self.batch_size = device, allow_pickle, batch_size
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
                yield Candidate(name, folder, model, self.tokenizer, self._kl(model, self.tokenizer))
                return
            model, tokenizer = open_adapter(folder, self.allow_pickle)  # 别的 SFT 上训练的：它自己的基座是参考
            model = model.to(self.device).eval()
            yield Candidate(name, folder, model, tokenizer, self._kl(model, tokenizer))
            del model
            return
        loaded = load_policy(name, folder, self.allow_pickle)
        loaded.model.to(self.device)
        reference = self.reference() if self.sft_folder is not None else None
        kl = None if reference is None else self._kl(loaded.model, loaded.tokenizer, reference)
        yield Candidate(name, loaded.folder, loaded.model, loaded.tokenizer, kl)
        loaded.model = None

    def _kl(self, model, tokenizer, reference=None):
        """c.kl(提示, 回答, 温度)：每条回答每个位置的精确 KL，一批 --batch_size 条。"""
        return lambda p, r, temperature=1.0: kl_to_reference(model, tokenizer, p, r, reference, self.batch_size,
                                                             temperature=temperature)

    def close(self) -> None:
        """评测生成完：放掉 SFT 和挂在上面的适配器（再放评委上去）。"""
        self.sft = self.peft = None



def check_sampling(do_sample: bool, temperature: float, top_p: float, top_k: int) -> None:
    """chat.py 与 benchmark.py 共用的采样参数检查（在加载模型之前）。"""
    if do_sample and not (temperature > 0 and 0 < top_p <= 1 and top_k >= 0):
        raise UserError("采样参数有误：需要 --temperature > 0、0 < --top_p ≤ 1、--top_k ≥ 0；"
                        "想要确定的输出请用 --do_sample false。", EXIT_BAD_INPUT)
