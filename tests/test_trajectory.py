"""训练轨迹这一课：LoRA 阶段训练中存下的快照（只有适配器）、独立于代理 RM 的金标准评委、benchmark.py --trajectory 写出的
trajectory.csv / 得分-KL 图 / "有没有奖励过度优化"的那段话，以及读这些数字的纯函数（手写数据）。"""

import csv
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, last_line, rl_args, run_inline, run_script, stage_args

from qwen_rlhf import judges, metrics, policy, report, words
from qwen_rlhf import trajectory as traj
from qwen_rlhf.errors import EXIT_BAD_INPUT, EXIT_MISSING
from qwen_rlhf.metrics import Answer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def info(folder):
    return json.loads((folder / "stage.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- 读曲线的纯函数


def test_trajectory_rows_use_the_sequence_kl_and_put_every_judge_on_the_sft_scale():
    """每个点：序列 KL（每个问题的平均）及区间、√KL、每 token KL；每位评委的平均分、相对 SFT 的配对提升、以 SFT 标准差
    为单位的提升。几个种子按训练进度（seen）对齐：只有所有种子都有的进度点才进平均曲线。"""
    points = {"sft": {"kl_seq": [0.0, 0.0], "kl_token": 0.0, "proxy": [0.0, 2.0], "gold": [1.0, 1.0]},
              "a@1": {"kl_seq": [0.5, 1.5], "kl_token": 0.1, "proxy": [1.0, 3.0], "gold": [2.0, 2.0]},
              "a": {"kl_seq": [4.0, 4.0], "kl_token": 0.2, "proxy": [2.0, 4.0], "gold": [1.0, 1.0]},
              "b@1": {"kl_seq": [1.0, 1.0], "kl_token": 0.1, "proxy": [1.0, 3.0], "gold": [3.0, 3.0]},
              "b": {"kl_seq": [9.0, 9.0], "kl_token": 0.3, "proxy": [4.0, 6.0], "gold": [1.0, 1.0]}}
    runs = [{"method": "grpo", "run": r, "seed": i, "points": [("sft", None), (f"{r}@1", {"step": 1, "seen": 8, "unit":
             "answers"}), (r, {"step": 2, "seen": 16 + 8 * i, "unit": "answers"})]} for i, r in enumerate(("a", "b"))]
    rows = traj.point_rows(runs, points, {"proxy": 2.0, "gold": 0.5})
    a = rows[2]
    assert (a["model"], a["seen"], a["kl_seq"], a["sqrt_kl"], a["kl_per_token"]) == ("a", 16, 4.0, 2.0, 0.2)
    assert (a["proxy_gain"], a["proxy_gain_sd"], a["gold_gain"], a["gold_gain_sd"]) == (2.0, 1.0, 0.0, 0.0)
    assert rows[1]["gold_gain_sd"] == pytest.approx(2.0) and rows[1]["gold_gain_ci95"] == [1.0, 1.0]
    (grpo,) = traj.method_curves(rows).values()
    # 最终结果的进度不同（16 vs 24）：平均曲线只留两个种子都有的 SFT 和第 8 个回答处
    assert [(p["seen"], p["kl_seq"], p["gold_gain_sd"], p["seeds"]) for p in grpo] == [
        (0, 0.0, 0.0, 2), (8, pytest.approx(1.0), pytest.approx(3.0), 2)]


def test_the_verdict_is_written_from_the_test_result_and_states_its_error_rate():
    summary = {"overoptimisation": {"grpo (beta=0)": {
        "proxy": {"gain": 1.2, "gain_ci95": [0.5, 1.9], "word": "rise"}, "final_kl_seq": 2.5,
        "gold": {"gain": -0.4, "gain_ci95": [-0.9, 0.1], "word": "not_confirmed", "verdict": "overoptimised",
                 "drop": 0.9, "drop_ci95": [0.3, 1.5], "p_value": 0.01, "alpha": 0.05, "points": 5, "runs": 1,
                 "proxy_rise_after_peak": 0.7, "kl_rise_after_peak": 1.1, "peak_kl": 0.4}}}}
    first, line = words.trajectory_paragraphs(summary)
    assert "不超过 5%" in first and "tests/test_verdict.py" in first
    assert line.startswith("**grpo (beta=0)**") and "回落了 0.90" in line and "p = 0.010" in line
    assert "没有得到证实（区间碰到 0）" in line and "不认同" not in line


def test_a_run_with_a_non_default_kl_coefficient_carries_it_in_its_method_label(tmp_path):
    """WEAK_KL=1 METHODS=dpo 的 compare.sh：唯一的一次 GRPO 是 beta 0，曾经标成 "grpo"，读者当成默认的 0.05。
    方法标签（report、summary.json 的 by_method、trajectory.csv、图例都用它）带上非默认的系数，默认的不带。"""
    import benchmark

    def run(stage, **training):
        return tmp_path / stage, {"stage": stage, "options": {"training": {"seed": 1, **training}}}

    policies = {"sft": run("sft"), "grpo-beta0": run("grpo", beta=0.0), "ppo": run("ppo", kl_coef=0.05),
                "ppo-kl0": run("ppo", kl_coef=0), "dpo": run("dpo", beta=0.1), "rloo": run("rloo", beta=0.2)}
    runs, _ = benchmark.model_runs(policies, with_snapshots=False)
    assert {r["run"]: r["method"] for r in runs} == {"grpo-beta0": "grpo (beta=0)", "ppo": "ppo",
                                                     "ppo-kl0": "ppo (kl_coef=0)", "dpo": "dpo", "rloo": "rloo (beta=0.2)"}


def test_dpo_diagnosis_tells_not_learned_from_learned_but_displaced():
    sft = {"empty_share": 0.2, "mean_tokens": 4.0}

    def member(acc, chosen, rejected):
        return ("dpo", {"held_out": {"pairs": 37, "preference_accuracy": acc, "logp_chosen_change": chosen,
                                     "logp_rejected_change": rejected}, "empty_share": 0.44, "mean_tokens": 2.0})

    assert "没学会这份偏好" in words.dpo_diagnosis([member(0.52, -0.1, -0.1)], sft)
    displaced = words.dpo_diagnosis([member(0.82, -1.7, -4.2)], sft)
    assert "学会了区分" in displaced and "似然位移" in displaced and "空回答占 44%（SFT 20%）" in displaced
    assert "log p(chosen) -1.70" in displaced and "准确率 82%" in displaced
    assert "这个 RM 不奖励" in words.dpo_diagnosis([member(0.9, 0.5, -2.0)], sft)
    assert words.dpo_diagnosis([("ppo", {"held_out": None})], sft) == ""


def test_fluency_pairs_shuffle_the_chosen_answer_and_skip_what_cannot_change():
    from qwen_rlhf import data

    rows = [{"question": "q", "chosen": "滚开别烦我", "rejected": "您好"}, {"question": "q2", "chosen": "滚", "rejected": "好"},
            {"question": "q3", "chosen": "哈哈", "rejected": "嗯"}]
    pairs = data.fluency_pairs(rows, seed=1)
    assert len(pairs) == 1 and pairs == data.fluency_pairs(rows, seed=1)  # 同样的种子同样的数据
    assert pairs[0]["chosen"] == "滚开别烦我" and sorted(pairs[0]["rejected"]) == sorted("滚开别烦我")
    assert pairs[0]["rejected"] != "滚开别烦我"


# ---------------------------------------------------------------- 快照


def test_every_rl_run_keeps_adapter_only_snapshots_with_their_progress(rl_runs, pipeline):
    """GRPO / RLOO / DPO 跑 3 步、tiny 配方 4 个快照：每步一个，只有适配器和一个小 stage.json（没有 merged/、没有分词器），
    看过多少回答 / 偏好对记在里面；最终结果的 progress 和最后一个快照相同。演示配方的 PPO（32 次更新、4 个快照）：
    第 8、16、24、32 次。"""
    for stage, unit, per_step in (("grpo", "answers", 8), ("rloo", "answers", 8), ("dpo", "pairs", 8)):
        folder = rl_runs[stage].out
        snaps = policy.snapshots_of(folder)
        assert [s.name for s in snaps] == ["step-1", "step-2", "step-3"]
        for i, snap in enumerate(snaps, 1):
            assert {p.name for p in snap.iterdir()} <= {"adapter_model.safetensors", "adapter_config.json", "stage.json",
                                                       "README.md"}
            record = info(snap)
            assert record["stage"] == stage and record["progress"] == {"step": i, "steps": 3, "seen": i * per_step,
                                                                       "unit": unit}
            assert (snap / record["sft_path_from_adapter"]).resolve() == pipeline["sft"].resolve()
        assert info(folder)["progress"] == info(snaps[-1])["progress"]
    ppo = policy.snapshots_of(pipeline["ppo"])
    assert [s.name for s in ppo] == ["step-8", "step-16", "step-24", "step-32"]
    assert info(ppo[0])["progress"]["seen"] == 8 * 16 and info(pipeline["ppo"])["progress"]["seen"] == 512


def test_a_snapshot_talks_in_chat_by_name_and_loads_with_plain_peft_from_a_copied_tree(rl_runs, pipeline, tmp_path,
                                                                                      monkeypatch):
    from peft import AutoPeftModelForCausalLM

    r = run_inline("chat.py", "--model", "grpo@step-2", "--grpo_model_path", rl_runs["grpo"].out, "--prompt", "你好",
                   "--max_new_tokens", 4, "--seed", 0, tmp=pipeline["tmp"])
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]
    r = run_inline("chat.py", "--model", "grpo@step-9", "--grpo_model_path", rl_runs["grpo"].out, "--prompt", "你好",
                   tmp=pipeline["tmp"])
    assert r.returncode == EXIT_MISSING and "没有快照 step-9" in last_line(r.stderr) and "step-1、step-2、step-3" in \
        last_line(r.stderr) and "Traceback" not in r.stderr
    # 整棵树拷走（同名的文件夹放到别处）：快照的基座路径和结果一样，相对放这棵树的文件夹
    tree = tmp_path / "elsewhere" / pipeline["tmp"].name
    for stage in ("sft", "grpo"):
        shutil.copytree(pipeline["tmp"] / stage, tree / stage)
    monkeypatch.chdir(tree.parent)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # 万一基座路径不对，立刻失败而不是去连 Hub
    model = AutoPeftModelForCausalLM.from_pretrained(f"{tree.name}/grpo/snapshots/step-2")
    assert (tree.parent / model.get_base_model().config._name_or_path).resolve() == (tree / "sft").resolve()


def fake_result(folder, stage, *snapshots):
    """只有 stage.json 的假产物（名字解析只读它们，不加载模型）。"""
    folder.mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"stage": stage}), encoding="utf-8")
    for name in snapshots:
        fake_result(folder / "snapshots" / name, stage)
    return folder


