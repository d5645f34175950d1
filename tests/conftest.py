"""测试共用：在临时目录里跑真实脚本（子进程 run_script，或在测试进程里 run_inline），离线、CPU、小模型。"""

import io
import json
import logging
import os
import runpy
import subprocess
import sys
import threading
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qwen_rlhf import tiny  # noqa: E402

# 离线测试里连不上 ModelScope 时不必按 1 + 2 + 4 秒重试列文件（modelscope-hub 在 import 时读它；子进程经 offline_env 继承）
os.environ["MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS"] = "1"

TINY = ROOT / "configs" / "tiny"
# scripts/test.sh 用 pytest-xdist 在两个进程（gw0、gw1）里跑；单独跑 pytest 时只有一个（main）
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def offline_env(tmp: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",  # 万一被访问，立刻连接失败而不是挂起
        MODELSCOPE_ENDPOINT="http://127.0.0.1:9",  # MODELSCOPE_DOMAIN 已改名（modelscope-hub 会警告）
        # 曲线和 datasets 缓存按 xdist 进程分开：两个进程可能在同一秒开始同名的训练（曲线目录按秒命名），
        # 共用的会话目录（work）里不会混在一起；测试从 stage.json 读曲线的位置，不猜路径
        QWEN_RLHF_TENSORBOARD_ROOT=str(tmp / f"tensorboard-{WORKER}"),
        HF_DATASETS_CACHE=str(tmp / f"hf-cache-{WORKER}"),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.pop("QWEN_RLHF_DEBUG", None)
    env.update(extra)
    return env


def run_script(script: str, *args, tmp: Path, timeout: int = 1200, env: dict | None = None, cwd=None):
    """运行仓库根目录下的脚本，返回 CompletedProcess（stdout/stderr 为文本）。"""
    cmd = [sys.executable, str(ROOT / script), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd or ROOT, env=env or offline_env(tmp), capture_output=True, text=True,
                          timeout=timeout)


def run_inline(script: str, *args, tmp: Path, stdin: bytes = b"", cwd=None) -> subprocess.CompletedProcess:
    """和 run_script 一样运行脚本的 `__main__`（同样的 errors.run、退出码、stdout / stderr），但在测试进程里（runpy），
    省掉每个子进程 5–7 秒的 import。测的东西和进程本身有关时用 run_script：信号、SIGKILL、多进程、进程的退出状态、
    在 import 时读取的环境变量（离线、下载地址）、长时间训练。stdin 按字节给，像管道一样。"""
    argv = [str(ROOT / script), *map(str, args)]
    # 真正的文本流（脚本会 reconfigure 它们），write_through：直接落到底下的字节缓冲里
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True) for _ in range(2))
    code = 0
    extra = {k: v for k, v in offline_env(tmp).items() if os.environ.get(k) != v}
    # 库的 logging 处理器在创建时记住了当时的 stderr：也换成 err，子进程里能看到的警告这里一样看得到
    handlers = [h for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
                for h in getattr(logger, "handlers", []) if type(h) is logging.StreamHandler
                and h.stream in (sys.stderr, sys.__stderr__)]
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err):
        for h in handlers:
            mp.setattr(h, "stream", err)
        mp.setattr(sys, "argv", argv)
        mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        mp.chdir(cwd or ROOT)
        mp.delenv("QWEN_RLHF_DEBUG", raising=False)
        for key, value in extra.items():
            mp.setenv(key, value)
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except Exception:  # noqa: BLE001  和 python 一样：未处理的异常打印 traceback、退出码 1（Ctrl-C 照常停下 pytest）
            traceback.print_exc(file=err)
            code = 1
    return subprocess.CompletedProcess(argv, code, *(f.buffer.getvalue().decode() for f in (out, err)))


def run_until(cmd, env, marker, timeout=300, new_session=False):
    """启动子进程，等输出里出现 marker 后返回（进程仍在运行）。new_session：让它自成一个进程组，好像终端里的前台任务，
    os.killpg 就能像 Ctrl-C 那样把信号同时发给启动器和它的所有子进程。"""
    proc = subprocess.Popen(list(map(str, cmd)), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=new_session)
    seen, out = threading.Event(), []

    def pump():
        for line in proc.stdout:
            out.append(line)
            if marker in line:
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    assert seen.wait(timeout), "".join(out)[-3000:]
    return proc, out


