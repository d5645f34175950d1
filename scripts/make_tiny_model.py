"""构建离线小模型（随机初始化的迷你 Qwen3 + 真实 Qwen3 分词器），tiny 配方都指向它。

    python scripts/make_tiny_model.py            # 写到 checkpoint/tiny/base（已存在则跳过）
    python scripts/make_tiny_model.py --force    # 重建
    python scripts/make_tiny_model.py --size gold --out checkpoint/tiny/base_gold   # 金标准评委用的大一些的迷你模型
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # 让 scripts/ 下的脚本找到 qwen_rlhf 包

from qwen_rlhf import errors, tiny  # noqa: E402
from qwen_rlhf.options import output_path  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="构建离线小模型")
    parser.add_argument("--out", default="checkpoint/tiny/base", help="输出文件夹（相对仓库根目录）")
    parser.add_argument("--force", action="store_true", help="已存在也重建")
    parser.add_argument("--size", choices=sorted(tiny.SIZES), default="tiny",
                        help="tiny：演示用的迷你模型；gold：金标准评委的基座（更大、另一个随机初始化）")
    a = parser.parse_args()
    out = output_path(a.out)
    if (out / "config.json").is_file() and not a.force:
        print(f"[tiny] 已存在：{out}")
        return
    tiny.build(out, tiny.SIZES[a.size], seed=0 if a.size == "tiny" else 1)
    print(f"[tiny] 已写入随机初始化的迷你 Qwen3：{out}")


if __name__ == "__main__":
    errors.run(main)
