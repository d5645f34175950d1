"""阶段登记表是描述一个阶段的唯一地方：各处的阶段列表都等于登记表，登记一个玩具阶段，它就出现在每一处。

玩具阶段在一个新的子进程里登记（sitecustomize 在解释器启动时把它加进 qwen_rlhf.stages.STAGES），因为各处的列表
在 import 时从登记表读出；scripts/compare.sh 调用的系统 python3 也经同一个 sitecustomize 看到它。
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from qwen_rlhf import recipes
from qwen_rlhf.stages import STAGES, chat_stages, rl_stages, training_stages

# 玩具阶段 "kto"：和 DPO 同一类（偏好对、LoRA、不用 RM，同样的选项类与默认值），文件夹、脚本、配方都按名字来；
# 只有登记表里的这一项，别处什么都不加
TOY = '''
import dataclasses
from qwen_rlhf import stages
stages.STAGES["kto"] = dataclasses.replace(stages.STAGES["dpo"], name="kto", label="KTO 模型", script="train_kto.py",
                                           about="KTO：玩具阶段的说明。", no_zero3="玩具阶段的理由")
'''

# 子进程：读出每一处的阶段列表，并按 kto 的选项解析一次（选项类、默认值、输出文件夹都只来自登记表的那一项）
PROBE = '''
import dataclasses, importlib.util, json, sys
from qwen_rlhf import recipes

def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

sys.path.insert(0, "bench")
from qwen_rlhf import memory, metrics, stages, words
bench = load("benchmark.py", "benchmark_probe")
chat = load("chat.py", "chat_probe")
gpu_check = load("bench/gpu_check.py", "gpu_check_probe")
rl_bench = load("bench/bench_rl_stages.py", "rl_bench_probe")
help_of = lambda cls, name: next(f for f in dataclasses.fields(cls) if f.name == name).metadata["help"]
plan = gpu_check.plan("tiny", "cpu")
summary = {"models": {"kto": {"stage": "kto", "n": 0}}}
print(json.dumps({
    "benchmark_help": help_of(bench.BenchmarkArgs, "models"),
    "benchmark_paths": sorted(f.name for f in dataclasses.fields(bench.BenchmarkArgs) if f.name.endswith("_model_path")),
    "chat_help": help_of(chat.ChatArgs, "model"), "chat_commands": chat.HELP,
    "memory": list(memory.STAGES), "memory_kind": memory.kind_of("kto"),
    "gpu_check_needs": {k: list(v) for k, v in gpu_check.NEEDS.items()},
    "gpu_check_plan": plan[stages.STAGES["kto"].memory_kind],
    "rl_bench": list(rl_bench.STAGES), "rl_bench_argv": rl_bench.stage_argv("kto", "S", "R", "O"),
    "kl": list(recipes.kl_setting("kto")), "report": words.method_paragraphs(summary),
    "parsed": {k: str(v) for o in recipes.parse("kto", ["--use_cpu", "true"]) for k, v in vars(o).items()
               if k in ("output_dir", "learning_rate", "add_prefs", "lora_r")},
    "collapse": metrics.collapse_warning("kto", ["好"] * 10, [str(i) for i in range(10)]),
}, ensure_ascii=False))
'''


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("toy-site")
    (site / "sitecustomize.py").write_text(textwrap.dedent(TOY), encoding="utf-8")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


@pytest.fixture(scope="module")
def seen(toy_env):
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=toy_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_list_of_stages_equals_the_registry():
    import importlib.util

    from qwen_rlhf import memory

    assert list(memory.STAGES) == list(training_stages())
    assert {s for s in STAGES if STAGES[s].kl_option} == set(rl_stages())  # 每个 LoRA 策略阶段都有 KL 系数
    assert recipes.kl_setting("ppo") == ("kl_coef", 0.05) == ("kl_coef", STAGES["ppo"].defaults["kl_coef"])
    assert recipes.kl_setting("grpo") == ("beta", 0.05) and recipes.kl_setting("sft") is None
    assert all(STAGES[s].tiny_recipe.is_file() and (ROOT / STAGES[s].script).is_file() for s in training_stages())
    spec = importlib.util.spec_from_file_location("gpu_check_registry", ROOT / "bench" / "gpu_check.py")
    sys.path.insert(0, str(ROOT / "bench"))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert {s: v for s, v in gpu_check.NEEDS.items() if s in STAGES} == {s: STAGES[s].inputs for s in training_stages()
                                                                          if STAGES[s].inputs}


def test_a_stage_registered_once_appears_in_every_list(seen):
    """玩具阶段 kto 只登记在 stages.py（一项，别处什么都没加）：--help、memory、gpu_check、bench、报告都有它，
    选项按登记表里的类与默认值解析，输出文件夹默认 checkpoint/kto。"""
    names = " / ".join([*chat_stages(), "kto"])
    assert names in seen["benchmark_help"] and names in seen["chat_help"] and names in seen["chat_commands"]
    assert "kto_model_path" in seen["benchmark_paths"]
    assert seen["memory"] == [*training_stages(), "kto"] and seen["memory_kind"] == "pairs"
    assert seen["gpu_check_needs"]["kto"] == ["sft"] and "--max_steps" in seen["gpu_check_plan"]
    assert "kto" in seen["rl_bench"]
    assert seen["rl_bench_argv"][:3] == ["--config", str(ROOT / "configs" / "tiny" / "kto.yaml"), "--sft_model_path"]
    assert seen["kl"] == ["beta", 0.1]  # DPO 的默认 beta（登记表里 dpo 那一项，kto 照抄）
    assert seen["parsed"] == {"output_dir": "checkpoint/kto", "learning_rate": "5e-06", "add_prefs": "None",
                              "lora_r": "32"}
    assert any("KTO：玩具阶段的说明。" in p for p in seen["report"])
    assert "（--beta）" in seen["collapse"]


def test_compare_sh_accepts_the_registered_stage_as_a_method(toy_env, tmp_path):
    """scripts/compare.sh 的 METHODS 检查读登记表（系统 python3）：kto 在可用的方法里。"""
    r = subprocess.run(["bash", str(ROOT / "scripts" / "compare.sh")], capture_output=True, text=True, timeout=60,
                       env={**toy_env, "METHODS": "kto foo", "VENV": str(tmp_path / "venv")})
    assert r.returncode == 2 and not (tmp_path / "venv").exists(), r.stderr
    assert r.stderr.strip() == (f'错误：METHODS 里的 "foo" 不是能对比的方法；可用的有 {" ".join([*rl_stages(), "kto"])}'
                                f'（例如 METHODS="grpo dpo"）。')


def test_zero3_refusal_reads_the_registry(monkeypatch):
    """拒绝 ZeRO-3 的理由来自登记表的 no_zero3；没写理由的阶段不拒绝。"""
    import dataclasses
    from types import SimpleNamespace

    from qwen_rlhf.errors import UserError

    zero3 = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3))
    monkeypatch.setitem(STAGES, "kto", dataclasses.replace(STAGES["dpo"], name="kto", no_zero3="玩具阶段的理由"))
    with pytest.raises(UserError, match="KTO 不支持 DeepSpeed ZeRO-3（玩具阶段的理由）"):
        recipes.refuse_zero3("kto", zero3)
    recipes.refuse_zero3("sft", zero3)  # SFT 没有 no_zero3：不拒绝