def assert_group_gone(pgid: int, what: str, timeout: float = 10) -> None:
    """进程组 pgid（run_until(new_session=True) 起的进程和它的子孙）在 timeout 秒内一个不剩，否则以 what 失败。"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)  # 组里还有进程
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail(what)


def assert_one_line_error(r, code, *needles):
    """被拒绝 / 失败的运行：给定的退出码，最后一行是一行中文错误（含 needles），没有 traceback。"""
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    line = last_line(r.stderr)
    assert line.startswith("错误："), line
    for n in needles:
        assert n in line, (n, line)
    assert "Traceback" not in r.stderr


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """会话共用的目录。xdist 的两个进程共用同一个（各自 basetemp 的上一级，pytest-xdist 文档"让会话夹具只执行一次"
    的做法）：迷你流水线只训练一次，先要到的进程训练，另一个等它（shared 里的文件锁）。"""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if WORKER != "main" else base) / "work"
    path.mkdir(exist_ok=True)
    return path


def _to_json(value):
    if isinstance(value, subprocess.CompletedProcess):
        return {"__run__": [list(map(str, value.args)), value.returncode, value.stdout, value.stderr],
                **{k: str(v) for k, v in vars(value).items() if k not in ("args", "returncode", "stdout", "stderr")}}
    if isinstance(value, SimpleNamespace):
        return {"__ns__": {k: _to_json(v) for k, v in vars(value).items()}}
    if isinstance(value, dict):
        return {"__dict__": {k: _to_json(v) for k, v in value.items()}}
    return {"__path__": str(value)} if isinstance(value, Path) else value


def _from_json(value):
    if isinstance(value, dict) and "__run__" in value:
        run = subprocess.CompletedProcess(*value.pop("__run__"))
        for k, v in value.items():  # 额外的属性（rl_runs 的 .out）都是路径
            setattr(run, k, Path(v))
        return run
    if isinstance(value, dict) and "__ns__" in value:
        return SimpleNamespace(**{k: _from_json(v) for k, v in value["__ns__"].items()})
    if isinstance(value, dict) and "__dict__" in value:
        return {k: _from_json(v) for k, v in value["__dict__"].items()}
    return Path(value["__path__"]) if isinstance(value, dict) and "__path__" in value else value


def shared(work: Path, name: str, build):
    """build() 在整个测试会话里只执行一次，即使 xdist 的两个进程都要它：结果（路径、子进程的输出）记在
    work/.fixture-<名字>.json，后到的进程等锁、读记录。build 失败时不写记录，后到的进程再试一次（同样失败，同样报告）。"""
    record = work / f".fixture-{name}.json"
    with FileLock(str(work / f".fixture-{name}.lock")):  # 不叫 .<名字>.lock：那是脚本给输出文件夹的锁
        if not record.exists():
            record.write_text(json.dumps(_to_json(build())))
        return _from_json(json.loads(record.read_text()))


@pytest.fixture(scope="session")
def tiny_model(work) -> Path:
    """随机初始化的迷你 Qwen3 + 真实分词器。"""
    return shared(work, "tiny_model", lambda: tiny.build(work / "tiny-qwen3"))


def stage_args(recipe: str, tiny_model: Path, out: Path, *extra) -> list:
    return ["--config", TINY / f"{recipe}.yaml", "--model_name_or_path", tiny_model, "--output_dir", out, *extra]


def trained(script: str, *args, tmp: Path) -> subprocess.CompletedProcess:
    """跑一个训练脚本（在测试进程里，run_inline：省掉一个子进程约 6 秒的 import），必须成功。同样的选项和种子在子进程里
    训练出的逐位相同（tests/test_rl_stages.py 的重复训练在子进程里跑，和这里的比）。"""
    r = run_inline(script, *args, tmp=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


# 会话共用的迷你流水线，一个阶段一个夹具（按需训练、各只训练一次）：SFT、RM、PPO 用演示的 tiny 配方——学习效果的
# 测试（SFT loss 下降、RM 准确率、PPO 分数上升）要的就是演示本身；GRPO / RLOO / DPO（rl_runs）和金标准评委（gold）
# 只证明路径通，用几步的短配方。tiny_model 在 work/tiny-qwen3：测试里的 pipeline["tmp"] / "tiny-qwen3" 就是它。
# bench/bench_repeat.py 设它：重复跑的多进程测试只拿流水线的产物比文件名、键和形状，不看训练得好不好，
# 几步就够（负载重的机器上完整的 tiny 流水线要二十多分钟）。CI 不设。
SHORT_PIPELINE = os.environ.get("QWEN_RLHF_SHORT_PIPELINE") == "1"


@pytest.fixture(scope="session")
def sft(work, tiny_model):
    out = work / "sft"
    steps = ["--max_steps", 2] if SHORT_PIPELINE else []
    return shared(work, "sft", lambda: SimpleNamespace(
        folder=out, run=trained("train_sft.py", *stage_args("sft", tiny_model, out, *steps), tmp=work)))


@pytest.fixture(scope="session")
def rm(work, tiny_model):
    out = work / "rm"
    steps = ["--max_steps", 2] if SHORT_PIPELINE else []
    return shared(work, "rm", lambda: SimpleNamespace(
        folder=out, run=trained("train_rm.py", *stage_args("rm", tiny_model, out, *steps), tmp=work)))


@pytest.fixture(scope="session")
def rm_lora(work, tiny_model):
    """train_rm.py --use_peft true，tiny 配方几步，留出的偏好对一批评估完（eval 的准确率、分差就是整个留出集的）：
    测试看的是合并出的完整 RM 和训练时的模型一致、别的阶段照常读它，不看它学得多好。"""
    out = work / "rm_lora"
    run = run_inline("train_rm.py", *stage_args("rm", tiny_model, out, "--use_peft", "true", "--max_steps", 4,
                                                "--per_device_eval_batch_size", 64), tmp=work)
    assert run.returncode == 0, run.stderr[-3000:]
    return SimpleNamespace(folder=out, run=run)


@pytest.fixture(scope="session")
def ppo(work, tiny_model, sft, rm):
    """演示配方的 PPO（512 个 episode）：test_tiny_ppo_raises_the_mean_rm_score 要看它学到了东西；其余测试读它的产物。"""
    out = work / "ppo"
    steps = ["--total_episodes", 32] if SHORT_PIPELINE else []
    return shared(work, "ppo", lambda: SimpleNamespace(folder=out, run=trained("train_ppo.py", *stage_args(
        "ppo", tiny_model, out, "--sft_model_path", sft.folder, "--reward_model_path", rm.folder, *steps), tmp=work)))


@pytest.fixture(scope="session")
def pipeline(work, sft, rm, ppo):
    """SFT → RM → PPO 的产物（一次会话只训练一次）：{"sft", "rm", "ppo": 文件夹, "tmp": 会话目录, "runs": 各自的运行}。"""
    return {"sft": sft.folder, "rm": rm.folder, "ppo": ppo.folder, "tmp": work,
            "runs": {"sft": sft.run, "rm": rm.run, "ppo": ppo.run}}


RL = ("grpo", "rloo", "dpo")
RL_SHORT = {"grpo": ["--max_steps", 3, "--per_device_train_batch_size", 8],  # 1 个问题 × 8 个回答一步
            "rloo": ["--max_steps", 3, "--per_device_train_batch_size", 8],
            "dpo": ["--max_steps", 3]}


def rl_args(work: Path, stage: str, out: Path, *extra) -> list:
    """GRPO / RLOO / DPO 的短配方：tiny 配方 + 3 步，读会话共用的 SFT（和 RM）。"""
    inputs = ["--sft_model_path", work / "sft"] + (["--reward_model_path", work / "rm"] if stage != "dpo" else [])
    args = stage_args(stage, work / "tiny-qwen3", out, *inputs, *RL_SHORT[stage], *extra)
    i = args.index("--model_name_or_path")  # 这三个阶段没有基座选项：actor 就是 SFT 模型
    return args[:i] + args[i + 2:]


@pytest.fixture(scope="session")
def rl_runs(work, sft, rm):
    """GRPO、RLOO、DPO 各跑 3 步（每步存一个快照）：{阶段: 子进程结果，.out 是结果文件夹}。"""
    def build():
        runs = {}
        for stage in RL:
            out = work / stage
            runs[stage] = trained(f"train_{stage}.py", *rl_args(work, stage, out), tmp=work)
            runs[stage].out = out
        return runs

    return shared(work, "rl_runs", build)


@pytest.fixture(scope="session")
def gold(work, rm):
    """金标准评委：更大的迷你模型（tiny.GOLD）上 train_rm.py --role gold，几步（只证明路径通：角色、评测里的第二个分数）。"""
    def build():
        base = tiny.build(work / "tiny-qwen3-gold", tiny.GOLD, seed=1)
        out = work / "rm_gold"
        run = trained("train_rm.py", *stage_args("rm_gold", base, out, "--max_steps", 4), tmp=work)
        return SimpleNamespace(folder=out, base=base, run=run)

    return shared(work, "gold", build)


def read_scalars(logdir) -> dict[str, list[float]]:
    """读回一个 TensorBoard 目录里的全部标量：{tag: [按步排序的值]}。"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)] for tag in acc.Tags()["scalars"]}


