#!/usr/bin/env bash
# 全部测试（离线、CPU）：建好 .venv 后运行 pytest。额外参数原样传给 pytest，例如 bash scripts/test.sh -k ppo；
# bash scripts/test.sh -m "not slow" 只跑不启动训练脚本的快速部分（一分钟内）
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
source scripts/cpu_env.sh
# DeepSpeed 在 CPU 上第一次初始化通信时要现场编译一个 C++ 扩展（deepspeed_shm_comm，这台 2 核机器上约 40 秒，缓存在
# ~/.cache/torch_extensions）：先编译好（已编译时约 3 秒），免得多进程 DeepSpeed 测试里两个进程一边等它一边计时
"${VENV:-.venv}/bin/python" -c "from deepspeed.accelerator import get_accelerator as a
a().create_op_builder('ShareMemCommBuilder').load(verbose=False)" 2>/dev/null || true  # 编译不了时由那几个测试自己报错
# 两个进程（pytest-xdist，-n 2）：多数测试是起子进程跑脚本、等 import 和加载，一个核忙时另一个闲着。迷你流水线
# 只训练一次（tests/conftest.py 的 shared）；一个测试文件整个交给一个进程（--dist loadfile），模块级夹具只建一次
# （--dist loadgroup 在 pytest 9.2 上不起作用：xdist 3.8 改 item._nodeid 加组名，pytest 9 的 nodeid 不再读它）；
# 文件按 tests/conftest.py 排好的顺序分（--no-loadscope-reorder）：先训练流水线的文件，另一个进程同时跑不用它的。每个进程 torch 用一个线程，
# 和 compare.sh 同一个道理：小模型两个单线程进程比一个双线程进程快。要单进程跑（看顺序输出、调试）：加 -n 0。
# --durations：每次都列出最慢的 25 个（setup 和 call 分开），看得出时间花在哪里（目标：单个不超过 60 秒）
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${VENV:-.venv}/bin/python" -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests "$@"
