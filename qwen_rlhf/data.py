"""数据：从哪里读（本地文件或文件夹 / ModelScope / Hugging Face）、确定性划分，以及 Qwen3 对话格式。
一个文件怎样读、逐行怎样检查在 datafile.py。

所有阶段看到的文本都由本文件的几个格式函数生成，保证 SFT 训练、RM 打分、PPO 采样、
评测与对话用的是同一串 token。
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from . import scoring
from .datafile import DATA_SUFFIXES, Rows, parse_columns, read_file, validate
from .errors import EXIT_BAD_INPUT, UserError
from .models import hub_download
from .options import main_process_first
from .paths import CHECKPOINT_DIR, input_path

DATASET_MIRRORS = {  # 默认数据集在两个平台上的名字
    "jackmokaka/btfChinese-DPO-small": "Karsh-CAI/btfChinese-DPO-small",
}
# 原仓库 README 表格里的十个常见问题，顺序照抄；benchmark.py 每次都问它们
COMMON_QUESTIONS = ("你好", "天气怎么样", "吃饭了吗", "今天星期几", "你是谁", "能帮我个忙吗", "最近怎么样",
                    "你在干什么", "现在几点了", "你会说英文吗")


def say(message: str) -> None:
    """打印一行摘要；accelerate launch 多进程时只由主进程说一次（accelerate 自己的 PartialState.print）。"""
    from accelerate import PartialState

    PartialState().print(message, flush=True)


# ---------------------------------------------------------------- 来源


def _find_data_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file() and ".git" not in p.parts)
    train = [p for p in files if "train" in p.name]
    return train or files


def download_dataset(name: str) -> Path:
    """数据集 ID -> 本地文件夹（缓存在 checkpoint/cache/ 下）。"""
    target = CHECKPOINT_DIR / "cache" / "datasets" / name.replace("/", "__")
    if target.is_dir() and _find_data_files(target):
        return target
    return hub_download(name, target, what="数据集", hint="或离线运行：--dataset data/sample.jsonl", dataset=True,
                        hf_name=DATASET_MIRRORS.get(name, name))


def load_rows(dataset: str, strict: bool = False, columns: str | None = None) -> Rows:
    """读入数据集（本地文件、本地文件夹或数据集 ID），检查后返回所有可用行。columns：--columns 的原文。"""
    mapping = parse_columns(columns)  # 写错了在读文件之前就说
    path = input_path(dataset)
    looks_local = path.suffix in DATA_SUFFIXES or dataset.startswith((".", "/", "~")) or path.exists()
    if not path.exists():
        if looks_local:
            raise UserError(f"数据文件不存在：{dataset}。请检查路径，示例数据在 data/sample.jsonl。")
        with main_process_first():  # 多进程：主进程下载，其余进程等它下完直接用缓存
            path = download_dataset(dataset)
    files = [path] if path.is_file() else _find_data_files(path)
    if not files:
        raise UserError(f"{path} 里找不到数据文件（{'/'.join(DATA_SUFFIXES)}）。")
    records = [rec for f in files for rec in read_file(f, mapping)]
    rows = validate(records, str(dataset), strict, mapping)
    if rows.skipped:
        say(f"[数据] 跳过了 {sum(map(len, rows.skipped.values()))} 行：{rows.skip_summary()}。加 --strict 可改为报错。")
    return rows


# ---------------------------------------------------------------- 划分


@dataclass
class Split:
    train: list[dict]
    test: list[dict]
    fingerprint: str  # 数据 + 划分的指纹：后面的阶段用它确认大家用的是同一份数据、同一个划分


def split_rows(rows: list[dict], test_size: float, seed: int) -> Split:
    """按"问题"划分：同一个问题的所有行落在同一边，留出的问题永远不会出现在训练集里。"""
    questions = sorted({r["question"] for r in rows})
    if len(questions) < 2:
        raise UserError("数据里不同的问题少于 2 个，无法划分训练集和留出测试集。")
    n_test = min(len(questions) - 1, max(1, round(test_size * len(questions))))
    random.Random(seed).shuffle(questions)
    held_out = set(questions[:n_test])
    train = [r for r in rows if r["question"] not in held_out]
    test = [r for r in rows if r["question"] in held_out]
    # 指纹覆盖全部数据行和留出集合：换了数据（哪怕问题相同、回答改了）或换了划分，后面的阶段都能发现
    content = json.dumps([sorted(held_out), sorted((r["question"], r["chosen"], r["rejected"]) for r in rows)],
                         ensure_ascii=False)
    digest = hashlib.sha256(content.encode()).hexdigest()[:16]
    return Split(train, test, digest)


def sft_share(train: list[dict], fraction: float, seed: int) -> list[dict]:
    """SFT 只用训练集里一小部分 chosen 回答（原仓库："少量骂人对话"）。"""
    if not 0 < fraction <= 1:
        raise UserError(f"--sft_fraction 必须在 (0,1] 之间，现在是 {fraction}。")
    n = max(1, math.ceil(fraction * len(train)))
    picked = list(train)
    random.Random(seed + 1).shuffle(picked)
    return picked[:n]


def unique_questions(rows: list[dict]) -> list[dict]:
    """每个问题只保留第一次出现的行（PPO 采样、评测按问题来）。"""
    seen, out = set(), []
    for r in rows:
        if r["question"] not in seen:
            seen.add(r["question"])
            out.append(r)
    return out


# ---------------------------------------------------------------- Qwen3 对话格式


def messages(question: str, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": question}]


def prompt_text(tokenizer, conversation: list[dict], enable_thinking: bool = False) -> str:
    """生成用的提示：模板自带的 `<|im_start|>assistant\\n`；关闭思考时还带空的 `<think>\\n\\n</think>\\n\\n`。"""
    return tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )


def prompt_ids(tokenizer, question: str, system: str | None = None) -> list[int]:
    return tokenizer(prompt_text(tokenizer, messages(question, system)), add_special_tokens=False)["input_ids"]


def answer_ids(tokenizer, answer: str) -> list[int]:
    """回答 + `<|im_end|>`：和模型自己生成到停止符时的 token 完全一样（不含其后的换行）。"""
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def sft_example(tokenizer, row: dict, system: str | None = None) -> dict:
    """SFT：提示 + 回答；completion_mask 让 loss 只算回答部分。"""
    p, a = prompt_ids(tokenizer, row["question"], row.get("system") or system), answer_ids(tokenizer, row["chosen"])
    return {"input_ids": p + a, "completion_mask": [0] * len(p) + [1] * len(a)}


def rm_example(tokenizer, row: dict, system: str | None = None) -> dict:
    """RM：标准客户端看到的整段对话（scoring.encode：模板渲染，以 `<|im_end|>\\n` 结尾），RM 学的就是那个 `\\n` 上的分数，
    PPO 的奖励、benchmark、用户自己的 transformers 脚本都在那里读分。"""
    prompt = messages(row["question"], row.get("system") or system)
    return {"chosen_ids": scoring.encode(tokenizer, prompt, row["chosen"]),
            "rejected_ids": scoring.encode(tokenizer, prompt, row["rejected"])}


def fluency_pairs(rows: list[dict], seed: int) -> list[dict]:
    """金标准评委（train_rm.py --role gold）多学的偏好对：每行的 chosen 胜过"把它的字随机打乱"的版本（同样的字、
    没有语序）。代理 RM 只见过"粗鲁 胜过 礼貌"，没见过语无伦次的回答；策略钻代理 RM 空子时吐出的正是一串它爱听的字，
    这一对让第二个评委能分出来。打乱由 seed 决定（同样的选项得到同样的数据）；打乱后和原文一样的（一个字、全是同一个字）跳过。"""
    rng = random.Random(seed)
    out = []
    for r in rows:
        chars = list(r["chosen"])
        rng.shuffle(chars)
        if "".join(chars) != r["chosen"]:
            out.append({**r, "rejected": "".join(chars)})
    return out


def ppo_example(tokenizer, row: dict, system: str | None = None) -> dict:
    """PPO 的提示 token，外加它的消息：RM 给回答打分时按消息渲染整段对话（见 ppo.RLHFPPOTrainer）。"""
    prompt = messages(row["question"], row.get("system") or system)
    return {"input_ids": tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"],
            "messages": prompt}


def sampled_example(row: dict, system: str | None = None) -> dict:
    """GRPO / RLOO：对话格式的提示（消息列表）。TRL 用分词器的模板加生成提示渲染它，GRPOConfig / RLOOConfig 的
    chat_template_kwargs={"enable_thinking": False} 让它和 prompt_text 完全相同（以空的思考块结尾）。"""
    return {"prompt": messages(row["question"], row.get("system") or system)}


def dpo_example(row: dict, system: str | None = None) -> dict:
    """DPO：对话格式的偏好对。TRL 用分词器的模板渲染 提示 + 回答（每行的 chat_template_kwargs 关闭思考），
    所以提示部分和 prompt_text 一样，回答以 `<|im_end|>` 结尾，和 RM 打分读的是同一串文本。"""
    return {"prompt": messages(row["question"], row.get("system") or system),
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
            "chat_template_kwargs": {"enable_thinking": False}}


def dpo_token_ids(tokenizer, example: dict) -> tuple[list[int], list[int], list[int]]:
    """dpo_example 的一行 -> (提示, chosen, rejected) 的 token，和 TRL 1.12 的 DPOTrainer 分词一模一样：提示按模板加生成
    提示渲染；提示 + 回答整段一起渲染、一起分词（回答以 `<|im_end|>\\n` 结尾），再切掉提示的长度。单独给回答分词在
    边界上可能得到不同的 token，log 概率也就不是训练时算的那个（trl/trainer/dpo_trainer.py 的 tokenize_fn）。"""
    kwargs = {"tools": None, **example.get("chat_template_kwargs", {})}

    def ids(messages, **extra):
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs, **extra)["input_ids"]

    prompt = ids(example["prompt"], add_generation_prompt=True)
    return (prompt, *(ids(example["prompt"] + example[k])[len(prompt):] for k in ("chosen", "rejected")))


def drop_long_prompts(tokenizer, examples: list[dict], max_length: int, what: str,
                      option: str = "--max_prompt_length") -> list[dict]:
    """sampled_example 里提示（套上模板）超过 max_length 个 token 的去掉，并把数量说出来。"""
    lengths = [len(tokenizer(prompt_text(tokenizer, e["prompt"]), add_special_tokens=False)["input_ids"]) for e in examples]
    kept = drop_long([{"ids": range(n), "i": i} for i, n in enumerate(lengths)], ("ids",), max_length, what, option)
    return [examples[k["i"]] for k in kept]


def drop_long(examples: list[dict], keys: tuple[str, ...], max_length: int, what: str,
              option: str = "--max_length") -> list[dict]:
    """去掉超过 max_length 的样本，并把数量说出来（TRL 会悄悄丢弃）。option：调这个上限的选项（PPO 是 --max_prompt_length）。"""
    kept = [e for e in examples if all(len(e[k]) <= max_length for k in keys)]
    if len(kept) < len(examples):
        say(f"[数据] {what}：{len(examples) - len(kept)} 条超过 {max_length} 个 token，已丢弃（共 {len(examples)} 条）。")
    if not kept:
        raise UserError(f"{what}：所有样本都超过 {max_length} 个 token。请调大 {option}。", EXIT_BAD_INPUT)
    return kept
