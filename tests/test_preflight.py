"""新租的 GPU 机器上的第一个小时：环境检查（python -m qwen_rlhf.preflight）的每个判断和它给的做法、装依赖前的判断
（镜像太旧时什么都不装）、每个阶段的设备那一行，以及 nvidia-smi 看得到 GPU 而 torch 用不了时阶段拒绝运行。

判断是观察结果的纯函数：这里直接喂 Observed；nvidia-smi 用一个假的小脚本放在 PATH 最前面。"""

import http.server
import os
import threading
from dataclasses import replace

import pytest

from conftest import run_inline, run_script, stage_args, offline_env
from qwen_rlhf import device, errors, preflight, tiny
from qwen_rlhf.device import Driver
from qwen_rlhf.preflight import BAD, OK, WARN, Observed

IMAGES = "PyTorch 2.6 / 2.7 / 2.8（Python 3.12）"
PINS = {"transformers": ("==5.23.0", "5.23.0"), "trl": ("==1.12.0", "1.12.0"), "peft": ("==0.21.2", "0.21.2")}
# 真的 nvidia-smi 对这两种调用的输出（RTX 4090，驱动 550，CUDA 12.4）
FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=name,memory.total*) echo "NVIDIA GeForce RTX 4090, 24564" ;;
  "") cat <<'EOF'
Tue Dec  1 14:40:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.14              Driver Version: 550.54.14      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
|   0  NVIDIA GeForce RTX 4090        On  |   00000000:01:00.0 Off |                  Off |
+-----------------------------------------------------------------------------------------+
EOF
  ;;
  *) exit 6 ;;
