"""终端输出：按显示宽度对齐的纯文本表格（一个汉字占两格）。benchmark.py 的汇总和显存估算共用这一个。"""

from __future__ import annotations

import unicodedata


def width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(width(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r):
        return "  ".join(c + " " * (w - width(c)) for c, w in zip(r, widths)).rstrip()

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, rows)])
