"""benchmark.py：指标和报告函数（手写数据）+ 在 tiny 流水线产物上真实运行（子进程；被拒绝的运行用 run_inline 在测试进程里）。"""

import csv
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY, last_line, run_inline, run_script
from qwen_rlhf import metrics, report, rewards, words
from qwen_rlhf.data import COMMON_QUESTIONS
from qwen_rlhf.errors import EXIT_BAD_INPUT, EXIT_MISSING
from qwen_rlhf.metrics import Answer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- 报告函数（不需要模型）


def test_gain_cell_shows_direction_and_bolds_big_changes():
    assert report.format_gain(0.5) == "🔺+0.50"
    assert report.format_gain(-0.3) == "🔻-0.30"
    assert report.format_gain(1.0) == "**🔺+1.00**"
    assert report.format_gain(-2.345) == "**🔻-2.35**"
    assert report.format_gain(0.99) == "🔺+0.99"
    assert report.format_gain(0.0) == "±0.00"
    assert report.format_gain(None) == ""  # 非 PPO 行


def test_markdown_cell_escapes_pipes_newlines_html_and_shows_empty():
    assert report.md_cell("滚|开\n别烦我") == "滚\\|开<br>别烦我"
    assert report.md_cell("<think>") == "&lt;think&gt;"
    assert report.md_cell("") == "（空）"
    assert report.md_cell("  \n ") == "（空）"


def test_distinct_2_counts_character_bigrams_and_handles_no_bigrams():
    assert metrics.distinct_2(["abc"]) == 1.0  # ab, bc
    assert metrics.distinct_2(["ab", "ab"]) == 0.5  # ab, ab
    assert metrics.distinct_2(["滚开滚开"]) == pytest.approx(2 / 3)  # 滚开, 开滚, 滚开
    assert metrics.distinct_2(["", "x", ""]) is None  # 全是空或单字：没有两字组合
    assert metrics.distinct_2([]) is None
    assert metrics.distinct_share(["", "", "a", "b"]) == 0.75


def test_collapse_warning_blames_ppo_only_when_sft_was_diverse():
    diverse = [f"回答{i}" for i in range(10)]
    collapsed = ["滚"] * 9 + ["别烦我"]
    w = metrics.collapse_warning("ppo", collapsed, sft_responses=diverse)
    assert w is not None and "陷入到单一模式的回答中" in w and "奖励投机" in w and "「滚」出现了 9 次" in w
    assert metrics.collapse_warning("ppo", diverse, sft_responses=diverse) is None
    inherited = metrics.collapse_warning("ppo", collapsed, sft_responses=collapsed)
    assert inherited is not None and "奖励投机" not in inherited and "不是 PPO 造成的" in inherited
    empty = metrics.collapse_warning("sft", [""] * 6)
    assert empty is not None and "（空）" in empty and "<|im_end|>" in empty
    assert metrics.collapse_warning("ppo", ["a", "a", "b", "c"]) is None  # 0.75 ≥ 0.5


def _answers(ppo_scores, sft_scores=(1.0, 2.0, 3.0), ppo_texts=("滚", "滚", "滚")):
    qs = list(COMMON_QUESTIONS[: len(sft_scores)])
    out = []
    for q, s, p, t in zip(qs, sft_scores, ppo_scores, ppo_texts):
        out.append(Answer(q, "common", "sft", f"{q}？问我干嘛", s, 4))
        out.append(Answer(q, "common", "ppo", t, p, len(t)))
    return out


