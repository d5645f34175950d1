# 由 scripts/test.sh 和 scripts/demo.sh 引入（source）：只影响 CPU 上的运行速度，不改变任何结果。
# CPU 上 PyTorch 每一步都要分配、释放几百 MB 的 logits（15 万词表）。glibc 默认把大块内存直接 mmap、用完就还给系统，
# 下一步再要时每一页都要缺页清零。两个阈值调到 4 GiB 后，释放的内存留在堆里直接复用，结果逐位不变。
# 实测见 bench/bench_cpu_env.py 和 bench/results/cpu_env.json（也写在 docs/details.md）。
# GPU 上的张量不经过 glibc，这里对 GPU 运行没有影响。
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296}"
