"""给用户看的文字里提到的每个 `--选项`，打印它的那个脚本真的有：照着提示去改，不会得到"未知选项"。

消息从源代码里收集（字符串常量，含 f-string 的字面部分；函数和类的 docstring 是写给开发者的，不算；脚本开头的
用法说明算）；每个脚本的选项集合用它自己的 dataclass 建出它真正的解析器（options.Parser）。共用模块的消息算在
能打印它的脚本头上，表见 SHARED / ONLY，一项一行，不靠猜调用关系。
"""

import ast
import re

import pytest
from conftest import ROOT

import benchmark
import chat
from qwen_rlhf import options, recipes, stages

OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)")
# 消息里给出的另一个脚本的命令（"python train_rm.py --role gold"）：这些选项按那个脚本查，不算打印它的脚本的
COMMAND = re.compile(r"python (\w+\.py)((?: --[a-z][a-z0-9_]*(?: [^\s\-，。；：（）、]+)?)+)")

PARSERS = {  # 脚本 -> 它交给 options.parse 的 dataclass（训练脚本的来自登记表，一个阶段一项）
    **{f"train_{stage}.py": recipes.types(stage) for stage in stages.training_stages()},
    "benchmark.py": [benchmark.BenchmarkArgs],
    "chat.py": [chat.ChatArgs],
}
ALL = tuple(PARSERS)
TRAIN = tuple(f"train_{stage}.py" for stage in stages.training_stages())
LORA = tuple(f"train_{stage}.py" for stage in stages.rl_stages())  # LoRA 策略（RM 的 LoRA 只用 LoRAArgs 和合并）
SAMPLED = ("train_grpo.py", "train_rloo.py")
# 共用模块 -> 能打印它的消息的脚本
SHARED = {
    "qwen_rlhf/errors.py": ALL,
    "qwen_rlhf/options.py": ALL,
    "qwen_rlhf/models.py": ALL,
    "qwen_rlhf/outputs.py": ALL,
    "qwen_rlhf/data.py": (*TRAIN, "benchmark.py"),
    "qwen_rlhf/inference.py": ("benchmark.py", "chat.py"),
    "qwen_rlhf/report.py": ("benchmark.py",),
    "qwen_rlhf/metrics.py": ("benchmark.py",),
    "qwen_rlhf/training.py": TRAIN,
    "qwen_rlhf/recipes.py": TRAIN,
    "qwen_rlhf/ppo.py": ("train_ppo.py",),
    "qwen_rlhf/policy.py": (*LORA, "train_rm.py"),
    "qwen_rlhf/sampled.py": SAMPLED,
    "qwen_rlhf/rewards.py": ("train_ppo.py", *SAMPLED),
}
# 共用模块里只有部分脚本会走到的函数 / 类（模块, 名字）-> 这些脚本
ONLY = {
    ("qwen_rlhf/options.py", "DataArgs"): (*TRAIN, "benchmark.py"),
    ("qwen_rlhf/data.py", "sft_share"): ("train_sft.py",),
    ("qwen_rlhf/data.py", "drop_long"): ("train_sft.py", "train_rm.py"),  # 默认的 --max_length；PPO 传自己的选项名
    ("qwen_rlhf/data.py", "drop_long_prompts"): SAMPLED,
    # GRPO / RLOO / DPO 从 SFT 开始，不解析基座
    ("qwen_rlhf/models.py", "resolve_model_source"): ("train_sft.py", "train_rm.py", "train_ppo.py", "benchmark.py",
                                                      "chat.py"),
    ("qwen_rlhf/models.py", "_download_model"): ("train_sft.py", "train_rm.py", "train_ppo.py", "benchmark.py", "chat.py"),
    ("qwen_rlhf/outputs.py", "check_writable"): TRAIN,
    ("qwen_rlhf/outputs.py", "lock_output"): TRAIN,
    ("qwen_rlhf/outputs.py", "check_same_split"): ("train_ppo.py", "benchmark.py"),
    ("qwen_rlhf/recipes.py", "SampledArgs"): SAMPLED,
    ("qwen_rlhf/recipes.py", "PPOArgs"): ("train_ppo.py",),
    ("qwen_rlhf/recipes.py", "RMArgs"): ("train_rm.py",),
    ("qwen_rlhf/recipes.py", "PolicyArgs"): LORA,
    ("qwen_rlhf/outputs.py", "check_reward_model"): ("train_ppo.py", "train_grpo.py", "train_rloo.py"),
    ("qwen_rlhf/recipes.py", "steps_for_answers"): SAMPLED,
    ("qwen_rlhf/recipes.py", "checked_sampled"): SAMPLED,
    ("qwen_rlhf/recipes.py", "explain_group_size"): SAMPLED,
    ("qwen_rlhf/training.py", "warn_zero_ppo_not_resumable"): ("train_ppo.py",),
}
# 别的程序的选项：accelerate launch（--config_file --num_processes）和 tensorboard（--logdir）
OTHER_PROGRAMS = {"config_file", "num_processes", "logdir"}
# stages.py 的提示按阶段分：每个脚本只会打印自己那一项
HINTS = {**{f"train_{stage}.py": stage for stage in stages.training_stages()}, "benchmark.py": "benchmark", "chat.py": "chat"}


