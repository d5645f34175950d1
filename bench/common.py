"""bench 脚本共用：这台机器的一行描述；把结果写成 bench/results/<名>.json 并原样打印。"""

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str = "no GPU") -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU, {device}, Python {platform.python_version()}"


def write_result(result: dict, out: Path) -> None:
    """写结果，附上写的那一刻机器的负载（1 / 5 / 15 分钟平均；2 核机器空闲时 < 1，> 2 说明有别的任务在抢 CPU，
    这样的用时不能当这台机器的速度引用）。"""
    result = {**result, "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(result, ensure_ascii=False, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
