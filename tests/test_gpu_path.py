"""GPU 上才会走到的分支，在没有 GPU 的 CPU 机器上逐条钉住（issue #27）。

这里的 torch 是 CPU 版：`gpus` 把 torch.cuda 换成几块假卡（名字、显存、计算能力，以及 torch 自己对"支不支持 bf16"
的回答：带模拟时计算能力 7.x 的卡也说支持，见 torch/cuda/__init__.py 的 is_bf16_supported）；DeepSpeed ZeRO-3 用
accelerate launch 解析 configs/accelerate/zero3.yaml 得到的环境变量；多进程用 TrainingArguments.world_size 或
gather_object 的替身。每个测试的 docstring 说它替的是哪种 GPU 情形。这些替身证明的是我们的判断和调用，
不证明真卡上的速度或显存；真卡上还没有跑过（docs/details.md 的"GPU 路径一览"）。
"""

import importlib.util
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_inline

from qwen_rlhf import device, inference, options, ppo, recipes
from qwen_rlhf.errors import EXIT_BAD_INPUT, UserError
from qwen_rlhf.stages import STAGES

TRAINING = ("sft", "rm", "ppo", "grpo", "rloo", "dpo")
RTX4090 = ("NVIDIA GeForce RTX 4090", 24, (8, 9))
A800 = ("NVIDIA A800 80GB PCIe", 80, (8, 0))
T4 = ("Tesla T4", 15, (7, 5))


@pytest.fixture
def gpus(monkeypatch):
    """gpus(卡, 卡, …)：torch.cuda 看到这几块卡（每块 (名字, GiB, 计算能力)），当前卡是 0 号。返回 {"current": 编号}。"""
    from accelerate import PartialState

    PartialState(cpu=True)  # 进程级的单例先按 CPU 建好：假卡不能混进同一会话里别的测试

    def install(*cards):
        state = {"current": 0}

        def index_of(d) -> int:  # torch 接受编号、"cuda:1"、torch.device；不带编号 = 当前卡
            i = d if isinstance(d, int) or d is None else torch.device(d).index
            return state["current"] if i is None else i

        def card(d=None):
            return cards[index_of(d)]

        def set_device(d):
            state["current"] = index_of(d)

        def is_bf16_supported(including_emulation=True):  # torch 的判断：计算能力 ≥ 8，否则能建出 bf16 张量就算（模拟）
            return card()[2] >= (8, 0) or including_emulation

        for name, fake in {
            "is_available": lambda: True, "device_count": lambda: len(cards), "current_device": lambda: state["current"],
            "set_device": set_device, "get_device_name": lambda d=None: card(d)[0],
            "get_device_properties": lambda d=None: SimpleNamespace(total_memory=card(d)[1] * 2**30,
                                                                    major=card(d)[2][0], minor=card(d)[2][1]),
            "get_device_capability": lambda d=None: card(d)[2], "is_bf16_supported": is_bf16_supported,
        }.items():
            monkeypatch.setattr(torch.cuda, name, fake)
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return state

    return install


# ---------------------------------------------------------------- 1. 多卡机器上用 python 直接启动


def test_a_training_stage_started_with_python_on_a_two_gpu_box_refuses_before_loading(gpus, monkeypatch):
    """两块 RTX 4090、没有 accelerate launch（WORLD_SIZE 未设）：transformers 会按 device_count 用 DataParallel。
    每个训练阶段在设备那一行就拒绝（加载模型之前），一行说出两条能用的命令；accelerate launch 起的每个进程
    （WORLD_SIZE=2）照常通过；评测和对话只用一块卡，不受影响。"""
    gpus(RTX4090, RTX4090)
    monkeypatch.setattr(sys, "argv", ["train_x.py", "--config", "my recipe.yaml"])
    for stage in TRAINING:
        with pytest.raises(UserError) as e:
            device.announce_device(stage, False, "bf16")
        script = STAGES[stage].script
        assert e.value.code == EXIT_BAD_INPUT and "\n" not in e.value.message
        assert f"CUDA_VISIBLE_DEVICES=0 python {script} --config 'my recipe.yaml'" in e.value.message
        assert (f"accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 {script} --config "
                "'my recipe.yaml'") in e.value.message
    for stage in ("benchmark", "chat"):
        assert device.announce_device(stage, False, "fp32") == "cuda"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert device.announce_device("sft", False, "bf16") == "cuda"


