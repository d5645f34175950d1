"""第 4 步：评测。各阶段模型回答同一批问题（留出测试集 + 原仓库的十个常见问题），RM 给每个回答打分。

    python benchmark.py                                  # 默认：SFT 和 checkpoint/ 里已有的每个 RL 阶段，50 个留出问题，贪心解码
    python benchmark.py --models sft,ppo,grpo,rloo,dpo --num_questions 200   # 任意几个，SFT 是基线
    python benchmark.py --models base,sft,ppo
    python benchmark.py --questions my_questions.txt     # 自己的问题（每行一个，或 jsonl 的 "question" 字段）
    python benchmark.py --do_sample --temperature 0.7 --seed 1   # 采样而不是贪心
    python benchmark.py --config configs/tiny/benchmark.yaml     # 离线小模型演示（CPU，几十秒）

RM 给报告里的回答文本打分（qwen_rlhf/scoring.py，和 PPO 的奖励、纯 transformers 的标准打法相同）；同时报告 RM 在留出偏好对上的准确率，告诉你这些分数能信几分。
产物：checkpoint/benchmark/<时间>/ 下的 report.md（原仓库的表格 + 汇总 + 图）、results.csv、summary.json、*.png；
每次运行一个新文件夹，从不覆盖以前的结果。
"""

import gc
import json
import sys
import time
from dataclasses import dataclass, field

from qwen_rlhf import data, errors, inference, metrics, models, options, outputs, report, scoring
from qwen_rlhf.console import table
from qwen_rlhf.stages import chat_stages, rl_stages
from qwen_rlhf.cost import Cost
from qwen_rlhf.device import announce_device, pick_device
from qwen_rlhf.errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError


@dataclass
class BenchmarkArgs(inference.PolicyPaths, options.CommonArgs):  # --sft_model_path / --ppo_model_path / --grpo_model_path …
    models: str = field(default="", metadata={
        "help": "要评测的模型，逗号分隔：base / sft / ppo / grpo / rloo / dpo（对应 --model_name_or_path / "
                "--<阶段>_model_path）或本地模型文件夹；SFT 是得分提升、胜率和 KL 的基线。"
                "默认（空）：sft 加上已经训练好（文件夹里有 stage.json）的每个 RL 阶段"})
    reward_model_path: str = field(default="checkpoint/rm", metadata={
        "help": "奖励模型文件夹（第 2 步的产物），给所有回答打分"})
    num_questions: int = field(default=50, metadata={
        "help": "最多用多少个留出测试问题（另加十个常见问题）；0 = 只用常见问题。--questions 的问题不受此限"})
    questions: str | None = field(default=None, metadata={
        "help": "自己的问题文件：每行一个问题，或 .jsonl 每行带 \"question\" 字段；代替留出问题（常见问题仍然包含）"})
    batch_size: int = field(default=16, metadata={"help": "一次生成 / 打分多少个问题（24 GB 显存 16 足够；显存不足就调小）"})
    max_new_tokens: int = field(default=200, metadata={"help": "每个回答最多生成多少个 token"})
    do_sample: bool = field(default=False, metadata={"help": "采样生成（默认贪心解码：确定、可复现）"})
    seed: int = field(default=42, metadata={"help": "随机种子（只影响 --do_sample）"})
    temperature: float = field(default=0.7, metadata={"help": "采样温度，只在 --do_sample 时使用"})
    top_p: float = field(default=0.8, metadata={"help": "top-p 采样，只在 --do_sample 时使用"})
    top_k: int = field(default=20, metadata={"help": "top-k 采样，只在 --do_sample 时使用"})
    output_dir: str = field(default="checkpoint/benchmark", metadata={
        "help": "报告写到 <output_dir>/<时间>/，每次运行一个新文件夹"})
    device: str = field(default="auto", metadata={"help": "auto（有 GPU 用 cuda，否则 cpu）/ cpu / cuda / cuda:1 …"})


