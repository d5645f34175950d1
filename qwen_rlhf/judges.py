"""评测的评委：代理 RM（训练时优化的）、金标准评委、空评委。找到并核对它们的文件夹、一次只放一位上去打分，
再在留出偏好对（和你的投票）上给每位评委打成绩单。benchmark.py 调用。"""

from __future__ import annotations

import gc
from pathlib import Path

from . import data, inference, metrics, models, options, outputs, prefs, scoring
from .errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError


# 代理 RM 之外的两位评委：{stage.json 里的 role: (选项, 中文名, 怎样训练)}
EXTRA = {"gold": ("--gold_model_path", "金标准评委", "python train_rm.py --role gold"),
         "null": ("--null_model_path", "空评委", "python train_rm.py --role null")}


def extra_judge(args, role: str, rm_folder: Path) -> tuple | None:
    """--gold_model_path / --null_model_path：(文件夹, stage.json)；文件夹不存在时 None（说一行）。必须是 train_rm.py
    --role <role> 训练的 RM，而且不能就是代理 RM。"""
    option, label, command = EXTRA[role]
    given = getattr(args, option.removeprefix("--"))
    folder = options.input_path(given) if given else None
    if folder is None or not folder.exists():
        if folder is not None:
            print(f"[{label}] 没有 {options.display_path(folder)}：本次不用它（{command} 训练一个）。")
        return None
    info = outputs.check_kind(folder, ("rm",), option)
    if (info or {}).get("role") != role:
        raise UserError(f"{option} {options.display_path(folder)} 不是{label}（stage.json 里没有 role: {role}）；"
                        f"请用 {command} 训练一个。", EXIT_BAD_INPUT)
    if folder.resolve() == rm_folder.resolve():
        raise UserError(f"{option} 和 --reward_model_path 是同一个文件夹：{label}必须是另一个 RM。", EXIT_BAD_INPUT)
    models.check_weights(folder, args.allow_pickle)
    return folder, info


def same_base(a: dict | None, b: dict | None) -> bool:
    """两个 RM 是不是从同一个基座训练的（stage.json 的 base_model，解析后的路径相同）。"""
    paths = [(i or {}).get("base_model") for i in (a, b)]
    return None not in paths and Path(paths[0]).resolve() == Path(paths[1]).resolve()


def vocab_mismatch(name: str, judge_folder: Path, model_vocab: int, judge_vocab: int) -> UserError:
    return UserError(f"{name} 和 {options.display_path(judge_folder)} 的分词器不一样（{model_vocab} vs {judge_vocab} "
                     "个 token），不是同一个基座模型训练出来的。", EXIT_MISSING)


def judge(folder: Path, texts: list[tuple[str, str]], vocab: dict[str, int], split, args, device,
          votes=None) -> tuple[list, dict]:
    """一位评委（代理 RM、金标准评委或空评委）给 texts（[(问题, 回答文本)]）打分，再在留出偏好对上给自己打成绩单
    （准确率、平均分差）；有你的投票时，再数它和你一致的比例（votes）。打分都走 scoring.score：和 PPO 的奖励、纯 transformers 的标准客户端是同一个约定。"""
    rm = inference.load_reward(folder, args.allow_pickle)
    rm.model.to(device)
    for name, size in vocab.items():  # {模型: 它的分词器的词表大小}：不同基座的 token 编号对不上，分数会读错位置
        if size != len(rm.tokenizer):
            raise vocab_mismatch(name, folder, size, len(rm.tokenizer))
    scores = scoring.score(rm.model, rm.tokenizer, [data.messages(q, args.system_prompt) for q, _ in texts],
                           [t for _, t in texts], args.batch_size)
    prompts = [data.messages(r["question"], r.get("system") or args.system_prompt) for r in split.test]
    replies = [r[k] for k in ("chosen", "rejected") for r in split.test]
    both = scoring.score(rm.model, rm.tokenizer, prompts * 2, replies, args.batch_size)
    agrees = prefs.judge_agrees(rm.model, rm.tokenizer, votes, args.batch_size) if votes else None  # 你投过票的回答
    free(rm)
    return [metrics.round4(x) for x in scores], {
        **metrics.rm_stats(options.display_path(folder), both[: len(prompts)], both[len(prompts):]),
        **({"human_agrees": agrees} if votes else {})}


def free(holder=None) -> None:
    """用完的模型立刻释放（评委一次只放一个）；不给 holder 时只回收已经放掉的（Policies.close 之后）。"""
    import torch

    if holder is not None:
        holder.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
