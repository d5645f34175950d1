"""读一个偏好数据文件：四种格式（.jsonl / .json / .csv / .parquet）、列名对应（--columns、TRL 的 prompt/chosen/rejected）、
逐行检查（坏行跳过并计数，--strict 时拒绝）。从哪里拿到文件（本地 / 下载）和之后的划分、格式在 data.py。
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

COLUMNS = ("question", "chosen", "rejected")
OPTIONAL_COLUMNS = ("system",)
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
UNPAIRED_VOTES = ("tie", "skip")  # chat.py --arena 记下的平局 / 跳过（qwen_rlhf/prefs.py）：有记录，但不是偏好对
MAX_FIELD_CHARS = 4000  # 超长的行多半是脏数据，按行跳过


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
