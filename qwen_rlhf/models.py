"""模型：解析模型来源（本地 / ModelScope / Hugging Face），按正确的 dtype、填充方向和停止符加载。"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import EXIT_BAD_INPUT, EXIT_MISSING, EXIT_NETWORK, UserError
from .options import CHECKPOINT_DIR, ROOT, drop_empty_dir, input_path, main_process_first

EOS_TOKEN = "<|im_end|>"  # Qwen3 对话的停止符
PAD_TOKEN = "<|endoftext|>"  # 填充符：绝不能等于停止符，否则 PPO 的掩码会把停止符也盖掉
STAGE_FILE = "stage.json"  # 每个阶段写完才有的文件：选项 + 划分指纹 + 来源
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _looks_like_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.startswith("checkpoint") or name.count("/") != 1


def resolve_model_source(name_or_path: str) -> Path:
    """已存在的本地文件夹原样使用；否则下载到 checkpoint/base/<ID>/：先 ModelScope（国内快），再 Hugging Face。"""
    path = input_path(name_or_path)
    if path.is_dir():
        return path
    if _looks_like_local(name_or_path):
        raise UserError(f"模型文件夹不存在：{name_or_path}。请检查路径，或传模型 ID（例如 Qwen/Qwen3-0.6B）。", EXIT_MISSING)
    target = CHECKPOINT_DIR / "base" / name_or_path.replace("/", "__")
    with main_process_first():  # 多进程：主进程下载，其余进程等它下完直接用已下载的文件夹
        return _download_model(name_or_path, target)


def _download_model(name_or_path: str, target: Path) -> Path:
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target  # 已经下载过
    errors = []
    try:
        from modelscope import snapshot_download as ms_download

        return Path(ms_download(name_or_path, local_dir=str(target)))
    except Exception as e:  # noqa: BLE001  网络 / 不存在，统一报告
        errors.append(f"ModelScope: {type(e).__name__}")
    try:
        from huggingface_hub import snapshot_download as hf_download

        return Path(hf_download(name_or_path, local_dir=str(target)))
    except Exception as e:  # noqa: BLE001
        errors.append(f"Hugging Face: {type(e).__name__}")
    drop_empty_dir(target)
    raise UserError(
        f"无法下载模型 {name_or_path}（{'; '.join(errors)}）。请检查网络（可设 HF_ENDPOINT=https://hf-mirror.com），"
        "或用 --model_name_or_path 指向本地文件夹，或用 --config configs/tiny.yaml 跑离线小模型演示。",
        EXIT_NETWORK,
    )


def check_weights(folder: Path, allow_pickle: bool) -> None:
    """只加载 safetensors：pickle 权重可以在加载时执行任意代码。"""
    if any(folder.glob("*.safetensors")):
        return
    if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
        if allow_pickle:
            return
        raise UserError(
            f"{folder} 里只有 pickle 格式的权重（.bin/.pt），加载它可能执行任意代码。"
            "确认来源可信后加 --allow_pickle true，或先转换成 safetensors。",
            EXIT_BAD_INPUT,
        )
    raise UserError(f"{folder} 里没有模型权重（*.safetensors）。它可能没写完，请重新运行产生它的脚本。", EXIT_MISSING)


def load_tokenizer(folder: Path, padding_side: str = "right"):
    """Qwen3 分词器：eos = <|im_end|>，pad = <|endoftext|>；生成时在左边填充。"""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), padding_side=padding_side, trust_remote_code=False)
    if EOS_TOKEN not in tok.get_vocab():
        raise UserError(f"{folder} 的分词器里没有 {EOS_TOKEN}：这不是 Qwen3 系列的分词器。", EXIT_BAD_INPUT)
    tok.eos_token, tok.pad_token = EOS_TOKEN, PAD_TOKEN
    return tok


def _fix_special_tokens(model, tokenizer) -> None:
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.eos_token_id, gen.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id


def load_causal_lm(folder: Path, tokenizer, allow_pickle: bool = False, dtype=None):
    """因果语言模型。全量训练的模型用 fp32 权重（默认 dtype="auto" 会按 bf16 载入 Qwen3），再用混合精度训练。"""
    import torch
    from transformers import AutoModelForCausalLM

    check_weights(folder, allow_pickle)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype or torch.float32, use_safetensors=not allow_pickle, trust_remote_code=False
    )
    _check_vocab(model, tokenizer, folder)
    _fix_special_tokens(model, tokenizer)
    return model


def load_score_model(folder: Path, tokenizer, allow_pickle: bool = False, dtype=None):
    """打分模型（RM / critic）：骨干 + 线性 score 头（num_labels=1）。从基座加载时 score 头随机初始化。"""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    check_weights(folder, allow_pickle)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # 从基座加载时"score 头是新初始化的"提示是预期内的
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=1, dtype=dtype or torch.float32, use_safetensors=not allow_pickle,
            trust_remote_code=False,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_vocab(model, tokenizer, folder)
    _fix_special_tokens(model, tokenizer)
    return model


def _check_vocab(model, tokenizer, folder: Path) -> None:
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise UserError(
            f"{folder} 的词表（{model.get_input_embeddings().num_embeddings}）比分词器（{len(tokenizer)}）小："
            "模型和分词器不是同一系列。请确认各阶段用的是同一个基座模型。",
            EXIT_MISSING,
        )


# ---------------------------------------------------------------- 阶段产物


def read_stage(folder: Path, expected: str, hint: str) -> dict:
    """读取一个阶段写完的产物；不存在或没写完时，告诉用户先运行哪个脚本。"""
    if not folder.is_dir():
        raise UserError(f"找不到 {_rel(folder)}。请先运行 {hint}。", EXIT_MISSING)
    info_file = folder / STAGE_FILE
    if not info_file.is_file():
        raise UserError(f"{_rel(folder)} 不完整（缺少 {STAGE_FILE}，可能训练中途被打断）。请重新运行 {hint}。", EXIT_MISSING)
    info = json.loads(info_file.read_text(encoding="utf-8"))
    if info.get("stage") != expected:
        raise UserError(
            f"{_rel(folder)} 是 {info.get('stage')} 阶段的产物，这里需要 {expected} 阶段的。请检查路径，或运行 {hint}。",
            EXIT_MISSING,
        )
    return info


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def check_same_family(tokenizer, named_models: dict) -> None:
    """SFT、RM、critic 必须来自同一个基座（同样的结构和词表），否则分数读错位置或直接崩溃。"""
    ref_name, ref = next(iter(named_models.items()))
    for name, m in named_models.items():
        same = (m.config.model_type, m.config.vocab_size) == (ref.config.model_type, ref.config.vocab_size)
        if not same:
            raise UserError(
                f"{name} 模型（{m.config.model_type}，词表 {m.config.vocab_size}）与 {ref_name} 模型"
                f"（{ref.config.model_type}，词表 {ref.config.vocab_size}）不是同一个基座。"
                "请用同一个 --model_name_or_path 重新训练 SFT 和 RM。",
                EXIT_MISSING,
            )
