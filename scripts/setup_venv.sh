#!/usr/bin/env bash
# 在仓库下建 .venv 并装好固定版本（已存在就跳过）。CPU 机器用磁盘上的 CPU 版 torch 2.13.0；
# GPU 机器（AutoDL 镜像自带 CUDA torch）请用 bash scripts/install_gpu.sh，不要跑这个脚本。
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
# 已装好 = torch 在、requirements*.txt 里每个 "名字==版本" 都是这个版本（读包的元数据，不 import：import trl、deepspeed
# 要好几秒，demo.sh / compare.sh / test.sh 每次都付）；钉的版本改了（比如新加一个包）就补装
PINNED='import importlib.metadata as m, re, sys
pins = [re.match(r"([A-Za-z0-9_.-]+)==(\S+)", l) for f in ("requirements.txt", "requirements-dev.txt") for l in open(f)]
sys.exit(any(m.version(p[1]) != p[2] for p in pins if p) or not m.version("torch"))'
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "$PINNED" 2>/dev/null; then
  echo "[安装] 新建 $VENV：torch 2.13.0 + requirements-dev.txt 的固定版本（离线演示和测试用；GPU 机器请用 bash scripts/install_gpu.sh）。PyPI 上 Linux 的 torch 是几 GB 的 CUDA 版，只要 CPU 版可先 export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==2.13.0"   # 先装 CPU 版 torch，requirements 里的 torch>=2.6 就不会再拉 CUDA 版
  "$VENV/bin/pip" install -q -r requirements-dev.txt
fi