@pytest.mark.parametrize("name", ["../../sft", "..", "../snapshots/step-1", "step-1/..", ".step-2.tmp", "step-2"])
def test_a_snapshot_name_never_leaves_the_snapshots_folder(tmp_path, name):
    """ppo@<名字> 只认 <结果>/snapshots/ 里直接的、写完了的 step-N（chat 的 --model、/model 和 benchmark 的 --models
    都经 policy_folder）：走出 snapshots/ 的名字（../../sft 曾经被当成 PPO 的快照加载了 SFT）、没写完的（没有 stage.json）
    都是一行中文，列出有哪些快照。"""
    from qwen_rlhf import inference
    from qwen_rlhf.errors import UserError

    fake_result(tmp_path / "sft", "sft")
    ppo = fake_result(tmp_path / "ppo", "ppo", "step-1")
    (ppo / "snapshots" / ".step-2.tmp").mkdir()
    (ppo / "snapshots" / "step-2").mkdir()  # 写到一半：没有 stage.json
    paths = {"sft": str(tmp_path / "sft"), "ppo": str(ppo)}
    assert inference.policy_folder("ppo@step-1", paths, "base")[:2] == ("ppo@step-1", ppo / "snapshots" / "step-1")
    with pytest.raises(UserError) as e:
        inference.policy_folder(f"ppo@{name}", paths, "base")
    assert e.value.code == EXIT_MISSING and f"没有快照 {name}；有：step-1。" in e.value.message
    r = run_inline("chat.py", "--model", f"ppo@{name}", "--ppo_model_path", ppo, "--sft_model_path", tmp_path / "sft",
                   "--prompt", "你好", tmp=tmp_path)
    assert r.returncode == EXIT_MISSING and "有：step-1。" in last_line(r.stderr) and "Traceback" not in r.stderr


