"""bench 脚本共用：这台机器的一行描述；把结果写成 bench/results/<名>.json 并原样打印。"""

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str = "no GPU") -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU, {device}, Python {platform.python_version()}"


def write_result(result: dict, out: Path) -> None:
    text = json.dumps(result, ensure_ascii=False, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
