#!/usr/bin/env bash
# GPU 机器（AutoDL 等自带 CUDA torch 的镜像）上安装依赖，镜像自带的 torch 绝不被换掉：
#   bash scripts/install_gpu.sh
# 1. python -m qwen_rlhf.preflight --install-plan 把已装的 torch（和 torchvision / torchaudio）版本写成 pip 约束；
#    镜像太旧（Python < 3.11、torch < 2.6 或没有 torch）时它打印一行该换哪个镜像并以非零退出——此时什么都还没装。
# 2. pip install -r requirements.txt -c 约束：pip 若想升级 torch 会直接报冲突，而不是悄悄装上 CUDA 13 版。
# 3. 再跑一遍环境检查（python -m qwen_rlhf.preflight）。
# 用镜像自带的 python（不要先激活 scripts/setup_venv.sh 建的 .venv，那里是 CPU 版 torch）；$PYTHON 可以指定别的。
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
"$PYTHON" -m qwen_rlhf.preflight --install-plan "$constraint"
"$PYTHON" -m pip install -r requirements.txt -c "$constraint"
exec "$PYTHON" -m qwen_rlhf.preflight
