"""LoRA 策略：PPO、GRPO、RLOO、DPO 共用的 LoRA 选项、冻结权重的精度，以及唯一的导出（适配器 + merged/）；
train_rm.py --use_peft true 用同一套 LoRA 选项，导出是合并好的完整 RM（merge_score_adapter）。

四个阶段的 actor 都是"SFT 模型 + LoRA"，参考模型都是关掉适配器的同一个模型（不另占一份显存），
所以 LoRA 的设置写一次（LoRAArgs），导出也只写一次（save_policy）：chat / benchmark 读任何一个都走同一条路。
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .models import load_causal_lm, load_score_model
from .outputs import pause_point, read_json, write_json, write_stage_info, writing
from .paths import display_path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class LoRAArgs:
    """actor 的 LoRA（peft 的 LoraConfig，task_type=CAUSAL_LM），也是 RM 的（--use_peft true，task_type=SEQ_CLS）；
    默认值复现原仓库 PPO 的设置：r 32、alpha 8、全部线性层。"""

    lora_r: int = _help("LoRA 的秩 r", default=32)
    lora_alpha: int = _help("LoRA 的 alpha（缩放 = alpha / r）", default=8)
    lora_dropout: float = _help("LoRA 的 dropout（PPO 训练时 TRL 会关掉所有 dropout）", default=0.05)
    lora_target_modules: list[str] = _help("加 LoRA 的线性层名", default_factory=lambda: list(LORA_TARGETS))
    lora_modules_to_save: list[str] | None = _help("额外整层训练的模块名（一般不用）", default=None)
    use_rslora: bool = _help("Rank-Stabilized LoRA：缩放改为 alpha / sqrt(r)", default=False)
    use_dora: bool = _help("DoRA（权重分解的 LoRA，更慢）", default=False)

    def peft_config(self, task_type: str = "CAUSAL_LM"):
        """交给 TRL 各 Trainer 的 peft_config（和 trl.get_peft_config 建的一样：bias 不训练）。
        SEQ_CLS（RM）：peft 自动把打分头 score 加进 modules_to_save，整层训练、随适配器保存。"""
        from peft import LoraConfig

        return LoraConfig(task_type=task_type, r=self.lora_r, lora_alpha=self.lora_alpha,
                          lora_dropout=self.lora_dropout, target_modules=self.lora_target_modules, bias="none",
                          use_rslora=self.use_rslora, use_dora=self.use_dora, modules_to_save=self.lora_modules_to_save)


def frozen_dtype(bf16: bool):
    """bf16 时冻结的权重（actor 的 SFT 基座 = 参考模型、RM）直接用 bf16：rollout 逐 token 解码受显存带宽限制，
    字节数减半；LoRA 权重（peft 默认把适配器放在 fp32）和全参数训练的 critic 保持 fp32 主副本给优化器。"""
    import torch

    return torch.bfloat16 if bf16 else torch.float32


def checkpoint_tree(folder: Path) -> Path:
    """产物所在的"checkpoint 树"：folder 往上最近的叫 checkpoint 的文件夹（checkpoint/ppo、checkpoint/tiny/ppo），
    没有就是 folder 的上一级（--output_dir 放在别处时，和 SFT、RM 并排的那个文件夹）。"""
    folder = Path(folder).resolve()
    return next((p for p in folder.parents if p.name == "checkpoint"), folder.parent)


def adapter_base_path(folder: Path, sft_path: Path) -> str:
    """写进 adapter_config.json 的基座路径。peft 的 AutoPeftModelForCausalLM 把它当成相对当前目录的路径（或 hub ID），
    不会相对适配器文件夹去找（peft/auto.py）。SFT 在同一棵 checkpoint 树里时，写成相对"放 checkpoint/ 的那个文件夹"
    的路径（checkpoint/sft）：整个 checkpoint/ 拷到别处后，在它旁边运行就能加载；否则只能写绝对路径。"""
    sft, anchor = Path(sft_path).resolve(), checkpoint_tree(folder).parent
    if sft.is_relative_to(checkpoint_tree(folder)):
        return sft.relative_to(anchor).as_posix()
    return str(sft)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
SNAPSHOTS = "snapshots"  # <结果>/snapshots/step-N/：训练中均匀存下的快照（只有适配器和一个小的 stage.json）


def snapshot_steps(count: int, total: int) -> list[int]:
    """total 步（PPO：更新次数；GRPO / RLOO / DPO：优化器步数）里均匀的 count 个点，最后一个就是训练结束。"""
    if count <= 0 or total <= 0:
        return []
    return sorted({math.ceil(k * total / count) for k in range(1, count + 1)})


def snapshots_of(folder: Path) -> list[Path]:
    """一个 LoRA 策略结果文件夹里的快照（写完了的：有 stage.json），按步数排好。"""
    root = Path(folder) / SNAPSHOTS
    found = [(int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else [])
             if (m := re.fullmatch(r"step-(\d+)", p.name)) and (p / "stage.json").is_file()]
    return [p for _, p in sorted(found)]


def save_snapshot(model, root: Path, step: int, record: dict) -> Path:
    """训练中的一个快照：peft 模型的适配器 + stage.json（阶段、第几步、看过多少回答 / 偏好对）。先写到旁边的临时文件夹
    再改名：写到一半被杀不会留下半个快照；续训时重做的那一步覆盖同名的快照。只由主进程调用。
    这里不是可续训的检查点（没有优化器、计数器）：续训用 <结果>-trainer-checkpoints/checkpoint-N/。"""
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    with writing(final, tmp):  # 磁盘满等：一行中文，删掉半个快照
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        write_stage_info(tmp, record.pop("stage"), {}, **record)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final


def point_adapter_at(folder: Path, sft_path: Path, result: Path | None = None) -> dict:
    """把 folder 里 adapter_config.json 的基座改成 adapter_base_path（TRL / peft 写的是传入的路径原样），
    返回要写进 stage.json 的基座位置（inference.resolve_adapter_base 按它找基座）。folder 可以是最终位置旁边的
    临时文件夹：相对路径只和上一级有关，改名就位后照样成立。result：快照所属的结果文件夹（checkpoint 树按它找：
    快照和结果用同一个基座路径）。"""
    config_file = Path(folder) / "adapter_config.json"
    adapter_config = read_json(config_file, "刚写出的适配器配置读不回来：检查磁盘后重新运行这个阶段的脚本")
    adapter_config["base_model_name_or_path"] = adapter_base_path(result or folder, sft_path)
    config_file.write_text(json.dumps(adapter_config, ensure_ascii=False, indent=2), encoding="utf-8")
    sft = Path(sft_path).resolve()
    return {"sft_path": str(sft), "sft_path_in_repo": display_path(sft),
            "sft_path_from_adapter": os.path.relpath(sft, Path(folder).resolve())}


def save_policy(folder: Path, sft_path: Path, tokenizer, model=None, snapshots: Path | None = None) -> dict:
    """LoRA 策略的唯一导出：适配器（基座路径见 adapter_base_path）+ 分词器（左填充，生成用）+ 合并后的完整模型 merged/，
    以及训练中存下的快照（snapshots：它们所在的文件夹，链接进 folder/snapshots/（见 stage_snapshots），各自的基座路径同样改好）。
    返回要写进 stage.json 的基座位置。

    folder 可以是最终位置旁边的临时文件夹（outputs.StagingDir）。model：要保存的 peft 模型（PPO 传它）；
    Trainer 派生的阶段（GRPO / RLOO / DPO）已经由所有进程一起调用 trainer.save_model 把适配器写进 folder
    （见 training.save_result），传 None。"""
    if model is not None:
        model.save_pretrained(str(folder))
    where = point_adapter_at(folder, sft_path)
    if not (Path(folder) / "tokenizer_config.json").is_file():  # Trainer 派生的阶段：training.save_result 已经写过
        tokenizer.save_pretrained(str(folder))
    # 合并到 fp32 的 SFT 权重上（训练时的冻结基座可能是 bf16，见 frozen_dtype），用 peft 自己的加载与合并
    from peft import PeftModel

    merged = PeftModel.from_pretrained(load_causal_lm(sft_path, tokenizer), str(folder)).merge_and_unload()
    merged.config.use_cache = True  # 训练时为梯度检查点关掉了；推理要打开
    merged.save_pretrained(str(folder / "merged"))
    for f in TOKENIZER_FILES:  # 和上面刚写的分词器一样：拷文件，不再序列化一遍 15 万词表
        if (Path(folder) / f).is_file():
            shutil.copy2(Path(folder) / f, Path(folder) / "merged" / f)
    if snapshots is not None:
        for snap in stage_snapshots(Path(snapshots), Path(folder)):
            info = read_json(snap / "stage.json", "快照的 stage.json 读不回来：检查磁盘后重新运行这个阶段的脚本")
            write_json(snap / "stage.json", {**info, **point_adapter_at(snap, sft_path, result=folder)})
        pause_point("snapshots-staged")
    return where


def stage_snapshots(source: Path, folder: Path) -> list[Path]:
    """训练中写完的快照（source 里的 step-N）放进 folder/snapshots/（folder 是结果旁边的临时文件夹）：权重硬链接
    （同一磁盘上不复制；链接不了时复制），之后要改写的 JSON 复制一份再改。source 原样留着，直到结果改名就位之后
    <结果>-trainer-checkpoints/ 才整个删掉：保存时任何一刻被杀（SIGTERM、SIGKILL），要么还是之前的状态（快照都在、
    能续训；recover 删掉的临时文件夹里只有链接和副本），要么是带着全部快照的新结果。以前是把 source 改名搬进临时文件夹，
    在那之后被杀，续训时 recover 连临时文件夹带快照一起删掉了。"""
    def link(src, dst):
        if not src.endswith(".json"):  # 只读的权重：共用同一份数据
            try:
                os.link(src, dst)
                return dst
            except OSError:  # 跨文件系统、不支持硬链接
                pass
        return shutil.copy2(src, dst)

    staged = []
    for snap in snapshots_of(source.parent):  # source 是 <工作文件夹>/snapshots；只要写完了的，写到一半的 .step-N.tmp 不带
        staged.append(Path(shutil.copytree(snap, folder / SNAPSHOTS / snap.name, copy_function=link)))
    return staged


ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")  # README.md：peft 写的模型卡


def merge_score_adapter(folder: Path, base: Path, tokenizer, allow_pickle: bool = False) -> dict:
    """train_rm.py --use_peft true 的导出：folder 里 Trainer 写的适配器（LoRA + 整层的打分头）合并回基座，folder 变成和
    全参数 RM 同样的完整打分模型（model.safetensors + config.json），读 RM 的地方（PPO 的奖励与 --critic_init rm、
    benchmark、纯 transformers）不用知道它是 LoRA 训练的。适配器文件删掉：folder 里有 adapter_config.json 时
    transformers 的 from_pretrained 会改去加载适配器写的基座。和 save_policy 一样在 fp32 的基座上用 peft 自己的加载与合并
    （基座的打分头是随机的，被适配器里训练好的那份整层替换）。返回写进 stage.json 的 LoRA 设置。"""
    from peft import PeftModel

    adapter = read_json(Path(folder) / "adapter_config.json", "刚写出的适配器配置读不回来：检查磁盘后重新运行 train_rm.py")
    merged = PeftModel.from_pretrained(load_score_model(base, tokenizer, allow_pickle), str(folder)).merge_and_unload()
    for f in ADAPTER_FILES:
        (Path(folder) / f).unlink(missing_ok=True)
    merged.save_pretrained(str(folder))
    return {"r": adapter["r"], "alpha": adapter["lora_alpha"], "target_modules": sorted(adapter["target_modules"]),
            "modules_to_save": sorted(adapter.get("modules_to_save") or [])}