def load_gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_gpu_check(monkeypatch, tmp_path, *flags, info: dict) -> list[tuple[list[str], dict]]:
    """bench/gpu_check.py 的 main() 照常跑，只把"起子进程"换成记录：返回每个子进程的 (命令行, 环境变量)。
    info：替身的准备步骤写出的 prepare.json（哪块卡、什么尺寸）。"""
    gpu_check = load_gpu_check(monkeypatch)
    calls = []

    started: list[int] = []

    def start(cmd, env, log, stdout=None):
        cmd = [str(c) for c in cmd]
        calls.append((cmd, dict(env)))
        if "--_prepare" in cmd:
            (tmp_path / "work" / "prepare.json").write_text(json.dumps(info), encoding="utf-8")
        for f in (log, stdout):
            if f is not None:
                f.write_text("你好", encoding="utf-8")
        # GPU 上每个阶段独占显卡（峰值显存才是它自己的）：前一个没结束，下一个不开始
        assert info["device"] != "cuda" or not started, ("GPU 上同时跑了两个阶段", cmd)
        started.append(len(calls))
        return {"pid": len(calls)}

    def finish(pids):
        pid = next(p for p in started if p in pids)
        started.remove(pid)
        return {"pid": pid, "rc": 0, "wall_s": 1.0, "peak_rss_mb": 1.0}

    monkeypatch.setattr(gpu_check, "start", start)
    monkeypatch.setattr(gpu_check, "finish", finish)
    monkeypatch.setattr(gpu_check, "estimate", lambda *a: 1.0)  # 显存估算另有测试；这里只看命令
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", *flags, "--out", str(tmp_path / "result.json"),
                                      "--work_dir", str(tmp_path / "work")])
    gpu_check.main()
    return calls


GPU_INFO = {"device": "cuda", "size": "full", "gpu": RTX4090[0], "bf16": True, "data": {}}


def test_the_gpu_self_check_runs_every_stage_on_one_gpu(monkeypatch, tmp_path):
    """多卡机器上的 bash scripts/gpu_check.sh：它拿实测和单卡的显存估算比，所以每个子进程只看一块卡
    （CUDA_VISIBLE_DEVICES=0，否则训练脚本会以"多卡一个进程"拒绝）；用户自己选了卡时照用户的。"""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    calls = run_gpu_check(monkeypatch, tmp_path, "--device", "cuda", info=GPU_INFO)
    # 准备 + 六个训练阶段 + RM-LORA（train_rm.py --use_peft true）+ 评测 + 对话
    assert len(calls) == 10 and all(env.get("CUDA_VISIBLE_DEVICES") == "0" for _, env in calls)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    calls = run_gpu_check(monkeypatch, tmp_path / "again", "--device", "cuda", info=GPU_INFO)
    assert all(env["CUDA_VISIBLE_DEVICES"] == "3" for _, env in calls)


# ---------------------------------------------------------------- 2. DeepSpeed ZeRO-3


@pytest.fixture
def zero3_launch(monkeypatch):
    """accelerate launch --config_file configs/accelerate/zero3.yaml 给每个进程的环境变量（启动器空跑得到）。
    结束后拆掉 transformers 记下的 DeepSpeed 配置，同一会话里别的测试不会以为自己在 ZeRO-3 下。"""
    pytest.importorskip("deepspeed")  # 没装 deepspeed 时 TrainingArguments 本身就拒绝 DeepSpeed 配置
    from test_distributed import dry_run

    for key, value in dry_run("zero3")[2].items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    yield
    import gc

    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    gc.collect()
    unset_hf_deepspeed_config()


@pytest.mark.parametrize("stage", ["ppo", "grpo", "rloo", "dpo"])
def test_every_stage_that_cannot_use_zero3_refuses_it_when_its_options_are_parsed(zero3_launch, tmp_path, stage):
    """ZeRO-3（zero3_init_flag：进程里每个 from_pretrained 都被分片）：PPO、GRPO、RLOO、DPO 在解析选项时、任何模型
    加载之前就以一行中文拒绝，指向 ZeRO-2 / DDP。SFT / RM 照常（它们两个进程真跑 ZeRO-3 的测试在 test_distributed.py）。"""
    with pytest.raises(UserError) as e:
        recipes.parse(stage, ["--output_dir", str(tmp_path / stage), "--use_cpu", "true"])
    assert e.value.code == EXIT_BAD_INPUT and "\n" not in e.value.message
    assert f"{stage.upper()} 不支持 DeepSpeed ZeRO-3" in e.value.message


