"""数据：读取（本地 / ModelScope / Hugging Face）、逐行检查、确定性划分，以及 Qwen3 对话格式。

所有阶段看到的文本都由本文件的几个格式函数生成，保证 SFT 训练、RM 打分、PPO 采样、
评测与对话用的是同一串 token。
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from . import scoring
from .errors import EXIT_BAD_INPUT, UserError
from .models import hub_download
from .options import main_process_first
from .paths import CHECKPOINT_DIR, input_path

COLUMNS = ("question", "chosen", "rejected")
OPTIONAL_COLUMNS = ("system",)
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DATASET_MIRRORS = {  # 默认数据集在两个平台上的名字
    "jackmokaka/btfChinese-DPO-small": "Karsh-CAI/btfChinese-DPO-small",
}
UNPAIRED_VOTES = ("tie", "skip")  # chat.py --arena 记下的平局 / 跳过（qwen_rlhf/prefs.py）：有记录，但不是偏好对
MAX_FIELD_CHARS = 4000  # 超长的行多半是脏数据，按行跳过
# 原仓库 README 表格里的十个常见问题，顺序照抄；benchmark.py 每次都问它们
COMMON_QUESTIONS = ("你好", "天气怎么样", "吃饭了吗", "今天星期几", "你是谁", "能帮我个忙吗", "最近怎么样",
                    "你在干什么", "现在几点了", "你会说英文吗")


def say(message: str) -> None:
    """打印一行摘要；accelerate launch 多进程时只由主进程说一次（accelerate 自己的 PartialState.print）。"""
    from accelerate import PartialState

    PartialState().print(message, flush=True)


@dataclass
class Rows:
    """读入并检查过的数据行，以及被跳过的行（原因 -> 行号列表）。"""

    rows: list[dict]
    source: str
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip_summary(self) -> str:
        parts = []
        for reason, where in self.skipped.items():
            head = "、".join(where[:3]) + ("…" if len(where) > 3 else "")
            parts.append(f"{reason} {len(where)} 行（{head}）")
        return "；".join(parts)


# ---------------------------------------------------------------- 读取


def _read_jsonl(path: Path) -> list[tuple[str, object]]:
    out = []
    with path.open(encoding="utf-8-sig") as f:  # utf-8-sig：记事本 / Excel 存的文件开头有 BOM
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append((f"{path.name}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n} 不是合法的 JSON（{e.msg}）。请修正这一行后重试。") from None
    return out


def _read_json(path: Path) -> list[tuple[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno} 不是合法的 JSON（{e.msg}）。请修正后重试。") from None
    if isinstance(data, dict):  # {"train": [...]} 或 {"data": [...]} 这类包了一层的
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path} 应当是一个 JSON 数组（每个元素一行数据），或 JSON Lines 文件。")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path} 应当是一个 JSON 数组（每个元素一行数据），或 JSON Lines 文件。")
    return [(f"{path.name}[{i}]", r) for i, r in enumerate(data)]


def _read_csv(path: Path, columns: dict[str, str]) -> list[tuple[str, object]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        column_plan(reader.fieldnames or [], columns, str(path))  # 表头对不上：在读任何一行之前拒绝（和 validate 同一个检查）
        return [(f"{path.name}:{reader.line_num}", r) for r in reader]


def _read_parquet(path: Path) -> list[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001  pyarrow 的各种格式错误
        raise UserError(f"{path} 不是可读的 parquet 文件（{str(e).splitlines()[0]}）。") from None
    return [(f"{path.name}[{i}]", r) for i, r in enumerate(table.to_pylist())]


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_file(path: Path, columns: dict[str, str] | None = None) -> list[tuple[str, object]]:
    if path.suffix not in READERS:
        raise UserError(f"不支持的数据文件类型 {path.name}；请用 {'/'.join(DATA_SUFFIXES)}。")
    if path.stat().st_size == 0:
        raise UserError(f"数据文件是空的：{path}。")
    try:
        records = _read_csv(path, columns or {}) if path.suffix == ".csv" else READERS[path.suffix](path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} 不是 UTF-8 编码（第 {e.start} 字节附近）。请另存为 UTF-8 后重试。") from None
    return records


# ---------------------------------------------------------------- 列与格式：每一行都经过这里

FORMAT_HELP = ("需要 question、chosen、rejected 三列（可选 system），或 TRL 的标准偏好格式 prompt、chosen、rejected"
               "（纯文本或对话消息列表）；别的列名用 --columns 对应，例如 --columns question=instruction,chosen=good,rejected=bad")


def parse_columns(spec: str | None) -> dict[str, str]:
    """--columns "question=instruction,chosen=good" -> {"question": "instruction", "chosen": "good"}（本仓库的列名 -> 数据里的列名）。"""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        ours, _, theirs = (x.strip() for x in part.partition("="))
        if ours not in (*COLUMNS, *OPTIONAL_COLUMNS) or not theirs:
            raise UserError(f"--columns 里的 {part!r} 看不懂：写成 本仓库列名=数据里的列名，本仓库列名是 "
                            f"{'、'.join((*COLUMNS, *OPTIONAL_COLUMNS))}，例如 --columns question=instruction,chosen=good,rejected=bad。")
        out[ours] = theirs
    return out


def column_plan(present, columns: dict[str, str], source: str) -> dict[str, str]:
    """本仓库的每一列从数据的哪一列来：--columns 给的 > 同名列 > TRL 标准格式的 prompt（当 question）。
    对不上就拒绝，一行里说出数据里有哪些列。"""
    present = set(present)
    plan = {}
    for ours in (*COLUMNS, *OPTIONAL_COLUMNS):
        theirs = columns.get(ours) or (ours if ours in present else "prompt" if ours == "question" else ours)
        if theirs in present:
            plan[ours] = theirs
    absent = [f"{ours}={theirs}" for ours, theirs in columns.items() if theirs not in present]
    missing = [c for c in COLUMNS if c not in plan]
    if absent or missing:
        what = f"--columns 指定的列不存在（{','.join(absent)}）" if absent else f"对不上列 {','.join(missing)}"
        raise UserError(f"{source} 的列是 {','.join(sorted(present)) or '（无）'}，{what}；{FORMAT_HELP}。")
    return plan


def _message_text(value, role: str):
    """TRL 对话格式的回答（[{"role": "assistant", "content": ...}]）-> 文本；纯文本原样；别的返回 None。"""
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == role:
            return value[0].get("content")
        return None
    return value


def _prompt_fields(value):
    """TRL 对话格式的提示（[system?, user]）-> (问题, system)；纯文本 -> (文本, None)；多轮等对不上的 -> None。"""
    if not isinstance(value, list):
        return value, None
    roles = [m.get("role") if isinstance(m, dict) else None for m in value]
    if roles == ["user"]:
        return value[0].get("content"), None
    if roles == ["system", "user"]:
        return value[1].get("content"), value[0].get("content")
    return None


def normalize(r: dict, plan: dict[str, str]) -> dict | str:
    """一行数据（本仓库的列、TRL 的纯文本或对话格式、--columns 改过名的）-> {question, chosen, rejected, system}，
    或跳过的原因。之后的检查（空值、类型、长度、重复）都在这个统一的形状上做。"""
    prompt = _prompt_fields(r.get(plan["question"]))
    if prompt is None:
        return "提示不是一条 user 消息（可带一条 system）"
    values = {"question": prompt[0]}
    for c in ("chosen", "rejected"):
        values[c] = _message_text(r.get(plan[c]), "assistant")
        if isinstance(r.get(plan[c]), list) and values[c] is None:
            return "回答不是一条 assistant 消息"
    values["system"] = prompt[1] if prompt[1] is not None else r.get(plan["system"]) if "system" in plan else None
    return values


def validate(records: list[tuple[str, object]], source: str, strict: bool, columns: dict[str, str] | None = None) -> Rows:
    """逐行检查。整个文件的问题（列对不上）直接拒绝；个别坏行跳过并计数，`strict` 时改为拒绝。"""
    records = [(w, r) for w, r in records if not (isinstance(r, dict) and r.get("vote") in UNPAIRED_VOTES)]
    if not records:
        raise UserError(f"{source} 里没有任何数据行。")
    present = set().union(*(r.keys() for _, r in records if isinstance(r, dict)))
    plan = column_plan(present, columns or {}, source)
    rows, skipped, seen = [], {}, set()

    def skip(reason, where):
        if strict:
            raise UserError(f"{where}：{reason}（--strict 模式下不跳过）。请修正数据后重试。")
        skipped.setdefault(reason, []).append(where)

    for where, r in records:
        if not isinstance(r, dict):
            skip("不是一个对象", where)
            continue
        values = normalize(r, plan)
        if isinstance(values, str):
            skip(values, where)
            continue
        system = values.pop("system")
        if any(v is None for v in values.values()):
            skip("缺少字段或为空值", where)
            continue
        if any(not isinstance(v, str) for v in values.values()):
            skip("字段不是字符串", where)
            continue
        values = {c: v.strip() for c, v in values.items()}
        if any(not v for v in values.values()):
            skip("字段为空字符串", where)
            continue
        if any(len(v) > MAX_FIELD_CHARS for v in values.values()):
            skip(f"字段超过 {MAX_FIELD_CHARS} 字", where)
            continue
        values["system"] = system.strip() if isinstance(system, str) and system.strip() else None
        key = (values["question"], values["chosen"], values["rejected"])
        if key in seen:
            skip("与前面的行完全重复", where)
            continue
        seen.add(key)
        rows.append(values)
    if not rows:
        raise UserError(f"{source} 里没有一行可用的数据（{Rows([], source, skipped).skip_summary()}）。")
    return Rows(rows, source, skipped)


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