def test_gains_win_rate_and_summary_numbers():
    answers = _answers(ppo_scores=(2.5, 1.5, 3.0))
    metrics.add_gains(answers)
    assert [a.gain for a in answers] == [None, 1.5, None, -0.5, None, 0.0]
    s = metrics.summarize(answers, ["sft", "ppo"], {"pairs": 3, "accuracy": 1.0, "margin": 2.0})
    ppo = s["models"]["ppo"]
    assert (ppo["mean_gain_vs_sft"], ppo["win_rate_vs_sft"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert (ppo["wins"], ppo["ties"], ppo["losses"], ppo["n"]) == (1, 1, 1, 3)
    lo, hi = ppo["mean_gain_vs_sft_ci95"]
    assert -0.5 <= lo < 1 / 3 < hi <= 1.5  # 重抽的均值落在单题提升的最小值和最大值之间
    assert "mean_gain_vs_sft" not in s["models"]["sft"] and s["models"]["sft"]["kl_seq"] == 0.0
    assert s["models"]["sft"]["mean_score"] == pytest.approx(2.0)
    assert s["models"]["ppo"]["mean_tokens"] == 1.0 and s["models"]["ppo"]["distinct_2"] is None
    assert s["models"]["ppo"]["distinct_share"] == pytest.approx(1 / 3)
    assert len(s["warnings"]) == 1 and "陷入到单一模式" in s["warnings"][0]  # sft 各不相同，ppo 只会说"滚"
    table = "\n".join(report.common_table(answers, ["sft", "ppo"]))
    assert "| 你好 | ppo | 滚 | 2.50 | **🔺+1.50** |" in table
    assert "| 天气怎么样 | ppo | 滚 | 1.50 | 🔻-0.50 |" in table
    assert "| 你好 | sft | 你好？问我干嘛 | 1.00 |  |" in table


def test_rm_accuracy_counts_pairs_where_chosen_scores_higher():
    stats = metrics.rm_stats("rm", chosen=[1.0, 2.0, 0.0, 5.0], rejected=[0.0, 3.0, -1.0, 5.0])
    assert stats["accuracy"] == 0.5  # 平分不算对
    assert stats["margin"] == pytest.approx((1 - 1 + 1 + 0) / 4) and stats["pairs"] == 4


def test_a_model_identical_to_sft_gets_a_gain_interval_covering_zero_and_all_ties():
    sft = [Answer(q, "held_out", "sft", f"回答{i}", float(i % 5) - 2, 3) for i, q in enumerate("甲乙丙丁戊己庚辛")]
    same = [Answer(a.question, a.source, "copy", a.response, a.score, a.tokens) for a in sft]
    answers = sft + same
    metrics.add_gains(answers)
    s = metrics.summarize(answers, ["sft", "copy"], {"pairs": 1, "accuracy": 1.0, "margin": 0.0}, kl={"copy": metrics.kl_stats([[0.0], [0.0]], 1)})
    copy = s["models"]["copy"]
    assert copy["mean_gain_vs_sft_ci95"] == [0.0, 0.0] and copy["mean_gain_vs_sft"] == 0.0
    assert (copy["wins"], copy["ties"], copy["losses"]) == (0, 8, 0) and copy["win_rate_vs_sft_ci95"] == [0.0, 0.0]
    assert copy["mean_score_ci95"] == s["models"]["sft"]["mean_score_ci95"]  # 同一批重抽的问题：配对
    assert "噪声之内" in words.verdict(copy)


def test_bootstrap_interval_is_fixed_by_the_seed_and_brackets_the_mean():
    gains = [1.0, 2.0, -1.0, 0.5, 3.0, 0.0, 1.5, 2.5]
    ci = metrics.bootstrap_mean_ci(gains)
    assert ci == metrics.bootstrap_mean_ci(list(gains))  # 同样的数据总给同样的区间
    assert metrics.bootstrap_mean_ci([]) is None and metrics.bootstrap_mean_ci([1.0, float("nan")]) is None
    assert min(gains) < ci[0] < sum(gains) / len(gains) < ci[1] < max(gains)
    assert metrics.versus_baseline(gains)["mean_gain_vs_sft_ci95"][0] > 0  # 8 题里 6 题为正：区间在 0 以上
    assert "明显比 SFT 得分高" in words.verdict(metrics.versus_baseline(gains))


def test_seeds_of_one_method_are_pooled_as_mean_and_spread():
    per_model = {"sft": {"mean_score": 0.0},
                 "grpo-s1": {"mean_score": 1.0, "mean_gain_vs_sft": 1.0, "win_rate_vs_sft": 0.75, "kl_seq": 0.1},
                 "grpo-s2": {"mean_score": 3.0, "mean_gain_vs_sft": 3.0, "win_rate_vs_sft": 0.25, "kl_seq": 0.3},
                 "dpo-s1": {"mean_score": -1.0, "mean_gain_vs_sft": -1.0, "win_rate_vs_sft": 0.5, "kl_seq": 0.2}}
    got = metrics.by_method(per_model, {"sft": "sft", "grpo-s1": "grpo", "grpo-s2": "grpo", "dpo-s1": "dpo"})
    assert list(got) == ["grpo", "dpo"] and got["grpo"]["models"] == 2
    assert got["grpo"]["mean_gain_vs_sft"] == pytest.approx([2.0, 2 ** 0.5])  # 样本标准差
    assert got["grpo"]["beats_sft_in_every_model"] and not got["dpo"]["beats_sft_in_every_model"]
    assert got["dpo"]["kl_seq"] == [0.2, 0.0]
    head, rows = report.method_rows({"by_method": got})
    assert rows[0][:4] == ["grpo", "2", "2.00 ± 1.41", "+2.00 ± 1.41"] and rows[1][-1] == "否"
    assert report.method_rows({"by_method": {"dpo": got["dpo"]}}) is None  # 每个方法只有一个模型：不出这张表


def test_sequence_kl_sums_each_answer_and_per_token_kl_pools_every_position():
    # 两个问题各 2 个回答：序列 KL = 每条回答的位置之和，同一问题的回答先平均；每 token = 所有位置合在一起的平均
    got = metrics.kl_stats([[0.1, 0.3], [0.2], [0.5] * 4, []], per_question=2)
    assert got["kl_seq_by_question"] == pytest.approx([0.3, 1.0])
    assert got["kl_seq"] == pytest.approx(0.65)
    assert got["kl_per_token"] == pytest.approx((0.1 + 0.3 + 0.2 + 2.0) / 7)
    lo, hi = got["kl_seq_ci95"]
    assert 0.3 <= lo <= 0.65 <= hi <= 1.0
    # 一条空回答（一开口就结束）的序列 KL 是 0，每 token KL 看不见它：变短的模型每 token KL 可以不变、序列 KL 变小
    assert metrics.kl_stats([[0.2, 0.2], []], 1)["kl_per_token"] == pytest.approx(0.2)
    assert metrics.kl_stats([[0.2, 0.2], []], 1)["kl_seq"] == pytest.approx(0.2)


# ---------------------------------------------------------------- 精确 KL（sampling.kl_to_reference）


@pytest.fixture(scope="module")
def kl_setup(tiny_model):
    """迷你模型 + 一个权重随机的 LoRA 适配器（B 不为 0，模型真的离开了基座）+ 三条真实的采样回答。"""
    import torch
    from peft import LoraConfig, get_peft_model

    from qwen_rlhf import data, models, sampling

    tok = models.load_tokenizer(tiny_model, padding_side="left")
    torch.manual_seed(0)
    model = get_peft_model(models.load_causal_lm(tiny_model, tok),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"],
                                      task_type="CAUSAL_LM")).eval()
    for name, w in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(w, std=0.5)
    prompts = [data.prompt_ids(tok, q) for q in ("你好", "今天星期几", "你是谁")]
    responses = sampling.generate(model, tok, prompts, 8, do_sample=True, temperature=1.0)
    return SimpleNamespace(tok=tok, model=model, prompts=prompts, responses=responses)


def test_a_model_against_itself_has_exactly_zero_kl_at_every_position(kl_setup, tiny_model):
    from qwen_rlhf import models, sampling

    s = kl_setup
    plain = models.load_causal_lm(tiny_model, s.tok).eval()
    same = sampling.kl_to_reference(plain, s.tok, s.prompts, s.responses, reference=plain)
    assert [len(k) for k in same] == [len(r) for r in s.responses]
    assert all(k == 0.0 for row in same for k in row)
    with s.model.disable_adapter():  # 关掉适配器的 LoRA 模型对它自己（参考 = 关掉适配器）：同样是 0
        off = sampling.kl_to_reference(plain, s.tok, s.prompts, s.responses, reference=s.model)
    assert all(k == 0.0 for row in off for k in row)


def test_chunked_kl_equals_a_float64_computation_over_the_whole_vocabulary(kl_setup, tiny_model):
    """分块、fp32 的结果 = float64 里直接对整个词表求和的 Σ_v p (log p − log q)（参考 = 关掉适配器），差 < 1e-5。"""
    import torch
    from peft import LoraConfig, get_peft_model

    from qwen_rlhf import models, sampling

    s = kl_setup
    got = sampling.kl_to_reference(s.model, s.tok, s.prompts, s.responses, batch_size=2, chunk_bytes=3 * 4 * 151936)
    assert all(k > 0 for row in got for k in row)  # B 不为 0：每个位置都离开了 SFT
    m64 = get_peft_model(models.load_causal_lm(tiny_model, s.tok, dtype=torch.float64),
                         LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"],
                                    task_type="CAUSAL_LM")).eval()
    m64.load_state_dict({k: v.double() for k, v in s.model.state_dict().items()})
    for p, r, row in zip(s.prompts, s.responses, got):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            lp = torch.log_softmax(m64(input_ids=ids).logits[0], -1)
            with m64.disable_adapter():
                lq = torch.log_softmax(m64(input_ids=ids).logits[0], -1)
        direct = [(lp[t].exp() * (lp[t] - lq[t])).sum().item() for t in range(len(p) - 1, len(p) - 1 + len(r))]
        assert row == pytest.approx(direct, abs=1e-5)


