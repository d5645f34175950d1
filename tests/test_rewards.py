"""训练奖励模块（qwen_rlhf/rewards.py）：PPO 和 GRPO / RLOO 对同样的回答给同样的奖励，规则的取值，用户函数，坏输入。"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY, assert_one_line_error, run_inline
from qwen_rlhf import data, models, recipes, rewards
from qwen_rlhf.errors import UserError
from qwen_rlhf.ppo import RLHFPPOTrainer, reward_logs

QUESTIONS = ["你好", "今天星期几", "讲个笑话", "你是谁"]
ANSWERS = ["你好！有什么可以帮你？", "哈哈哈哈哈哈哈哈哈哈", "", "我是一个助手"]


def as_completions(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


# ---------------------------------------------------------------- 内置规则

def test_repetition_is_minus_the_share_of_repeated_character_trigrams():
    got = rewards.repetition(None, as_completions(["哈哈哈哈哈哈", "今天天气很好", "ab", ""]))
    assert got == [pytest.approx(1 / 4 - 1), 0.0, 0.0, 0.0]  # 哈哈哈 ×4：1 个不同 / 4 个


def test_no_answer_is_minus_one_for_empty_or_punctuation_only():
    assert rewards.no_answer(None, as_completions(["", " 。！？…", "——", "好", "42"])) == [-1.0, -1.0, -1.0, 0.0, 0.0]


def test_length_counts_tokens_without_the_final_im_end_and_saturates_at_minus_one():
    f = rewards.Length(target=4, eos_token_id=9)
    got = f(None, as_completions(["x"] * 4), completion_ids=[[1, 2, 3, 4, 9], [1, 2], [1] * 12, [1, 2, 3, 4, 5, 6]])
    assert got == [0.0, -0.5, -1.0, -0.5]


# ---------------------------------------------------------------- 同一个奖励：PPO 与 GRPO

def test_ppo_and_grpo_give_the_same_reward_to_the_same_answers(tiny_model, tmp_path):
    """同一组回答（两个停下了、两个写满长度没停）：PPO 的奖励（RLHFPPOTrainer._text_reward，TRL 那次 missing_eos 扣分
    在 train() 里关掉）和 TRL 的 GRPOTrainer._calculate_rewards 按 reward_weights 加权求和的结果逐个相同，
    没停下的两个各扣一次 missing_eos_penalty。"""
    from datasets import Dataset
    from trl import GRPOConfig

    from qwen_rlhf.policy import LoRAArgs
    from qwen_rlhf.sampled import GRPOTrainer

    tok = models.load_tokenizer(tiny_model, padding_side="left")
    rm = models.load_score_model(tiny_model, tok)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    reward = rewards.TrainingReward([("rm", rewards.RMTerm("rm", rm, tok), 1.0),
                                     ("repetition", rewards.Checked(rewards.repetition, "repetition"), 0.5)],
                                    missing_eos_penalty=1.0, eos_token_id=eos)
    prompts = [data.messages(q) for q in QUESTIONS]
    answer_ids = [tok(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]
    completion_ids = [ids + [eos] if i % 2 == 0 else ids for i, ids in enumerate(answer_ids)]  # 1、3 没停下

    # PPO：TRL 交给 get_reward 的是 左填充的提示 + 截断后的回复（<|im_end|> 之后是填充）
    examples = [data.ppo_example(tok, {"question": q}) for q in QUESTIONS]
    prompt_ids = [e["input_ids"] for e in examples]
    assert [e["messages"] for e in examples] == prompts
    context = max(map(len, prompt_ids))
    width = max(map(len, completion_ids)) + 3
    rows = [[pad] * (context - len(p)) + p + c + [pad] * (width - len(c)) for p, c in zip(prompt_ids, completion_ids)]
    stub = SimpleNamespace(processing_class=tok, reward_model=rm, reward=reward, state=None, _reward_terms={},
                           prompt_messages={tuple(p): m for p, m in zip(prompt_ids, prompts)})
    get = RLHFPPOTrainer._text_reward(stub, get_reward=None)
    _, ppo_scores, _ = get(rm, torch.tensor(rows), pad, context)

    # GRPO：TRL 自己的 _calculate_rewards，再按 reward_weights 加权（和 GRPOTrainer._generate_and_score_completions 一样）
    cfg = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=4, num_generations=2,
                     max_completion_length=8, report_to=[], reward_weights=reward.weights,
                     chat_template_kwargs={"enable_thinking": False})
    trainer = GRPOTrainer(model=models.load_causal_lm(tiny_model, tok), reward_funcs=reward.trl_funcs(), args=cfg,
                          processing_class=tok, peft_config=LoRAArgs(lora_r=4).peft_config(),
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
    completions = as_completions(tok.batch_decode(completion_ids, skip_special_tokens=True))
    per_func = trainer._calculate_rewards([{"prompt": p} for p in prompts], prompts, completions, completion_ids)
    grpo_scores = (per_func * trainer.reward_weights.unsqueeze(0)).nansum(dim=1)

    assert trainer.reward_func_names == ["rm", "repetition", "missing_eos"]
    assert per_func[:, 2].tolist() == [0.0, -1.0, 0.0, -1.0]
    assert ppo_scores.tolist() == pytest.approx(grpo_scores.tolist(), abs=1e-5)
    rm_only = rewards.TrainingReward([("rm", rewards.RMTerm("rm", rm, tok), 1.0)], 0.0, eos).score(
        prompts, completions, completion_ids)[0]
    assert ppo_scores.tolist() != pytest.approx(rm_only, abs=1e-3)  # 规则和扣分真的加进去了
    assert set(stub._reward_terms) == {"rm", "repetition", "missing_eos"}


def test_ppo_curves_per_term_follow_trl_names_and_skip_none():
    parts = [{"rm": [1.0, 3.0], "length": [math.nan, -0.5]}, {"rm": [2.0], "length": [-1.0]}]  # 两个进程
    logs = reward_logs(parts, ["rm", "length"], [1.0, 2.0])
    assert logs["rewards/rm/mean"] == 2.0 and logs["rewards/rm/std"] == 1.0
    assert logs["rewards/length/mean"] == -0.75
    assert logs["reward"] == pytest.approx((1.0 + 2.0 + 0.0) / 3)  # 1 + 0、3 - 1、2 - 2：None 不计入和


# ---------------------------------------------------------------- 用户函数

USER_MODULE = '''
CALLS = []

def brevity(prompts, completions, completion_ids=None, **kwargs):
    CALLS.append(len(completions))
    return [-len(c[0]["content"]) / 10 for c in completions]
'''


def test_a_trl_style_function_loads_by_file_path_or_module_once(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = rewards.load_function("my_rewards:brevity")
    by_file = rewards.load_function(f"{tmp_path / 'my_rewards.py'}:brevity")
    assert rewards.load_function("my_rewards:brevity") is by_module  # 只导入一次
    for f in (by_module, by_file):
        assert f(prompts=[None], completions=as_completions(["一二三四五"])) == [-0.5]
    terms = rewards.plan("grpo", [f"{tmp_path / 'my_rewards.py'}:brevity", "no_answer"], None)
    assert [(t.name, t.weight) for t in terms] == [("brevity", 1.0), ("no_answer", 1.0)]


# ---------------------------------------------------------------- 坏输入：一行中文，在加载模型之前

@pytest.mark.parametrize("argv, needle", [
    (["--reward_funcs", "rm", "nosuchrule"], "nosuchrule 不认识"),
    (["--reward_funcs", "rm", "no_such_module_xyz:f"], "no_such_module_xyz 导入失败"),
    (["--reward_funcs", "rm", "json:no_such_function"], "没有可调用的 no_such_function"),
    (["--reward_funcs", "rm", "repetition", "--reward_weights", "1.0"], "--reward_weights 有 1 个"),
    (["--reward_funcs", "rm", "rm"], "重名"),
    (["--reward_funcs", "rm", "length", "--target_length", "0"], "--target_length 必须是正整数"),
])
def test_bad_reward_options_are_refused_while_parsing(argv, needle):
    for stage in ("ppo", "grpo", "rloo"):
        with pytest.raises(UserError, match=needle):
            recipes.parse(stage, argv)


def test_ppo_without_rm_and_the_gold_judge_as_a_term_are_refused(tmp_path):
    with pytest.raises(UserError, match="PPO 的 --reward_funcs 必须包含 rm"):
        recipes.parse("ppo", ["--reward_funcs", "repetition"])
    assert recipes.parse("grpo", ["--reward_funcs", "repetition"])[0].reward_funcs == ["repetition"]  # 只用规则可以
    gold = tmp_path / "rm_gold"
    gold.mkdir()
    (gold / "stage.json").write_text(json.dumps({"stage": "rm", "role": "gold"}))
    with pytest.raises(UserError, match="是金标准评委.*--reward_funcs 需要代理 RM"):
        recipes.parse("grpo", ["--reward_funcs", "rm", str(gold)])


def raises(prompts, completions, **kwargs):
    raise KeyError("answer")


@pytest.mark.parametrize("judge, needle", [
    (raises, "出错（KeyError"),
    (lambda prompts, completions, **k: [1.0], "返回了 1 个值"),
    (lambda prompts, completions, **k: [math.nan] * len(completions), "返回了 nan"),
    (lambda prompts, completions, **k: ["good"] * len(completions), "返回了 'good'"),
    (lambda prompts, completions, **k: 3.0, "返回了一个不是列表的值"),
])
def test_a_broken_user_function_stops_with_one_line_naming_it(judge, needle):
    judge.__name__ = "judge"
    with pytest.raises(UserError, match=needle) as e:
        rewards.Checked(judge, "mine.py:judge")(prompts=[None, None], completions=as_completions(["a", "b"]))
    assert "奖励函数 judge（mine.py:judge）" in e.value.message and "\n" not in e.value.message


def test_none_means_not_applicable_as_in_trl_and_numpy_numbers_are_numbers():
    import numpy as np

    checked = rewards.Checked(lambda prompts, completions, **k: [None, np.float32(0.5), 2], "x:f")
    assert checked(prompts=[None] * 3, completions=as_completions(["a", "b", "c"])) == [None, 0.5, 2.0]


@pytest.mark.parametrize("script, funcs, needle", [
    ("train_grpo.py", ["rm", "typo"], "typo 不认识"),
    ("train_rloo.py", ["rm", "repetition", "--reward_weights", "1", "2", "3"], "--reward_weights 有 3 个"),
    ("train_ppo.py", ["repetition"], "PPO 的 --reward_funcs 必须包含 rm"),
])
def test_bad_reward_options_exit_with_one_line_before_anything_is_written(tmp_path, script, funcs, needle):
    out = tmp_path / "out"
    r = run_inline(script, "--config", TINY / f"{script[6:-3]}.yaml", "--output_dir", out, "--reward_funcs", *funcs,
                   tmp=tmp_path)
    assert_one_line_error(r, 2, needle)
    assert not out.exists()


# ---------------------------------------------------------------- 端到端：每一项一条曲线，stage.json 记下各项与权重

USER_FILE = '''
def shorter(prompts, completions, completion_ids, **kwargs):  # 给 TRL 的 GRPO 写的样子：原样用
    return [-len(ids) / 16 for ids in completion_ids]
'''


def test_grpo_and_ppo_train_on_rm_rules_and_a_user_function_with_one_curve_per_term(work, sft, rm):
    from conftest import read_scalars, rl_args, stage_args, trained

    from qwen_rlhf.outputs import stage_info

    (work / "user_reward.py").write_text(USER_FILE)
    user = f"{work / 'user_reward.py'}:shorter"
    funcs = ["--reward_funcs", "rm", "repetition", "length", user, "--reward_weights", "1.0", "0.5", "0.2", "0.3",
             "--target_length", "8"]
    runs = {"grpo": rl_args(work, "grpo", work / "grpo-rules", *funcs),
            "ppo": stage_args("ppo", work / "tiny-qwen3", work / "ppo-rules", "--sft_model_path", sft.folder,
                              "--reward_model_path", rm.folder, "--total_episodes", 32, *funcs)}
    for stage, args in runs.items():
        trained(f"train_{stage}.py", *args, tmp=work)
        info = stage_info(work / f"{stage}-rules")
        assert [(t["name"], t["weight"]) for t in info["reward"]["terms"]] == [
            ("rm", 1.0), ("repetition", 0.5), ("length", 0.2), ("shorter", 0.3), ("missing_eos", 1.0)]
        assert info["reward"]["terms"][3]["source"] == user
        scalars = read_scalars(info["tensorboard"])
        steps = len(scalars[f"{stage}/reward"])
        assert steps >= 2
        for name in ("rm", "repetition", "length", "shorter", "missing_eos"):
            for what in ("mean", "std"):
                values = scalars[f"{stage}/rewards/{name}/{what}"]
                assert len(values) == steps and all(math.isfinite(v) for v in values), (stage, name, what)
        assert all(-1 <= v <= 0 for v in scalars[f"{stage}/rewards/repetition/mean"] + scalars[f"{stage}/rewards/length/mean"])
        assert all(-1 <= v < 0 for v in scalars[f"{stage}/rewards/shorter/mean"])  # 回答至少一个 token，最多 16 个


RAISES_LATER = '''
import pathlib

def flaky(prompts, completions, **kwargs):
    calls = pathlib.Path(__file__).with_suffix(".calls")
    n = int(calls.read_text()) if calls.exists() else 0
    calls.write_text(str(n + 1))
    if n >= 2:
        raise RuntimeError("数据库连不上")
    return [0.0] * len(completions)
'''


def test_a_function_that_raises_mid_training_stops_with_one_line_and_leaves_a_checkpoint(work, sft, rm):
    from conftest import rl_args

    (work / "flaky_reward.py").write_text(RAISES_LATER)
    out = work / "grpo-flaky"
    r = run_inline("train_grpo.py", *rl_args(work, "grpo", out, "--reward_funcs", "rm",
                                             f"{work / 'flaky_reward.py'}:flaky", "--save_steps", 1), tmp=work)
    assert_one_line_error(r, 2, "奖励函数 flaky", "RuntimeError: 数据库连不上", "--resume_from_checkpoint true")
    assert not out.exists()
    assert sorted(p.name for p in (work / "grpo-flaky-trainer-checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]


def test_grpo_on_rm_and_repetition_is_its_own_method_beside_grpo_on_rm(tmp_path):
    """compare.sh RULES=1：rm + repetition 的 GRPO 和只用 rm 的 GRPO 在报告里是两个方法（各自跨种子的均值），不并成一组；
    只有 rm（+ missing_eos）的、早于训练奖励模块的结果仍叫 grpo。"""
    import benchmark

    def run(stage, *terms):
        reward = {"terms": [{"name": n, "weight": 1.0} for n in (*terms, "missing_eos")]} if terms else None
        return tmp_path / stage, {"stage": stage, "reward": reward, "options": {"training": {"seed": 1}}}

    policies = {"sft": run("sft"), "grpo-seed1": run("grpo", "rm"), "grpo-rep-seed1": run("grpo", "rm", "repetition"),
                "grpo-old": run("grpo"), "rloo-rules": run("rloo", "no_answer", "length")}
    runs, _ = benchmark.model_runs(policies, with_snapshots=False)
    assert {r["run"]: r["method"] for r in runs} == {"grpo-seed1": "grpo", "grpo-rep-seed1": "grpo (rm+repetition)",
                                                     "grpo-old": "grpo", "rloo-rules": "rloo (no_answer+length)"}


def test_a_rules_only_rloo_run_never_reads_the_reward_model_path(work, sft, tmp_path):
    """--reward_funcs 里没有 rm：不存在的 --reward_model_path 也照跑（不检查、不加载），stage.json 只记规则各项。"""
    from conftest import rl_args

    from qwen_rlhf.outputs import stage_info

    out = tmp_path / "rloo-rules"
    r = run_inline("train_rloo.py", *rl_args(work, "rloo", out, "--reward_funcs", "repetition", "length",
                                             "--reward_model_path", tmp_path / "no-such-rm", "--max_steps", 1,
                                             "--per_device_train_batch_size", 2, "--num_generations", 2,
                                             "--max_completion_length", 8, "--snapshots", 0), tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    info = stage_info(out)
    assert [t["name"] for t in info["reward"]["terms"]] == ["repetition", "length", "missing_eos"]
    assert info["reward_model"] is None and not (tmp_path / "no-such-rm").exists()
    # 对照：同样的选项加上 rm 一项，就要先找到那个 RM
    r = run_inline("train_rloo.py", *rl_args(work, "rloo", tmp_path / "rloo-rm", "--reward_funcs", "rm", "length",
                                             "--reward_model_path", tmp_path / "no-such-rm"), tmp=tmp_path)
    assert_one_line_error(r, 3, "--reward_model_path", "no-such-rm")