def check_options(args: BenchmarkArgs) -> list[str]:
    """在加载任何东西之前检查选项；返回 --models 列表。"""
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} 必须是正整数，现在是 {getattr(args, name)}。", EXIT_BAD_INPUT)
    if args.num_questions < 0:
        raise UserError(f"--num_questions 不能为负数，现在是 {args.num_questions}。", EXIT_BAD_INPUT)
    inference.check_sampling(args.do_sample, args.temperature, args.top_p, args.top_k)
    specs = [s.strip() for s in args.models.split(",") if s.strip()] or default_models(args)
    if len(set(specs)) < len(specs):
        raise UserError(f"--models 里有重复的模型：{args.models}。", EXIT_BAD_INPUT)
    out = options.output_path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {args.output_dir} 是一个文件，不是文件夹。", EXIT_BAD_INPUT)
    return specs


def default_models(args) -> list[str]:
    """没给 --models 时：sft 加上文件夹里已经有结果的每个 RL 阶段（stage.json 在，说明训练完了）。"""
    paths = args.paths()
    found = [n for n in rl_stages() if n in paths and (options.input_path(paths[n]) / outputs.STAGE_FILE).is_file()]
    if not found:
        raise UserError("checkpoint/ 里还没有训练好的 RL 模型（ppo / grpo / rloo / dpo）；先运行 python train_ppo.py，"
                        "或用 --models sft 只评测 SFT。", EXIT_MISSING)
    return ["sft", *found]


def resolve_models(specs: list[str], args: BenchmarkArgs) -> dict[str, tuple]:
    """--models -> {表格里的名字: (文件夹, stage.json 或 None)}；只检查文件夹是不是能对话的模型，不加载。"""
    paths = args.paths()
    resolved = {}
    for spec in specs:
        name, folder, info = inference.policy_folder(spec, paths, args.model_name_or_path)
        while name in resolved or (spec not in chat_stages() and name in chat_stages()):
            name += "*"  # 表格里的名字不能撞车：文件夹也可能叫 sft
        resolved[name] = (folder, info)
    return resolved


