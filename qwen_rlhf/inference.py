"""推理：按名字加载任一阶段的模型（base / sft / ppo / 路径），批量生成。

benchmark.py 和 chat.py 共用这里；RM 打分在 scoring.py（和 PPO 的奖励、RM 训练是同一个约定）。
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from .errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError
from .models import check_weights, load_causal_lm, load_score_model, load_tokenizer, resolve_model_source
from .options import ROOT, display_path, input_path
from .outputs import check_kind, read_json, stage_info
from .stages import STAGES, chat_stages


@dataclass
class Loaded:
    name: str  # 表格里显示的名字
    folder: Path  # 实际加载的文件夹
    model: object
    tokenizer: object


def _path_field(name: str):
    stage = STAGES[name]
    merged = "，优先用其中合并好的 merged/" if stage.adapter else ""
    return (f"{name}_model_path", str, field(default=f"checkpoint/{name}", metadata={
        "help": f"{stage.label}文件夹（{stage.script} 的产物{merged}）；模型名 {name} 用它"}))


# chat.py 和 benchmark.py 共用的"各阶段模型在哪"：登记表里每个能对话的训练阶段一个 --<阶段>_model_path，
# 字段由登记表生成（加一个阶段不用改这里），paths() 给 policy_folder 用
PolicyPaths = make_dataclass(
    "PolicyPaths", [_path_field(n) for n in chat_stages() if STAGES[n].script],
    namespace={"paths": lambda self: {n: getattr(self, f"{n}_model_path") for n in chat_stages() if STAGES[n].script}})


def policy_folder(spec: str, paths: dict[str, str], base_model: str) -> tuple[str, Path, dict | None]:
    """'base' / 'sft' / 'ppo' / 任意文件夹 -> (显示名, 文件夹, stage.json)；先检查是不是能对话的模型（不是 RM）。

    paths：{"sft": --sft_model_path, "ppo": --ppo_model_path}，chat.py 和 benchmark.py 用同样的选项名。
    """
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
    return folder.name, folder, check_kind(folder, chat_stages(), f"模型 {spec}")


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
        from peft import PeftModel

        base = resolve_adapter_base(folder)
        tokenizer = load_tokenizer(base, padding_side="left")
        check_weights(folder, allow_pickle)
        model = PeftModel.from_pretrained(load_causal_lm(base, tokenizer, allow_pickle, dtype), str(folder))
        model = model.merge_and_unload()
    else:
        if not (folder / "config.json").is_file():
            raise UserError(f"{display_path(folder)} 里没有 config.json，不是一个模型文件夹（可能没写完）。", EXIT_MISSING)
        tokenizer = load_tokenizer(folder, padding_side="left")
        model = load_causal_lm(folder, tokenizer, allow_pickle, dtype)
    model.eval()
    return Loaded(name, folder, model, tokenizer)


def load_reward(folder: Path, allow_pickle: bool = False, dtype=None) -> Loaded:
    """奖励模型（先用 check_kind 检查过是 rm）。右填充：分数读在最后一个非填充 token 上（scoring.score）。"""
    tokenizer = load_tokenizer(folder, padding_side="right")
    model = load_score_model(folder, tokenizer, allow_pickle, dtype)
    model.eval()
    return Loaded("rm", folder, model, tokenizer)


def left_pad(tokenizer, rows: list[list[int]]):
    """[(n_i,)] -> input_ids, attention_mask：用分词器自己的填充，左填充到同一长度，生成紧接在提示后面。"""
    batch = tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, do_sample: bool = False,
             **sampling) -> list[list[int]]:
    """批量生成，返回每条回复的 token（截到第一个 <|im_end|>，含它；没停下来的不含）。"""
    import torch

    ids, mask = left_pad(tokenizer, prompts)
    ids, mask = ids.to(model.device), mask.to(model.device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            **({k: v for k, v in sampling.items() if v is not None} if do_sample else {}),
            **({} if do_sample else {"temperature": None, "top_p": None, "top_k": None}),
        )
    responses = []
    for row in out[:, ids.shape[1]:].tolist():
        responses.append(row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else
                         [t for t in row if t != tokenizer.pad_token_id])
    return responses


def response_logprobs(model, tokenizer, prompts: list[list[int]], responses: list[list[int]],
                      batch_size: int = 16) -> list[list[float]]:
    """每条回复每个 token 的 log p(token | 提示 + 之前的回复)，温度 1（模型本来的分布）。右填充，一次一批。"""
    import torch

    out: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        rows = [p + r for p, r in zip(prompts[start:start + batch_size], responses[start:start + batch_size])]
        batch = tokenizer.pad({"input_ids": rows}, padding_side="right", return_tensors="pt")
        ids, mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (批, 长度, 词表)
        # 位置 t 的 logits 预测第 t+1 个 token
        logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()
        for i, (p, r) in enumerate(zip(prompts[start:start + batch_size], responses[start:start + batch_size])):
            out.append(logps[i, len(p) - 1: len(p) - 1 + len(r)].tolist())
    return out


def check_sampling(do_sample: bool, temperature: float, top_p: float, top_k: int) -> None:
    """chat.py 与 benchmark.py 共用的采样参数检查（在加载模型之前）。"""
    if do_sample and not (temperature > 0 and 0 < top_p <= 1 and top_k >= 0):
        raise UserError("采样参数有误：需要 --temperature > 0、0 < --top_p ≤ 1、--top_k ≥ 0；"
                        "想要确定的输出请用 --do_sample false。", EXIT_BAD_INPUT)
