#!/usr/bin/env bash
# 离线演示：随机初始化的迷你 Qwen3 + 示例数据，CPU 上依次跑 SFT → RM → PPO → benchmark。
# 产物都在 checkpoint/tiny/ 下（不会碰 checkpoint/sft 等真实结果）；重跑会覆盖上一次的演示结果。
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
source scripts/cpu_env.sh
PY="${VENV:-.venv}/bin/python"
export TOKENIZERS_PARALLELISM=false
# 只给脚本发 SIGTERM（kill、timeout）时，前台命令收不到：没有 trap，bash 立刻结束，正在跑的训练没人管、接着跑；有 trap，
# 也要等前台命令跑完才执行。所以每一步在后台跑、脚本在 wait 里等它（wait 能被信号打断），trap 把 SIGTERM 转给这一步。
# Ctrl-C 时终端已经把 SIGINT 发给了它，只等它停下（要经子 shell 再 exec：直接 "命令 &" 起的进程忽略 SIGINT）。
step() { ( exec "$@" ) & child=$!; wait "$child"; child=; }
stop() {
  trap - INT TERM
  if [ -n "${child:-}" ]; then
    [ "$1" = TERM ] && kill -TERM "$child" 2>/dev/null
    wait "$child" 2>/dev/null || true
  fi
  echo "[演示] 已中断；重新运行本脚本会从头开始。" >&2
  exit 130
}
trap 'stop INT' INT
trap 'stop TERM' TERM
start=$(date +%s)
step "$PY" scripts/make_tiny_model.py
step "$PY" train_sft.py --config configs/tiny/sft.yaml --overwrite_output_dir true
step "$PY" train_rm.py --config configs/tiny/rm.yaml --overwrite_output_dir true
step "$PY" train_ppo.py --config configs/tiny/ppo.yaml --overwrite_output_dir true
step "$PY" benchmark.py --config configs/tiny/benchmark.yaml
echo "[演示] 全部完成，用时 $(( $(date +%s) - start )) 秒。和它聊聊：$PY chat.py --model checkpoint/tiny/ppo"