def test_an_rm_trained_with_lora_refuses_zero3_when_its_options_are_parsed(zero3_launch, tmp_path):
    """--use_peft true 的 RM 导出时主进程单独重新加载基座合并 LoRA：ZeRO-3 下在加载模型之前一行拒绝（全参数的 RM 照常）。"""
    with pytest.raises(UserError) as e:
        recipes.parse("rm", ["--output_dir", str(tmp_path / "rm"), "--use_cpu", "true", "--use_peft", "true"])
    assert e.value.code == EXIT_BAD_INPUT and "RM 不支持 DeepSpeed ZeRO-3（用 LoRA 训练时" in e.value.message
    assert "configs/accelerate/zero2.yaml" in e.value.message and "configs/accelerate/ddp.yaml" in e.value.message


def test_sft_and_rm_still_accept_zero3(zero3_launch, tmp_path):
    """同样的 ZeRO-3 环境，SFT / RM 解析出 ZeRO-3 的 DeepSpeed 插件（拒绝只针对用不了它的阶段）。"""
    for stage in ("sft", "rm"):
        cfg = recipes.parse(stage, ["--output_dir", str(tmp_path / stage), "--use_cpu", "true"])[1]
        assert cfg.deepspeed_plugin.zero_stage == 3


# ---------------------------------------------------------------- 3. PPO 续训：优化器放到本进程的设备上


class TinyPolicy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)


def test_ppo_resume_loads_the_optimizer_onto_this_process_device_not_the_saving_one(monkeypatch, tmp_path):
    """多卡续训：检查点是 rank 0 从 cuda:0 上存的（optimizer.pt 里的张量标着 cuda:0），rank 1 读它时必须放到自己的
    设备上，而不是都挤到 cuda:0。这里本进程的设备是 CPU（替 rank 1 的 cuda:1）：不指定 map_location 时 torch 要把
    张量放回 cuda:0，在 CPU 版 torch 上直接失败；指定了就读到 CPU 上，数值不变。"""
    import peft
    from safetensors.torch import save_model

    from qwen_rlhf.outputs import write_json

    policy = peft.get_peft_model(TinyPolicy(), peft.LoraConfig(target_modules=["lin"], r=2))
    critic = torch.nn.Linear(4, 1)
    saved_opt = torch.optim.AdamW(critic.parameters(), lr=0.1)
    critic(torch.ones(2, 4)).sum().backward()
    saved_opt.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(saved_opt, lambda step: 1.0)
    ckpt = tmp_path / "checkpoint-1"
    policy.save_pretrained(str(ckpt / "adapter"))
    save_model(critic, str(ckpt / "critic.safetensors"))
    with monkeypatch.context() as m:  # 存的时候把每个张量标成 cuda:0：和 rank 0 在 GPU 上存的文件一样
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(saved_opt.state_dict(), ckpt / "optimizer.pt")
        torch.save(scheduler.state_dict(), ckpt / "scheduler.pt")
    write_json(ckpt / ppo.RESUME_FILE, {"global_step": 1, "episode": 8, "optimizer_steps": 1, "max_steps": 4})

    trainer = object.__new__(ppo.RLHFPPOTrainer)  # 训练中途的 trainer：resume 只用到这几样
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), unwrap_model=lambda model: model)
    trainer.model = SimpleNamespace(policy=policy, value_model=critic)
    trainer.optimizer = torch.optim.AdamW(critic.parameters(), lr=0.1)
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)
    trainer.callback_handler = SimpleNamespace(callbacks=[])
    trainer.resume(ckpt)

    state = trainer.optimizer.state_dict()["state"][0]
    assert state["exp_avg"].device.type == "cpu"
    assert torch.equal(state["exp_avg"], saved_opt.state_dict()["state"][0]["exp_avg"])
    assert trainer.optimizer_steps == 1


# ---------------------------------------------------------------- 4. 没有原生 bf16 的卡