def read_steps(logdir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return sorted(e.step for e in acc.Scalars(tag))


def quarter_means(values: list[float]) -> tuple[float, float]:
    """前四分之一与后四分之一的均值：看曲线整体是升是降，不被单步噪声左右。"""
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


# 贵的夹具和它们的先后：测试按"用到的最贵的夹具"排序（稳定排序，同一档里保持原来的顺序），所以纯函数的测试先跑，
# 每一档第一个测试只为这一档付一次训练：没有哪个测试的 setup 要把 SFT、RM、PPO 一口气全训练完（每个测试 ≤ 60 秒）。
# 模块级夹具（bench、uninterrupted……）放在最后一档，用它的测试仍然连在一起，模块夹具只建一次。
FIXTURE_COST = {"tiny_model": 1, "sft": 2, "rm": 3, "rm_lora": 3, "gold": 4, "ppo": 5, "pipeline": 5, "rl_runs": 6,
                "bench": 7, "uninterrupted": 7, "trajectory": 8}
SLOW_FIXTURES = set(FIXTURE_COST)


def fixture_cost(item) -> int:
    return max((FIXTURE_COST.get(name, 0) for name in getattr(item, "fixturenames", ())), default=0)


def pytest_collection_modifyitems(items):
    """用到迷你模型或整条流水线、或者起子进程跑真实脚本的测试都算 slow：`bash scripts/test.sh -m "not slow"`
    一分钟内跑完其余的（纯函数、选项解析、报告、数据检查）。然后按文件（见下）和 fixture_cost 排序（见 FIXTURE_COST）。"""
    import inspect

    for item in items:
        source = inspect.getsource(item.function) if hasattr(item, "function") else ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or any(
                call in source for call in ("run_script(", "chat_run(", "launch(", "subprocess.", "trained(")):
            item.add_marker(pytest.mark.slow)
    # 两个进程按文件分（scripts/test.sh 的 --dist loadfile --no-loadscope-reorder：文件按这里排好的顺序分出去）。第一个文件
    # test_pipeline.py 训练会话共用的流水线（SFT → RM → PPO，两分钟多），这期间另一个进程跑完全不用它的文件（只用迷你模型
    # 或什么都不用），而不是和它一起等锁；之后才是要流水线的文件。文件内部仍按 fixture_cost 排。
    worst = {}
    for item in items:
        worst[item.path.name] = max(worst.get(item.path.name, 0), fixture_cost(item))

    def file_rank(item) -> int:
        return 0 if item.path.name == "test_pipeline.py" else (1 if worst[item.path.name] < FIXTURE_COST["sft"] else 2)

    items.sort(key=lambda item: (file_rank(item), fixture_cost(item)))


def read_by_step(logdir, tag: str) -> dict[int, float]:
    """{步数: 值}；同一步写过两次时（被 SIGKILL 的运行已经画了那一步，续训又画一次）以后写的为准，和 TensorBoard 显示的一样。"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time)}