def read_questions(path: str) -> list[str]:
    """问题文件：.jsonl 每行一个带 "question" 的对象，其余按纯文本每行一个问题；去掉空行和重复。"""
    file = options.input_path(path)
    if not file.is_file():
        raise UserError(f"问题文件不存在：{path}。", EXIT_BAD_INPUT)
    out = []
    # utf-8-sig：记事本 / Excel 存的文件开头有 BOM
    for n, line in enumerate(file.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        if file.suffix == ".jsonl":
            try:
                q = json.loads(line).get("question")
            except (json.JSONDecodeError, AttributeError):
                q = None
            if not isinstance(q, str) or not q.strip():
                raise UserError(f"{file.name}:{n} 不是带 \"question\" 字符串字段的 JSON 对象。", EXIT_BAD_INPUT)
            line = q
        out.append(line.strip())
    if not out:
        raise UserError(f"问题文件 {path} 里没有任何问题。", EXIT_BAD_INPUT)
    return list(dict.fromkeys(out))


def generate_answers(loaded, questions: list[str], args: BenchmarkArgs) -> tuple[list, list]:
    """批量生成；按提示长度排序后再分批，同一批里长度相近、左填充最少。返回 (提示, 回复) token 列表。"""
    from transformers import set_seed

    set_seed(args.seed)  # 每个模型从同一个种子开始：采样时与 --models 的顺序无关
    tok = loaded.tokenizer
    prompts = [data.prompt_ids(tok, q, args.system_prompt) for q in questions]
    sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    responses = [None] * len(prompts)
    for start in range(0, len(order), args.batch_size):
        idx = order[start:start + args.batch_size]
        out = inference.generate(loaded.model, tok, [prompts[i] for i in idx], args.max_new_tokens, args.do_sample,
                                 **sampling)
        for i, r in zip(idx, out):
            responses[i] = r
    return prompts, responses


def score_batched(rm, prompts: list[list[dict]], answers: list[str], batch_size: int) -> list[float]:
    """RM 给 (提示消息, 回答文本) 打分：scoring.score，和 PPO 的奖励、标准客户端是同一个约定。"""
    return scoring.score(rm.model, rm.tokenizer, prompts, answers, batch_size)


def free(loaded) -> None:
    """一次只在设备上放一个模型：用完立刻释放。"""
    import torch

    loaded.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main():
    # ---------------------------------------------------------------- 选项
    cost = Cost()
    (args,) = options.parse([BenchmarkArgs])
    specs = check_options(args)
    device = pick_device(args.device)
    started = time.strftime("%Y%m%d-%H%M%S")
    # 加载任何模型之前先认清每个文件夹：别生成完了才发现 RM 不对、或把 RM 当成了对话模型
    policies = resolve_models(specs, args)
    rm_folder = options.input_path(args.reward_model_path)
    rm_info = outputs.check_kind(rm_folder, ("rm",), "--reward_model_path")
    models.check_weights(rm_folder, args.allow_pickle)  # RM 最后才加载：权重坏了现在就说
    announce_device("benchmark", args.device == "cpu", "fp32", model=rm_folder)  # 权重按 fp32 加载；RM 与策略同尺寸

    # ---------------------------------------------------------------- 数据
    rows = data.load_rows(args.dataset, args.strict, args.columns)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    outputs.check_same_split({**{n: info for n, (_, info) in policies.items()}, "RM": rm_info}, split.fingerprint,
                             "benchmark.py")
    if args.questions:
        extra, extra_source = read_questions(args.questions), "file"
    else:
        extra = [r["question"] for r in data.unique_questions(split.test)][: args.num_questions]
        extra_source = "held_out"
    extra = [q for q in extra if q not in data.COMMON_QUESTIONS]
    questions = list(data.COMMON_QUESTIONS) + extra
    sources = ["common"] * len(data.COMMON_QUESTIONS) + [extra_source] * len(extra)
    print(f"[数据] {len(questions)} 个问题：常见 {len(data.COMMON_QUESTIONS)} + "
          f"{'问题文件' if args.questions else '留出测试'} {len(extra)}；RM 准确率用 {len(split.test)} 对留出偏好对。")

    # ---------------------------------------------------------------- 生成（一次一个模型；SFT 最后，顺便算 KL）
    # KL 在每个模型自己对非常见问题的回答上算（没有这类问题时用全部）：log p_模型 在它自己加载时算，
    # log p_SFT 等 SFT 加载时一起算，所以 SFT 排在最后生成（每个模型从同一个种子开始，顺序不影响回答）
    kl_rows = [i for i, src in enumerate(sources) if src != "common"] or list(range(len(questions)))
    generated, folders, timing, own_logps, sft_logps = {}, {}, {"load_s": {}, "generate_s": {}}, {}, {}
    for name in sorted(policies, key=lambda n: n == metrics.BASELINE):
        folder, _ = policies[name]
        t = time.perf_counter()
        loaded = inference.load_policy(name, folder, args.allow_pickle)
        loaded.model.to(device)
        folders[name] = options.display_path(loaded.folder)
        timing["load_s"][name], t = round(time.perf_counter() - t, 3), time.perf_counter()
        generated[name] = (*generate_answers(loaded, questions, args), loaded.tokenizer)
        timing["generate_s"][name] = round(time.perf_counter() - t, 3)
        if metrics.BASELINE in policies:
            for other, (prompts, responses, _) in generated.items():
                if other == metrics.BASELINE or (name != other and name != metrics.BASELINE):
                    continue
                picked = ([prompts[i] for i in kl_rows], [responses[i] for i in kl_rows])
                target = own_logps if name == other else sft_logps
                target[other] = inference.response_logprobs(loaded.model, loaded.tokenizer, *picked, args.batch_size)
        free(loaded)
        print(f"[生成] {name}（{folders[name]}）：{len(questions)} 个回答，用时 {timing['generate_s'][name]:.1f}s")
    generated = {n: generated[n] for n in policies}  # 回到 --models 的顺序
    kl = {n: metrics.per_token_kl(own_logps[n], sft_logps[n]) for n in own_logps}

    # ---------------------------------------------------------------- 打分（所有模型生成完，再放 RM 上去）
    t = time.perf_counter()
    rm = inference.load_reward(rm_folder, args.allow_pickle)
    rm.model.to(device)
    answers = []
    for name, (prompts, responses, tok) in generated.items():
        if len(tok) != len(rm.tokenizer):  # 不同基座的 token 编号对不上，分数会读错位置
            raise UserError(f"{name} 和 RM 的分词器不一样（{len(tok)} vs {len(rm.tokenizer)} 个 token），"
                            "不是同一个基座模型训练出来的。", EXIT_MISSING)
        texts = [scoring.response_text(tok, r) for r in responses]  # 报告里写的就是打分的这串文本
        scores = score_batched(rm, [data.messages(q, args.system_prompt) for q in questions], texts, args.batch_size)
        for q, src, resp, text, s in zip(questions, sources, responses, texts, scores):
            stopped = bool(resp) and resp[-1] == tok.eos_token_id
            answers.append(metrics.Answer(q, src, name, text, metrics.round4(s), len(resp) - stopped, stopped))
    position = {q: i for i, q in enumerate(questions)}
    answers.sort(key=lambda a: position[a.question])  # 按问题排；sort 是稳定的，同一问题内保持 --models 的顺序
    metrics.add_gains(answers)

    # RM 自己的成绩单：留出偏好对上 chosen 和 rejected 的分数，和上面同一个打分函数
    prompts = [data.messages(r["question"], r.get("system") or args.system_prompt) for r in split.test]
    replies = [r[k] for k in ("chosen", "rejected") for r in split.test]
    both = score_batched(rm, prompts * 2, replies, args.batch_size)
    rm_stats = metrics.rm_stats(options.display_path(rm_folder), both[: len(prompts)], both[len(prompts):])
    free(rm)
    timing["score_s"] = round(time.perf_counter() - t, 3)

    # ---------------------------------------------------------------- 汇总与保存
    names = list(policies)
    costs = {n: (info or {}).get("cost") for n, (_, info) in policies.items()}
    methods = {n: (info or {}).get("stage", "base") for n, (_, info) in policies.items()}
    summary = metrics.summarize(answers, names, rm_stats, kl=kl, costs=costs, methods=methods)
    spent = cost.record(answers_per_s=len(answers) / max(sum(timing["generate_s"].values()), 1e-9))
    decoding = (f"采样解码（temperature {args.temperature}，top_p {args.top_p}，top_k {args.top_k}，seed {args.seed}）"
                if args.do_sample else "贪心解码（确定、可复现）")
    with outputs.writing(options.output_path(args.output_dir)):  # 只读 / 没有权限 / 磁盘满：一行中文
        folder = report.new_run_folder(options.output_path(args.output_dir), started)
    meta = {"run": folder.name, "decoding": f"{decoding}，每个回答最多 {args.max_new_tokens} 个新 token",
            "folders": folders, "rm_folder": rm_stats["folder"], "split_fingerprint": split.fingerprint,
            "options": options.to_jsonable(args), "device": device, "timing": timing, "cost": spent}
    with outputs.writing(folder, folder):  # 任何失败都删掉这个文件夹，不留半成品：有文件夹就说明写完了
        report_file = report.write_report(folder, answers, names, summary, meta)

    print(f"[结果] {report.source_words(summary)}，{decoding}")
    print(table(*report.summary_rows(summary)))
    if metrics.compared(names):
        print(table(*report.comparison_rows(summary)))
    if (grouped := report.method_rows(summary)) is not None:
        print(table(*grouped))
    for v in report.versus_lines(summary):
        print(f"[结果] {v}")
    for w in summary["warnings"]:
        print(f"[警告] {w}")
    print(f"[RM] {report.rm_line(rm_stats)}")
    print(f"[完成] 报告：{options.display_path(report_file)}（同一文件夹下还有 results.csv、summary.json 和图）；"
          f"{Cost.words(spent)}")
    sys.stdout.flush()


if __name__ == "__main__":
    errors.run(main, "benchmark")
