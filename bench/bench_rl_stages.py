"""我们的 train_grpo.py / train_rloo.py / train_dpo.py 与原样的 TRL 训练器比用时：同样的模型、同样的选项，交替运行。

    .venv/bin/python bench/bench_rl_stages.py                          # 临时目录里现建 tiny 模型 + 几步 SFT / RM
    .venv/bin/python bench/bench_rl_stages.py --sft checkpoint/tiny/sft --rm checkpoint/tiny/rm --rounds 3

"原样的 TRL"= 同一份 recipes.parse 解析出的 Config 与 LoRA，直接交给 trl 的 GRPOTrainer / RLOOTrainer / DPOTrainer：
RM 作为模型对象放进 reward_funcs（TRL 自己渲染、打分），没有我们的回调、检查、采样修正和 merged/ 导出，最后只
trainer.save_model。两边都是子进程，每轮交替先后，取各自的中位数，记两个比值：
- 整个进程（从启动到退出，含 import、加载、训练与保存；我们的还多写 merged/、快照、DPO 的留出诊断）；
- 每步：Trainer 自己记的 train_runtime（两边都打印在日志里）÷ 步数，只算训练循环。
结果写到 bench/results/rl_stages.json。机器有别的负载时比值不可引用（结果里记下了 1 分钟负载）。
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  bench/common.py
from qwen_rlhf.stages import STAGES as REGISTRY  # noqa: E402

# Trainer 派生的 LoRA 阶段（登记表里显存公式是 sampled / pairs 的：grpo / rloo / dpo）；PPO 是我们自己的 PPOTrainer 子类
STAGES = tuple(n for n, s in REGISTRY.items() if s.adapter and s.memory_kind in ("sampled", "pairs"))
# 每个跑 4 步；在线采样的每步 1 个问题 × 8 个回答
STEPS = {"sampled": ["--max_steps", "4", "--per_device_train_batch_size", "8"], "pairs": ["--max_steps", "4"]}


def stage_argv(stage: str, sft: Path, rm: Path, out: Path) -> list[str]:
    folders = {"sft": sft, "rm": rm}
    inputs = [x for i in REGISTRY[stage].inputs for x in (REGISTRY[i].path_option, str(folders[i]))]
    return ["--config", str(REGISTRY[stage].tiny_recipe), *inputs, *STEPS[REGISTRY[stage].memory_kind],
            "--output_dir", str(out), "--report_to", "none", "--save_strategy", "no"]


def plain(stage: str, argv: list[str]) -> None:
    """原样的 TRL：子进程里运行（--_plain）。训练器是登记表里的 trainer。"""
    import importlib

    from datasets import Dataset

    from qwen_rlhf import data, models, options, recipes

    args, cfg, lora = recipes.parse(stage, argv)
    sft = options.input_path(args.sft_model_path)
    tok = models.load_tokenizer(sft, padding_side="left")
    rows = data.split_rows(data.load_rows(args.dataset).rows, args.test_size, args.split_seed).train
    model = models.load_causal_lm(sft, tok)
    module, name = REGISTRY[stage].trainer.split(":")
    cls = getattr(importlib.import_module(module), name)
    if REGISTRY[stage].memory_kind == "pairs":
        trainer = cls(model=model, args=cfg, processing_class=tok, peft_config=lora.peft_config(),
                                 train_dataset=Dataset.from_list([data.dpo_example(r) for r in rows]))
    else:
        rm = models.load_score_model(options.input_path(args.reward_model_path), tok)
        trainer = cls(model=model, reward_funcs=rm, reward_processing_classes=tok, args=cfg, processing_class=tok,
                      peft_config=lora.peft_config(),
                      train_dataset=Dataset.from_list([data.sampled_example(r) for r in data.unique_questions(rows)]))
    trainer.train()
    trainer.save_model(cfg.output_dir)


def timed(cmd: list, env: dict) -> tuple[float, float | None]:
    """(整个进程的秒数, Trainer 日志里的 train_runtime 秒数)。"""
    import re

    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"错误：{' '.join(map(str, cmd[:3]))} 失败：\n{r.stderr[-2000:]}")
    runtime = re.findall(r"'train_runtime': '?([0-9.]+)", r.stdout + r.stderr)
    return time.perf_counter() - start, float(runtime[-1]) if runtime else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft", default=None, help="SFT 文件夹（默认：临时目录里现训几步）")
    p.add_argument("--rm", default=None, help="RM 文件夹（默认：临时目录里现训几步）")
    p.add_argument("--rounds", type=int, default=1, help="每个阶段交替跑几轮（每轮我们的和 TRL 的各一次）")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--out", default=str(common.RESULTS / "rl_stages.json"))
    p.add_argument("--_plain", default=None, help=argparse.SUPPRESS)
    a, rest = p.parse_known_args()
    if a._plain:
        return plain(a._plain, rest)

    work = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               QWEN_RLHF_TENSORBOARD_ROOT=str(work / "tensorboard"), HF_DATASETS_CACHE=str(work / "hf-cache"))
    sft, rm = Path(a.sft).resolve() if a.sft else None, Path(a.rm).resolve() if a.rm else None
    if sft is None or rm is None:
        from qwen_rlhf import tiny

        base = tiny.build(work / "base")
        for stage in ("sft", "rm"):
            timed([sys.executable, ROOT / f"train_{stage}.py", "--config", ROOT / "configs" / "tiny" / f"{stage}.yaml",
                   "--model_name_or_path", base, "--max_steps", "4", "--output_dir", work / stage], env)
        
        sft, rm = sft or work / "sft", rm or work / "rm"
    result = {"machine": common.machine(), "load_1min": os.getloadavg()[0], "rounds": a.rounds, "stages": {}}
    steps = 4
    for stage in a.stages.split(","):
        runs = {"ours": [], "trl": []}
        for i in range(a.rounds):
            cmds = {"ours": [sys.executable, ROOT / f"train_{stage}.py", *stage_argv(stage, sft, rm, work / f"{stage}-ours-{i}")],
                    "trl": [sys.executable, __file__, "--_plain", stage, *stage_argv(stage, sft, rm, work / f"{stage}-trl-{i}")]}
            for who in (("ours", "trl") if i % 2 == 0 else ("trl", "ours")):  # 交替先后：机器的状态变化两边各摊一半
                runs[who].append(timed(cmds[who], env))
            print(f"[bench] {stage} 第 {i + 1} 轮：我们的 {runs['ours'][-1][0]:.1f} 秒（训练 {runs['ours'][-1][1]} 秒），"
                  f"TRL 原样 {runs['trl'][-1][0]:.1f} 秒（训练 {runs['trl'][-1][1]} 秒）", flush=True)
        whole = {who: statistics.median(r[0] for r in rs) for who, rs in runs.items()}
        per_step = {who: statistics.median(r[1] for r in rs) / steps for who, rs in runs.items()}
        result["stages"][stage] = {
            "argv": STEPS[stage], "ours_s": [round(r[0], 1) for r in runs["ours"]],
            "trl_s": [round(r[0], 1) for r in runs["trl"]], "ratio_ours_over_trl": round(whole["ours"] / whole["trl"], 3),
            "ours_train_runtime_s": [r[1] for r in runs["ours"]], "trl_train_runtime_s": [r[1] for r in runs["trl"]],
            "per_step_s": {who: round(v, 3) for who, v in per_step.items()},
            "per_step_ratio_ours_over_trl": round(per_step["ours"] / per_step["trl"], 3)}
    result["load_1min_after"] = os.getloadavg()[0]
    common.write_result(result, Path(a.out))


if __name__ == "__main__":
    main()