def test_kl_grows_when_the_adapter_weights_are_scaled_up(kl_setup):
    import torch

    from qwen_rlhf import metrics, sampling

    s = kl_setup
    sizes = []
    for scale in (0.5, 1.0, 2.0):
        with torch.no_grad():
            for name, w in s.model.named_parameters():
                if "lora_B" in name:
                    w.mul_(scale)
        sizes.append(metrics.kl_stats(sampling.kl_to_reference(s.model, s.tok, s.prompts, s.responses), 1)["kl_seq"])
        with torch.no_grad():
            for name, w in s.model.named_parameters():
                if "lora_B" in name:
                    w.div_(scale)
    assert 0 < sizes[0] < sizes[1] < sizes[2], sizes


def test_the_kl_pass_never_holds_a_tensor_larger_than_its_chunk(kl_setup):
    """显存上限：logits 按位置分块，任何中间张量都不超过 (块里的位置数 × 词表) 个 fp32（这里 2 个位置 ≈ 1.2 MB）；
    一次算完整的 (批 × 长度 × 词表) logits 的做法（以前的 response_logprobs）在这里是 3 × 30 × 15 万 ≈ 55 MB。
    在 CPU 上用 torch 的分发钩子数每个算子输出的字节数，相当于 24 GB 的卡上长提示、长回答时的显存峰值。"""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from qwen_rlhf import sampling

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.is_view:  # 视图不分配内存（例如 lm_head 权重的转置）
                return out
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    Largest.biggest = max(Largest.biggest, t.numel() * t.element_size())
            return out

    s = kl_setup
    budget = 2 * 4 * 151936
    with Largest():
        sampling.kl_to_reference(s.model, s.tok, s.prompts, s.responses, chunk_bytes=budget)
    assert 0 < Largest.biggest <= budget, Largest.biggest
    with Largest():  # 对照：一次前向的完整 logits 远超这个上限，钩子确实看得到它
        with torch.no_grad():
            s.model(input_ids=torch.tensor([s.prompts[0] + s.responses[0]]))
    assert Largest.biggest > 10 * budget


