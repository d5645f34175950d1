"""每次运行花了多少：墙钟时间、峰值显存（已分配 / 已保留）或峰值内存、吞吐。写进 stage.json / summary.json，
并在最后一行打印出来——比较两次运行时不用猜。"""

from __future__ import annotations

import resource
import time

from .stages import STAGES


class Cost:
    """脚本一开始建一个；结束时 `record(tokens_per_s=…)` 得到可写进 JSON 的字典，`words(record)` 得到一句中文。"""

    def __init__(self):
        self.start = time.perf_counter()

    def record(self, **throughput) -> dict:
        import torch

        rec = {"wall_s": round(time.perf_counter() - self.start, 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rec.update(gpu=torch.cuda.get_device_name(),
                       cuda_max_allocated_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1),
                       cuda_max_reserved_mb=round(torch.cuda.max_memory_reserved() / 2**20, 1))
        rec["throughput"] = {k: float(f"{v:.3g}") for k, v in throughput.items() if v is not None}  # 3 位有效数字
        return rec

    @staticmethod
    def words(rec: dict) -> str:
        units = {"tokens_per_s": "token/s", "pairs_per_s": "对/s", "episodes_per_s": "episode/s",
                 "rollout_tokens_per_s": "rollout token/s", "answers_per_s": "回答/s"}
        memory = (f"峰值显存 {rec['cuda_max_allocated_mb'] / 1024:.1f} GiB（保留 {rec['cuda_max_reserved_mb'] / 1024:.1f} GiB）"
                  if "cuda_max_allocated_mb" in rec else f"峰值内存 {rec['peak_rss_mb'] / 1024:.2f} GiB")
        speed = "，".join(f"{v:g} {units.get(k, k)}" for k, v in rec["throughput"].items())
        return f"用时 {rec['wall_s']:.0f} 秒，{memory}" + (f"，{speed}" if speed else "")


def trainer_throughput(trainer, stage: str, answers: int | None = None) -> dict:
    """Trainer 自己记下的训练用时与数量 -> 登记表里这个阶段的吞吐单位：SFT 每秒多少 token，RM / DPO 每秒多少对
    （一个样本是一对），GRPO / RLOO 每秒生成多少个回答（answers 由调用者数）。
    续训时 num_tokens 是累计的、用时只算这一次，所以续训那次的 token/s 偏高。"""
    history = trainer.state.log_history
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    if not runtime:
        return {}
    key = STAGES[stage].throughput
    if key == "pairs_per_s":
        return {key: next(h["train_samples_per_second"] for h in reversed(history) if "train_runtime" in h)}
    if key == "answers_per_s":
        return {key: answers / runtime} if answers else {}
    return {"tokens_per_s": max((h.get("num_tokens", 0) for h in history), default=0) / runtime}
