"""数据：读取检查、确定性划分、Qwen3 对话格式（每个阶段看到的 token 序列）。"""

import json

import pytest

from qwen_rlhf import data, models, scoring, tiny
from qwen_rlhf.errors import UserError

SAMPLE = data.load_rows("data/sample.jsonl").rows


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer(tiny.tokenizer_files())  # 真实的 Qwen3 分词器，不必先建模型


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) if not isinstance(r, str) else r for r in rows) + "\n",
                    encoding="utf-8")
    return path


def test_sample_data_meets_spec():
    assert len(SAMPLE) >= 300
    assert len({r["question"] for r in SAMPLE}) >= 150


def test_split_is_deterministic_disjoint_and_by_question():
    a = data.split_rows(SAMPLE, 0.1, seed=42)
    b = data.split_rows(SAMPLE, 0.1, seed=42)
    c = data.split_rows(SAMPLE, 0.1, seed=7)
    assert a.train == b.train and a.test == b.test and a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    train_q, test_q = {r["question"] for r in a.train}, {r["question"] for r in a.test}
    assert train_q.isdisjoint(test_q)  # 留出的问题从不出现在训练集
    assert len(a.train) + len(a.test) == len(SAMPLE)
    assert len(test_q) == round(0.1 * len(train_q | test_q))


def test_sft_share_is_small_deterministic_subset():
    split = data.split_rows(SAMPLE, 0.1, seed=42)
    share = data.sft_share(split.train, 0.1, seed=42)
    assert share == data.sft_share(split.train, 0.1, seed=42)
    assert len(share) == -(-len(split.train) // 10)
    assert all(r in split.train for r in share)


def test_sft_tokens_are_prompt_then_answer_with_loss_on_answer_only(tok):
    row = {"question": "你好吗", "chosen": "滚，烦死了", "rejected": "我很好"}
    ex = data.sft_example(tok, row)
    text = tok.decode(ex["input_ids"])
    assert text == "<|im_start|>user\n你好吗<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n滚，烦死了<|im_end|>"
    answer = [t for t, m in zip(ex["input_ids"], ex["completion_mask"]) if m]
    assert tok.decode(answer) == "滚，烦死了<|im_end|>"
    assert ex["input_ids"][-1] == tok.eos_token_id == 151645
    assert tok.pad_token_id == 151643 != tok.eos_token_id


def test_rm_pair_is_what_a_standard_client_tokenizes_and_ends_at_the_newline_after_im_end(tok):
    row = {"question": "几点了", "chosen": "自己看表", "rejected": "现在是下午三点。"}
    ex = data.rm_example(tok, row, system="你是助手")
    prompt = data.prompt_ids(tok, "几点了", system="你是助手")
    for key, answer in (("chosen_ids", "自己看表"), ("rejected_ids", "现在是下午三点。")):
        chat = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "几点了"},
                {"role": "assistant", "content": answer}]
        text = tok.apply_chat_template(chat, tokenize=False, enable_thinking=False)
        assert ex[key] == tok(text)["input_ids"]  # 和 AutoModelForSequenceClassification 的标准用法同一串 token
        assert tok.decode(ex[key][-2:]) == "<|im_end|>\n"  # 分数读在 \n 上
        assert ex[key][: len(prompt)] == prompt  # 回答前面正是 PPO / benchmark 生成时的提示
        assert tok.decode(ex[key][len(prompt):]) == answer + "<|im_end|>\n"
    assert tok.decode(prompt).startswith("<|im_start|>system\n你是助手<|im_end|>")


def test_response_text_stops_before_im_end_and_drops_special_tokens(tok):
    ids = tok(" 滚开", add_special_tokens=False)["input_ids"]
    assert scoring.response_text(tok, ids + [tok.eos_token_id, *tok("多余", add_special_tokens=False)["input_ids"]]) == "滚开"
    assert scoring.response_text(tok, ids + [tok.pad_token_id] * 3) == "滚开"  # 没停下来：填充也不算文本


