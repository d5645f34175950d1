"""多进程：用 README 里的 accelerate launch 命令在 CPU 上跑两个进程（gloo），结果和单进程一样完整；
以及 configs/accelerate/ 里三个配置被 accelerate 自己解析成什么、DeepSpeed（装了才跑）能否真的训练和保存。"""

import json
import os
import re
import signal
import subprocess
import sys

import psutil  # accelerate 自己依赖它
import pytest
from conftest import ROOT, last_line, offline_env, read_scalars, read_steps, run_until, stage_args

pytestmark = pytest.mark.slow

ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"
# DeepSpeed 在 CPU 上初始化自己的通信后端时每个进程打印这一行；DeepSpeed 被 accelerate 关掉时没有它
DEEPSPEED_COMM_READY = "deepspeed_shm_comm_op built successfully"


def launch_cmd(recipe: str, script: str, port: int, *args) -> list[str]:
    """accelerate launch --config_file configs/accelerate/<recipe>.yaml --num_processes 2 <script> …

    不能加 --cpu：它会让 accelerate 改用单进程启动器，只跑一个进程。tiny 配方里的 use_cpu 让两个进程走 gloo。
    也不能设 ACCELERATE_USE_CPU：accelerate 会因此悄悄关掉 DeepSpeed，ZeRO-3 的分片参数没人收集，前向直接出错。
    """
    return list(map(str, [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          ACCELERATE_CONFIGS / f"{recipe}.yaml", "--num_processes", 2, "--main_process_port", port,
                          ROOT / script, *args]))


def launch(recipe: str, script: str, port: int, *args, tmp):
    return subprocess.run(launch_cmd(recipe, script, port, *args), cwd=ROOT, env=offline_env(tmp, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=900, check=False)


def stage_info(folder):
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))


