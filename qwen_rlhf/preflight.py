"""环境检查：新租的 GPU 机器上第一条命令，几秒钟，下载任何东西之前。

    python -m qwen_rlhf.preflight                      # 一张表：每项 ✓ / ✗ / !，每个 ✗ 和 ! 下面一行该怎么做
    python -m qwen_rlhf.preflight --install-plan F     # scripts/install_gpu.sh 用：把镜像的 torch 版本写成 pip 约束 F，
                                                       # 镜像太旧时什么都不写，一行说清该换哪个镜像，退出码非零

能开始真实的 GPU 训练时退出码 0，否则非零（没有 GPU 的机器上说明这里只能跑离线演示）。
结构：`gather()` 只负责观察（Python、torch、nvidia-smi、已装的包、磁盘、网络），`verdicts(Observed)` 只做判断，
测试直接喂观察结果。本模块不导入 trl / transformers（装依赖之前就要能运行），也不导入 options。
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import shutil
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .console import table
from .device import GOOD_IMAGES, INSTALL, Driver, driver_info, native_bf16, version_tuple, why_no_gpu
from .errors import EXIT_ENVIRONMENT
from .paths import ROOT

MIN_PYTHON, MIN_TORCH = (3, 11), (2, 6)  # transformers 5.23 / matplotlib 3.11 要 Python ≥ 3.11；transformers 在 torch < 2.6 时停用 PyTorch
# 默认流程写进 checkpoint/ 的量，按参数量算的估计（README"训练被中断了怎么办"里的磁盘一条）
DISK_PARTS = (("基座模型", 1.5), ("SFT 的 Trainer 检查点", 7), ("RM 的 Trainer 检查点", 7), ("PPO 检查点", 7))
DISK_NEED_GB = sum(gb for _, gb in DISK_PARTS)
DISK_FIRST_STAGE_GB = 1.5 + 7  # 少于它连第一步 SFT 的检查点都存不下
AUTODL_DATA_DISK = Path("/root/autodl-tmp")
ENDPOINTS = {"ModelScope": ("MODELSCOPE_ENDPOINT", "https://www.modelscope.cn"),
             "Hugging Face": ("HF_ENDPOINT", "https://huggingface.co")}
NET_TIMEOUT_S = 3
OK, BAD, WARN = "✓", "✗", "!"
KEPT_FROM_IMAGE = ("torch", "torchvision", "torchaudio")  # 装依赖时原样保留的包（torchvision 必须和 torch 配套）


@dataclass
class Observed:
    """观察到的一切；verdicts() 只读它。"""

    python: tuple[int, ...]
    torch: str | None = None  # torch.__version__，例如 "2.8.0+cu128"；None：没装或导入失败
    torch_cuda: str | None = None  # torch.version.cuda；CPU 版为 None
    driver: Driver | None = None  # nvidia-smi 看到的；None：没有 nvidia-smi
    gpus: list[tuple[str, float, bool]] = field(default_factory=list)  # torch 看到的 (名字, 显存 GiB, 支持 bf16)
    packages: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # 名字 -> (要求, 已装版本或 None)
    checkpoint: str = "checkpoint"
    free_gb: float = 0.0  # checkpoint/ 所在磁盘的剩余空间
    data_disk_free_gb: float | None = None  # AutoDL 数据盘的剩余空间（存在、且 checkpoint/ 不在它上面时）
    reach: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # 名字 -> (地址, None 能连上 / 错误)


@dataclass
class Row:
    check: str
    mark: str
    detail: str
    fix: str = ""


def pin_satisfied(pin: str, installed: str) -> bool:
    op, want = re.match(r"(==|>=)\s*(\S+)", pin).groups()
    return installed.split("+")[0] == want if op == "==" else version_tuple(installed) >= version_tuple(want)


def image_too_old(python: tuple[int, ...], torch: str | None) -> str | None:
    """镜像太旧时的一行说明（preflight 的表和 --install-plan 共用）；够新时 None。"""
    if python[:2] >= MIN_PYTHON and torch is not None and version_tuple(torch) >= MIN_TORCH:
        return None
    return (f"这个镜像太旧（Python {'.'.join(map(str, python[:3]))}、torch {torch or '未安装'}；需要 Python ≥ 3.11、"
            f"torch ≥ 2.6，pip 会装不上或换掉镜像的 CUDA torch）：请换 {GOOD_IMAGES}，再运行 {INSTALL}。")


def check_python(o: Observed) -> Row:
    v = ".".join(map(str, o.python[:3]))
    if o.python[:2] >= MIN_PYTHON:
        return Row("Python", OK, v)
    return Row("Python", BAD, f"{v}（transformers 5.23 要 ≥ 3.11）", image_too_old(o.python, o.torch))


def check_torch(o: Observed) -> Row:
    if o.torch is None:
        return Row("torch", BAD, "没有安装（或导入失败）", f"选 {GOOD_IMAGES}（自带 CUDA 版 torch），再运行 {INSTALL}。")
    build = f"CUDA {o.torch_cuda}" if o.torch_cuda else "CPU 版"
    if version_tuple(o.torch) < MIN_TORCH:
        return Row("torch", BAD, f"{o.torch}（{build}；transformers 5.23 要 ≥ 2.6）", image_too_old(o.python, o.torch))
    return Row("torch", OK, f"{o.torch}（{build}）")


def check_driver(o: Observed) -> Row:
    if o.driver is None:
        return Row("GPU 驱动", BAD, "找不到 nvidia-smi：这台机器没有 GPU",
                   f"这里只能跑离线演示（bash scripts/demo.sh）和测试；真实流程请租一台 GPU 机器（选 {GOOD_IMAGES}）。")
    if not o.driver.gpus:
        return Row("GPU 驱动", BAD, "nvidia-smi 没有列出任何 GPU", "AutoDL 的无卡模式看不到 GPU：关机后用有卡模式开机。")
    return Row("GPU 驱动", OK, f"驱动支持 CUDA {o.driver.cuda or '未知'}，{len(o.driver.gpus)} 块 GPU")


def gpu_names(gpus) -> str:
    names = [f"{g[0]}（{g[1]:.0f} GB）" for g in gpus]
    return "、".join(f"{names.count(n)} × {n}" if names.count(n) > 1 else n for n in dict.fromkeys(names))


def check_gpus(o: Observed) -> Row | None:
    """torch 能不能用 nvidia-smi 列出的 GPU；没有驱动或没有 torch 时这一项不适用（上面已经是 ✗）。"""
    if o.driver is None or not o.driver.gpus or o.torch is None:
        return None
    if not o.gpus:
        return Row("torch 用 GPU", BAD, f"torch 看不到 GPU（torch 的 CUDA：{o.torch_cuda or '无'}；驱动：{o.driver.cuda}）",
                   why_no_gpu(o.torch, o.torch_cuda, o.driver, "--use_cpu true（benchmark / chat 用 --device cpu）"))
    detail = f"{gpu_names(o.gpus)}· {'bf16' if all(g[2] for g in o.gpus) else '不支持 bf16'}"
    if len(o.gpus) < len(o.driver.gpus):
        return Row("torch 用 GPU", WARN, f"{detail}；只看到 nvidia-smi 列出的 {len(o.driver.gpus)} 块中的 {len(o.gpus)} 块",
                   f"检查 CUDA_VISIBLE_DEVICES（现在是 {os.environ.get('CUDA_VISIBLE_DEVICES', '未设置')!r}）。")
    if not all(g[2] for g in o.gpus):
        return Row("torch 用 GPU", WARN, detail, "这块卡不支持 bf16：SFT / RM 自动改用 fp16、PPO 用 fp32（更慢、更占显存）；"
                   "能选的话换 RTX 3090 / 4090、A800 等 Ampere 及以后的卡。")
    return Row("torch 用 GPU", OK, detail)


def check_packages(o: Observed) -> Row:
    bad = [f"{name} {have or '未安装'}（要 {pin}）" for name, (pin, have) in o.packages.items()
           if have is None or not pin_satisfied(pin, have)]
    if bad:
        return Row("依赖版本", BAD, "；".join(bad), f"运行 {INSTALL}（按 requirements.txt 装固定版本，保留镜像的 torch）。")
    return Row("依赖版本", OK, f"requirements.txt 的 {len(o.packages)} 个包都符合")


def check_disk(o: Observed) -> Row:
    parts = " + ".join(f"{what} {gb:g}" for what, gb in DISK_PARTS)
    need = f"默认流程约要 {DISK_NEED_GB:g} GB（估计：{parts} GB）"
    if o.free_gb >= DISK_NEED_GB:
        return Row("磁盘", OK, f"{o.checkpoint}/ 所在磁盘剩 {o.free_gb:.0f} GB；{need}")
    mark = BAD if o.free_gb < DISK_FIRST_STAGE_GB else WARN
    if o.data_disk_free_gb is not None and o.data_disk_free_gb > o.free_gb:
        fix = (f"AutoDL：把 checkpoint/ 放到数据盘（剩 {o.data_disk_free_gb:.0f} GB）：mv checkpoint {AUTODL_DATA_DISK}/checkpoint"
               f" && ln -s {AUTODL_DATA_DISK}/checkpoint checkpoint")
    else:
        fix = "清理磁盘，或把 checkpoint/ 换到更大的盘上（移过去后在原处建一个同名的符号链接）。"
    return Row("磁盘", mark, f"{o.checkpoint}/ 所在磁盘只剩 {o.free_gb:.1f} GB；{need}", fix)


def check_network(o: Observed) -> list[Row]:
    rows = []
    for name, (url, err) in o.reach.items():
        if err is None:
            rows.append(Row(name, OK, f"{url} 能连上"))
            continue
        local = "或者把模型 / 数据放到本地（--model_name_or_path / --dataset）"
        fix = (f"设 HF_ENDPOINT=https://hf-mirror.com（国内镜像），{local}。" if name == "Hugging Face" else
               f"下载会退回 Hugging Face；{local}；地址可用 {ENDPOINTS[name][0]} 改。")
        rows.append(Row(name, WARN, f"{url} {NET_TIMEOUT_S} 秒内连不上（{err}）", fix))
    return rows


def verdicts(o: Observed) -> list[Row]:
    rows = [check_python(o), check_torch(o), check_driver(o), check_gpus(o), check_packages(o), check_disk(o),
            *check_network(o)]
    return [r for r in rows if r is not None]


def conclusion(o: Observed, rows: list[Row]) -> tuple[int, str]:
    """(退出码, 最后一行)：没有 ✗ 才能开始真实的 GPU 训练。"""
    if o.driver is None:
        return 1, "结论：这台机器没有 GPU，只能跑离线演示（bash scripts/demo.sh）和测试（bash scripts/test.sh），不能跑真实训练。"
    if any(r.mark == BAD for r in rows):
        return 1, "结论：还不能开始真实训练：先按上面 ✗ 的提示修好，再运行一次 python -m qwen_rlhf.preflight。"
    return 0, "结论：可以开始：先 bash scripts/gpu_check.sh（几分钟的自检），然后 python train_sft.py。"


def render(rows: list[Row]) -> str:
    lines = [table(["检查", "", "结果"], [[r.check, r.mark, r.detail] for r in rows])]
    todo = [f"{r.mark} {r.check}：{r.fix}" for r in rows if r.mark != OK]
    return "\n".join(lines + (["", "要做的事："] + todo if todo else []))


# ---------------------------------------------------------------- 观察（gather）


def read_pins(requirements: Path) -> dict[str, str]:
    """requirements.txt 里 name==版本 / name>=版本 的行（torch 单独检查，不在这里）。"""
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(==|>=)\s*([^\s#;]+)", line)
        if m and m.group(1).lower() != "torch":
            pins[m.group(1)] = m.group(2) + m.group(3)
    return pins


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def reachable(urls: dict[str, str], timeout: float = NET_TIMEOUT_S) -> dict[str, tuple[str, str | None]]:
    """同时连每个地址，最多等 timeout 秒（DNS 卡住也不等）：任何 HTTP 回应都算能连上。"""
    result = {name: (url, f"超时 {timeout:g} 秒") for name, url in urls.items()}

    def probe(name, url):
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            result[name] = (url, None)
        except urllib.error.HTTPError:  # 服务器回应了（403 / 404 …）：网络是通的
            result[name] = (url, None)
        except Exception as e:  # noqa: BLE001  DNS、拒绝连接、证书……都算连不上
            result[name] = (url, type(e).__name__)

    threads = [threading.Thread(target=probe, args=item, daemon=True) for item in urls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)  # 线程是同时开始的：总共最多 timeout 秒多一点
    return dict(result)


def existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def disk_free_gb(path: Path) -> float:
    return shutil.disk_usage(existing(path)).free / 1e9


def gather(network: bool = True) -> Observed:
    o = Observed(python=tuple(sys.version_info[:3]), driver=driver_info())
    try:
        import torch

        o.torch, o.torch_cuda = torch.__version__, torch.version.cuda
        if torch.cuda.is_available():
            o.gpus = [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / 2**30,
                       native_bf16(i)) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001  没装、或装坏了（例如配不上的 torchvision）：都当作没有 torch
        pass
    o.packages = {name: (pin, installed_version(name)) for name, pin in read_pins(ROOT / "requirements.txt").items()}
    checkpoint = (ROOT / "checkpoint").resolve()  # 符号链接到数据盘时看数据盘
    o.checkpoint = "checkpoint" if checkpoint == ROOT / "checkpoint" else str(checkpoint)
    o.free_gb = disk_free_gb(checkpoint)
    if AUTODL_DATA_DISK.is_dir() and os.stat(AUTODL_DATA_DISK).st_dev != os.stat(existing(checkpoint)).st_dev:
        o.data_disk_free_gb = disk_free_gb(AUTODL_DATA_DISK)
    if network:
        o.reach = reachable({name: os.environ.get(env) or default for name, (env, default) in ENDPOINTS.items()})
    return o


# ---------------------------------------------------------------- 装依赖之前（scripts/install_gpu.sh）


def install_plan(python: tuple[int, ...], installed: dict[str, str | None]) -> tuple[list[str] | None, str]:
    """(pip 约束的行, 一行说明)；镜像太旧时约束为 None：什么都不装，说明里写该换哪个镜像。"""
    refusal = image_too_old(python, installed.get("torch"))
    if refusal:
        return None, refusal
    pins = [f"{name}=={installed[name]}" for name in KEPT_FROM_IMAGE if installed.get(name)]
    return pins, f"保留镜像自带的 {'、'.join(pins)}，按 requirements.txt 安装其余固定版本。"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_rlhf.preflight", description="GPU 机器上的环境检查（几秒钟）")
    parser.add_argument("--install-plan", metavar="约束文件", help="只做安装前的判断：把镜像的 torch 版本写成 pip 约束文件")
    parser.add_argument("--no-network", action="store_true", help="不检查 ModelScope / Hugging Face 能否连上")
    a = parser.parse_args(argv)
    if a.install_plan:
        pins, message = install_plan(tuple(sys.version_info[:3]), {n: installed_version(n) for n in KEPT_FROM_IMAGE})
        if pins is None:
            print(f"错误：{message}", file=sys.stderr)
            return EXIT_ENVIRONMENT
        Path(a.install_plan).write_text("\n".join(pins) + "\n", encoding="utf-8")
        print(f"[安装] {message}")
        return 0
    o = gather(network=not a.no_network)
    rows = verdicts(o)
    code, last = conclusion(o, rows)
    print(render(rows))
    print(last)
    return code


if __name__ == "__main__":
    sys.exit(main())