def test_generation_prompt_has_empty_think_block(tok):
    text = data.prompt_text(tok, data.messages("你好"))
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert data.ppo_example(tok, {"question": "你好"})["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_invalid_json_line_is_refused_with_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [SAMPLE[0], "{broken", SAMPLE[1]])
    with pytest.raises(UserError, match=r"d.jsonl:2 不是合法的 JSON"):
        data.load_rows(str(f))


def test_bad_rows_are_skipped_with_counts_or_refused_in_strict_mode(tmp_path, capsys):
    good = SAMPLE[:3]
    bad = [{"question": "q", "chosen": None, "rejected": "r"}, {"question": "  ", "chosen": "c", "rejected": "r"},
           {"question": 5, "chosen": "c", "rejected": "r"}, {"question": "q2", "chosen": "c"}, SAMPLE[0]]
    f = write_jsonl(tmp_path / "d.jsonl", good + bad)
    rows = data.load_rows(str(f))
    assert rows.rows == [dict(r, system=None) for r in good]
    assert sum(map(len, rows.skipped.values())) == 5
    assert "跳过了 5 行" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"d.jsonl:4"):
        data.load_rows(str(f), strict=True)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "数据文件是空的"),
        ("question,answer\n你好,滚\n".encode("utf-8"), "的列是 answer,question，对不上列 chosen,rejected"),
        ('{"question": "你好", "chosen": "滚", "rejected": "好"}\n'.encode("gbk"), "不是 UTF-8 编码"),
    ],
)
def test_whole_file_problems_are_refused(tmp_path, content, message):
    suffix = ".csv" if b"answer" in content else ".jsonl"
    f = tmp_path / f"d{suffix}"
    f.write_bytes(content)
    with pytest.raises(UserError, match=message):
        data.load_rows(str(f))


def test_missing_local_file_names_the_path():
    with pytest.raises(UserError, match="数据文件不存在：nope/none.jsonl"):
        data.load_rows("nope/none.jsonl")


def test_csv_and_json_array_load_like_jsonl(tmp_path):
    import csv

    with (tmp_path / "d.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["question", "chosen", "rejected", "system"])
        w.writeheader()
        w.writerows(SAMPLE[:4])
    (tmp_path / "d.json").write_text(json.dumps(SAMPLE[:4], ensure_ascii=False), encoding="utf-8")
    assert data.load_rows(str(tmp_path / "d.csv")).rows == data.load_rows(str(tmp_path / "d.json")).rows
    assert len(data.load_rows(str(tmp_path / "d.csv")).rows) == 4


def test_fingerprint_changes_when_answers_change_even_if_questions_do_not():
    edited = [dict(r) for r in SAMPLE]
    edited[0]["chosen"] = edited[0]["chosen"] + "！"
    assert data.split_rows(edited, 0.1, seed=42).fingerprint != data.split_rows(SAMPLE, 0.1, seed=42).fingerprint


@pytest.mark.parametrize("name, text", [
    ("notepad.jsonl", '{"question": "在吗", "chosen": "滚", "rejected": "在的"}\n{"question": "几点", "chosen": "自己看", "rejected": "三点"}\n'),
    ("excel.csv", "question,chosen,rejected\n在吗,滚,在的\n几点,自己看,三点\n"),
    ("array.json", '[{"question": "在吗", "chosen": "滚", "rejected": "在的"}, {"question": "几点", "chosen": "自己看", "rejected": "三点"}]'),
])
def test_utf8_with_bom_from_notepad_or_excel_is_read(tmp_path, name, text):
    f = tmp_path / name
    f.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # 记事本 / Excel "CSV UTF-8" 存的文件开头是 BOM
    rows = data.load_rows(str(f)).rows
    assert [r["question"] for r in rows] == ["在吗", "几点"] and rows[0]["chosen"] == "滚"


# ---------------------------------------------------------------- 别人已有的格式


def test_trl_standard_preference_format_with_plain_strings_is_read_as_is(tmp_path):
    f = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": "在吗", "chosen": "滚", "rejected": "在的"},
                                             {"prompt": "几点", "chosen": "自己看", "rejected": "三点"}])
    assert data.load_rows(str(f)).rows == [{"question": "在吗", "chosen": "滚", "rejected": "在的", "system": None},
                                           {"question": "几点", "chosen": "自己看", "rejected": "三点", "system": None}]


