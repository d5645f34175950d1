"""每次运行花了多少：墙钟时间、峰值显存（已分配 / 已保留）或峰值内存、吞吐。写进 stage.json / summary.json，
并在最后一行打印出来——比较两次运行时不用猜。"""

from __future__ import annotations

import resource
import time


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