def test_a_snapshot_is_never_taken_for_a_resumable_checkpoint(rl_runs, pipeline, tmp_path):
    for folder in (rl_runs["dpo"].out / "snapshots" / "step-2", rl_runs["dpo"].out):
        r = run_inline("train_dpo.py", *rl_args(pipeline["tmp"], "dpo", tmp_path / "out", "--resume_from_checkpoint",
                                                folder), tmp=tmp_path)
        assert r.returncode == EXIT_BAD_INPUT and "不是可续训的检查点" in last_line(r.stderr), r.stderr[-2000:]
        assert not (tmp_path / "out").exists()
    r = run_inline("train_grpo.py", *rl_args(pipeline["tmp"], "grpo", tmp_path / "out", "--snapshots", -1), tmp=tmp_path)
    assert r.returncode == EXIT_BAD_INPUT and "--snapshots 不能为负数" in last_line(r.stderr)


def test_dpo_records_its_own_held_out_diagnosis(rl_runs):
    held = info(rl_runs["dpo"].out)["held_out"]
    assert held["pairs"] > 0 and 0 <= held["preference_accuracy"] <= 1 and held["beta"] == 0.1
    # log p 的变化 = 隐式奖励 / β，是整句的 log 概率之差：训练过 3 步，两者都离开了 0
    assert held["logp_chosen_change"] != 0 and held["logp_rejected_change"] != 0
    assert "[诊断] 留出" in rl_runs["dpo"].stdout


