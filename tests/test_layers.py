"""包里模块的导入方向：层只往下导入，没有环；函数里不导入包内模块和标准库，只导入列出理由的重型可选依赖。

读的是源码（ast），不运行任何模块：新模块没有登记层、或新添的一条导入往上走，这里就失败。
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qwen_rlhf"

# 层：0 = 只用标准库的底层（路径、错误类型与退出码、阶段登记表），1 = 加载与设备（选项、数据、模型、输出文件夹），
# 2 = 阶段与训练（Trainer 子类、训练流程、评测、报告）。脚本（train_*.py 等）在最上面，包从不导入它们。
LAYERS = {
    "__init__": 0, "paths": 0, "errors": 0, "stages": 0, "console": 0,
    "metrics": 1, "options": 1, "device": 1, "cost": 1, "tiny": 1, "models": 1, "outputs": 1, "data": 1, "scoring": 1,
    "sampling": 1, "policy": 1, "datafile": 1, "recipes": 1, "trajectory": 1, "preflight": 1,
    "training": 2, "ppo": 2, "sampled": 2, "inference": 2, "memory": 2, "prefs": 2, "arena": 2, "words": 2,
    "plots": 2, "report": 2, "kl_measure": 2, "policy_run": 2, "sampled_run": 2, "rewards": 1, "judges": 2, "terminal": 1,
}

# 函数里允许导入的第三方包和理由：都是重型的、或只有某一条路径才用到的可选依赖
LAZY = {
    "torch": "import 要几秒；preflight / compare.sh / memory 在没装 torch 或不需要它的时候也要能运行",
    "transformers": "同上（import 要几秒）",
    "peft": "只有 LoRA 策略的加载 / 合并才用到",
    "accelerate": "只在多进程时用到；单进程不初始化分布式",
    "trl": "trl.experimental.ppo 的 import 要好几秒，只有 PPO 要它",
    "datasets": "只有训练时修数据集指纹才用到",
    "safetensors": "只有 PPO 存取检查点才用到",
    "matplotlib": "只有画图才用到，import 很慢",
    "modelscope": "只有下载时用到",
    "huggingface_hub": "只有下载时用到",
    "pyarrow": "只有读 .parquet 数据时用到",
    "termios": "只有类 Unix 系统有（Windows 没有）；只有 chat 在终端前台生成时才用到",
}


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.glob("*.py"))}


def package_targets(node: ast.AST) -> list[str]:
    """一条导入语句指向的包内模块（相对导入或 qwen_rlhf.x）；不指向包内时为空。"""
    if isinstance(node, ast.ImportFrom):
        if node.level == 1:
            return [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
        if (node.module or "").startswith("qwen_rlhf"):
            rest = node.module.split(".")[1:]
            return rest[:1] if rest else [a.name for a in node.names]
        return []
    return [a.name.split(".")[1] for a in node.names if a.name.startswith("qwen_rlhf.")]


def top_imports(tree: ast.Module) -> list[ast.AST]:
    return [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def graph() -> dict[str, set[str]]:
    return {name: {t for n in top_imports(tree) for t in package_targets(n)} for name, tree in modules().items()}


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYERS)


def test_imports_only_run_down_or_sideways_and_never_in_a_circle():
    edges = graph()
    up = [f"{a} (层 {LAYERS[a]}) -> {b} (层 {LAYERS[b]})" for a, bs in edges.items() for b in bs if LAYERS[b] > LAYERS[a]]
    assert up == []
    done, order = set(), []

    def visit(name, path):
        assert name not in path, f"导入成环：{' -> '.join([*path, name])}"
        if name not in done:
            for b in sorted(edges[name]):
                visit(b, [*path, name])
            done.add(name)
            order.append(name)

    for name in sorted(edges):
        visit(name, [])
    assert len(order) == len(edges)


def test_the_bottom_layer_imports_only_the_standard_library():
    for name, tree in modules().items():
        if LAYERS[name] != 0:
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                roots = [a.name.split(".")[0] for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.level == 0:
                roots = [n.module.split(".")[0]]
            else:
                continue
            assert all(r in sys.stdlib_module_names or r == "__future__" for r in roots), (name, roots)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_no_import_inside_a_function_except_a_listed_heavy_dependency(name):
    tree = modules()[name]
    top = {id(n) for n in top_imports(tree)}
    found = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top:
            roots = [a.name.split(".")[0] for a in n.names] if isinstance(n, ast.Import) else (
                ["." + (n.module or "")] if n.level else [n.module.split(".")[0]])
            found += [f"{name}.py:{n.lineno} {r}" for r in roots if r not in LAZY]
    assert found == []


def test_the_checker_sees_a_function_level_import_and_an_upward_edge():
    """检查本身不是摆设：一段有函数内导入、往上导入的源码，它都认得出。"""
    tree = ast.parse("from .training import x\n\ndef f():\n    from .stages import STAGES\n    import re\n")
    assert [t for n in top_imports(tree) for t in package_targets(n)] == ["training"]
    inner = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in top_imports(tree)]
    assert len(inner) == 2
