"""chat.py --arena（盲评对战）和投票文件：像人一样在伪终端里投票（含平局、跳过、多轮、Ctrl-C、关终端），文件里恰好是
有效的几票；两个会话同时投不丢票；train_rm.py 用这些票训练；benchmark.py 的一致率从这些票算出；坏输入一行中文、什么都不丢。"""

import json
import multiprocessing
import os
import re
import signal
import time
from types import SimpleNamespace

import pytest
from conftest import TINY, assert_one_line_error, offline_env, run_inline, stage_args
from test_chat import PROMPT, Terminal

from qwen_rlhf import data, inference, prefs, scoring, tiny
from qwen_rlhf.errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError

VOTE = r"你的投票（1 = A 好"
REVEAL = r"揭晓：A 是 (\S+)，B 是 (\S+?)；"


@pytest.fixture(scope="module")
def second_model(tiny_model, tmp_path_factory):
    """和 tiny_model 同一个分词器、不同权重的第二个小模型：对战的另一边（不用训练）。"""
    return tiny.build(tmp_path_factory.mktemp("arena") / "tiny-b", seed=3)


@pytest.fixture(scope="module")
def session(tiny_model, second_model, tmp_path_factory):
    """伪终端里的一次投票：错键、A 胜、/help、多轮的平局、跳过、投票时 Ctrl-C、B 胜，最后投票中途关掉终端（SIGHUP）。"""
    tmp = tmp_path_factory.mktemp("arena-session")
    votes = tmp / "votes.jsonl"
    term = Terminal(["--arena", tiny_model, second_model, "--prefs_file", votes, "--max_new_tokens", "8", "--seed", "7"],
                    offline_env(tmp, LANG="C.UTF-8"))
    reveals = []

    def ask(question, key):
        term.expect(PROMPT)
        term.send(f"{question}\r".encode())
        term.expect(VOTE)
        term.send(f"{key}\r".encode())

    try:
        term.expect(r"盲评对战：.*/help", timeout=120)
        ask("你好", "x")  # 不是投票键：说一行，再问
        term.expect(r"x 不是投票键：请输入 1、2、0 或 s")
        term.expect(VOTE)
        term.send(b"1\r")
        reveals.append(("a", term.expect(REVEAL).groups()))
        term.expect(PROMPT)
        term.send(b"/help\r")
        term.expect(r"投票：1 = A 更好")
        ask("再说一遍", "0")  # 第二轮：两边各自带着自己的历史
        reveals.append(("tie", term.expect(REVEAL).groups()))
        ask("第三句", "s")
        reveals.append(("skip", term.expect(REVEAL).groups()))
        term.expect(PROMPT)
        term.send("第四句\r".encode())
        term.expect(VOTE)
        time.sleep(1.0)  # 等 readline 接管终端再按（同 test_chat）
        term.send(b"\x03")  # 投票时 Ctrl-C：放弃这一票，揭晓，继续
        term.expect(REVEAL + "这一票没有记下")
        ask("第五句", "2")
        reveals.append(("b", term.expect(REVEAL).groups()))
        term.expect(PROMPT)
        term.send("第六句\r".encode())
        term.expect(VOTE)
        os.kill(term.pid, signal.SIGHUP)  # 投票中途关掉终端
        deadline = time.monotonic() + 30
        while not term.exited():
            assert time.monotonic() < deadline, term.text[-2000:]
            term.read(0.5)
    finally:
        term.close()
    return SimpleNamespace(file=votes, reveals=reveals, text=term.text, tmp=tmp)


def test_pseudo_terminal_session_keeps_exactly_the_valid_votes(session, tiny_model, second_model):
    assert "Traceback" not in session.text
    rows = [json.loads(line) for line in session.file.read_text(encoding="utf-8").splitlines()]
    assert [r["vote"] for r in rows] == ["a", "tie", "skip", "b"]  # Ctrl-C 的那票和关终端时的那票都没写
    assert [r["turn"] for r in rows] == [1, 2, 3, 5]  # 多轮：第四轮答了但没投票，仍算一轮
    assert {r["seed"] for r in rows} == {7} and all(r["time"] for r in rows)
    for r, (vote, (a, b)) in zip(rows, session.reveals):  # 文件里的 A/B 就是揭晓的那两个
        assert (r["model_a"], r["model_b"]) == (a, b) and {a, b} == {tiny_model.name, second_model.name}
        assert r["prompt"][-1]["role"] == "user"
        if vote in ("a", "b"):  # 胜负票是 TRL 的显式提示偏好行：chosen 就是人选的那个回答
            assert r["chosen"][0]["content"] == r[f"answer_{vote}"] and r["rejected"][0]["content"] == \
                r[f"answer_{'b' if vote == 'a' else 'a'}"]
        else:
            assert "chosen" not in r and "rejected" not in r
    pairs = data.load_rows(str(session.file)).rows  # 平局、跳过不当偏好对
    assert [p["question"] for p in pairs] == ["你好", "第五句"]


def append_votes(path, start, n):
    votes = prefs.VoteFile(str(path))
    for i in range(start, start + n):
        votes.append(prefs.vote_row(f"问题{i}", None, ["m1", "m2"], ["甲" * 500, "乙" * 500], "a", 0, 1))
    votes.close()