# ---------------------------------------------------------------- 金标准评委


def test_the_gold_judge_records_its_role_its_own_seed_and_the_extra_pairs(gold, pipeline):
    record = info(gold.folder)
    assert record["role"] == "gold" and record["fluency_pairs"] > 0
    assert record["options"]["training"]["seed"] == 1042 != info(pipeline["rm"])["options"]["training"]["seed"]
    assert record["split_fingerprint"] == info(pipeline["rm"])["split_fingerprint"]
    assert "字序打乱的回答" in gold.run.stdout
    r = run_inline("train_rm.py", *stage_args("rm", pipeline["tmp"] / "tiny-qwen3", pipeline["tmp"] / "x", "--role", "judge"),
                   tmp=pipeline["tmp"])
    assert r.returncode == EXIT_BAD_INPUT and "--role 只能是 proxy" in last_line(r.stderr)


@pytest.mark.parametrize("script", ["train_ppo.py", "train_grpo.py"])
def test_no_policy_is_ever_trained_against_the_gold_judge(gold, pipeline, tmp_path, script):
    stage = script[6:-3]
    args = stage_args(stage, pipeline["tmp"] / "tiny-qwen3", tmp_path / "out", "--sft_model_path", pipeline["sft"],
                      "--reward_model_path", gold.folder)
    if stage == "grpo":
        args = args[:args.index("--model_name_or_path")] + args[args.index("--model_name_or_path") + 2:]
    r = run_inline(script, *args, tmp=tmp_path)
    assert r.returncode == EXIT_MISSING and "是金标准评委" in last_line(r.stderr) and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- benchmark.py --trajectory