def test_the_kl_pass_builds_no_kv_cache_and_its_peak_memory_follows_the_batch_size(tmp_path):
    """精确 KL 的一遍前向不建 KV 缓存（Qwen3-0.6B 上一批要多占约 1 GB）、一次只放 batch_size 条：用 torch 的分发钩子
    数活着的张量的总字节数（不是最大的那一个），取峰值。8 层、KV 头和注意力头一样多的迷你模型上，20 条回答的 KV 缓存
    约 20 MB，比其余的中间张量都大。"""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from qwen_rlhf import data, models, sampling, tiny

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0

        def _free(self, n):
            self.live -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:
                inputs = [a for a in args if isinstance(a, torch.Tensor)]
                for t in (out if isinstance(out, (tuple, list)) else [out]):
                    if isinstance(t, torch.Tensor) and not any(t is a for a in inputs):  # 原地操作不是新分配
                        n = t.untyped_storage().nbytes()
                        self.live += n
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(t, self._free, n)
            return out

    folder = tiny.build(tmp_path / "deep", dict(tiny.TINY, num_hidden_layers=8, num_key_value_heads=4, head_dim=64))
    tok = models.load_tokenizer(folder, padding_side="left")
    model, ref = (models.load_causal_lm(folder, tok).eval() for _ in range(2))
    prompts = [data.prompt_ids(tok, q) for q in COMMON_QUESTIONS] * 2
    responses = [list(range(100, 140))] * len(prompts)
    tokens = sum(len(p) + len(r) for p, r in zip(prompts, responses))
    kv_cache = 8 * 2 * 4 * 64 * 4 * tokens  # 层 × (K, V) × KV 头 × head_dim × fp32 × token

    def peak(batch_size):
        with Live() as live:
            sampling.kl_to_reference(model, tok, prompts, responses, reference=ref, batch_size=batch_size,
                                     chunk_bytes=4 * 151936)
        return live.peak

    one, twenty = peak(1), peak(20)
    forward = model.model.forward  # 对照：强制建 KV 缓存（以前的写法），峰值多出整个缓存
    with pytest.MonkeyPatch.context() as mp:
        for m in (model, ref):
            mp.setattr(m.model, "forward", lambda *a, f=m.model.forward, **k: f(*a, **{**k, "use_cache": True}))
        cached = peak(20)
    assert model.model.forward == forward
    assert twenty < cached - kv_cache / 2, (twenty, cached, kv_cache)
    assert one < twenty / 1.5, (one, twenty)  # 一次一条：峰值随 batch_size 变小


def test_fast_cpu_sampling_draws_from_the_same_distribution_and_never_a_filtered_token():
    import torch

    from qwen_rlhf.sampling import fast_cpu_sampling

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(40000, 1)
    torch.manual_seed(0)
    with fast_cpu_sampling():
        first = torch.multinomial(probs, 1)
        torch.manual_seed(0)
        again = torch.multinomial(probs, 1)
        assert torch.multinomial(probs, 2).shape == (40000, 2)  # 其他用法原样交给 torch
    assert torch.equal(first, again)  # 同样的种子，同样的结果
    counts = torch.bincount(first.flatten(), minlength=5).float() / len(first)
    assert counts[1] == 0 and counts[4] == 0  # 概率为 0 的 token（top-k / top-p 滤掉的）永远抽不到
    assert counts.tolist() == pytest.approx([0.5, 0.0, 0.3, 0.2, 0.0], abs=0.01)
    assert torch.multinomial.__module__ != "qwen_rlhf.sampling"  # 出了 with 就换回来


@pytest.mark.parametrize("bad", [[0.2, float("nan"), 0.3], [0.2, float("inf"), 0.3], [0.2, -0.1, 0.3], [0.0, 0.0, 0.0]])
def test_fast_cpu_sampling_raises_torchs_own_error_on_a_broken_row(bad):
    """发散的策略（NaN / inf / 负的概率，或整行都是 0）：和 torch.multinomial 一样报错，而不是悄悄抽出词表最后一个 token。"""
    import torch

    from qwen_rlhf.sampling import fast_cpu_sampling

    probs = torch.tensor([[0.5, 0.5, 0.0], bad])
    with pytest.raises(RuntimeError) as theirs:
        torch.multinomial(probs, 1)
    with fast_cpu_sampling(), pytest.raises(RuntimeError) as ours:
        torch.multinomial(probs, 1)
    assert str(ours.value) == str(theirs.value)


def test_fast_cpu_sampling_is_active_only_in_the_thread_that_entered_it():
    """别的线程（例如同一进程里 chat 的流式输出、用户自己的代码）在这期间调用 torch.multinomial，拿到的仍是 torch 原本的
    随机数流：同样的种子、同样的结果。"""
    import threading

    import torch

    from qwen_rlhf.sampling import fast_cpu_sampling

    probs = torch.softmax(torch.randn(4, 1000, generator=torch.Generator().manual_seed(1)), -1)
    expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5))
    got = {}
    with fast_cpu_sampling():
        worker = threading.Thread(target=lambda: got.update(
            ids=torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5))))
        worker.start()
        worker.join()
        inside = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got["ids"], expected)
    assert not torch.equal(inside, expected)  # 本线程里用的是另一串随机数（快的那个）


