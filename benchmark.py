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

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qwen_rlhf import data, errors, inference, judges, metrics, models, options, outputs, policy, prefs, recipes
from qwen_rlhf import kl_measure, report, rewards, sampling, scoring, trajectory, words
from qwen_rlhf.console import table
from qwen_rlhf.stages import STAGES, chat_stages, oom_hint, rl_stages
from qwen_rlhf.cost import Cost
from qwen_rlhf.device import announce_device, pick_device
from qwen_rlhf.errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError


@dataclass
class BenchmarkArgs(inference.PolicyPaths, options.CommonArgs):  # --sft_model_path / --ppo_model_path / --grpo_model_path …
    models: str = field(default="", metadata={
        "help": f"要评测的模型，逗号分隔：{' / '.join(chat_stages())}（对应 --model_name_or_path / "
                "--<阶段>_model_path）、快照（ppo@step-50）或本地模型文件夹；SFT 是得分提升、胜率和 KL 的基线。"
                "默认（空）：sft 加上已经训练好（文件夹里有 stage.json）的每个 RL 阶段"})
    reward_model_path: str = field(default="checkpoint/rm", metadata={
        "help": "奖励模型文件夹（第 2 步的产物，RL 训练时优化的就是它：\"代理\" RM），给所有回答打分"})
    gold_model_path: str = field(default="checkpoint/rm_gold", metadata={
        "help": "金标准评委：python train_rm.py --role gold 训练的第二个 RM（另一个种子、更大的模型，策略训练时从没见过它），"
                "只用来评测：每个代理 RM 分数旁边再给一个它的分数，看得出代理 RM 有没有被钻空子（奖励过度优化）。"
                "文件夹不存在时不用（打印一行说明）"})
    null_model_path: str = field(default="checkpoint/rm_null", metadata={
        "help": "空评委：python train_rm.py --role null 训练的第三个 RM（和代理 RM 同样的数据、同样的基座，只换种子）。"
                "两个只差种子的 RM 之间本来就有分歧，它量出这份噪声的大小：金标准评委和代理 RM 的分歧要超过它才算数。"
                "文件夹不存在时不用（打印一行说明）"})
    trajectory: bool = field(default=False, metadata={
        "help": "同时评测 --models 里每个 LoRA 阶段训练中存下的快照（<结果>/snapshots/，同样的问题、同样的解码），"
                "写 trajectory.csv 和 reward_vs_kl.png：代理分和金标准分随离 SFT 的 KL 怎样变化，报告里一段话读出有没有过度优化。"
                "轨迹从 SFT 画起：--models 里要有 sft"})
    num_questions: int = field(default=50, metadata={
        "help": "最多用多少个留出测试问题（另加十个常见问题）；0 = 只用常见问题。--questions 的问题不受此限"})
    questions: str | None = field(default=None, metadata={
        "help": "自己的问题文件：每行一个问题，或 .jsonl 每行带 \"question\" 字段；代替留出问题（常见问题仍然包含）"})
    batch_size: int = field(default=16, metadata={"help": "一次生成 / 打分多少个问题（24 GB 显存 16 足够；显存不足就调小）"})
    max_new_tokens: int = field(default=200, metadata={"help": "每个回答最多生成多少个 token"})
    do_sample: bool = field(default=False, metadata={"help": "采样生成（默认贪心解码：确定、可复现）"})
    seed: int = field(default=42, metadata={
        "help": "随机种子：--do_sample 的回答（每个模型生成前 set_seed(seed)，按提示长度排序、每 --batch_size 个一批；"
                "纯 transformers 用同样的种子、同样的分批调用 model.generate 得到同样的回答），以及估计 KL 的采样"})
    temperature: float = field(default=0.7, metadata={"help": "采样温度，只在 --do_sample 时使用"})
    top_p: float = field(default=0.8, metadata={"help": "top-p 采样，只在 --do_sample 时使用"})
    top_k: int = field(default=20, metadata={"help": "top-k 采样，只在 --do_sample 时使用"})
    kl_samples: int = field(default=4, metadata={
        "help": "离 SFT 有多远：每个问题让每个模型按训练时的温度（--kl_temperature，不做 top-k / top-p）自己采几个回答，"
                "在这些回答上算序列 KL（每个位置对整个词表求和，再对整条回答求和），训练轨迹的分数也打在这些回答上"})
    kl_temperature: float = field(default=0.7, metadata={
        "help": "估计 KL 的采样温度：训练时 rollout 的温度（PPO / GRPO / RLOO 默认 0.7），KL 也在这个温度下的两个分布之间算"})
    kl_max_new_tokens: int = field(default=200, metadata={
        "help": "估计 KL 的回答最多几个 token：训练时回答的上限（PPO 的 response_length、GRPO / RLOO 的 "
                "max_completion_length，默认 200）"})
    output_dir: str = field(default="checkpoint/benchmark", metadata={
        "help": "报告写到 <output_dir>/<时间>/，每次运行一个新文件夹"})
    device: str = field(default="auto", metadata={"help": "auto（有 GPU 用 cuda，否则 cpu）/ cpu / cuda / cuda:1 …"})
    prefs_file: str = field(default=prefs.DEFAULT_FILE, metadata={
        "help": "python chat.py --arena 的投票文件：存在时报告每对模型你判的胜率，以及代理 RM、金标准评委在你投过票的"
                "那些回答上和你一致的比例（都带 95%% 区间）；不存在时跳过"})  # argparse 把 help 当 % 格式串，百分号要写成 %%