esac
"""
RTX4090 = Driver("12.4", [("NVIDIA GeForce RTX 4090", 24564 / 1024)])


def healthy(**changes) -> Observed:
    """一台能开始训练的 AutoDL 机器：PyTorch 2.8 镜像、RTX 4090、依赖都对、磁盘够、两个下载站都能连上。"""
    o = Observed(python=(3, 12, 3), torch="2.8.0+cu128", torch_cuda="12.8", driver=Driver("12.8", RTX4090.gpus),
                 gpus=[("NVIDIA GeForce RTX 4090", 23.99, True)], packages=dict(PINS), free_gb=120.0,
                 reach={"ModelScope": ("https://www.modelscope.cn", None), "Hugging Face": ("https://huggingface.co", None)})
    return replace(o, **changes)


def row(rows, check):
    (r,) = [r for r in rows if r.check == check]
    return r


@pytest.fixture
def fake_gpu_path(tmp_path, monkeypatch):
    """PATH 最前面放一个假的 nvidia-smi：机器"有"一块 RTX 4090，而这里的 torch 是 CPU 版，用不了它。"""
    import torch

    if torch.cuda.is_available():
        pytest.skip("这里的 torch 真能用 GPU：假的 nvidia-smi 造不出用不了 GPU 的情形")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    monkeypatch.setenv("PATH", path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return path


# ---------------------------------------------------------------- 判断（纯函数）


def test_a_healthy_gpu_box_passes_every_check_and_exits_0():
    o = healthy()
    rows = preflight.verdicts(o)
    assert [r.check for r in rows] == ["Python", "torch", "GPU 驱动", "torch 用 GPU", "依赖版本", "磁盘", "ModelScope",
                                       "Hugging Face"]
    assert all(r.mark == OK for r in rows), rows
    assert row(rows, "torch 用 GPU").detail == "NVIDIA GeForce RTX 4090（24 GB）· bf16"
    assert "2.8.0+cu128（CUDA 12.8）" in row(rows, "torch").detail
    code, last = preflight.conclusion(o, rows)
    assert code == 0 and "bash scripts/gpu_check.sh" in last
    assert "要做的事" not in preflight.render(rows)


@pytest.mark.parametrize("changes, check, mark, needles", [
    (dict(python=(3, 10, 8)), "Python", BAD, ["3.10.8", "≥ 3.11", IMAGES, "install_gpu.sh"]),
    (dict(torch="2.5.1+cu124", torch_cuda="12.4"), "torch", BAD, ["2.5.1", "≥ 2.6", IMAGES]),
    (dict(torch=None, torch_cuda=None, gpus=[]), "torch", BAD, ["没有安装", IMAGES]),
    # setup_venv.sh 的 CPU 版 torch 装到了 GPU 机器上
    (dict(torch="2.13.0+cpu", torch_cuda=None, driver=RTX4090, gpus=[]), "torch 用 GPU", BAD,
     ["CPU 版", "CUDA 12.4", "install_gpu.sh", IMAGES, "--use_cpu true"]),
    # pip 把镜像的 torch 换成了 PyPI 上最新的 CUDA 13 版，驱动只到 12.4
    (dict(torch="2.11.0", torch_cuda="13.0", driver=RTX4090, gpus=[]), "torch 用 GPU", BAD,
     ["CUDA 13.0", "CUDA 12.4", "比驱动支持的", "install_gpu.sh"]),
    (dict(driver=Driver("12.4", [])), "GPU 驱动", BAD, ["没有列出", "有卡模式"]),
    (dict(driver=Driver("12.8", RTX4090.gpus * 2)), "torch 用 GPU", WARN, ["2 块中的 1 块", "CUDA_VISIBLE_DEVICES"]),
    (dict(gpus=[("Tesla V100-SXM2-32GB", 32.0, False)]), "torch 用 GPU", WARN, ["不支持 bf16", "fp16"]),
    (dict(packages={**PINS, "trl": ("==1.12.0", "1.13.0"), "peft": ("==0.21.2", None)}), "依赖版本", BAD,
     ["trl 1.13.0（要 ==1.12.0）", "peft 未安装", "install_gpu.sh"]),
    # AutoDL 的 30 GB 系统盘，数据盘还很空：提示把 checkpoint/ 放过去
    (dict(free_gb=15.0, data_disk_free_gb=180.0), "磁盘", WARN,
     ["15.0 GB", "22.5 GB", "估计", "/root/autodl-tmp/checkpoint", "ln -s"]),
    (dict(free_gb=5.0), "磁盘", BAD, ["5.0 GB", "22.5 GB", "符号链接"]),
    (dict(reach={"ModelScope": ("https://www.modelscope.cn", None), "Hugging Face": ("https://huggingface.co", "URLError")}),
     "Hugging Face", WARN, ["连不上（URLError）", "HF_ENDPOINT=https://hf-mirror.com"]),
])
def test_each_problem_gets_its_mark_and_one_line_saying_what_to_do(changes, check, mark, needles):
    o = healthy(**changes)
    rows = preflight.verdicts(o)
    r = row(rows, check)
    assert r.mark == mark, r
    for n in needles:
        assert n in r.detail + r.fix, (n, r)
    assert [x.check for x in rows if x.mark != OK] == [check], rows  # 只有这一项不对
    out = preflight.render(rows)
    assert f"{mark} {check}：{r.fix}" in out.splitlines()  # 表格下面那一行"要做的事"
    code, _ = preflight.conclusion(o, rows)
    assert code == (1 if mark == BAD else 0)


def test_a_machine_without_nvidia_smi_is_told_only_the_offline_demo_runs_here():
    o = healthy(torch="2.13.0+cpu", torch_cuda=None, driver=None, gpus=[])
    rows = preflight.verdicts(o)
    assert "torch 用 GPU" not in [r.check for r in rows]  # 没有驱动时这一项不适用
    assert row(rows, "GPU 驱动").mark == BAD and "scripts/demo.sh" in row(rows, "GPU 驱动").fix
    code, last = preflight.conclusion(o, rows)
    assert code == 1 and "只能跑离线演示" in last


def test_pins_nvidia_smi_output_and_versions_are_read_as_the_tools_write_them():
    assert preflight.pin_satisfied("==5.23.0", "5.23.0") and not preflight.pin_satisfied("==5.23.0", "5.23.1")
    assert preflight.pin_satisfied(">=2.6", "2.8.0+cu128") and not preflight.pin_satisfied(">=2.6", "2.5.1")
    assert device.parse_gpu_list("NVIDIA A800 80GB PCIe, 81920\nNVIDIA A800 80GB PCIe, 81920\n") == [
        ("NVIDIA A800 80GB PCIe", 80.0)] * 2
    assert device.parse_driver_cuda(FAKE_NVIDIA_SMI) == "12.4" and device.parse_driver_cuda("") is None
    pins = preflight.read_pins(preflight.ROOT / "requirements.txt")
    assert pins["trl"] == "==1.12.0" and "torch" not in pins  # torch 单独一行检查


def test_reachability_counts_any_http_answer_and_names_the_failure(tmp_path):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        got = preflight.reachable({"up": url, "down": "http://127.0.0.1:9"})
    finally:
        server.shutdown()
    assert got["up"] == (url, None)
    assert got["down"][0] == "http://127.0.0.1:9" and got["down"][1]


def test_preflight_on_this_cpu_machine_says_plainly_what_can_run(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setenv("PATH", str(tmp_path))  # 没有 nvidia-smi
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    code = preflight.main([])
    out = capsys.readouterr().out
    assert code == 1
    assert torch.__version__ in out and "找不到 nvidia-smi" in out and "只能跑离线演示" in out.splitlines()[-1]
    assert "! Hugging Face：" in out and "http://127.0.0.1:9" in out  # 用的是 HF_ENDPOINT 给的地址


# ---------------------------------------------------------------- 装依赖之前（scripts/install_gpu.sh）


@pytest.mark.parametrize("python, torch", [((3, 10, 8), "2.1.0+cu121"), ((3, 12, 3), "2.5.1+cu124"), ((3, 12, 3), None)])
def test_install_plan_refuses_an_old_image_and_names_the_images_that_work(python, torch):
    pins, message = preflight.install_plan(python, {"torch": torch, "torchvision": "0.16.0+cu121"})
    assert pins is None and IMAGES in message and "install_gpu.sh" in message
    assert f"Python {'.'.join(map(str, python))}" in message and f"torch {torch or '未安装'}" in message


def test_install_plan_pins_the_image_torch_and_its_companions():
    pins, message = preflight.install_plan((3, 12, 3), {"torch": "2.8.0+cu128", "torchvision": "0.23.0+cu128",
                                                        "torchaudio": None})
    assert pins == ["torch==2.8.0+cu128", "torchvision==0.23.0+cu128"]
    assert "torch==2.8.0+cu128" in message


def test_install_plan_cli_refuses_an_old_torch_in_one_line_and_writes_no_constraint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "installed_version", {"torch": "2.5.1+cu124"}.get)
    constraint = tmp_path / "c.txt"
    assert preflight.main(["--install-plan", str(constraint)]) == errors.EXIT_ENVIRONMENT
    err = capsys.readouterr().err.strip()
    assert err.startswith("错误：这个镜像太旧") and "torch 2.5.1+cu124" in err and len(err.splitlines()) == 1
    assert not constraint.exists()  # install_gpu.sh 在 pip install 之前就停下了


def test_install_plan_cli_writes_the_constraint_from_the_installed_torch(tmp_path, capsys):
    import torch

    constraint = tmp_path / "c.txt"
    assert preflight.main(["--install-plan", str(constraint)]) == 0
    assert f"torch=={torch.__version__}" in constraint.read_text().splitlines()
    assert capsys.readouterr().out.startswith("[安装] 保留镜像自带的 torch==")


# ---------------------------------------------------------------- 设备那一行（每个阶段）


def test_parameter_count_from_config_matches_the_real_model_without_loading_weights():
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    for config in (tiny.QWEN3_0_6B, tiny.TINY):
        with torch.device("meta"):  # 只建结构，不分配内存
            real = sum(p.numel() for p in Qwen3ForCausalLM(Qwen3Config(**config)).parameters())
        assert abs(device.params_from_config(config) - real) / real < 0.01
    assert device.params_from_config(tiny.TINY) < device.BIG_MODEL < device.params_from_config(tiny.QWEN3_0_6B)


def test_cpu_warning_only_for_real_sized_models():
    assert device.cpu_warning(device.params_from_config(tiny.TINY), 2, training=True) is None
    big = device.cpu_warning(device.params_from_config(tiny.QWEN3_0_6B), 2, training=True)
    assert "596M" in big and "分钟" in big and "configs/tiny/" in big
    assert "每生成一个 token" in device.cpu_warning(None, 16, training=False)  # 要下载的模型按真实尺寸算


def test_device_line_on_cpu_and_the_warning_for_a_big_model(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("PATH", str(tmp_path))
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "config.json").write_text(json.dumps(tiny.QWEN3_0_6B))
    assert device.announce_device("sft", False, "fp32", model=tmp_path / "big") == "cpu"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "设备：CPU · fp32" and lines[1].startswith("警告：要在 CPU 上跑 596M 参数的模型") and len(lines) == 2


def test_a_gpu_torch_cannot_use_is_refused_unless_cpu_was_asked_for(fake_gpu_path, monkeypatch, capsys):
    with pytest.raises(errors.UserError) as e:
        device.announce_device("sft", False, "fp32")
    assert e.value.code == errors.EXIT_ENVIRONMENT
    assert "RTX 4090" in e.value.message and "CUDA 12.4" in e.value.message and "--use_cpu true" in e.value.message
    with pytest.raises(errors.UserError) as e:
        device.announce_device("benchmark", False, "fp32")
    assert "--device cpu" in e.value.message
    assert device.announce_device("sft", True, "fp32") == "cpu"  # --use_cpu true
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gpu_check --device cpu 这样把 GPU 藏起来
    assert device.announce_device("chat", False, "fp32") == "cpu"
    assert capsys.readouterr().out.splitlines() == ["设备：CPU · fp32"] * 2


def test_training_stage_refuses_before_loading_anything_when_nvidia_smi_lists_a_gpu(tmp_path, tiny_model, fake_gpu_path):
    import torch

    out = tmp_path / "sft"
    r = run_script("train_sft.py", *stage_args("sft", tiny_model, out, "--use_cpu", "false"), tmp=tmp_path,
                   env=offline_env(tmp_path, PATH=fake_gpu_path))
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == errors.EXIT_ENVIRONMENT, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("错误：nvidia-smi 看到 1 块 NVIDIA GeForce RTX 4090"), r.stderr[-3000:]
    for needle in (f"torch {torch.__version__} 是 CPU 版", "驱动支持 CUDA 12.4", "bash scripts/install_gpu.sh", IMAGES,
                   "--use_cpu true"):
        assert needle in lines[0], needle
    # 只剩输出文件夹的锁文件（outputs.lock_output 有意留着，空的、不挡下一次运行）：没有结果、没有临时文件夹
    assert "[数据]" not in r.stdout and not out.exists() and [p.name for p in tmp_path.glob(".sft*")] in ([], [".sft.lock"])


def test_chat_refuses_the_same_way_and_runs_with_device_cpu(tmp_path, tiny_model, fake_gpu_path):
    r = run_inline("chat.py", "--model", tiny_model, "--prompt", "你好", "--max_new_tokens", "4", tmp=tmp_path)
    assert r.returncode == errors.EXIT_ENVIRONMENT and "--device cpu" in r.stderr, r.stderr[-2000:]
    r = run_inline("chat.py", "--model", tiny_model, "--prompt", "你好", "--max_new_tokens", "4", "--device", "cpu",
                   tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "设备：CPU · fp32" in r.stderr.splitlines() and "设备" not in r.stdout  # 管道里的 stdout 只有回答


def test_every_training_stage_prints_its_device_line_once_before_its_data(pipeline):
    for stage in ("sft", "rm", "ppo"):
        lines = pipeline["runs"][stage].stdout.splitlines()
        assert lines.count("设备：CPU · fp32") == 1, (stage, lines[:20])
        assert "警告：要在 CPU 上" not in pipeline["runs"][stage].stdout  # 迷你模型不警告
        data_line = next(i for i, x in enumerate(lines) if x.startswith("[数据]"))
        assert lines.index("设备：CPU · fp32") < data_line, stage