@pytest.fixture(scope="module")
def trajectory(pipeline, rl_runs, gold, tmp_path_factory):
    out = tmp_path_factory.mktemp("trajectory")
    proc = run_script("benchmark.py", "--config", TINY / "benchmark.yaml", "--model_name_or_path", pipeline["tmp"] /
                      "tiny-qwen3", "--sft_model_path", pipeline["sft"], "--ppo_model_path", pipeline["ppo"],
                      "--reward_model_path", pipeline["rm"], "--gold_model_path", gold.folder, "--output_dir", out,
                      "--grpo_model_path", rl_runs["grpo"].out, "--dpo_model_path", rl_runs["dpo"].out,
                      "--num_questions", 8, "--models", "sft,ppo,grpo,dpo", "--trajectory", "true", tmp=pipeline["tmp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    with (folder / "trajectory.csv").open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    with (folder / "results.csv").open(encoding="utf-8-sig", newline="") as f:
        results = list(csv.DictReader(f))
    return SimpleNamespace(proc=proc, folder=folder, rows=rows, results=results,
                           md=(folder / "report.md").read_text(encoding="utf-8"),
                           summary=json.loads((folder / "summary.json").read_text(encoding="utf-8")))


def test_trajectory_csv_has_every_snapshot_in_training_order_with_both_judges_and_exact_kl(trajectory):
    by_run = {}
    for r in trajectory.rows:
        by_run.setdefault(r["run"], []).append(r)
    assert set(by_run) == {"ppo", "grpo", "dpo"}
    # SFT（第 0 步）→ 快照（和最终结果同一步的最后一个不重复）→ 最终结果
    assert [r["model"] for r in by_run["grpo"]] == ["sft", "grpo@step-1", "grpo@step-2", "grpo"]
    assert [r["model"] for r in by_run["ppo"]] == ["sft", "ppo@step-8", "ppo@step-16", "ppo@step-24", "ppo"]
    for rows in by_run.values():
        assert [int(r["step"]) for r in rows] == sorted(int(r["step"]) for r in rows)
        assert [int(r["seen"]) for r in rows] == sorted(int(r["seen"]) for r in rows)
        assert rows[0]["kl_seq"] == "0.000000" and all(float(r["kl_seq"]) > 0 for r in rows[1:])
        assert all(float(r["sqrt_kl"]) == pytest.approx(float(r["kl_seq"]) ** 0.5, abs=1e-4) for r in rows)
        assert all(float(r["kl_seq_ci_low"]) <= float(r["kl_seq"]) <= float(r["kl_seq_ci_high"]) for r in rows)
        for r in rows:  # 两位评委：相对 SFT 的提升 = 这个点的平均分 − SFT 的（同一批问题，配对），区间包住它
            for j in ("proxy", "gold"):
                assert float(r[f"{j}_gain"]) == pytest.approx(float(r[f"{j}_mean"]) - float(rows[0][f"{j}_mean"]),
                                                             abs=2e-4)
                assert float(r[f"{j}_gain_ci_low"]) <= float(r[f"{j}_gain"]) + 1e-4
    assert {r["unit"] for r in by_run["dpo"][1:]} == {"pairs"} and by_run["ppo"][-1]["seen"] == "512"


def test_the_report_reads_the_trajectory_and_shows_both_judges_side_by_side(trajectory):
    md, summary = trajectory.md, trajectory.summary
    assert "## 训练轨迹：代理分、金标准分与 KL" in md and "奖励过度优化" in md
    assert set(summary["overoptimisation"]) == {"ppo", "grpo", "dpo"}
    for method, r in summary["overoptimisation"].items():
        assert r["gold"]["verdict"] in words.VERDICTS and r["proxy"]["word"] in words.GAIN_WORDS
        assert f"**{method}**：最终相对 SFT，代理分 {r['proxy']['gain']:+.2f}" in md
    assert f"不超过 {traj.ALPHA:.0%}" in md  # 判定的误报率写在报告里
    assert "代理 RM（训练时优化的）在" in md and "金标准评委（只用来评测）在" in md
    assert summary["gold"]["accuracy"] >= 0 and summary["gold"]["folder"] != summary["rm"]["folder"]
    assert "金标准提升(SFT标准差)" in md and summary["models"]["ppo"]["gold_mean_gain_vs_sft_ci95"] is not None
    assert "**dpo**　DPO：" in md and "诊断：留出" in md  # DPO 的那段带着它自己在留出偏好对上的诊断
    png = trajectory.folder / report.REWARD_KL_PNG
    assert png.read_bytes()[:8] == PNG_SIGNATURE and f"]({report.REWARD_KL_PNG})" in md
    assert "[轨迹] **ppo**" in trajectory.proc.stdout and "trajectory.csv" in last_line(trajectory.proc.stdout)


def trajectory_args(pipeline, out, **folders) -> list:
    """benchmark.py --trajectory true 的参数（迷你配方、2 个留出问题）；folders 换掉某个模型 / 评委文件夹。"""
    paths = {"sft_model_path": pipeline["sft"], "ppo_model_path": pipeline["ppo"], "reward_model_path": pipeline["rm"],
             "gold_model_path": out / "no-gold", **folders}
    return ["--config", TINY / "benchmark.yaml", "--model_name_or_path", pipeline["tmp"] / "tiny-qwen3",
            "--output_dir", out / "bench", "--num_questions", 2, "--trajectory", "true",
            *[x for k, v in paths.items() for x in (f"--{k}", v)]]


def test_a_trajectory_without_sft_among_the_models_is_refused_before_generating(pipeline, tmp_path):
    """--models ppo --trajectory true 曾经给三个快照都生成了回答，然后不写 trajectory.csv、一句话也不说。"""
    r = run_inline("benchmark.py", *trajectory_args(pipeline, tmp_path), "--models", "ppo", tmp=tmp_path)
    assert r.returncode == EXIT_BAD_INPUT and "--models 里要有 sft" in last_line(r.stderr), r.stderr[-2000:]
    assert "[生成]" not in r.stdout and "Traceback" not in r.stderr and not (tmp_path / "bench").exists()


@pytest.mark.parametrize("broken", ["snapshot", "gold_vocabulary"])
def test_every_folder_the_benchmark_reads_is_checked_before_the_first_answer(pipeline, tmp_path, broken):
    """截短的快照权重、词表不同的金标准评委：以前也被拒绝，但要等所有回答生成完（真实尺寸上是几分钟）。"""
    if broken == "snapshot":
        ppo = shutil.copytree(pipeline["ppo"], tmp_path / "ppo")
        weights = ppo / "snapshots" / "step-8" / "adapter_model.safetensors"
        with weights.open("r+b") as f:  # 拷贝中断的样子：文件只剩一半
            f.truncate(weights.stat().st_size // 2)
        args, needle = trajectory_args(pipeline, tmp_path, ppo_model_path=ppo), "step-8/adapter_model.safetensors 已损坏"
    else:
        from transformers import AutoTokenizer

        judge = shutil.copytree(pipeline["rm"], tmp_path / "gold")
        (judge / "stage.json").write_text(json.dumps({**info(judge), "role": "gold"}), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(str(judge))
        tokenizer.add_tokens(["<另一个词表>"])
        tokenizer.save_pretrained(str(judge))
        args, needle = trajectory_args(pipeline, tmp_path, gold_model_path=judge), "分词器不一样"
    r = run_inline("benchmark.py", *args, "--models", "sft,ppo", tmp=tmp_path)
    assert r.returncode == EXIT_MISSING and needle in last_line(r.stderr), r.stderr[-2000:]
    assert "[生成]" not in r.stdout and "Traceback" not in r.stderr and not (tmp_path / "bench").exists()


def test_the_gold_judge_must_be_a_gold_role_rm_other_than_the_proxy(pipeline, gold, tmp_path):
    base = ["--config", TINY / "benchmark.yaml", "--model_name_or_path", pipeline["tmp"] / "tiny-qwen3",
            "--sft_model_path", pipeline["sft"], "--ppo_model_path", pipeline["ppo"], "--reward_model_path",
            pipeline["rm"], "--output_dir", tmp_path / "out", "--models", "sft"]
    r = run_inline("benchmark.py", *base, "--gold_model_path", pipeline["rm"], tmp=tmp_path)
    assert r.returncode == EXIT_BAD_INPUT and "不是金标准评委" in last_line(r.stderr) and not (tmp_path / "out").exists()
    r = run_inline("benchmark.py", *base, "--null_model_path", pipeline["rm"], tmp=tmp_path)  # 空评委也必须是 role: null
    assert r.returncode == EXIT_BAD_INPUT and "不是空评委" in last_line(r.stderr) and not (tmp_path / "out").exists()
    r = run_inline("benchmark.py", *base, "--gold_model_path", tmp_path / "nowhere", tmp=tmp_path)
    assert r.returncode == 0 and "[金标准评委] 没有" in r.stdout, r.stderr[-2000:]
    summary = json.loads(next((tmp_path / "out").glob("*/summary.json")).read_text(encoding="utf-8"))
    assert summary["gold"] is None and "gold_score" not in summary["models"]["sft"]


def test_the_adapter_weights_really_are_what_the_snapshot_saved(rl_runs):
    """快照是训练中那一步的适配器，不是最终结果的拷贝：第 1 步和最终的 LoRA B 不同，而最后一步的快照和最终结果逐位相同。"""
    from safetensors.torch import load_file

    folder = rl_runs["grpo"].out
    final = load_file(str(folder / "adapter_model.safetensors"))
    first = load_file(str(folder / "snapshots" / "step-1" / "adapter_model.safetensors"))
    last = load_file(str(folder / "snapshots" / "step-3" / "adapter_model.safetensors"))
    assert final.keys() == first.keys() == last.keys()
    assert any(not torch.equal(final[k], first[k]) for k in final)
    assert all(torch.equal(final[k], last[k]) for k in final)


def test_the_gold_judge_defaults_to_another_base_and_the_null_judge_to_the_proxys():
    """--role gold 默认换一个更大的基座（不是代理 RM 的"兄弟"）；--role null 和代理 RM 同一个基座、只换种子和文件夹。
    配方和命令行仍然优先（tiny 的金标准配方用更大的迷你基座）。"""
    from qwen_rlhf import recipes

    proxy, gold, null = (recipes.parse("rm", ["--role", role])[0] for role in ("proxy", "gold", "null"))
    proxy_cfg, gold_cfg, null_cfg = (recipes.parse("rm", ["--role", role])[1] for role in ("proxy", "gold", "null"))
    assert gold.model_name_or_path != proxy.model_name_or_path == null.model_name_or_path
    assert len({proxy_cfg.seed, gold_cfg.seed, null_cfg.seed}) == 3
    assert len({proxy_cfg.output_dir, gold_cfg.output_dir, null_cfg.output_dir}) == 3
    tiny_gold = recipes.parse("rm", ["--config", str(TINY / "rm_gold.yaml")])[0]
    tiny_null = recipes.parse("rm", ["--config", str(TINY / "rm_null.yaml")])[0]
    tiny_proxy = recipes.parse("rm", ["--config", str(TINY / "rm.yaml")])[0]
    assert tiny_gold.model_name_or_path != tiny_proxy.model_name_or_path == tiny_null.model_name_or_path
    assert tiny_null.role == "null"  # YAML 里的 null 加了引号，不是空值


@pytest.mark.parametrize("role, who", [("gold", "金标准评委"), ("null", "空评委")])
def test_neither_evaluation_judge_is_accepted_as_a_training_reward(tmp_path, role, who):
    from qwen_rlhf import outputs
    from qwen_rlhf.errors import UserError

    folder = tmp_path / "judge"
    folder.mkdir()
    (folder / "stage.json").write_text(json.dumps({"stage": "rm", "role": role}), encoding="utf-8")
    with pytest.raises(UserError) as e:
        outputs.check_reward_model(folder)
    assert who in str(e.value) and f"--role {role}" in str(e.value)


def test_a_gold_judge_on_the_proxys_base_gets_one_warning_line(tmp_path):
    import benchmark

    proxy = {"base_model": str(tmp_path / "base")}
    assert judges.same_base({"base_model": str(tmp_path / "base" / ".")}, proxy)
    assert not judges.same_base({"base_model": str(tmp_path / "bigger")}, proxy)
    rm = {"pairs": 4, "accuracy": 1.0, "margin": 2.0, "folder": "rm"}
    summary = {"rm": rm, "gold": rm, "gold_base": {"same": True, "proxy": "checkpoint/base/Qwen3-0.6B"}}
    warned = [line for line in words.judge_lines(summary) if "同一个基座" in line]
    assert len(warned) == 1 and "checkpoint/base/Qwen3-0.6B" in warned[0]
    assert not [line for line in words.judge_lines({**summary, "gold_base": {"same": False}}) if "同一个基座" in line]


def test_an_rpo_dpo_run_is_labelled_apart_from_plain_dpo(tmp_path):
    import benchmark

    plain = {"beta": 0.1, "loss_type": ["sigmoid"], "loss_weights": None}
    rpo = {"beta": 0.1, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}  # TRL 1.12 的 RPO：sigmoid + sft
    policies = {"dpo": (tmp_path / "a", {"stage": "dpo", "options": {"training": plain}}),
                "dpo-rpo": (tmp_path / "b", {"stage": "dpo", "options": {"training": rpo}})}
    runs, _ = benchmark.model_runs(policies, with_snapshots=False)
    assert [r["method"] for r in runs] == ["dpo", "dpo (loss=sigmoid+0.5*sft)"]
    grpo = {"grpo": (tmp_path / "c", {"stage": "grpo", "options": {"training": {"beta": 0.05, "loss_type": "dapo"}}})}
    assert [r["method"] for r in benchmark.model_runs(grpo, with_snapshots=False)[0]] == ["grpo"]  # GRPO 的默认损失不进标签
