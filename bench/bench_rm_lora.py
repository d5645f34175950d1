"""RM 全参数 vs LoRA（train_rm.py --use_peft true）：同一个迷你基座、同一个配方（configs/tiny/rm.yaml）、同一个种子，
各训练一次，比留出偏好对上的准确率和要训练的参数量。

    .venv/bin/python bench/bench_rm_lora.py               # 写 bench/results/rm_lora.json

准确率用评测的同一个打分函数（qwen_rlhf.scoring.score）在留出偏好对上重新算（chosen 得分高于 rejected 的比例，
只算训练时没被 max_length 丢掉的对）；旁边是训练结束时 Trainer 的 eval_accuracy（按评估批平均，所以和前者可以略有不同）。
LoRA 用默认的 LoRA 选项（r 32、alpha 8、全部线性层，同 PPO）和配方里同样的学习率：没有为 LoRA 另调。
产物写到临时目录，不碰 checkpoint/。只打印数字，不做断言。
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402  bench/common.py（脚本所在目录在 sys.path 里）
from qwen_rlhf import data, models, recipes, scoring  # noqa: E402

RECIPE = ROOT / "configs" / "tiny" / "rm.yaml"
RUNS = {"full": [], "lora": ["--use_peft", "true"]}


def held_out_accuracy(folder: Path, args, cfg) -> dict:
    """评测的打分约定在留出偏好对上的准确率与平均分差（划分、max_length 和训练时相同）。"""
    tokenizer = models.load_tokenizer(folder)
    model = models.load_score_model(folder, tokenizer).eval()
    split = data.split_rows(data.load_rows(args.dataset).rows, args.test_size, args.split_seed)
    pairs = [r for r in split.test if all(len(ids) <= cfg.max_length for ids in data.rm_example(tokenizer, r).values())]
    prompts = [data.messages(r["question"], r.get("system") or args.system_prompt) for r in pairs]
    chosen = scoring.score(model, tokenizer, prompts, [r["chosen"] for r in pairs])
    rejected = scoring.score(model, tokenizer, prompts, [r["rejected"] for r in pairs])
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"pairs": len(pairs), "correct": sum(m > 0 for m in margins),
            "accuracy": round(sum(m > 0 for m in margins) / len(pairs), 4),
            "mean_margin": round(sum(margins) / len(pairs), 4)}


def main():
    work = Path(tempfile.mkdtemp(prefix="bench-rm-lora-"))
    env = dict(os.environ, QWEN_RLHF_TENSORBOARD_ROOT=str(work / "tb"), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(work / "hf-cache"))
    base = work / "base"
    seconds = {"tiny_model": common.run_script("scripts/make_tiny_model.py", "--out", base, env=env)}
    args, cfg, lora = recipes.parse("rm", ["--config", str(RECIPE)])
    per_run = {}
    for name, extra in RUNS.items():
        out = work / f"rm-{name}"
        seconds[name] = common.run_script("train_rm.py", "--config", RECIPE, "--model_name_or_path", base, "--output_dir", out,
                            *extra, env=env)
        info = json.loads((out / "stage.json").read_text(encoding="utf-8"))
        per_run[name] = {
            "argv": ["--config", "configs/tiny/rm.yaml", *extra],
            "held_out": held_out_accuracy(out, args, cfg),
            "trainer_eval_accuracy": round(info["eval"]["eval_accuracy"], 4),
            "trainer_eval_margin": round(info["eval"]["eval_margin"], 4),
            "trainable_params": info["trainable_params"], "lora": info["lora"],
            "seed": info["options"]["training"]["seed"], "learning_rate": info["options"]["training"]["learning_rate"],
            "wall_s": info["cost"]["wall_s"], "peak_rss_mb": info["cost"].get("peak_rss_mb"),
        }
        print(f"[{name}] 留出准确率 {per_run[name]['held_out']['accuracy']:.3f}"
              f"（{per_run[name]['held_out']['correct']}/{per_run[name]['held_out']['pairs']}），"
              f"要训练的参数 {per_run[name]['trainable_params']:,}", flush=True)
    total = sum(p.numel() for p in models.load_score_model(work / "rm-full", models.load_tokenizer(work / "rm-full"))
                .parameters())
    result = {
        "machine": common.machine(),
        "what": ("tiny random Qwen3 RM (configs/tiny/rm.yaml, 3 epochs, lr 1e-3, same seed): full parameters vs "
                 "--use_peft true (LoRA r 32 / alpha 8 on all linear layers, score head trained in full), "
                 "merged LoRA model scored by qwen_rlhf.scoring.score on the held-out pairs"),
        "score_model_params": total,
        "runs": per_run,
        "seconds": seconds,
        "notes": ("Same learning rate for both (the recipe's 1e-3); LoRA was not tuned. Held-out accuracy is "
                  "re-scored with the benchmark's scorer on the saved (merged) model; trainer_eval_accuracy is the "
                  "Trainer's per-batch mean. Timings are not comparable: another job shared this 2-core machine "
                  "(see the load averages)."),
    }
    common.write_result(result, common.RESULTS / "rm_lora.json")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