def test_one_of_sft_ppo_only_skips_gains(tmp_path):
    answers = [a for a in _answers(ppo_scores=(2.5, 1.5, 3.0)) if a.model == "sft"]
    metrics.add_gains(answers)
    summary = metrics.summarize(answers, ["sft"], {"pairs": 3, "accuracy": 0.5, "margin": 0.0})
    assert "win_rate_vs_sft" not in summary["models"]["sft"] and report.versus_lines(summary) == []
    meta = {"run": "x", "folders": {"sft": "s"}, "rm_folder": "rm", "decoding": "贪心"}
    text = report.write_report(tmp_path, answers, ["sft"], summary, meta).read_text(encoding="utf-8")
    assert report.TABLE_HEADER in text and "🔺" not in text and "🔻" not in text and "胜率" not in text
    assert (tmp_path / report.SCORES_PNG).is_file() and not (tmp_path / report.GAINS_PNG).exists()


def test_run_folders_never_collide(tmp_path):
    a = report.new_run_folder(tmp_path / "bench", "20260101-000000")
    b = report.new_run_folder(tmp_path / "bench", "20260101-000000")
    assert (a.name, b.name) == ("20260101-000000", "20260101-000000-2")


# ---------------------------------------------------------------- 真实运行（tiny 流水线的产物）


def bench_args(pipeline, tiny_model, out, *extra):
    return ["--config", TINY / "benchmark.yaml", "--model_name_or_path", tiny_model,
            "--sft_model_path", pipeline["sft"], "--ppo_model_path", pipeline["ppo"],
            "--reward_model_path", pipeline["rm"], "--output_dir", out, "--num_questions", 12, *extra]


def run_folders(out):
    return sorted(p for p in out.iterdir() if p.is_dir())


def snapshot(out) -> dict:
    """out 下每个文件的内容：拒绝运行前后比一比，以前的评测结果一个字节都不能变。"""
    return {f: f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}


def refused(proc, code) -> str:
    """被拒绝的运行：给定的退出码、stderr 只有一行中文错误、没有 traceback；返回这一行。"""
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("错误："), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def bench(pipeline, tiny_model):
    out = pipeline["tmp"] / "benchmark"
    proc = run_script("benchmark.py", *bench_args(pipeline, tiny_model, out), tmp=pipeline["tmp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(out)
    return SimpleNamespace(proc=proc, out=out, folder=folder,
                           rows=read_csv(folder / "results.csv"),
                           md=(folder / "report.md").read_text(encoding="utf-8"),
                           summary=json.loads((folder / "summary.json").read_text(encoding="utf-8")))


def test_writes_csv_report_summary_and_valid_pngs(bench):
    from matplotlib import image
    from PIL import Image

    names = {p.name for p in bench.folder.iterdir()}
    assert {"results.csv", "report.md", "summary.json", "scores.png", "gains.png"} <= names
    for png in ("scores.png", "gains.png"):
        path = bench.folder / png
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
        assert image.imread(str(path)).ndim == 3
        assert f"]({png})" in bench.md  # 报告里用相对链接嵌入
    assert list(bench.rows[0]) == ["question", "source", "model", "response", "score", "gain",
                                   *(f"rule_{r}" for r in rewards.RULES)]  # 每条内置规则一列，和 RM 得分并排
    assert "report.md" in last_line(bench.proc.stdout) and str(bench.folder.name) in last_line(bench.proc.stdout)


def test_device_line_comes_before_the_first_model_is_loaded(bench):
    lines = bench.proc.stdout.splitlines()
    (at,) = [i for i, x in enumerate(lines) if x.startswith("设备：")]  # 没有 GPU 时是"设备：CPU · fp32"
    assert at < next(i for i, x in enumerate(lines) if x.startswith("[生成]"))


def test_summary_records_the_cost_and_the_last_line_says_it(bench):
    from qwen_rlhf.cost import Cost

    cost = bench.summary["cost"]
    generate_s = sum(bench.summary["timing"]["generate_s"].values())
    # 记录的是 3 位有效数字（cost.Cost.record）：相对误差最多 0.5%；以前的 abs=0.01 只在每秒不到 10 个回答时成立
    assert cost["throughput"]["answers_per_s"] == pytest.approx(len(bench.rows) / generate_s, rel=0.006)
    assert cost["wall_s"] >= generate_s and cost["peak_rss_mb"] > 0
    assert last_line(bench.proc.stdout).endswith(Cost.words(cost))


def test_report_table_has_the_ten_common_questions_in_order(bench):
    lines = bench.md.splitlines()
    start = lines.index("| 问题 | 模型 | 回复 | RM得分 | 得分提升 |")
    assert lines.index("## 常见问题") < start < lines.index(next(x for x in lines if x.startswith("## 汇总")))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    assert all(len(r) == 5 for r in rows)
    assert [r[0] for r in rows[::2]] == list(COMMON_QUESTIONS)
    assert [r[1] for r in rows] == ["sft", "ppo"] * 10
    assert all(r[2] for r in rows)  # 空回复显示为（空），不是空单元格
    sources = {r["question"]: r["source"] for r in bench.rows}
    assert [q for q, s in sources.items() if s == "common"] == list(COMMON_QUESTIONS)
    assert 1 <= sum(s == "held_out" for s in sources.values()) <= 12


def test_report_numbers_match_the_csv(bench):
    by = {(r["question"], r["model"]): r for r in bench.rows}
    for m in ("sft", "ppo"):
        scores = [float(r["score"]) for r in bench.rows if r["model"] == m]
        mean = sum(scores) / len(scores)
        assert bench.summary["models"][m]["mean_score"] == pytest.approx(mean)
        assert re.search(rf"^\| {m} \| {mean:.2f} \|", bench.md, re.MULTILINE), f"{m} 的平均分 {mean:.2f} 不在报告里"
    gains = []
    for q in {r["question"] for r in bench.rows}:
        sft, ppo = by[(q, "sft")], by[(q, "ppo")]
        assert sft["gain"] == ""
        gain = float(ppo["gain"])
        assert gain == pytest.approx(float(ppo["score"]) - float(sft["score"]), abs=2e-4)
        gains.append(gain)
    ppo = bench.summary["models"]["ppo"]
    assert ppo["mean_gain_vs_sft"] == pytest.approx(sum(gains) / len(gains))
    assert ppo["win_rate_vs_sft"] == pytest.approx(sum(g > 0 for g in gains) / len(gains))
    assert f"胜率 {sum(g > 0 for g in gains) / len(gains):.0%}" in bench.md
    for q in COMMON_QUESTIONS:  # 表格里 PPO 行的提升单元格 = CSV 的 gain
        gain, score = float(by[(q, "ppo")]["gain"]), float(by[(q, "ppo")]["score"])
        cell = report.format_gain(gain)
        assert f"| {report.md_cell(q)} | ppo | {report.md_cell(by[(q, 'ppo')]['response'])} | {score:.2f} | {cell} |" \
            in bench.md
        if abs(gain) >= 1.0:
            assert cell.startswith("**")
        if round(gain, 2) != 0:
            assert float(cell.strip("*")[1:]) == pytest.approx(round(gain, 2))


def test_every_score_in_results_csv_is_what_plain_transformers_computes_from_the_csv_text(bench, pipeline):
    """标准客户端（只用 transformers，不用本仓库的代码）：对话模板渲染 [user, assistant]、分词、
    AutoModelForSequenceClassification 的 logits[0, 0]。results.csv 里的每个分数都由 CSV 自己的文本复现。"""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pipeline["rm"]))
    model = AutoModelForSequenceClassification.from_pretrained(str(pipeline["rm"])).eval()
    assert len(bench.rows) >= 20
    for row in bench.rows:
        chat = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["response"]}]
        text = tok.apply_chat_template(chat, tokenize=False, enable_thinking=False)
        with torch.no_grad():
            score = model(**tok(text, return_tensors="pt")).logits[0, 0].item()
        assert score == pytest.approx(float(row["score"]), abs=1e-3), row