def test_a_card_without_native_bf16_trains_in_fp16_or_fp32_and_the_device_line_says_so(gpus, capsys):
    """T4（计算能力 7.5：torch.cuda.is_bf16_supported() 默认带模拟，回答 True）：各阶段的默认精度按计算能力定，
    SFT / RM / DPO 用 fp16，PPO / GRPO / RLOO 用 fp32，和环境检查（preflight）说的一样；A800 上都用 bf16。
    用户硬加 --bf16 true 时设备那一行提醒这是模拟的 bf16。"""
    gpus(T4)
    on_t4 = {s: device.precision_of(SimpleNamespace(**device.precision_defaults(STAGES[s].fp16)))
             for s in TRAINING}
    assert on_t4 == {"sft": "fp16", "rm": "fp16", "ppo": "fp32", "grpo": "fp32", "rloo": "fp32", "dpo": "fp16"}
    device.announce_device("sft", False, on_t4["sft"])
    assert capsys.readouterr().out.strip() == "设备：Tesla T4（15 GB）· fp16"
    device.announce_device("sft", False, "bf16")
    out = capsys.readouterr().out
    assert "计算能力 7.5" in out and "没有原生 bf16" in out
    gpus(A800)
    assert all(device.precision_defaults(STAGES[s].fp16) == {"bf16": True, "fp16": False}
               for s in TRAINING)


def stop_at_load(monkeypatch) -> list:
    """chat.py 走到加载模型那一步就停（记下它要的 dtype）：前面的设备判断都是真的，后面的加载在假卡上做不了。"""
    seen = []

    def load_policy(name, folder, allow_pickle=False, dtype=None):
        seen.append(dtype)
        raise UserError("（测试）到加载为止", 9)

    monkeypatch.setattr(inference, "load_policy", load_policy)
    return seen


def base_folder(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}), encoding="utf-8")
    return folder


def test_chat_on_a_card_without_native_bf16_loads_fp32_and_says_so(gpus, monkeypatch, tmp_path):
    """T4 上 python chat.py：按 fp32 加载（不是模拟的 bf16），设备那一行也写 fp32；A800 上按 bf16。"""
    seen, folder = stop_at_load(monkeypatch), base_folder(tmp_path)
    for card, dtype, words in ((T4, torch.float32, "Tesla T4（15 GB）· fp32"),
                               (A800, torch.bfloat16, "NVIDIA A800 80GB PCIe（80 GB）· bf16")):
        gpus(card)
        r = run_inline("chat.py", "--model", "base", "--model_name_or_path", folder, "--prompt", "你好", tmp=tmp_path)
        assert seen[-1] == dtype and f"设备：{words}" in r.stderr, r.stderr[-2000:]


def test_the_gpu_self_check_asks_the_same_bf16_question_as_the_scripts(gpus, monkeypatch, tmp_path):
    """T4 上的 bash scripts/gpu_check.sh：准备步骤记下的 bf16 和各脚本的默认精度同一个判断（没有原生 bf16 = False），
    它据此给 PPO / GRPO / RLOO 用 fp32 的显存估算。模型换成只有分词器的替身（这里只看精度那一项）。"""
    from qwen_rlhf import tiny

    gpus(T4)
    gpu_check = load_gpu_check(monkeypatch)

    def tokenizer_only(out, config=None, seed=0):
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tiny.tokenizer_files())).save_pretrained(str(out))
        return out

    monkeypatch.setattr(gpu_check.tiny, "build", tokenizer_only)
    gpu_check.prepare(tmp_path, "tiny", "cuda")
    info = json.loads((tmp_path / "prepare.json").read_text(encoding="utf-8"))
    assert (info["gpu"], info["bf16"]) == ("Tesla T4", False)


# ---------------------------------------------------------------- 5. GRPO / RLOO 的预算按全局回答数


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_grpo_and_rloo_generate_as_many_answers_as_ppo_has_episodes_whatever_the_process_count(monkeypatch, tmp_path,
                                                                                                processes):
    """accelerate launch --num_processes N（TrainingArguments.world_size 报 N）：GRPO / RLOO 的默认预算是所有进程合计的
    回答数，和 PPO 的 total_episodes 一样按全局算；步数随进程数减少，回答总数 = PPO 的 episode 数（同样向上取整到
    整批）。"""
    from transformers import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: processes))
    ppo_defaults = STAGES["ppo"].defaults
    ppo_batch = ppo_defaults["per_device_train_batch_size"] * ppo_defaults["gradient_accumulation_steps"] * processes
    ppo_episodes = math.ceil(ppo_defaults["total_episodes"] / ppo_batch) * ppo_batch  # TRL：num_total_batches × 批量
    for stage in ("grpo", "rloo"):
        args, cfg, _ = recipes.parse(stage, ["--output_dir", str(tmp_path / stage)])
        per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * processes
        assert cfg.max_steps * per_step == ppo_episodes
        assert args.total_answers == ppo_defaults["total_episodes"]