def mentions(path, keep_module_docstring: bool) -> dict[str, set[str]]:
    """{顶层函数 / 类名（模块级的字符串为 "<module>"）: 其中字符串提到的选项名}。"""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
                  and not (keep_module_docstring and isinstance(n, ast.Module))}
    out: dict[str, set[str]] = {}
    for node in tree.body:
        name = getattr(node, "name", "<module>")
        for n in ast.walk(node):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
                out.setdefault(name, set()).update(OPTION.findall(COMMAND.sub("", n.value)))
    return out


def quoted_commands() -> list[tuple[str, str, set[str]]]:
    """所有脚本和共用模块的消息里给出的命令：[(出处, 被调用的脚本, 它的选项)]。"""
    found = []
    for path in {*ALL, *SHARED}:
        for n in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
            if isinstance(n, ast.Constant) and isinstance(n.value, str):
                found += [(path, m.group(1), set(OPTION.findall(m.group(2)))) for m in COMMAND.finditer(n.value)]
    return found


def messages_of(script: str) -> dict[str, set[str]]:
    """这个脚本能打印的消息里提到的选项：{出处: 选项名}。"""
    found = {f"{script}:{k}": v for k, v in mentions(script, keep_module_docstring=True).items()}
    for module, scripts in SHARED.items():
        for name, opts in mentions(module, keep_module_docstring=False).items():
            if script in ONLY.get((module, name), scripts):
                found[f"{module}:{name}"] = opts
    stage = HINTS[script]
    found["qwen_rlhf/stages.py:hints"] = set(OPTION.findall(stages.oom_hint(stage) + stages.nan_hint(stage)))
    return found


def parser_options(script: str) -> set[str]:
    parser = options.Parser(PARSERS[script])
    # --config 由 options.parse / TrlParser 自己读，不是 argparse 的动作
    return {s[2:] for s in parser._option_string_actions if s.startswith("--")} | {"config"}


@pytest.mark.parametrize("script", ALL)
def test_every_option_named_in_a_message_exists_in_the_script_that_prints_it(script):
    have = parser_options(script) | OTHER_PROGRAMS
    missing = {where: sorted(opts - have) for where, opts in messages_of(script).items() if opts - have}
    assert not missing, f"{script} 的消息提到了它没有的选项：{missing}"


def test_every_command_a_message_quotes_for_another_script_uses_options_that_script_has():
    """"请用 python train_rm.py --role gold 训练一个"这样的提示：照着运行的那个脚本真的有这些选项。"""
    commands = quoted_commands()
    assert ("benchmark.py", "train_rm.py", {"role"}) in commands  # 收集器看得到这类命令
    wrong = [(where, script, sorted(opts - parser_options(script))) for where, script, opts in commands
             if script in PARSERS and opts - parser_options(script)]
    assert not wrong, wrong


def test_the_collector_sees_options_in_f_strings_and_refuses_what_a_script_lacks():
    """收集器本身：f-string 里的选项也收得到；PPO 没有 --max_length（它的是 --max_prompt_length）。"""
    found = messages_of("train_ppo.py")
    assert "max_prompt_length" in found["train_ppo.py:main"]  # data.drop_long(..., "--max_prompt_length")
    assert "max_length" not in parser_options("train_ppo.py")
    assert "max_length" in mentions("qwen_rlhf/data.py", False)["drop_long"]
    assert "sft_fraction" in messages_of("train_sft.py")["qwen_rlhf/data.py:sft_share"]


@pytest.mark.parametrize("script", ALL)
def test_help_prints_for_every_script(script):
    """python <脚本> --help 能打印：argparse 把 help 当 % 格式串，"95% 区间"这样的字要写成 %%（否则 --help 报错退出）。"""
    text = options.Parser(PARSERS[script]).format_help()
    assert "--output_dir" in text or "--model" in text