def test_rm_accuracy_is_printed_as_a_share(bench):
    m = re.search(r"准确率 ([0-9.]+)", bench.proc.stdout)
    assert m, bench.proc.stdout[-2000:]
    acc = float(m.group(1))
    assert 0.0 <= acc <= 1.0
    assert acc == pytest.approx(bench.summary["rm"]["accuracy"], abs=5e-4)
    assert bench.summary["rm"]["pairs"] > 0 and f"准确率 {acc:.3f}" in bench.md


def test_two_runs_give_identical_results_in_new_folders(bench, pipeline, tiny_model):
    proc = run_inline("benchmark.py", *bench_args(pipeline, tiny_model, bench.out), tmp=pipeline["tmp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = run_folders(bench.out)
    assert len(folders) == 2 and bench.folder in folders  # 第一次的结果没有被覆盖
    second = next(f for f in folders if f != bench.folder)
    assert (second / "results.csv").read_bytes() == (bench.folder / "results.csv").read_bytes()


def test_n_way_benchmark_reports_every_model_against_sft_with_intervals_kl_and_cost(bench, pipeline, tiny_model,
                                                                                   tmp_path):
    """sft、ppo 和 SFT 的一份拷贝（当作本地文件夹）：拷贝与 SFT 完全相同——提升区间 [0, 0]、全部持平、KL 0。"""
    twin = shutil.copytree(pipeline["sft"], tmp_path / "twin")
    out = tmp_path / "out"
    proc = run_inline("benchmark.py", *bench_args(pipeline, tiny_model, out, "--models", f"sft,ppo,{twin}"),
                      tmp=pipeline["tmp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(out)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    models = summary["models"]
    assert list(models) == ["sft", "ppo", "twin"] and summary["baseline"] == "sft"
    for name in ("ppo", "twin"):
        m = models[name]
        for key in ("mean_score", "mean_score_ci95", "mean_gain_vs_sft", "mean_gain_vs_sft_ci95", "win_rate_vs_sft",
                    "win_rate_vs_sft_ci95", "wins", "ties", "losses", "kl_seq", "kl_per_token", "mean_tokens", "empty_share",
                    "unfinished_share", "distinct_2", "training_cost"):
            assert key in m, key
        lo, hi = m["mean_score_ci95"]
        assert lo <= m["mean_score"] <= hi and m["wins"] + m["ties"] + m["losses"] == summary["num_questions"]
    twin_ = models["twin"]
    assert twin_["mean_gain_vs_sft_ci95"] == [0.0, 0.0] and twin_["ties"] == summary["num_questions"]
    assert twin_["kl_seq"] == 0.0  # 和 SFT 一模一样的完整模型：每个位置的精确 KL 都是 0（不是"接近 0"）
    assert models["ppo"]["kl_seq"] > 0  # LoRA 改变了分布
    # 训练花费读自各自的 stage.json
    ppo_cost = json.loads((pipeline["ppo"] / "stage.json").read_text(encoding="utf-8"))["cost"]
    assert models["ppo"]["training_cost"] == ppo_cost and models["sft"]["training_cost"]["wall_s"] > 0
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert "## 方法对比（相对 SFT）" in md and "噪声之内" in md and "**ppo**　PPO：" in md
    assert "**sft**　SFT：" in md and md.count("**sft**") == 1  # SFT 和它的拷贝（stage.json 同为 sft）合成一段
    assert models["twin"]["stage"] == "sft" and models["ppo"]["stage"] == "ppo"
    assert f"]({report.REWARD_KL_PNG})" in md and (folder / report.REWARD_KL_PNG).read_bytes()[:8] == PNG_SIGNATURE
    rows = read_csv(folder / "results.csv")
    assert all(r["gain"] == "0.0000" for r in rows if r["model"] == "twin")
    assert sum(r["model"] == "twin" for r in rows) == summary["num_questions"]


def test_questions_file_and_single_model(pipeline, tiny_model, tmp_path):
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"question": "你叫什么名字"}\n\n{"question": "你好"}\n', encoding="utf-8")
    out = tmp_path / "out"
    proc = run_inline("benchmark.py", *bench_args(pipeline, tiny_model, out, "--models", "sft", "--questions", qfile),
                      tmp=pipeline["tmp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_folders(out)
    rows = read_csv(folder / "results.csv")
    assert [r["question"] for r in rows] == [*COMMON_QUESTIONS, "你叫什么名字"]  # "你好"已在常见问题里
    assert rows[-1]["source"] == "file" and {r["model"] for r in rows} == {"sft"}
    assert all(r["gain"] == "" for r in rows)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert "mean_gain_vs_sft" not in summary["models"]["sft"] and not (folder / "gains.png").exists()
    assert "胜率" not in proc.stdout


def test_missing_reward_model_is_refused_in_one_line(pipeline, tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = run_inline("benchmark.py", *bench_args(pipeline, tiny_model, out, "--reward_model_path", tmp_path / "no-rm"),
                      tmp=pipeline["tmp"])
    line = refused(proc, EXIT_MISSING)
    assert "no-rm" in line and "train_rm.py" in line
    assert not out.exists()  # 没有留下空的报告文件夹


def test_reward_model_in_models_is_refused_before_anything_runs(pipeline, tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = run_inline("benchmark.py", *bench_args(pipeline, tiny_model, out, "--models", "sft,rm"), tmp=pipeline["tmp"])
    line = refused(proc, EXIT_BAD_INPUT)
    assert "奖励模型" in line and "base / sft / ppo" in line
    assert proc.stdout == "" and not out.exists()


def test_reward_model_passed_as_sft_is_refused_and_earlier_runs_stay(bench, pipeline, tiny_model):
    before = snapshot(bench.out)
    proc = run_inline("benchmark.py", *bench_args(pipeline, tiny_model, bench.out, "--sft_model_path", pipeline["rm"]),
                      tmp=pipeline["tmp"])
    line = refused(proc, EXIT_MISSING)
    assert "--sft_model_path" in line and "是奖励模型" in line and "需要SFT 模型" in line  # 说清楚要的是什么
    assert proc.stdout == ""  # 在读数据、加载模型之前就拒绝
    assert snapshot(bench.out) == before  # 没有新的运行文件夹，以前的结果原样


@pytest.mark.parametrize("option,stage", [("--sft_model_path", "sft"), ("--reward_model_path", "rm")])
def test_truncated_weights_are_named_in_one_line(bench, pipeline, tiny_model, tmp_path, option, stage):
    copy = shutil.copytree(pipeline[stage], tmp_path / stage)
    weights = copy / "model.safetensors"
    with weights.open("r+b") as f:  # 拷贝中断的样子：文件只剩一半
        f.truncate(weights.stat().st_size // 2)
    before = snapshot(bench.out)
    proc = run_inline("benchmark.py", *bench_args(pipeline, tiny_model, bench.out, "--models", "sft", option, copy),
                      tmp=pipeline["tmp"])
    line = refused(proc, EXIT_MISSING)
    assert f"{stage}/model.safetensors" in line and "已损坏" in line
    assert "[生成]" not in proc.stdout  # RM 生成完才加载，但它的权重在生成之前就检查了
    assert snapshot(bench.out) == before


def test_different_split_options_are_refused(pipeline, tiny_model, tmp_path):
    proc = run_inline("benchmark.py", *bench_args(pipeline, tiny_model, tmp_path / "out", "--test_size", 0.2),
                      tmp=pipeline["tmp"])
    assert proc.returncode == EXIT_MISSING and "Traceback" not in proc.stderr
    assert "划分" in last_line(proc.stderr) and "--test_size" in last_line(proc.stderr)


def test_every_reported_kl_is_non_negative_and_the_report_says_what_it_means(bench):
    """精确 KL（对整个词表求和）不会是负数，报告不再需要解释"为什么是负的"，只用一句话说它是什么。"""
    kls = {m: s["kl_seq"] for m, s in bench.summary["models"].items()}
    assert kls["sft"] == 0.0 and kls["ppo"] > 0
    assert all(row["kl_seq"] >= 0 for row in bench.summary["trajectory"])  # 得分-KL 图上的每个点
    assert "可以小于 0" not in bench.md and "一定 ≥ 0" in bench.md and "对整个词表求和" in bench.md
    assert "训练约束的那个量" in bench.md and "objective/kl" in bench.md  # 为什么和 TRL 记的不一样
    line = next(x for x in bench.proc.stdout.splitlines() if x.startswith("[KL] ppo"))
    assert f"离 SFT 的序列 KL {kls['ppo']:.3f}" in line


def test_top_k_then_top_p_samples_exactly_what_transformers_own_warpers_sample(tiny_model):
    """sampling.TopKTopP（温度 → top-k → 只在 k 个里做 top-p）和 transformers 自己的三个 warper（每步把 15 万的词表排序）
    同样的种子下采出逐 token 相同的回答；sampling.generate 用的就是它。"""
    import torch

    from qwen_rlhf import data, models, sampling

    tok = models.load_tokenizer(tiny_model, padding_side="left")
    model = models.load_causal_lm(tiny_model, tok).eval()
    ids, mask = sampling.left_pad(tok, [data.prompt_ids(tok, q) for q in COMMON_QUESTIONS])
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=True,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    theirs = model.generate(**common, temperature=0.7, top_k=20, top_p=0.8)
    torch.manual_seed(0)
    ours = model.generate(**common, temperature=1.0, top_k=0, top_p=1.0,
                          logits_processor=[sampling.TopKTopP(0.7, 20, 0.8)])
    assert torch.equal(theirs, ours)
    torch.manual_seed(0)
    plain = model.generate(**common, temperature=0.7, top_k=20, top_p=1.0)  # 对照：top-p 真的起了作用
    assert not torch.equal(theirs, plain)


OUTSIDE_CLIENT = r'''
"""一个用户自己的脚本：只用 transformers / peft，照 summary.json 里记下的种子和解码，重新生成评测的回答。"""
import json, sys
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

folder, questions, opts = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
adapter = (folder / "adapter_config.json").is_file()
model = (AutoPeftModelForCausalLM if adapter else AutoModelForCausalLM).from_pretrained(str(folder)).eval()
tok = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True, add_generation_prompt=True,
                                   enable_thinking=False, return_dict=True)["input_ids"] for q in questions]
order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # 评测的分批：按提示长度排序，每 batch_size 个一批
set_seed(opts["seed"])
out = {}
for s in range(0, len(order), opts["batch_size"]):
    idx = order[s:s + opts["batch_size"]]
    batch = tok.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**batch, do_sample=True, temperature=opts["temperature"], top_p=opts["top_p"],
                             top_k=opts["top_k"], max_new_tokens=opts["max_new_tokens"])
    for i, row in zip(idx, ids[:, batch["input_ids"].shape[1]:].tolist()):
        row = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
        out[questions[i]] = tok.decode(row, skip_special_tokens=True).strip()
print(json.dumps(out, ensure_ascii=False))
'''


@pytest.mark.parametrize("name", ["sft", "ppo"])
def test_a_plain_transformers_script_reproduces_every_sampled_answer(bench, pipeline, tmp_path, name):
    """评测的采样回答（tiny 配方是 --do_sample）= 用户自己的脚本用 summary.json 里的种子和解码、同样的分批调用
    model.generate 得到的回答，一个字都不差（PPO 用 peft 自己的 AutoPeftModelForCausalLM 读适配器）。以前 CPU 上换成了
    自己的抽样，随机数流不同，这里 0/N 相同。"""
    import subprocess
    import sys

    opts = bench.summary["options"]
    assert opts["do_sample"]
    mine = {r["question"]: r["response"] for r in bench.rows if r["model"] == name}
    script = tmp_path / "client.py"
    script.write_text(OUTSIDE_CLIENT, encoding="utf-8")
    folder = pipeline[name]
    r = subprocess.run([sys.executable, script, folder, json.dumps(list(mine), ensure_ascii=False),
                        json.dumps({k: opts[k] for k in ("seed", "batch_size", "temperature", "top_p", "top_k",
                                                          "max_new_tokens")})],
                       cwd=folder.parent.parent, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    assert theirs == mine


def test_each_rule_is_its_own_column_beside_the_rm_score_and_the_report_names_the_training_terms(bench, pipeline):
    """results.csv：每条内置规则一列（rule_<名字>），由 CSV 自己的文本复现，RM 分数不含它们；汇总表：规则各一列的均值，
    以及每个模型训练时优化的奖励（stage.json）。"""
    from qwen_rlhf import models, rewards

    tok = models.load_tokenizer(pipeline["sft"])
    assert all(f"rule_{r}" in bench.rows[0] for r in rewards.RULES)
    for row in bench.rows:
        assert float(row["rule_repetition"]) == pytest.approx(rewards.repetition_score(row["response"]), abs=1e-4)
        assert float(row["rule_no_answer"]) == rewards.no_answer_score(row["response"])
        tokens = len(tok(row["response"], add_special_tokens=False)["input_ids"])
        assert float(row["rule_length"]) == pytest.approx(rewards.length_score(tokens, rewards.DEFAULT_TARGET_LENGTH),
                                                          abs=1e-4)
    for model, s in bench.summary["models"].items():
        mine = [r for r in bench.rows if r["model"] == model]
        assert s["rules"]["repetition"] == pytest.approx(sum(float(r["rule_repetition"]) for r in mine) / len(mine))
    assert bench.summary["models"]["ppo"]["reward_terms"] == "rm×1 + missing_eos×1"
    assert bench.summary["models"]["sft"]["reward_terms"] is None
    assert "规则:repetition" in bench.md and "rm×1 + missing_eos×1" in bench.md
