#!/usr/bin/env bash
# 离线演示：随机初始化的迷你 Qwen3 + 示例数据，CPU 上依次跑 SFT → RM → PPO → benchmark。
# 产物都在 checkpoint/tiny/ 下（不会碰 checkpoint/sft 等真实结果）；重跑会覆盖上一次的演示结果。
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
source scripts/cpu_env.sh
PY="${VENV:-.venv}/bin/python"
export TOKENIZERS_PARALLELISM=false
start=$(date +%s)
"$PY" scripts/make_tiny_model.py
"$PY" train_sft.py --config configs/tiny/sft.yaml --overwrite_output_dir true
"$PY" train_rm.py --config configs/tiny/rm.yaml --overwrite_output_dir true
"$PY" train_ppo.py --config configs/tiny/ppo.yaml --overwrite_output_dir true
"$PY" benchmark.py --config configs/tiny/benchmark.yaml
echo "[演示] 全部完成，用时 $(( $(date +%s) - start )) 秒。和它聊聊：$PY chat.py --model checkpoint/tiny/ppo"