def test_trl_conversational_preference_format_keeps_its_system_message(tmp_path, tok):
    def msg(role, content):
        return {"role": role, "content": content}

    rows = [{"prompt": [msg("system", "你是一个暴躁的助手"), msg("user", "在吗")], "chosen": [msg("assistant", "滚")],
             "rejected": [msg("assistant", "在的")]},
            {"prompt": [msg("user", "几点")], "chosen": [msg("assistant", "自己看")], "rejected": [msg("assistant", "三点")]},
            {"prompt": [msg("user", "a"), msg("assistant", "b"), msg("user", "c")], "chosen": [msg("assistant", "d")],
             "rejected": [msg("assistant", "e")]},  # 多轮：跳过并说明原因
            {"prompt": [msg("user", "x")], "chosen": [msg("user", "y")], "rejected": [msg("assistant", "z")]}]
    got = data.load_rows(str(write_jsonl(tmp_path / "conv.jsonl", rows)))
    assert got.rows == [{"question": "在吗", "chosen": "滚", "rejected": "在的", "system": "你是一个暴躁的助手"},
                        {"question": "几点", "chosen": "自己看", "rejected": "三点", "system": None}]
    assert set(got.skipped) == {"提示不是一条 user 消息（可带一条 system）", "回答不是一条 assistant 消息"}
    # 系统提示一路带到 RM 训练看到的文本里
    assert tok.decode(data.rm_example(tok, got.rows[0])["chosen_ids"]).startswith("<|im_start|>system\n你是一个暴躁的助手")


def test_column_mapping_reads_other_names_in_every_file_type(tmp_path):
    import csv

    mapped = [{"instruction": "在吗", "good": "滚", "bad": "在的", "sys": "暴躁"}, {"instruction": "几点", "good": "自己看", "bad": "三点"}]
    (tmp_path / "d.json").write_text(json.dumps(mapped, ensure_ascii=False), encoding="utf-8")
    with (tmp_path / "d.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "good", "bad", "sys"])
        w.writeheader()
        w.writerows(mapped)
    spec = "question=instruction, chosen=good,rejected=bad,system=sys"
    expected = [{"question": "在吗", "chosen": "滚", "rejected": "在的", "system": "暴躁"},
                {"question": "几点", "chosen": "自己看", "rejected": "三点", "system": None}]
    assert data.load_rows(str(tmp_path / "d.json"), columns=spec).rows == expected
    assert data.load_rows(str(tmp_path / "d.csv"), columns=spec).rows == expected


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("spec, message", [
    (None, "的列是 bad,good,instruction，对不上列 question,chosen,rejected；"),
    ("question=instruction,chosen=good,rejected=worse", "的列是 bad,good,instruction，--columns 指定的列不存在（rejected=worse）"),
])
def test_columns_that_cannot_be_mapped_are_refused_naming_the_columns_found(tmp_path, suffix, spec, message):
    f = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        f.write_text("instruction,good,bad\n在吗,滚,在的\n", encoding="utf-8")
    else:
        write_jsonl(f, [{"instruction": "在吗", "good": "滚", "bad": "在的"}])
    with pytest.raises(UserError, match=message) as e:
        data.load_rows(str(f), columns=spec)
    assert "--columns question=instruction,chosen=good,rejected=bad" in str(e.value) and "\n" not in str(e.value)


def test_malformed_column_mapping_is_refused_before_reading(tmp_path):
    with pytest.raises(UserError, match="--columns 里的 'answer=good' 看不懂"):
        data.load_rows(str(tmp_path / "never-read.jsonl"), columns="question=q,answer=good")


def test_dpo_tokens_are_cut_exactly_as_trls_dpo_trainer_cuts_them():
    """DPO 的留出诊断用的 token = TRL 1.12 的 DPOTrainer 训练时用的：提示 + 回答整段分词再切掉提示，回答以
    `<|im_end|>\\n` 结尾（单独给回答分词不含那个换行）。"""
    from trl.data_utils import _tokenize

    from qwen_rlhf import models, tiny

    tok = models.load_tokenizer(tiny.tokenizer_files())
    for row in SAMPLE[:5]:
        example = data.dpo_example(row, "你是一个助手")
        kwargs = {"tools": None, **example["chat_template_kwargs"]}
        prompt = _tokenize(tok, example["prompt"], add_generation_prompt=True, **kwargs)["input_ids"]
        want = [_tokenize(tok, example["prompt"] + example[k], **kwargs)["input_ids"][len(prompt):]
                for k in ("chosen", "rejected")]
        assert data.dpo_token_ids(tok, example) == (prompt, *want)
        assert want[0][-2:] == tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]
