"""把会被时序左右的多进程测试连续跑 N 次，数通过几次（不是 CI 测试：CI 只跑一次，这里看它会不会偶尔失败）。

    python bench/bench_repeat.py                    # 默认：两个进程的 PPO SIGTERM + 续训、两个进程的 SFT Ctrl-C，各 10 次
    python bench/bench_repeat.py --times 3 --tests ppo

同一个 pytest 会话里把每个测试项重复 N 次（流水线 fixture 只建一次，而且只训练几步），每次的结果（通过 / 失败、用时、失败的最后几行）
写进 bench/results/repeat_distributed.json。机器上同时在跑别的任务时用时会变长，结果里记下当时的负载。
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import RESULTS, machine, write_result  # noqa: E402

TESTS = {  # 名字 -> (测试函数, 选出其中一个参数化的 -k 表达式)
    "ppo": ("tests/test_distributed.py::"
            "test_sigterm_during_ppo_on_two_processes_then_resume_on_two_processes_finishes_the_same_run", None),
    "sft": ("tests/test_distributed.py::test_ctrl_c_on_two_processes_stops_both_at_the_same_step_and_resume_finishes",
            "terminal"),
}

PLUGIN = '''
import json, os, time
import pytest

TIMES = int(os.environ["REPEAT_TIMES"])
OUT = os.environ["REPEAT_OUT"]
runs = []


@pytest.fixture
def repeat_round(request):
    return request.param


def pytest_generate_tests(metafunc):
    # 和 pytest-repeat 一样：多一个参数化的 fixture，每个测试变成 TIMES 个独立的测试项（各自的 tmp_path、fixture）
    metafunc.fixturenames.append("repeat_round")
    metafunc.parametrize("repeat_round", range(1, TIMES + 1), indirect=True, ids=lambda i: f"round{i}")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.originalname)  # 同一个测试的 TIMES 次连在一起（sort 是稳定的）


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.monotonic()
    runs.append({"test": item.nodeid, "function": item.originalname, "outcome": "passed", "seconds": None,
                 "tail": None})
    yield
    runs[-1]["seconds"] = round(time.monotonic() - started, 1)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(runs, f)


def pytest_runtest_logreport(report):
    if report.failed and runs:
        # setup 失败（例如共用的流水线 fixture 在负载下超时）不是这个测试本身的失败：分开记
        runs[-1]["outcome"] = "failed" if report.when == "call" else f"error in {report.when}"
        runs[-1]["tail"] = str(report.longrepr)[-1500:]
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--times", type=int, default=10)
    ap.add_argument("--tests", default="ppo,sft")
    ap.add_argument("--out", default=str(RESULTS / "repeat_distributed.json"))
    a = ap.parse_args()
    chosen = [TESTS[t] for t in a.tests.split(",")]
    ids = [node for node, _ in chosen]
    keys = [f"{node.split('::')[1]}" + (f" and {k}" if k else "") for node, k in chosen]
    plugin_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"repeat-plugin-{os.getpid()}"
    plugin_dir.mkdir(parents=True, exist_ok=True)
    (plugin_dir / "repeat_plugin.py").write_text(PLUGIN, encoding="utf-8")
    runs_file = plugin_dir / "runs.json"
    # 流水线只做几步（QWEN_RLHF_SHORT_PIPELINE，见 tests/conftest.py）：这两个测试只拿它的产物比文件名和形状
    env = dict(os.environ, REPEAT_TIMES=str(a.times), REPEAT_OUT=str(runs_file), QWEN_RLHF_SHORT_PIPELINE="1",
               PYTHONPATH=os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]))
    load_before = os.getloadavg()
    started = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "repeat_plugin", "-p", "no:cacheprovider", *ids,
                        "-k", " or ".join(f"({k})" for k in keys)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    import json

    runs = json.loads(runs_file.read_text(encoding="utf-8")) if runs_file.is_file() else []
    # BENCH_COMMIT：在仓库的一份拷贝里跑时（好让原仓库接着改），写明拷贝的是哪个提交
    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                              capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    result = {
        "what": "两个进程（accelerate launch，DDP，gloo）的时序敏感测试连续重复运行的通过次数",
        "machine": machine(), "commit": commit + ("+未提交的修改" if dirty else ""),
        "load_average_1_5_15_at_start": [round(x, 2) for x in load_before],
        "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "note": "这台 2 核机器同时还在跑别的任务（负载见 load_average）：用时偏长，不作为速度数字",
        "times": a.times, "pytest_exit_code": p.returncode, "wall_s": round(time.monotonic() - started, 1),
        "tests": {},
    }
    for t in ids:
        mine = [r for r in runs if r["function"] == t.split("::")[1]]
        result["tests"][t] = {"runs": len(mine), "passed": sum(r["outcome"] == "passed" for r in mine),
                              "failed": sum(r["outcome"] == "failed" for r in mine),
                              "setup_errors": sum(r["outcome"].startswith("error") for r in mine),
                              "seconds": [r["seconds"] for r in mine],
                              "failures": [r["tail"] for r in mine if r["outcome"] != "passed"]}
    if not runs:
        result["pytest_tail"] = (p.stdout + p.stderr)[-3000:]
    write_result(result, Path(a.out))


if __name__ == "__main__":
    main()
