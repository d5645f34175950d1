"""设备：每个阶段在加载模型之前说一行它在哪里跑，绝不在 GPU 闲着的时候悄悄用 CPU 训练。

每个脚本解析完选项、加载任何数据和模型之前调用一次 `announce_device`（新阶段的脚本也一样，一行）：

    device.announce_device("sft", cfg.use_cpu, device.precision_of(cfg), model=args.model_name_or_path)   # Trainer 阶段
    device.announce_device("benchmark", args.device == "cpu", "fp32", model=args.sft_model_path)        # 推理脚本

它打印一行"设备：NVIDIA GeForce RTX 4090（24 GB）· bf16"或"设备：CPU · fp32"（accelerate 多进程时只由主进程打印）；
nvidia-smi 列出了 GPU 而 torch 用不了时抛 UserError（除非用户明确要 CPU）；训练脚本在多卡机器上不经 accelerate launch
直接启动时抛 UserError（见 one_process_many_gpus）；在 CPU 上跑超过约 1 亿参数的模型时打印一行警告和粗略的速度。
bf16 支不支持只由 native_bf16 判断（看计算能力，不认模拟的 bf16）。本模块只在函数里导入 torch / accelerate：
`python -m qwen_rlhf.preflight --install-plan` 要在还没装依赖、甚至 Python 3.8 的镜像上也能运行并说清楚该换哪个镜像。
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from .errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, UserError
from .paths import CHECKPOINT_DIR, input_path, looks_like_local
from .stages import STAGES

GOOD_IMAGES = "AutoDL 的 PyTorch 2.6 / 2.7 / 2.8（Python 3.12）镜像"
INSTALL = "bash scripts/install_gpu.sh"
BIG_MODEL = 100_000_000  # 超过约 1 亿参数的模型在 CPU 上训练以小时计；迷你演示模型只有几百万
# 粗略速度的依据：Qwen3-0.6B（596M 参数）fp32 在 2 核 CPU 上 SFT 实测 0.65 token/s
# （bench/results/gpu_check_qwen3-0.6b_cpu.json），按参数量和核数线性换算；只生成（无反向）按约 3 倍算
REF_PARAMS, REF_TOKENS_PER_S, REF_CORES = 596e6, 0.65, 2


@dataclass
class Driver:
    """nvidia-smi 看到的东西：驱动支持的 CUDA 版本和每块 GPU（名字、显存 GiB）。"""

    cuda: str | None
    gpus: list[tuple[str, float]] = field(default_factory=list)


def parse_gpu_list(csv: str) -> list[tuple[str, float]]:
    """`nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits` 的输出 -> [(名字, GiB)]。"""
    gpus = []
    for line in csv.strip().splitlines():
        name, _, mib = line.rpartition(",")
        try:
            gpus.append((name.strip(), float(mib.strip().split()[0]) / 1024))
        except (ValueError, IndexError):
            continue
    return gpus


def parse_driver_cuda(banner: str) -> str | None:
    """nvidia-smi 不带参数时表头里的 "CUDA Version: 12.4"。"""
    m = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return m.group(1) if m else None


def driver_info(timeout: float = 10) -> Driver | None:
    """问 nvidia-smi；没有 nvidia-smi（不是 GPU 机器）时返回 None。"""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None

    def ask(*flags):
        try:
            return subprocess.run([exe, *flags], capture_output=True, text=True, timeout=timeout).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    gpus = parse_gpu_list(ask("--query-gpu=name,memory.total", "--format=csv,noheader,nounits"))
    return Driver(parse_driver_cuda(ask()), gpus)


def version_tuple(v: str | None) -> tuple[int, ...]:
    """"2.8.0+cu128" -> (2, 8, 0)；"12.4" -> (12, 4)。"""
    return tuple(int(x) for x in re.findall(r"\d+", (v or "").split("+")[0])[:3])


def why_no_gpu(torch_version: str, torch_cuda: str | None, driver: Driver, cpu_flag: str) -> str:
    """nvidia-smi 看得到 GPU、torch 却用不了时的一行说明：两边的 CUDA 版本、原因和做法（preflight 与每个阶段共用）。"""
    names = "、".join(sorted({n for n, _ in driver.gpus})) or "GPU"
    seen = f"nvidia-smi 看到 {len(driver.gpus)} 块 {names}（驱动支持 CUDA {driver.cuda or '未知'}），"
    if torch_cuda is None:
        cause = (f"但 torch {torch_version} 是 CPU 版（torch.version.cuda 为空），用不了 GPU"
                 "（多半是 scripts/setup_venv.sh 建的 .venv，或 pip 换掉了镜像自带的 torch）")
    elif driver.cuda and version_tuple(torch_cuda) > version_tuple(driver.cuda):
        cause = (f"但 torch {torch_version} 是按 CUDA {torch_cuda} 编译的，比驱动支持的 CUDA {driver.cuda} 新，用不了 GPU"
                 "（多半是 pip 把镜像自带的 torch 换成了 PyPI 上最新的 CUDA 13 版）")
    else:
        cause = (f"但 torch {torch_version}（CUDA {torch_cuda}）初始化 CUDA 失败"
                 "（检查 CUDA_VISIBLE_DEVICES，或 python -c 'import torch; torch.cuda.init()' 看原因）")
    return (f"{seen}{cause}。请用镜像自带的 python 和 torch：选 {GOOD_IMAGES}，用 {INSTALL} 安装依赖（它不会替换镜像的 torch）；"
            f"确实要在 CPU 上跑请加 {cpu_flag}。")


def cpu_explicitly_requested(use_cpu: bool) -> bool:
    """用户自己要的 CPU：--use_cpu true / --device cpu，或用 CUDA_VISIBLE_DEVICES="" 把 GPU 藏起来（gpu_check --device cpu）。"""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    return use_cpu or (hidden is not None and hidden.strip() in ("", "-1"))


def precision_of(cfg) -> str:
    """TRL / transformers 的训练配置 -> "bf16" / "fp16" / "fp32"（设备那一行里显示）。"""
    return "bf16" if getattr(cfg, "bf16", False) else "fp16" if getattr(cfg, "fp16", False) else "fp32"


def native_bf16(index: int | None = None) -> bool:
    """这块 GPU（默认当前的）是否原生支持 bf16：计算能力 ≥ 8.0（A100 / A800、30 / 40 系、H100 …），AMD 的卡都支持。
    精度的唯一判断：precision_defaults（各训练阶段的默认值）、chat.py、bench/gpu_check.py、preflight 都问它。

    不用 torch.cuda.is_bf16_supported() 的默认值：它默认 including_emulation=True，在 T4 / V100 / 2080 Ti（计算能力 7.x）
    上只要能建出 bf16 张量就返回 True，跑的是模拟的 bf16，慢得多（torch/cuda/__init__.py 的 is_bf16_supported）。"""
    import torch

    if not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(index) >= (8, 0)


def precision_defaults(allow_fp16: bool = True) -> dict:
    """GPU 原生支持 bf16（native_bf16：计算能力 ≥ 8.0）就用 bf16；T4 / V100 这类卡上 SFT / RM / DPO 用 fp16，
    在线采样的阶段（PPO / GRPO / RLOO，allow_fp16=False）用 fp32（fp16 易出 NaN）；CPU 上用 fp32。"""
    import torch

    if native_bf16():
        return {"bf16": True, "fp16": False}
    if torch.cuda.is_available():
        return {"bf16": False, "fp16": allow_fp16}
    return {"bf16": False, "fp16": False}


def pick_device(spec: str) -> str:
    """benchmark.py / chat.py 的 --device：auto（有 GPU 用 cuda，否则 cpu）/ cpu / cuda / cuda:1 …

    cuda:N 先核对这台机器有第 N 块卡（没有就一行拒绝，什么都还没加载），再把它设成本进程的当前 GPU：设备那一行、
    bf16 的判断（native_bf16）和不带编号的 "cuda" 都指向它，而不是 0 号卡。"""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec} 不是合法的设备名；用 auto / cpu / cuda / cuda:0 …", EXIT_BAD_INPUT) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec}：这台机器上没有可用的 CUDA GPU。用 --device cpu 或 auto。", EXIT_BAD_INPUT)
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            numbers = "编号 0" if count == 1 else f"编号 0–{count - 1}"
            raise UserError(f"--device {spec}：torch 在这台机器上只看得到 {count} 块 GPU（{numbers}，"
                            f"设了 CUDA_VISIBLE_DEVICES 时按它重新编号）。用 --device cuda:0 或 auto。", EXIT_BAD_INPUT)
        torch.cuda.set_device(device.index)
    return spec


def params_from_config(config: dict) -> int:
    """按 config.json 数 Qwen 式解码器的参数（词嵌入 + 每层注意力、MLP、两个 RMSNorm），不加载权重；误差在 1% 以内。"""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or h // heads
    inter = config.get("intermediate_size") or 4 * h
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter + 2 * h
    return vocab * h * (1 if config.get("tie_word_embeddings", True) else 2) + layers * per_layer + h


def model_params(name_or_path: str | os.PathLike | None) -> int | None:
    """本地模型文件夹（或已下载到 checkpoint/base/ 的模型 ID、PPO 的 merged/）的参数量；找不到 config.json 时 None。"""
    if not name_or_path:
        return None
    path = input_path(name_or_path)
    for folder in (path, path / "merged", CHECKPOINT_DIR / "base" / str(name_or_path).replace("/", "__")):
        try:
            return params_from_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def cpu_warning(params: int | None, cores: int, training: bool) -> str | None:
    """CPU 上跑大模型时的一行警告（带粗略速度）；迷你模型（< 1 亿参数）不警告。params 为 None：要下载的模型，按真实尺寸算。"""
    if params is not None and params < BIG_MODEL:
        return None
    n = params or REF_PARAMS
    tokens_per_s = REF_TOKENS_PER_S * REF_PARAMS / n * max(cores, 1) / REF_CORES * (1 if training else 3)
    size = f" {n / 1e6:.0f}M 参数的模型" if params else "下载来的真实模型"
    if training:
        speed = f"粗略估计每训练 1000 个 token 约 {1000 / tokens_per_s / 60:.0f} 分钟（默认设置一步有上万 token，要几个小时）"
    else:
        speed = f"粗略估计每生成一个 token 约 {1 / tokens_per_s:.1f} 秒"
    return (f"警告：要在 CPU 上跑{size}，会非常慢：{speed}；按 Qwen3-0.6B 在 2 核 CPU 上的实测、"
            f"以参数量和 {cores} 个核换算。有 GPU 请用 GPU；只想看流程请用 configs/tiny/ 的迷你模型。")


def one_process_many_gpus(stage: str, count: int) -> str:
    """训练脚本在有多块 GPU 的机器上被 python 直接启动（一个进程）时的一行说明。

    拒绝，而不是悄悄只用一块卡：transformers 在解析选项时（TrainingArguments._setup_devices）就按
    torch.cuda.device_count() 定下 n_gpu，Trainer 据此把模型包进 nn.DataParallel，包好之后 accelerate 不再加 bf16
    autocast（transformers/training_args.py、trainer.py 的 _wrap_model）；TRL 的 PPOTrainer 则只用 0 号卡。
    只用一块卡要在 CUDA 初始化之前设 CUDA_VISIBLE_DEVICES，脚本里已经太晚（改私有的 _n_gpu 又是在和库对着干）；
    而租了几块卡的人该自己选：用一块，还是用 accelerate launch 把它们都用上。"""
    command = shlex.join([STAGES[stage].script, *sys.argv[1:]])
    return (f"这台机器有 {count} 块 GPU，而 {STAGES[stage].script} 是用 python 直接启动的（一个进程）：transformers 会用 "
            f"DataParallel 在一个进程里带 {count} 块卡（慢、bf16 混合精度不生效；PPO 只用第一块）。只用一块卡："
            f"CUDA_VISIBLE_DEVICES=0 python {command}；用全部 {count} 块：accelerate launch --config_file "
            f"configs/accelerate/ddp.yaml --num_processes {count} {command}")


def announce_device(stage: str, use_cpu: bool, precision: str = "fp32", model: str | os.PathLike | None = None,
                    file=None) -> str:
    """每个阶段加载模型之前调用一次：打印设备那一行，返回 "cuda" 或 "cpu"。

    stage：阶段名（stages.STAGES 里的训练阶段，或 "benchmark" / "chat"）；use_cpu：用户是否明确要 CPU
    （Trainer 的 --use_cpu、benchmark / chat 的 --device cpu）；precision：训练 / 推理用的精度（precision_of(cfg)）；
    model：要加载的模型（本地文件夹或 ID），只用来在 CPU 上估计参数量；file：默认 stdout（chat.py 用 stderr）。
    nvidia-smi 列出了 GPU 而 torch 用不了、用户也没要 CPU 时，抛 UserError（什么都还没加载）；训练阶段在多卡机器上
    只有一个进程时也抛（one_process_many_gpus）。GPU 是本进程的当前 GPU（benchmark / chat 的 --device cuda:N 由
    pick_device 设好）。
    """
    import torch

    training = stage in STAGES
    cpu_flag = "--use_cpu true" if training else "--device cpu"
    messages = []
    if not use_cpu and torch.cuda.is_available():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if training and world == 1 and torch.cuda.device_count() > 1:
            raise UserError(one_process_many_gpus(stage, torch.cuda.device_count()), EXIT_BAD_INPUT)
        i = torch.cuda.current_device()
        name, mem = torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / 2**30
        messages.append(f"设备：{f'{world} 个进程 × ' if world > 1 else ''}{name}（{mem:.0f} GB）· {precision}")
        if precision == "bf16" and not native_bf16(i):
            major, minor = torch.cuda.get_device_capability(i)
            messages.append(f"注意：这张卡（计算能力 {major}.{minor}）没有原生 bf16，bf16 是模拟的、很慢；"
                            "去掉 --bf16 true，用默认精度（这张卡上 SFT / RM / DPO 用 fp16，PPO / GRPO / RLOO 用 fp32）。")
        where = "cuda"
    else:
        if not cpu_explicitly_requested(use_cpu):
            driver = driver_info()
            if driver is not None and driver.gpus:
                raise UserError(why_no_gpu(torch.__version__, torch.version.cuda, driver, cpu_flag), EXIT_ENVIRONMENT)
        messages.append(f"设备：CPU · {precision}")
        params = model_params(model)
        if model and (params is not None or not looks_like_local(str(model))):  # 没有 config.json 的本地路径：稍后报错
            warning = cpu_warning(params, os.cpu_count() or 1, training)
            messages += [warning] if warning else []
        where = "cpu"
    from accelerate import PartialState

    if PartialState().is_main_process:
        for m in messages:
            print(m, file=file or sys.stdout, flush=True)
    return where
