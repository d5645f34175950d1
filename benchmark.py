"""第 4 步：评测。各阶段模型回答同一批问题（留出测试集 + 原仓库的十个常见问题），RM 给每个回答打分。

    python benchmark.py                                  # 默认：sft 和 ppo，50 个留出问题，贪心解码
    python benchmark.py --models base,sft,ppo --num_questions 200
    python benchmark.py --questions my_questions.txt     # 自己的问题（每行一个，或 jsonl 的 "question" 字段）
    python benchmark.py --do_sample --temperature 0.7 --seed 1   # 采样而不是贪心
    python benchmark.py --config configs/tiny/benchmark.yaml     # 离线小模型演示（CPU，几十秒）

打分与 PPO 训练时读分数的位置完全相同；同时报告 RM 在留出偏好对上的准确率，告诉你这些分数能信几分。
产物：checkpoint/benchmark/<时间>/ 下的 report.md（原仓库的表格 + 汇总 + 图）、results.csv、summary.json、*.png；
每次运行一个新文件夹，从不覆盖以前的结果。
"""

import gc
import json
import sys
import time
from dataclasses import dataclass, field

from qwen_rlhf import data, errors, inference, metrics, models, options, outputs, report
from qwen_rlhf.console import table
from qwen_rlhf.stages import chat_stages
from qwen_rlhf.cost import Cost
from qwen_rlhf.errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError


@dataclass
class BenchmarkArgs(inference.PolicyPaths, options.CommonArgs):  # --sft_model_path / --ppo_model_path / --grpo_model_path …
    models: str = field(default="sft,ppo", metadata={
        "help": "要评测的模型，逗号分隔：base / sft / ppo / grpo / rloo / dpo（对应 --model_name_or_path / "
                "--<阶段>_model_path）或本地模型文件夹"})
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
    specs = [s.strip() for s in args.models.split(",") if s.strip()]
    if not specs:
        raise UserError("--models 不能为空，例如 --models sft,ppo。", EXIT_BAD_INPUT)
    if len(set(specs)) < len(specs):
        raise UserError(f"--models 里有重复的模型：{args.models}。", EXIT_BAD_INPUT)
    out = options.output_path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {args.output_dir} 是一个文件，不是文件夹。", EXIT_BAD_INPUT)
    return specs


def pick_device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec} 不是合法的设备名；用 auto / cpu / cuda / cuda:0 …", EXIT_BAD_INPUT) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec}：这台机器上没有可用的 CUDA GPU。用 --device cpu 或 auto。", EXIT_BAD_INPUT)
    return spec


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


def score_batched(rm, prompts: list[list[int]], responses: list[list[int]], batch_size: int) -> list[float]:
    return [s for i in range(0, len(prompts), batch_size)
            for s in inference.score(rm.model, rm.tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size])]


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

    # ---------------------------------------------------------------- 数据
    rows = data.load_rows(args.dataset, args.strict)
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

    # ---------------------------------------------------------------- 生成（一次一个模型）
    generated, folders, timing = {}, {}, {"load_s": {}, "generate_s": {}}
    for name, (folder, _) in policies.items():
        t = time.perf_counter()
        loaded = inference.load_policy(name, folder, args.allow_pickle)
        loaded.model.to(device)
        folders[name] = options.display_path(loaded.folder)
        timing["load_s"][name], t = round(time.perf_counter() - t, 3), time.perf_counter()
        generated[name] = (*generate_answers(loaded, questions, args), loaded.tokenizer)
        timing["generate_s"][name] = round(time.perf_counter() - t, 3)
        free(loaded)
        print(f"[生成] {name}（{folders[name]}）：{len(questions)} 个回答，用时 {timing['generate_s'][name]:.1f}s")

    # ---------------------------------------------------------------- 打分（所有模型生成完，再放 RM 上去）
    t = time.perf_counter()
    rm = inference.load_reward(rm_folder, args.allow_pickle)
    rm.model.to(device)
    answers = []
    for name, (prompts, responses, tok) in generated.items():
        if len(tok) != len(rm.tokenizer):  # 不同基座的 token 编号对不上，分数会读错位置
            raise UserError(f"{name} 和 RM 的分词器不一样（{len(tok)} vs {len(rm.tokenizer)} 个 token），"
                            "不是同一个基座模型训练出来的。", EXIT_MISSING)
        scores = score_batched(rm, prompts, responses, args.batch_size)
        for q, src, resp, s in zip(questions, sources, responses, scores):
            stopped = bool(resp) and resp[-1] == tok.eos_token_id
            answers.append(metrics.Answer(q, src, name, tok.decode(resp, skip_special_tokens=True).strip(),
                                          metrics.round4(s), len(resp) - stopped, stopped))
    position = {q: i for i, q in enumerate(questions)}
    answers.sort(key=lambda a: position[a.question])  # 按问题排；sort 是稳定的，同一问题内保持 --models 的顺序
    metrics.add_gains(answers)

    # RM 自己的成绩单：留出偏好对上 chosen 和 rejected 的分数，读分位置与上面完全相同
    prompts = [data.prompt_ids(rm.tokenizer, r["question"], r.get("system") or args.system_prompt) for r in split.test]
    replies = [data.answer_ids(rm.tokenizer, r[k]) for k in ("chosen", "rejected") for r in split.test]
    both = score_batched(rm, prompts * 2, replies, args.batch_size)
    rm_stats = metrics.rm_stats(options.display_path(rm_folder), both[: len(prompts)], both[len(prompts):])
    free(rm)
    timing["score_s"] = round(time.perf_counter() - t, 3)

    # ---------------------------------------------------------------- 汇总与保存
    names = list(policies)
    summary = metrics.summarize(answers, names, rm_stats)
    spent = cost.record(answers_per_s=len(answers) / max(sum(timing["generate_s"].values()), 1e-9))
    decoding = (f"采样解码（temperature {args.temperature}，top_p {args.top_p}，top_k {args.top_k}，seed {args.seed}）"
                if args.do_sample else "贪心解码（确定、可复现）")
    folder = report.new_run_folder(options.output_path(args.output_dir), started)
    meta = {"run": folder.name, "decoding": f"{decoding}，每个回答最多 {args.max_new_tokens} 个新 token",
            "folders": folders, "rm_folder": rm_stats["folder"], "split_fingerprint": split.fingerprint,
            "options": options.to_jsonable(args), "device": device, "timing": timing, "cost": spent}
    try:
        report_file = report.write_report(folder, answers, names, summary, meta)
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # 不留半成品：有文件夹就说明写完了
        raise

    print(f"[结果] {report.source_words(summary)}，{decoding}")
    print(table(*report.summary_rows(summary)))
    if (v := report.versus_line(summary)) is not None:
        print(f"[结果] {v}")
    for w in summary["warnings"]:
        print(f"[警告] {w}")
    print(f"[RM] {report.rm_line(rm_stats)}")
    print(f"[完成] 报告：{options.display_path(report_file)}（同一文件夹下还有 results.csv、summary.json 和图）；"
          f"{Cost.words(spent)}")
    sys.stdout.flush()


if __name__ == "__main__":
    errors.run(main, "benchmark")
