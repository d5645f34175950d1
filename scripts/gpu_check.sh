#!/usr/bin/env bash
# GPU 自检：新租的 GPU 机器上第一条命令。先做环境检查（python -m qwen_rlhf.preflight，几秒），通过后离线建随机 Qwen3-0.6B
# + 合成数据，以真实默认选项把 SFT → RM → PPO → 评测 → 对话各跑几步，打印用时 / 吞吐 / 峰值显存 vs 估算，
# 写 bench/results/gpu_check.json。
#   bash scripts/gpu_check.sh                  # 有 GPU：真实尺寸（目标 6 分钟内）；环境检查没通过就停下
#   bash scripts/gpu_check.sh --device cpu     # 没有 GPU：迷你模型，同一条路径，几分钟（环境检查只看不拦）
# 选项见 python bench/gpu_check.py --help。用 $PYTHON 指定解释器；否则有 nvidia-smi 的机器用镜像自带的 python
# （.venv 里是 CPU 版 torch），没有 GPU 时有 .venv 用它，没有用 python3。
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 || [ ! -x .venv/bin/python ]; then
    PYTHON="$(command -v python || command -v python3)"
  else
    PYTHON=.venv/bin/python
  fi
fi
cpu=false
prev=""
for arg in "$@"; do
  if [ "$arg" = "--device=cpu" ] || { [ "$prev" = "--device" ] && [ "$arg" = "cpu" ]; }; then cpu=true; fi
  prev="$arg"
done
if ! "$PYTHON" -m qwen_rlhf.preflight && [ "$cpu" = false ]; then
  echo "[自检] 环境检查没有通过（见上表），自检没有开始。没有 GPU 时可以用 bash scripts/gpu_check.sh --device cpu 跑迷你模型。" >&2
  exit 1
fi
exec "$PYTHON" bench/gpu_check.py "$@"