def check_options(args: BenchmarkArgs) -> list[str]:
    """在加载任何东西之前检查选项；返回 --models 列表。"""
    for name in ("batch_size", "max_new_tokens", "kl_samples", "kl_max_new_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} 必须是正整数，现在是 {getattr(args, name)}。", EXIT_BAD_INPUT)
    if args.num_questions < 0:
        raise UserError(f"--num_questions 不能为负数，现在是 {args.num_questions}。", EXIT_BAD_INPUT)
    inference.check_sampling(args.do_sample, args.temperature, args.top_p, args.top_k)
    if not args.kl_temperature > 0:
        raise UserError(f"--kl_temperature 必须大于 0，现在是 {args.kl_temperature}。", EXIT_BAD_INPUT)
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
        raise UserError(f"checkpoint/ 里还没有训练好的 RL 模型（{' / '.join(rl_stages())}）；先运行 python train_ppo.py，"
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


def model_runs(policies: dict[str, tuple], with_snapshots: bool) -> tuple[list[dict], dict[str, tuple]]:
    """得分-KL 图和 trajectory.csv 的"运行"：每个和 SFT 比的模型一条，[{"method", "run", "seed", "points":
    [(模型名, progress), …]}]，按训练顺序，第一个点是 SFT（第 0 步）。with_snapshots（--trajectory）：LoRA 阶段训练中
    存下的快照也排进去（和最终结果同一步的最后一个快照不再评测一遍：最终结果就是它），另返回要多评测的快照
    {名字: (文件夹, stage.json)}。方法标签见 method_label。"""
    runs, snapshots = [], {}
    for name, (folder, info) in policies.items():
        if name == metrics.BASELINE:
            continue
        stage = (info or {}).get("stage")
        final = (info or {}).get("progress") or {"step": None, "seen": None, "unit": ""}  # 完整模型、早于快照功能的结果
        points = [(metrics.BASELINE, None)]
        if with_snapshots and stage in STAGES and STAGES[stage].adapter:
            for snap in policy.snapshots_of(folder):
                snap_info = outputs.check_kind(snap, (stage,), f"{name} 的快照")
                if snap_info["progress"]["step"] != final["step"]:
                    snapshots[f"{name}@{snap.name}"] = (snap, snap_info)
                    points.append((f"{name}@{snap.name}", snap_info["progress"]))
        points.append((name, final))
        training_options = (info or {}).get("options", {}).get("training", {})
        runs.append({"method": method_label(stage, training_options, (info or {}).get("reward")) or name, "run": name,
                     "seed": training_options.get("seed"), "points": points})
    return runs, snapshots


def method_label(stage: str | None, training_options: dict, reward: dict | None = None) -> str | None:
    """方法标签 = 阶段名；KL 系数不是默认值时带上它（"grpo (beta=0)"），DPO 的损失不只 sigmoid 时也带上（RPO：
    "dpo (loss=sigmoid+sft)"），训练奖励
    不只 rm 时带上各项（"grpo (rm+repetition)"，stage.json 的 reward）：报告、summary.json、CSV、图例都用这个标签，读者不会把
    KL 为 0 的一次当成默认的，也不会把 rm + 规则的几个种子和只用 rm 的并成一组。图例用英文（默认字体没有中文字形）。"""
    knob = recipes.kl_setting(stage) if stage else None
    coef = training_options.get(knob[0]) if knob else None
    extra = [f"{knob[0]}={coef:g}"] if coef is not None and coef != knob[1] else []
    losses, weights = training_options.get("loss_type"), training_options.get("loss_weights")
    # DPO 的损失不只是默认的 sigmoid（RPO = sigmoid + sft，TRL 的 loss_type 列表）；GRPO 的 loss_type 是一个字符串（"dapo"），不算
    if isinstance(losses, list) and losses != ["sigmoid"]:
        extra.append("loss=" + "+".join(t if not weights or weights[i] == 1 else f"{weights[i]:g}*{t}"
                                        for i, t in enumerate(losses)))
    terms = [t["name"] for t in (reward or {}).get("terms", []) if t["name"] != rewards.EOS_TERM]
    if terms and terms != [rewards.RM]:
        extra.append("+".join(terms))
    return f"{stage} ({', '.join(extra)})" if extra else stage


def check_before_generating(args, policies: dict[str, tuple], snapshots: dict[str, tuple],
                            judge_folders: list[Path]) -> None:
    """生成第一个回答之前，把之后要读的每个文件夹都查一遍：几分钟的生成之后才发现用不上就白等了。
    --trajectory 要从 SFT（第 0 步）画起、要有和它比的模型；每个模型和快照的权重完整（只读文件头）；
    每位评委（代理 RM、金标准评委）的词表和每个模型生成时用的一样（judge 打分时用同一句话再核对一次）。"""
    if args.trajectory and (metrics.BASELINE not in policies or len(policies) < 2):
        raise UserError("--trajectory 的每条轨迹从 SFT（第 0 步）画到训练好的模型：--models 里要有 sft 和至少一个别的模型"
                        "（例如 --models sft,ppo）。", EXIT_BAD_INPUT)
    tokenizers = {}  # 分词器文件夹 -> 用它的第一个模型名
    for name, (folder, _) in {**policies, **snapshots}.items():
        models.check_weights(folder, args.allow_pickle)
        tokenizers.setdefault(inference.tokenizer_folder(folder).resolve(), name)
    sizes = {f: len(models.load_tokenizer(f)) for f in tokenizers}
    for judge_folder in judge_folders:
        n = len(models.load_tokenizer(judge_folder))
        for f, name in tokenizers.items():
            if sizes[f] != n:
                raise judges.vocab_mismatch(name, judge_folder, sizes[f], n)


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
    """批量生成；按提示长度排序后再分批，同一批里长度相近、左填充最少。返回 (提示, 回复) token 列表。
    torch 原本的采样：纯 transformers 用同样的种子、同样的顺序和分批调用 model.generate，得到逐 token 相同的回答。"""
    from transformers import set_seed

    set_seed(args.seed)  # 每个模型从同一个种子开始：采样时与 --models 的顺序无关
    tok = loaded.tokenizer
    prompts = [data.prompt_ids(tok, q, args.system_prompt) for q in questions]
    decoding = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    responses = [None] * len(prompts)
    for start in range(0, len(order), args.batch_size):
        idx = order[start:start + args.batch_size]
        out = sampling.generate(loaded.model, tok, [prompts[i] for i in idx], args.max_new_tokens, args.do_sample,
                                **decoding)
        for i, r in zip(idx, out):
            responses[i] = r
    return prompts, responses


def sft_reference(args) -> Path | None:
    """--models 里没有 sft 时，KL 的参考仍是 --sft_model_path（它确实是一个 SFT 结果时）；否则没有参考。"""
    folder = options.input_path(args.sft_model_path)
    return folder if outputs.kind_of(folder) == "sft" else None


def main():
    # ---------------------------------------------------------------- 选项
    cost = Cost()
    (args,) = options.parse([BenchmarkArgs])
    specs = check_options(args)
    device = pick_device(args.device)
    started = time.strftime("%Y%m%d-%H%M%S")
    # 加载任何模型之前先认清每个文件夹：别生成完了才发现 RM 不对、或把 RM 当成了对话模型
    policies = resolve_models(specs, args)
    runs, snapshots = model_runs(policies, args.trajectory)
    rm_folder = options.input_path(args.reward_model_path)
    rm_info = outputs.check_kind(rm_folder, ("rm",), "--reward_model_path")
    models.check_weights(rm_folder, args.allow_pickle)  # RM 最后才加载：权重坏了现在就说
    extra = {role: found for role in judges.EXTRA if (found := judges.extra_judge(args, role, rm_folder))}
    check_before_generating(args, policies, snapshots, [rm_folder, *(f for f, _ in extra.values())])
    votes = prefs.votes_if_any(args.prefs_file)  # 投票文件坏了：现在就说
    announce_device("benchmark", args.device == "cpu", "fp32", model=rm_folder)  # 权重按 fp32 加载；RM 与策略同尺寸

    # ---------------------------------------------------------------- 数据
    rows = data.load_rows(args.dataset, args.strict, args.columns)
    split = data.split_rows(rows.rows, args.test_size, args.split_seed)
    judge_infos = {"RM": rm_info, **{judges.EXTRA[role][1]: info for role, (_, info) in extra.items()}}
    outputs.check_same_split({**{n: info for n, (_, info) in {**policies, **snapshots}.items()}, **judge_infos},
                             split.fingerprint, "benchmark.py")
    if args.questions:
        asked, asked_source = read_questions(args.questions), "file"
    else:
        asked = [r["question"] for r in data.unique_questions(split.test)][: args.num_questions]
        asked_source = "held_out"
    asked = [q for q in asked if q not in data.COMMON_QUESTIONS]
    questions = list(data.COMMON_QUESTIONS) + asked
    sources = ["common"] * len(data.COMMON_QUESTIONS) + [asked_source] * len(asked)
    print(f"[数据] {len(questions)} 个问题：常见 {len(data.COMMON_QUESTIONS)} + "
          f"{'问题文件' if args.questions else '留出测试'} {len(asked)}；RM 准确率用 {len(split.test)} 对留出偏好对。"
          + (f"另评测 {len(snapshots)} 个训练中的快照（--trajectory）。" if snapshots else ""))

    # ---------------------------------------------------------------- 生成，并算每个模型离 SFT 的精确 KL
    # 每个模型两批回答：(1) 报告里的回答：--models 的模型按评测的解码（贪心或 --do_sample）回答每个问题，纯 transformers
    # 逐 token 复现得出来；(2) 估计 KL 的样本：每个模型（含快照）按训练时的温度自己采 --kl_samples 个回答，在上面算
    # 序列 KL；训练轨迹的分数也打在这批回答上（分数和 KL 来自同一批回答；CPU 上单线程算，模型多时另开子进程和 (1) 同时算，
    # 见 qwen_rlhf/kl_measure.py）。SFT 只加载一次：LoRA 模型和快照的适配器挂在它上面，参考 = 关掉适配器；完整模型加载在
    # 它旁边（inference.Policies）
    sft_folder = policies[metrics.BASELINE][0] if metrics.BASELINE in policies else sft_reference(args)
    bank = inference.Policies(sft_folder, device, args.allow_pickle, args.batch_size)
    generated, folders = {}, {name: options.display_path(folder) for name, (folder, _) in snapshots.items()}
    timing = {"load_s": {}, "generate_s": {}, "kl_s": {}}

    def answer_all():  # (1)，在主进程里
        for name, (folder, _) in policies.items():
            t = time.perf_counter()
            with bank.use(name, folder) as candidate:
                folders[name] = options.display_path(candidate.folder)
                timing["load_s"][name], t = round(time.perf_counter() - t, 3), time.perf_counter()
                generated[name] = (*generate_answers(candidate, questions, args), candidate.tokenizer)
                timing["generate_s"][name] = round(time.perf_counter() - t, 3)
            print(f"[生成] {name}（{folders[name]}）：{len(questions)} 个回答，用时 {timing['generate_s'][name]:.1f}s")

    settings = kl_measure.Settings(sft_folder, args.allow_pickle, args.batch_size, args.seed, args.kl_samples,
                                   args.kl_temperature, args.kl_max_new_tokens, args.system_prompt, tuple(questions))
    measured = kl_measure.run(bank, [(n, f) for n, (f, _) in {**policies, **snapshots}.items()], settings, answer_all)
    samples, kl = {}, {}  # samples：{模型: [(问题, KL 样本的回答文本)]}，只有能和 SFT 比的模型和 SFT 自己
    for name, m in measured.items():
        timing["kl_s"][name] = m.seconds
        if m.kl is not None or name == metrics.BASELINE:
            samples[name] = m.texts
        if m.kl is not None:
            kl[name] = metrics.kl_stats(m.kl, args.kl_samples)
            print(f"[KL] {name}：离 SFT 的序列 KL {kl[name]['kl_seq']:.3f}（每 token {kl[name]['kl_per_token']:.4f}，"
                  f"{m.seconds:.1f}s）")
    bank.close()  # SFT 和挂在上面的适配器
    judges.free()

    # ---------------------------------------------------------------- 打分（所有模型生成完，再放 RM 上去；另两位评委同样）
    t = time.perf_counter()
    answers = []
    for name, (prompts, responses, tok) in generated.items():
        for q, src, resp in zip(questions, sources, responses):
            stopped = bool(resp) and resp[-1] == tok.eos_token_id
            text = scoring.response_text(tok, resp)  # 报告里写的就是打分的这串文本
            answers.append(metrics.Answer(q, src, name, text, 0.0, len(resp) - stopped, stopped))
    sampled = [pair for texts in samples.values() for pair in texts]
    vocab = {**{n: m.vocab for n, m in measured.items()}, **{n: len(tok) for n, (_, _, tok) in generated.items()}}
    rewards.score_rules(answers, {n: tok for n, (_, _, tok) in generated.items()})  # 每条内置规则一列，不加进 RM 分数
    texts = [(a.question, a.response) for a in answers] + sampled
    sample_scores, stats = {}, {}
    for role, folder in (("proxy", rm_folder), *((r, f) for r, (f, _) in extra.items())):
        scores, stats[role] = judges.judge(folder, texts, vocab, split, args, device, votes)
        for a, value in zip(answers, scores):
            setattr(a, "score" if role == "proxy" else role, value)
        sample_scores[role] = scores[len(answers):]
    # 人当评委：每对模型你判的胜率、各位评委和你一致的比例（qwen_rlhf/prefs.py）
    names_of = {"proxy": "代理 RM", "gold": "金标准评委", "null": "空评委"}
    human = prefs.summarize(votes, {names_of[r]: stats[r].pop("human_agrees") for r in stats}) if votes else None
    timing["score_s"] = round(time.perf_counter() - t, 3)
    position = {q: i for i, q in enumerate(questions)}
    answers.sort(key=lambda a: position[a.question])  # 按问题排；sort 是稳定的，同一问题内保持 --models 的顺序
    metrics.add_gains(answers)

    # ---------------------------------------------------------------- 汇总与保存
    names = list(policies)
    costs = {n: (info or {}).get("cost") for n, (_, info) in policies.items()}
    stages = {n: (info or {}).get("stage", "base") for n, (_, info) in policies.items()}
    methods = {**stages, **{r["run"]: r["method"] for r in runs}}  # KL 系数不是默认值的带上系数（见 method_label）
    held_out = {n: (info or {}).get("held_out") for n, (_, info) in policies.items()}
    summary = metrics.summarize(answers, names, stats["proxy"], kl=kl, costs=costs, methods=methods,
                                judges={role: stats[role] for role in extra}, held_out=held_out, stages=stages)
    for n, (_, info) in policies.items():  # 每个模型训练时优化的奖励各项（stage.json）
        summary["models"][n]["reward_terms"] = rewards.trained_terms(info)
    summary["gold_base"] = {"gold": (extra.get("gold") or (None, {}))[1].get("base_model"),
                            "proxy": (rm_info or {}).get("base_model"),
                            "same": "gold" in extra and judges.same_base(extra["gold"][1], rm_info)}
    if metrics.BASELINE in samples:  # 得分-KL 图的点；--trajectory 时还有快照和"有没有过度优化"
        points = trajectory.points(samples, sample_scores, kl, args.kl_samples)
        summary["trajectory"] = trajectory.point_rows(runs, points, trajectory.scale(points))
        if args.trajectory:
            summary["overoptimisation"] = trajectory.verdicts(runs, points)
    spent = cost.record(answers_per_s=len(answers) / max(sum(timing["generate_s"].values()), 1e-9))
    decoding = (f"采样解码（temperature {args.temperature}，top_p {args.top_p}，top_k {args.top_k}，seed {args.seed}）"
                if args.do_sample else "贪心解码（确定、可复现）")
    with outputs.writing(options.output_path(args.output_dir)):  # 只读 / 没有权限 / 磁盘满：一行中文
        folder = report.new_run_folder(options.output_path(args.output_dir), started)
    meta = {"run": folder.name, "decoding": f"{decoding}，每个回答最多 {args.max_new_tokens} 个新 token",
            "folders": folders, "rm_folder": stats["proxy"]["folder"],
            "gold_folder": stats["gold"]["folder"] if "gold" in stats else None,
            "null_folder": stats["null"]["folder"] if "null" in stats else None,
            "kl_sampling": {"samples_per_question": args.kl_samples, "temperature": args.kl_temperature,
                            "max_new_tokens": args.kl_max_new_tokens},
            "split_fingerprint": split.fingerprint,
            "options": options.to_jsonable(args), "device": device, "timing": timing, "cost": spent}
    with outputs.writing(folder, folder):  # 任何失败都删掉这个文件夹，不留半成品：有文件夹就说明写完了
        if human:  # summary.json 里一项，report.md 末尾一段
            summary["human"] = human
        report_file = report.write_report(folder, answers, names, summary, meta)
        if human:
            prefs.append_markdown(report_file, human, args.prefs_file)

    print(f"[结果] {words.source_words(summary)}，{decoding}")
    print(table(*report.summary_rows(summary)))
    if metrics.compared(names):
        print(table(*report.comparison_rows(summary)))
    if (grouped := report.method_rows(summary)) is not None:
        print(table(*grouped))
    for v in words.versus_lines(summary):
        print(f"[结果] {v}")
    for w in summary["warnings"]:
        print(f"[警告] {w}")
    for line in words.judge_lines(summary):
        print(f"[评委] {line}")
    for line in words.trajectory_paragraphs(summary):
        print(f"[轨迹] {line}")
    for line in prefs.lines(human, args.prefs_file) if human else []:
        print(f"[你的投票] {line}")
    print(f"[完成] 报告：{options.display_path(report_file)}（同一文件夹下还有 results.csv、summary.json 和图"
          f"{'，以及 trajectory.csv' if summary.get('overoptimisation') else ''}）；{Cost.words(spent)}")
    sys.stdout.flush()


if __name__ == "__main__":
    errors.run(main, oom_hint("benchmark"))
