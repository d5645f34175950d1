#!/usr/bin/env bash
# 全部测试（离线、CPU）：建好 .venv 后运行 pytest。额外参数原样传给 pytest，例如 bash scripts/test.sh -k ppo；
# bash scripts/test.sh -m "not slow" 只跑不启动训练脚本的快速部分（一分钟内）
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
source scripts/cpu_env.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q tests "$@"
