"""选项：项目自己的 dataclass（中文 help）+ TRL 的 Config，用 TRL 自己的 TrlParser 解析。

优先级：命令行 > `--config 配方.yaml` > 本阶段默认值（复现原仓库在 Qwen3-0.6B 上的设置）> TRL 默认值。
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass, field

from trl import TrlParser

from .errors import EXIT_BAD_INPUT, UserError
from .paths import CHECKPOINT_DIR, ROOT, display_path, drop_empty_dir, input_path, output_path  # noqa: F401  脚本里写 options.input_path 等

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
DEFAULT_DATASET = "jackmokaka/btfChinese-DPO-small"

def main_process_first():
    """accelerate launch 多进程时让主进程先做（下载到同一个文件夹、修复上次被杀留下的输出），其余进程等它做完再读结果。
    单进程时什么也不做，也不初始化分布式。"""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


MODEL_HELP = "基座模型：本地文件夹，或模型 ID（先从 ModelScope 下载到 checkpoint/base/，失败再试 Hugging Face）"


@dataclass
class DataArgs:
    """所有脚本共用的项目选项（基座模型除外：PPO 的基座选项来自 TRL 的 ModelConfig）。"""

    dataset: str = _help(
        "偏好数据集：本地 .jsonl/.json/.csv/.parquet 文件，或数据集 ID（ModelScope 优先，Hugging Face 兜底）；"
        "列为 question、chosen、rejected（可选 system），或 TRL 的 prompt、chosen、rejected，其他列名见 --columns",
        default=DEFAULT_DATASET,
    )
    columns: str | None = _help(
        "数据的列名和本仓库的不同时，逐个对应：本仓库列名=数据里的列名，逗号分隔，例如 "
        "question=instruction,chosen=good,rejected=bad（可对应的列：question、chosen、rejected、system）。"
        "TRL 的标准偏好格式 prompt/chosen/rejected（纯文本或对话消息列表）不用对应，直接能读",
        default=None,
    )
    split_seed: int = _help("划分训练集 / 留出测试集的随机种子；所有阶段必须一致，benchmark 只用留出的问题", default=42)
    test_size: float = _help("留出测试集占全部不同问题的比例，取值 (0,1)", default=0.05)
    system_prompt: str | None = _help("系统提示词（默认不加）；训练、PPO、评测和对话会用同一个", default=None)
    strict: bool = _help("严格模式：数据里任何需要跳过的行都改为直接报错", default=False)
    allow_pickle: bool = _help("允许加载 .bin/.pt 等 pickle 格式权重（不安全，默认只加载 safetensors）", default=False)
    overwrite_output_dir: bool = _help("输出文件夹已存在且非空时覆盖它（默认拒绝，以免误删已完成的结果）", default=False)
    # --debug 已被 transformers 的 TrainingArguments 占用，所以叫 --traceback
    traceback: bool = _help("出错时打印完整 traceback（也可设环境变量 QWEN_RLHF_DEBUG=1）", default=False)

    def __post_init__(self):
        if not 0 < self.test_size < 1:
            raise UserError(f"--test_size 必须在 (0,1) 之间，现在是 {self.test_size}。", EXIT_BAD_INPUT)


@dataclass
class CommonArgs(DataArgs):
    model_name_or_path: str = _help(MODEL_HELP, default=DEFAULT_MODEL)


class Parser(TrlParser):
    """TrlParser 的错误改成一行中文，而不是 argparse 的用法大段输出。"""

    def error(self, message):  # argparse 的类型错误、缺值等
        raise UserError(f"选项错误：{message}。用 --help 查看所有选项。", EXIT_BAD_INPUT)


def parse(dataclass_types: list, defaults: dict | None = None, args: list[str] | None = None) -> tuple:
    """解析命令行与 `--config` 配方；`defaults` 覆盖 TRL 的默认值但仍可被配方和命令行覆盖。"""
    args = list(sys.argv[1:] if args is None else args)
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise UserError("--config 后面需要一个 YAML 配方文件路径，例如 --config configs/tiny.yaml。")
        recipe = input_path(args[i + 1])
        if not recipe.is_file():
            raise UserError(f"配方文件不存在：{args[i + 1]}。可用的配方在 configs/ 下。")
        args[i + 1] = str(recipe)
    parser = Parser(dataclass_types, allow_abbrev=False)  # 不接受缩写：拼错的选项应当报错而不是猜
    if defaults:
        parser.set_defaults_with_config(**defaults)
    try:
        # 让 TRL 把不认识的配方键和命令行选项分开交回来，而不是去匹配它的报错文字
        *parsed, from_recipe, from_flags = parser.parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True)
    except UserError:
        raise
    except ValueError as e:  # TRL Config 自己的取值检查（__post_init__）
        raise UserError(f"选项取值有误：{str(e).splitlines()[0]}") from None
    except Exception as e:  # yaml 语法错误等
        if type(e).__module__.startswith("yaml"):
            raise UserError(f"配方文件不是合法的 YAML：{str(e).splitlines()[0]}。") from None
        raise
    if from_recipe:
        raise UserError(f"配方文件里有本脚本不认识的键：{', '.join(map(str, from_recipe))}。")
    if from_flags:
        raise UserError(f"未知选项 {from_flags}。用 --help 查看所有选项（注意拼写和下划线）。")
    return tuple(parsed)


def to_jsonable(obj) -> dict:
    """dataclass / TRL Config 转成可读的 JSON 字典。"""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return dataclasses.asdict(obj)


def record(args, cfg, lora=None) -> dict:
    """写进 stage.json 的 "options"：这次实际用的项目选项、TRL 的 Config 和（LoRA 策略的）LoRA 选项。"""
    return {"script": to_jsonable(args), "training": cfg.to_dict(), **({"lora": to_jsonable(lora)} if lora is not None else {})}


def per_update(cfg, processes: int | None = None) -> int:
    """每次优化器更新所有进程合计用多少个样本 = 进程数 × 每卡批量 × 累积（PPO 的全局 rollout 批量、GRPO / RLOO 的
    回答数、DPO 的偏好对数）。processes 默认 cfg.world_size；PPOConfig 的 world_size 要等训练器建好才填，PPO 自己给。"""
    return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * (processes or cfg.world_size)