# ---------------------------------------------------------------- 7. GPU 自检的评测只读自己训练出的模型


def test_the_gpu_self_check_benchmarks_only_the_models_it_trained(monkeypatch, tmp_path):
    """一台跑过真实流程的机器（仓库的 checkpoint/ 里有 grpo / rloo / dpo）上的 bash scripts/gpu_check.sh：评测那一步
    给明确的 --models，每个模型都指向自检自己的工作目录，benchmark 不会去 checkpoint/ 里找（那里的划分指纹不同）。"""
    import benchmark

    calls = run_gpu_check(monkeypatch, tmp_path, "--device", "cpu",
                          info={**GPU_INFO, "device": "cpu", "size": "tiny", "gpu": None, "bf16": False})
    (argv,) = [cmd[2:] for cmd, _ in calls if cmd[1].endswith("benchmark.py")]
    (args,) = options.parse([benchmark.BenchmarkArgs], args=argv)
    specs, paths = benchmark.check_options(args), args.paths()
    assert specs == ["sft", "ppo", "grpo", "rloo", "dpo"]
    assert all(options.input_path(paths[s]).resolve().is_relative_to((tmp_path / "work").resolve()) for s in specs)


# ---------------------------------------------------------------- 8. --device cuda:N；PPO 的 rollout 统计


def test_device_cuda_1_describes_gpu_1_and_a_missing_gpu_is_one_line(gpus, capsys, tmp_path, monkeypatch):
    """两块不同的卡（0 号 RTX 4090、1 号 A800）：--device cuda:1 的设备那一行写 1 号卡的名字和显存，而且它成了
    本进程的当前卡（不带编号的 "cuda"、bf16 判断都指向它）。"""
    state = gpus(RTX4090, A800)
    assert device.pick_device("cuda:1") == "cuda:1" and state["current"] == 1
    device.announce_device("benchmark", False, "fp32")
    assert capsys.readouterr().out.strip() == "设备：NVIDIA A800 80GB PCIe（80 GB）· fp32"


def test_device_cuda_7_on_a_one_gpu_box_is_one_line_before_loading(gpus, monkeypatch, tmp_path):
    """一块卡的机器上 python chat.py --device cuda:7：一行中文（退出码 2），说出有几块卡、该用什么，什么都没加载。"""
    gpus(RTX4090)
    seen = stop_at_load(monkeypatch)
    r = run_inline("chat.py", "--device", "cuda:7", "--model", "base", "--model_name_or_path", base_folder(tmp_path),
                   tmp=tmp_path)
    assert_one_line_error(r, 2, "--device cuda:7", "1 块 GPU", "--device cuda:0")
    assert seen == []


def rollout_log(monkeypatch, processes: int, mine: list, theirs: list, terms=({}, {})) -> dict:
    """一次更新结束时 RLHFPPOTrainer.log 记下的指标。processes > 1 时 gather_object 的替身把另一个进程的 rollout
    （theirs）和每项奖励（terms[1]）接在本进程的后面，和 accelerate 在 gloo / NCCL 上收齐的结果一样。"""
    from transformers import TrainerControl, TrainerState

    logged = []
    monkeypatch.setattr(ppo, "gather_object", lambda obj: [*obj, *(theirs if obj == mine else [terms[1]])],
                        raising=False)
    trainer = object.__new__(ppo.RLHFPPOTrainer)  # 训练中途的 trainer：log 只用到这几样
    trainer._responses, trainer.optimizer_steps, trainer.resumed = list(mine), 0, None
    trainer._reward_terms = dict(terms[0])
    trainer.reward = SimpleNamespace(names=list(terms[0]), weights=[1.0] * len(terms[0]))
    trainer.accelerator = SimpleNamespace(num_processes=processes)
    trainer.state, trainer.control = TrainerState(), TrainerControl()
    trainer.args = SimpleNamespace(include_num_input_tokens_seen="no")
    trainer.callback_handler = SimpleNamespace(on_log=lambda args, state, control, logs: logged.append(logs) or control)
    trainer.log({"objective/scores": 1.0})
    (logs,) = logged
    return logs