def file_names(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def weight_shapes(folder) -> dict:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118  safe_open 不是字典


def bar_starts(stderr: str, desc: str) -> int:
    """某个进度条出现了几次（每个进程各自显示就会是 2）。"""
    return len(re.findall(re.escape(desc) + r":\s+0%", stderr))


# ---------------------------------------------------------------- DDP（gloo）：SFT、RM


@pytest.mark.parametrize("recipe, port", [("zero2", 29538)])  # DDP 的 PPO 见下面的续训测试
def test_ppo_on_two_processes_has_the_single_process_shape_and_counts_episodes_per_process(pipeline, recipe, port):
    """两个进程跑 PPO（DDP，以及装了 deepspeed 时的 ZeRO-2）：适配器、合并模型、stage.json 键、曲线标签都和单进程一样；
    每次更新吃 2 个进程 × 每卡 4 条，16 个 episode = 2 次更新 × 2 个 PPO epoch × 2 个 minibatch = 8 个优化器步；
    数据摘要和完成信息只由主进程打印一次。"""
    if recipe == "zero2":
        pytest.importorskip("deepspeed")
    out = pipeline["tmp"] / f"ppo-{recipe}"
    r = launch(recipe, "train_ppo.py", port, *stage_args(
        "ppo", pipeline["tmp"] / "tiny-qwen3", out, "--sft_model_path", pipeline["sft"],
        "--reward_model_path", pipeline["rm"], "--per_device_train_batch_size", 4, "--total_episodes", 16),
        tmp=pipeline["tmp"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(DEEPSPEED_COMM_READY) == (2 if recipe == "zero2" else 0)
    # ZeRO-2 的 PPO 不写可续训的检查点：开始时主进程说一次
    assert r.stdout.count("PPO 不写可续训的检查点") == (1 if recipe == "zero2" else 0)
    single, info = stage_info(pipeline["ppo"]), stage_info(out)
    assert file_names(out) == file_names(pipeline["ppo"])
    assert file_names(out / "merged") == file_names(pipeline["ppo"] / "merged")
    assert set(info) == set(single)
    assert weight_shapes(out / "merged") == weight_shapes(pipeline["ppo"] / "merged")
    assert info["episodes"] == 16 and info["optimizer_steps"] == 2 * 2 * 2
    assert info["launch"] == {"num_processes": 2, "device": "cpu", "zero_stage": 2 if recipe == "zero2" else None}
    scalars = read_scalars(info["tensorboard"])
    assert set(scalars) == set(read_scalars(single["tensorboard"]))
    assert len(scalars["ppo/objective/scores"]) == 2  # logging_steps=1：每次更新一个点
    assert r.stdout.count("全局 rollout 批量 8，共 16 个 episode") == 1
    assert r.stdout.count("[完成]") == 1


def test_download_failure_on_two_processes_is_reported_once(tmp_path):
    """数据集要下载时由主进程先下，其余进程等它：离线下载失败时只有主进程报一行中文错误（而不是每个进程各报一遍、
    各自往同一个文件夹下载），整个启动以非零退出码结束，不会卡住。"""
    r = launch("ddp", "train_sft.py", 29540, *stage_args("sft", tmp_path / "no-model", tmp_path / "out",
                                                        "--dataset", "nobody/no-such-dataset"), tmp=tmp_path)
    assert r.returncode != 0
    assert r.stderr.count("无法下载数据集 nobody/no-such-dataset") == 1, r.stderr[-3000:]
    assert not (tmp_path / "out").exists()
    assert not (ROOT / "checkpoint" / "cache" / "datasets" / "nobody__no-such-dataset").exists()  # 下载失败不留空文件夹


def worker_pid(launcher_pid: int, rank: int) -> int:
    for child in psutil.Process(launcher_pid).children(recursive=True):
        if child.environ().get("RANK") == str(rank):
            return child.pid
    raise AssertionError(f"找不到 rank {rank} 的进程")


def wait_or_kill(proc, timeout=120):
    """等启动器结束；卡住了就连同子进程一起清掉（子进程不在启动器的进程组里），别让它们拖慢后面的测试。"""
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()


@pytest.mark.parametrize("who", ["terminal", "one_worker"])
def test_ctrl_c_on_two_processes_stops_both_at_the_same_step_and_resume_finishes(pipeline, tmp_path, who):
    """terminal：像终端里的 Ctrl-C 那样发给启动器所在的进程组（torchrun 的子进程各自一个会话，由启动器转发）。
    one_worker：只有 rank 1 收到信号，两个进程也必须在同一步一起停下、一起存出可续训的检查点（各停各的会互相
    等到启动器超时）。两种情况续训提示都只由主进程说一次；续训能正常完成。"""
    out = tmp_path / "sft"
    args = stage_args("sft", pipeline["tmp"] / "tiny-qwen3", out, "--logging_steps", 1, "--num_train_epochs", 4)
    env = offline_env(tmp_path, OMP_NUM_THREADS="1")
    proc, lines = run_until(launch_cmd("ddp", "train_sft.py", 29541, *args), env, "'loss'", new_session=True)
    if who == "terminal":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(worker_pid(proc.pid, 1), signal.SIGINT)
    wait_or_kill(proc)
    text = "".join(lines)
    assert text.count("--resume_from_checkpoint") == 1, text[-3000:]
    ckpts = sorted((tmp_path / "sft-trainer-checkpoints").glob("checkpoint-*"))
    assert ckpts and not out.exists()  # 进度单独保存，不冒充完成的结果
    if who == "terminal":  # 续训再走一步就结束（--max_steps），不必把 4 个 epoch 跑完
        step = int(ckpts[-1].name.split("-")[1])
        r = launch("ddp", "train_sft.py", 29542, *args, "--resume_from_checkpoint", ckpts[-1], "--max_steps", step + 1,
                   tmp=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        # 两个进程训练出的结果和单进程的一样完整：同样的文件、stage.json 键、权重形状、曲线标签
        single, info = stage_info(pipeline["sft"]), stage_info(out)
        assert info["launch"] == {"num_processes": 2, "device": "cpu", "zero_stage": None}
        assert file_names(out) == file_names(pipeline["sft"]) and set(info) == set(single)
        assert weight_shapes(out) == weight_shapes(pipeline["sft"])
        assert set(read_scalars(info["tensorboard"])) == set(read_scalars(single["tensorboard"]))
        # 全局批量、数据摘要、datasets 的进度条都只由主进程说一次
        assert r.stdout.count("[训练] 全局批量 32（2 个进程 × 每进程 16 × 累积 1）") == 1
        assert r.stdout.count("[数据] 共") == 1 and r.stdout.count("[完成]") == 1
        assert bar_starts(r.stderr, "Building labels for train dataset") == 1


def test_sigterm_during_ppo_on_two_processes_then_resume_on_two_processes_finishes_the_same_run(pipeline, tmp_path):
    """PPO 两个进程（DDP）：平台关机的 SIGTERM 发给启动器，两个进程在同一次更新后一起存检查点（各进程自己的随机数状态），
    续训提示只说一次；再用两个进程续训，跑完同样的 episode 数，产物和单进程的一样完整，曲线步数连续。"""
    out = tmp_path / "ppo"
    args = stage_args("ppo", pipeline["tmp"] / "tiny-qwen3", out, "--sft_model_path", pipeline["sft"],
                      "--reward_model_path", pipeline["rm"], "--per_device_train_batch_size", 4, "--total_episodes", 32)
    env = offline_env(tmp_path, OMP_NUM_THREADS="1")
    proc, lines = run_until(launch_cmd("ddp", "train_ppo.py", 29543, *args), env, "objective/scores", new_session=True)
    os.killpg(proc.pid, signal.SIGTERM)
    wait_or_kill(proc)
    text = "".join(lines)
    assert text.count("错误：收到 SIGTERM") == 1 and "继续训练：accelerate launch --num_processes 2" in text, text[-3000:]
    ckpt = sorted((tmp_path / "ppo-trainer-checkpoints").glob("checkpoint-*"))
    assert ckpt and {"rng_state_0.pth", "rng_state_1.pth"} <= file_names(ckpt[-1]) and not out.exists()
    r = launch("ddp", "train_ppo.py", 29544, *args, "--resume_from_checkpoint", "true", tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    single, info = stage_info(pipeline["ppo"]), stage_info(out)
    assert file_names(out) == file_names(pipeline["ppo"]) and set(info) == set(single)
    assert weight_shapes(out / "merged") == weight_shapes(pipeline["ppo"] / "merged")
    assert info["episodes"] == 32 and info["optimizer_steps"] == 4 * 2 * 2  # 4 次更新 × 2 个 epoch × 2 个 minibatch
    assert info["launch"]["num_processes"] == 2 and info["resumed"]["at_update"] >= 1
    assert read_steps(info["tensorboard"], "ppo/objective/scores") == [1, 2, 3, 4]
    assert r.stdout.count("[完成]") == 1


# ---------------------------------------------------------------- accelerate 配置：解析与启动器空跑


def dry_run(recipe: str, *launch_args: str) -> tuple[str, object, dict]:
    """让 accelerate launch 自己解析配置，但不启动进程：返回它选的启动器、解析后的参数、它给子进程加的环境变量。"""
    from accelerate.commands import launch as accelerate_launch
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    chosen = {}
    with pytest.MonkeyPatch.context() as mp:
        # 同一进程里先跑过的测试（run_inline 的训练脚本）解析 TrainingArguments 时会设 ACCELERATE_MIXED_PRECISION 等：
        # 先拿掉，下面比的才是启动器自己加的
        for key in [k for k in os.environ if k.startswith("ACCELERATE_")]:
            mp.delenv(key)
        for name in ("deepspeed_launcher", "multi_gpu_launcher", "simple_launcher"):
            mp.setattr(accelerate_launch, name, lambda a, name=name: chosen.update(launcher=name, args=a))
        parser = accelerate_launch.launch_command_parser()
        accelerate_launch.launch_command(parser.parse_args(
            ["--config_file", str(ACCELERATE_CONFIGS / f"{recipe}.yaml"), *launch_args, "train_sft.py"]))
        args = chosen["args"]
        if chosen["launcher"] == "deepspeed_launcher":
            env = prepare_deepspeed_cmd_env(args)[1]
        else:
            env = prepare_multi_gpu_env(args)
        return chosen["launcher"], args, {k: v for k, v in env.items() if os.environ.get(k) != v}


@pytest.mark.parametrize("recipe, distributed_type, zero_stage", [
    ("ddp", "MULTI_GPU", None), ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3)])
def test_accelerate_config_parses_to_what_the_readme_says(recipe, distributed_type, zero_stage):
    """accelerate 自己的加载器读配置：类型、ZeRO 阶段、2 个进程；混合精度一律 "no"，交给脚本的 --bf16 / --fp16。"""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ACCELERATE_CONFIGS / f"{recipe}.yaml"))
    assert cfg.distributed_type == distributed_type
    assert cfg.num_processes == 2 and cfg.num_machines == 1
    assert cfg.mixed_precision == "no"
    assert (cfg.deepspeed_config or {}).get("zero_stage") == zero_stage
    if zero_stage == 3:  # 不收集成完整的 16 位权重，trainer.save_model 在 ZeRO-3 下存不出可用的模型
        assert cfg.deepspeed_config["zero3_save_16bit_model"] is True


@pytest.mark.parametrize("recipe, launcher, zero_stage", [
    ("ddp", "multi_gpu_launcher", None), ("zero2", "deepspeed_launcher", "2"), ("zero3", "deepspeed_launcher", "3")])
def test_launcher_dry_run_passes_the_recipe_to_each_process(recipe, launcher, zero_stage):
    """accelerate launch 空跑：--num_processes 覆盖配置里的 2；子进程拿到的环境变量里有 ZeRO 阶段、精度 "no"。"""
    chosen, args, env = dry_run(recipe, "--num_processes", "4")
    assert chosen == launcher and args.num_processes == 4
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    assert env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == zero_stage
    assert env.get("ACCELERATE_USE_DEEPSPEED") == ("true" if zero_stage else None)


PPO_CHECK = """
from qwen_rlhf import errors, recipes, stages
errors.run(lambda: recipes.parse("ppo", ["--output_dir", {out!r}, "--use_cpu", "true", "--report_to", "none"]), stages.oom_hint("ppo"))
"""


def test_ppo_under_zero3_is_refused_with_one_chinese_line(tmp_path):
    """用启动器空跑得到的环境变量建 PPOConfig：ZeRO-3 以退出码 2 和一行中文拒绝（指向 zero2.yaml）。DDP 和 ZeRO-2
    被放行由上面真的跑起来的两个 PPO 测试证明。在子进程里做：DeepSpeed 配置会在 transformers 里留下全局状态，
    不能污染同一会话的其他测试。"""
    pytest.importorskip("deepspeed")  # 没装 deepspeed 时 TrainingArguments 本身就拒绝 DeepSpeed 配置
    env = dry_run("zero3")[2]
    r = subprocess.run([sys.executable, "-c", PPO_CHECK.format(out=str(tmp_path / "out"))], cwd=ROOT,
                       env=offline_env(tmp_path, **env), capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "PPO 不支持 DeepSpeed ZeRO-3" in last_line(r.stderr) and "zero2.yaml" in last_line(r.stderr)
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- DeepSpeed 真跑（CPU 上 gloo；没装 deepspeed 就跳过）


@pytest.mark.parametrize("stage, port", [("sft", 29536)])  # RM 走同一条保存路径
def test_zero3_trains_and_saves_full_weights(pipeline, stage, port):
    """ZeRO-3 两个进程跑 SFT / RM：参数分片在两个进程里，保存时必须所有进程一起收集——
    存出来的每个张量形状和单进程的一样（只在主进程保存会得到空张量或卡住）。"""
    pytest.importorskip("deepspeed")
    out = pipeline["tmp"] / f"{stage}-zero3"
    r = launch("zero3", f"train_{stage}.py", port,
               *stage_args(stage, pipeline["tmp"] / "tiny-qwen3", out, "--max_steps", 2), tmp=pipeline["tmp"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(DEEPSPEED_COMM_READY) == 2
    assert stage_info(out)["launch"] == {"num_processes": 2, "device": "cpu", "zero_stage": 3}
    assert file_names(out) == file_names(pipeline[stage])
    assert weight_shapes(out) == weight_shapes(pipeline[stage])
    assert r.stdout.count("[训练] 全局批量 32（2 个进程 × 每进程 16 × 累积 1）") == 1