def test_two_sessions_voting_into_one_file_at_once_lose_nothing(tmp_path):
    path = tmp_path / "votes.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=append_votes, args=(path, k * 1000, 300)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = prefs.read_votes(path)  # 每一行都是完整的一票（没有交错、没有半行）
    assert sorted(int(r["question"][2:]) for r in rows) == [*range(300), *range(1000, 1300)]


def test_train_rm_trains_on_the_votes_alone_and_added(session, tiny_model, tmp_path):
    alone = run_inline("train_rm.py", *stage_args("rm", tiny_model, tmp_path / "rm_votes", "--dataset", session.file,
                                                  "--max_steps", 2), tmp=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert (tmp_path / "rm_votes" / "stage.json").is_file()
    added = run_inline("train_rm.py", *stage_args("rm", tiny_model, tmp_path / "rm_added", "--add_prefs", session.file,
                                                  "--max_steps", 1), tmp=tmp_path)
    assert added.returncode == 0, added.stderr[-3000:]
    assert re.search(r"--add_prefs：.* 里的 2 个偏好对加进训练集", added.stdout + added.stderr)
    stage = json.loads((tmp_path / "rm_added" / "stage.json").read_text(encoding="utf-8"))
    assert stage["options"]["script"]["add_prefs"] == str(session.file)


def test_benchmark_agreement_is_computed_from_the_votes(session, sft, rm, tmp_path):
    out = tmp_path / "bench"
    r = run_inline("benchmark.py", "--config", TINY / "benchmark.yaml", "--models", "sft", "--sft_model_path", sft.folder,
                   "--reward_model_path", rm.folder, "--gold_model_path", tmp_path / "no-gold", "--prefs_file",
                   session.file, "--num_questions", 0, "--max_new_tokens", 8, "--output_dir", out, tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (folder,) = list(out.iterdir())
    human = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["human"]
    # 同一个 RM、同一个打分函数，直接在文件里的两张胜负票上算：一致率必须就是它
    judge = inference.load_reward(rm.folder)
    decided = [json.loads(line) for line in session.file.read_text(encoding="utf-8").splitlines()]
    decided = [v for v in decided if v["vote"] in ("a", "b")]
    s = scoring.score(judge.model, judge.tokenizer, [v["prompt"] for v in decided] * 2,
                      [v[k][0]["content"] for k in ("chosen", "rejected") for v in decided])
    expected = sum(c > w for c, w in zip(s[:2], s[2:])) / 2
    assert human["overall"]["代理 RM"]["n"] == 2 and human["overall"]["代理 RM"]["rate"] == expected
    (pair,) = human["pairs"]
    assert pair["votes"] == 4 and pair["ties"] == 1 and pair["win_rate"]["n"] == 3 and pair["win_rate"]["ci95"]
    assert "[你的投票]" in r.stdout and "## 你的投票" in (folder / "report.md").read_text(encoding="utf-8")
    if expected < prefs.AGREEMENT_FLOOR:
        assert "不认同你的口味" in r.stdout


@pytest.mark.parametrize("case", ["not_a_vote_file", "bad_json", "unwritable", "unknown_model", "same_model",
                                  "one_model"])
def test_bad_arena_input_is_one_chinese_line_and_nothing_lost(case, tiny_model, second_model, tmp_path):
    votes = tmp_path / "votes.jsonl"
    good = json.dumps(prefs.vote_row("你好", None, ["m1", "m2"], ["甲", "乙"], "a", 0, 1), ensure_ascii=False) + "\n"
    votes.write_text(good, encoding="utf-8")
    models, prefs_file, code, words = [tiny_model, second_model], votes, EXIT_BAD_INPUT, ""
    if case == "not_a_vote_file":
        votes.write_text(good + '{"question": "q"}\n', encoding="utf-8")
        words = "votes.jsonl:2 不是 chat.py --arena 写的一票"
    elif case == "bad_json":
        votes.write_text(good + "{坏\n", encoding="utf-8")
        words = "votes.jsonl:2 不是合法的 JSON"
    elif case == "unwritable":
        (tmp_path / "a-file").write_text("x")
        prefs_file, words = tmp_path / "a-file" / "votes.jsonl", "写不进去"
    elif case == "unknown_model":
        models, code, words = [tiny_model, "no-such-model"], EXIT_MISSING, "no-such-model"
    elif case == "same_model":
        models, words = [tiny_model, str(tiny_model) + "/"], "同一个"
    else:
        models, words = [tiny_model], "正好两个模型"
    before = votes.read_bytes()
    r = run_inline("chat.py", "--arena", *models, "--prefs_file", prefs_file, tmp=tmp_path, stdin="你好\n1\n".encode())
    assert_one_line_error(r, code, words)
    assert votes.read_bytes() == before  # 之前的票一个字节都没变
    if case in ("not_a_vote_file", "bad_json"):  # benchmark 读到同一个坏文件：同样一行中文
        with pytest.raises(UserError, match=words):
            prefs.votes_if_any(str(votes))