def test_ppo_rollout_diversity_and_length_cover_every_process(monkeypatch):
    """DDP 两个进程：rank 0 的两条回复一模一样（它自己看像塌缩了），rank 1 的两条各不相同、更短。不同回复占比和
    平均长度按两个进程合起来的 4 条算；单进程时照旧只算自己的。"""
    mine, theirs = [(1, 2, 3), (1, 2, 3)], [(4, 5), (6,)]
    logs = rollout_log(monkeypatch, 2, mine, theirs)
    assert (logs["rollout/distinct_ratio"], logs["rollout/response_length"]) == (3 / 4, 9 / 4)
    logs = rollout_log(monkeypatch, 1, mine, theirs)
    assert (logs["rollout/distinct_ratio"], logs["rollout/response_length"]) == (1 / 2, 3)


def test_ppo_reward_term_curves_cover_every_process(monkeypatch):
    """每一项奖励的曲线（rewards/<项>/mean、/std）和加权和 reward 也按所有进程合起来的回答算。"""
    terms = ({"rm": [1.0, 1.0], "repetition": [0.0, -0.5]}, {"rm": [3.0, 3.0], "repetition": [-0.5, -1.0]})
    logs = rollout_log(monkeypatch, 2, [(1,)], [(2,)], terms)
    assert (logs["rewards/rm/mean"], logs["rewards/repetition/mean"], logs["reward"]) == (2.0, -0.5, 1.5)
    logs = rollout_log(monkeypatch, 1, [(1,)], [(2,)], terms)
    assert (logs["rewards/rm/mean"], logs["rewards/rm/std"], logs["reward"]) == (1.0, 0.0, 0.75)


# ---------------------------------------------------------------- 9. GRPO / RLOO 的生成长度与组大小


@pytest.mark.parametrize("script", ["train_grpo.py", "train_rloo.py"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_zero_or_negative_answer_length_is_one_line_before_loading(tmp_path, script, value):
    """--max_completion_length 0（或负数）：一行中文说出是哪个选项、该是什么样的值（退出码 2），在检查输入模型之前，
    而不是生成时 transformers 的 traceback。"""
    r = run_inline(script, "--max_completion_length", value, "--sft_model_path", tmp_path / "no-sft",
                   "--reward_model_path", tmp_path / "no-rm", "--output_dir", tmp_path / "out", tmp=tmp_path)
    assert_one_line_error(r, 2, "--max_completion_length 必须是正整数", f"现在是 {value}")


@pytest.mark.parametrize("script", ["train_grpo.py", "train_rloo.py"])
def test_an_indivisible_group_size_names_the_options_and_a_value_that_works(tmp_path, script):
    """默认每次生成 8 个回答（1 个进程 × 每卡 2 × 累积 4），--num_generations 3 不能整除：一行中文说出这几个选项和一个
    能用的值，而不是 TRL 的英文句子；照着改（--num_generations 2）就能通过选项检查。"""
    common = ["--sft_model_path", tmp_path / "no-sft", "--reward_model_path", tmp_path / "no-rm",
              "--output_dir", tmp_path / "out"]
    r = run_inline(script, "--num_generations", 3, *common, tmp=tmp_path)
    assert_one_line_error(r, 2, "--num_generations 3", "--per_device_train_batch_size 2", "改成 --num_generations 2")
    assert "must be divisible" not in r.stderr
    stage = script[len("train_"):-len(".py")]
    assert recipes.parse(stage, ["--num_generations", "2", "--output_dir", str(tmp_path / "out")])[1].num_generations == 2


def test_the_checked_grpo_and_rloo_configs_survive_the_pickle_trainer_writes_into_its_checkpoints(tmp_path):
    """Trainer 把配置 torch.save 进每个检查点的 training_args.bin：包过检查的配置类要能按"模块.类名"存、读回来。"""
    import io

    for stage in ("grpo", "rloo"):
        cfg = recipes.parse(stage, ["--output_dir", str(tmp_path / stage)])[1]
        buffer = io.BytesIO()
        torch.save(cfg, buffer)
        buffer.seek(0)
        again = torch.load(buffer, weights_only=False)
        assert type(again) is type(cfg) and again.max_steps == cfg.max_steps
