#!/usr/bin/env bash
# GPU 自检：新租的 GPU 机器上第一条命令。离线建随机 Qwen3-0.6B + 合成数据，以真实默认选项把
# SFT → RM → PPO → 评测 → 对话各跑几步，打印用时 / 吞吐 / 峰值显存 vs 估算，写 bench/results/gpu_check.json。
#   bash scripts/gpu_check.sh                  # 有 GPU：真实尺寸（目标 6 分钟内）
#   bash scripts/gpu_check.sh --device cpu     # 没有 GPU：迷你模型，同一条路径，几分钟
# 选项见 python bench/gpu_check.py --help。用 $PYTHON 指定解释器；否则有 .venv 用它，没有用 python3。
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" bench/gpu_check.py "$@"
