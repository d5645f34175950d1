"""模型：解析模型来源（本地 / ModelScope / Hugging Face），按正确的 dtype、填充方向和停止符加载。"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import EXIT_BAD_INPUT, EXIT_MISSING, EXIT_NETWORK, UserError
from .options import main_process_first
from .outputs import check_kind
from .paths import CHECKPOINT_DIR, display_path, drop_empty_dir, input_path, looks_like_local

EOS_TOKEN = "<|im_end|>"  # Qwen3 对话的停止符
PAD_TOKEN = "<|endoftext|>"  # 填充符：绝不能等于停止符，否则 PPO 的掩码会把停止符也盖掉
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def resolve_model_source(name_or_path: str) -> Path:
    """已存在的本地文件夹原样使用；否则下载到 checkpoint/base/<ID>/：先 ModelScope（国内快），再 Hugging Face。"""
    path = input_path(name_or_path)
    if path.is_dir():
        check_kind(path, ("base", "sft"), "--model_name_or_path")  # 基座可以是下载的 Qwen3，也可以是 SFT 模型
        return path
    if looks_like_local(name_or_path):
        raise UserError(f"模型文件夹不存在：{name_or_path}。请检查路径，或传模型 ID（例如 Qwen/Qwen3-0.6B）。", EXIT_MISSING)
    target = CHECKPOINT_DIR / "base" / name_or_path.replace("/", "__")
    with main_process_first():  # 多进程：主进程下载，其余进程等它下完直接用已下载的文件夹
        return _download_model(name_or_path, target)


def _download_model(name: str, target: Path) -> Path:
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target  # 已经下载过
    return hub_download(name, target, what="模型", hint="或用 --model_name_or_path 指向本地文件夹")


def hub_download(name: str, target: Path, what: str, hint: str, dataset: bool = False, hf_name: str | None = None) -> Path:
    """模型和数据集共用的下载：先 ModelScope（国内快），失败再 Hugging Face；都失败时删掉留下的空文件夹，报一行。"""
    errors = []
    try:
        from modelscope import dataset_snapshot_download, snapshot_download

        ms = dataset_snapshot_download if dataset else snapshot_download
        return Path(ms(name, local_dir=str(target)))
    except Exception as e:  # noqa: BLE001  网络 / 不存在 / 权限，统一报告
        errors.append(f"ModelScope: {type(e).__name__}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hf_name or name, repo_type="dataset" if dataset else None, local_dir=str(target)))
    except Exception as e:  # noqa: BLE001
        errors.append(f"Hugging Face: {type(e).__name__}")
    drop_empty_dir(target)
    raise UserError(
        f"无法下载{what} {name}（{'; '.join(errors)}）。请检查网络（可设 HF_ENDPOINT=https://hf-mirror.com），"
        f"{hint}，或用 --config configs/tiny/<阶段>.yaml 跑离线小模型演示。",
        EXIT_NETWORK,
    )


def check_weights(folder: Path, allow_pickle: bool) -> None:
    """只加载 safetensors（pickle 权重可以在加载时执行任意代码），并确认每个权重文件是完整的。"""
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        for f in weights:
            check_safetensors(f)
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


def check_safetensors(f: Path) -> None:
    """只读文件头（几 KB），不读权重：头部能解析、且文件长度正好是头部 + 最后一个张量的结尾，才算完整。
    拷贝中断、磁盘写满时文件会被截短，这里一行说清楚，而不是等 safetensors 抛一大段 traceback。"""
    size = f.stat().st_size
    try:
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(
            f"权重文件 {display_path(f)} 已损坏（文件不完整，可能是拷贝中断或磁盘写满）。"
            "请重新运行产生它的脚本，或重新下载 / 拷贝这个文件夹。", EXIT_MISSING) from None


def missing_tokenizer_files(folder: Path) -> list[str]:
    """分词器需要的文件里缺了哪些：tokenizer_config.json，加上 tokenizer.json（或老格式的 vocab.json + merges.txt）。
    缺了它们 transformers 不一定报错，可能按 config.json 拼出一个别的分词器，再被当成"不是 Qwen3"。"""
    missing = [] if (folder / "tokenizer_config.json").is_file() else ["tokenizer_config.json"]
    if not (folder / "tokenizer.json").is_file() and not all((folder / f).is_file() for f in ("vocab.json", "merges.txt")):
        missing.append("tokenizer.json")
    return missing


def load_tokenizer(folder: Path, padding_side: str = "right"):
    """Qwen3 分词器：eos = <|im_end|>，pad = <|endoftext|>；生成时在左边填充。"""
    from transformers import AutoTokenizer

    if missing := missing_tokenizer_files(Path(folder)):
        raise UserError(f"{display_path(folder)} 里缺少分词器文件 {'、'.join(missing)}（可能没拷完）。请把它们拷回这个文件夹"
                        "（和模型同一来源），或重新运行产生它的脚本。", EXIT_MISSING)
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


def check_same_family(tokenizer, named_models: dict) -> None:
    """SFT、RM、critic 必须来自同一个基座（同样的结构和词表），否则分数读错位置或直接崩溃。"""
    ref_name, ref = next(iter(named_models.items()))
    for name, m in named_models.items():
        same = (m.config.model_type, m.config.vocab_size) == (ref.config.model_type, ref.config.vocab_size)
        if not same:
            raise UserError(
                f"{name} 模型（{m.config.model_type}，词表 {m.config.vocab_size}）与 {ref_name} 模型"
                f"（{ref.config.model_type}，词表 {ref.config.vocab_size}）不是同一个基座。"
                "请让 train_sft.py 和 train_rm.py 用同一个基座模型，重新训练 SFT 和 RM。",
                EXIT_MISSING,
            )
