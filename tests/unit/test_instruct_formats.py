"""Instruction and preference readers: every format from .jsonl / .json / .parquet / save_to_disk data, every way a
record is rejected (with its reason and the raw record kept), the input errors, and `in = used + rejected`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vikhr.corpus.readers import InputError
from vikhr.instruct.formats import (
    FORMATS,
    BadLine,
    Pair,
    Rejected,
    check_messages,
    detect_format,
    parse_transcript,
    read_examples,
    read_pairs,
    read_records,
    record_examples,
    record_pair,
)


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSON lines (a str row is written as it is, for broken lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def sys_(text: str) -> dict:
    return {"role": "system", "content": text}


def one(record: dict, fmt: str = "auto"):
    """`record_examples` of one record, as source `s`, index 0."""
    return record_examples(record, fmt, "s", 0, "f:1")


def rejected_as(out, reason: str) -> str:
    assert isinstance(out, Rejected), out
    assert out.reason == reason, (out.reason, out.detail)
    return out.detail


HH = "\n\nHuman: Привет\n\nAssistant: Здравствуйте!\n\nHuman: Как дела?\n\nAssistant:"


# ------------------------------------------------------------------------------------------------ the formats


def test_detect_format_by_keys():
    assert detect_format({"instruction": "a", "input": "", "output": "b"}) == "alpaca"
    assert detect_format({"instruction": "a", "instances": []}) == "seed"
    assert detect_format({"conversations": [{"from": "human", "value": "x"}]}) == "sharegpt"
    assert detect_format({"messages": [{"from": "human", "value": "x"}]}) == "sharegpt"
    assert detect_format({"messages": [user("x")]}) == "messages"
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}) == "preference"
    assert detect_format({"text": "x"}) is None
    assert detect_format({"messages": "not a list"}) is None


def test_alpaca_jsonl(tmp_path):
    rows = [
        {"instruction": "Переведи", "input": "cat", "output": "кот"},
        {"instruction": "Скажи привет", "input": "", "output": "Привет!", "system": "Ты бот."},
        {"instruction": "Считай", "input": None, "output": "1 2 3"},
    ]
    path = write_jsonl(tmp_path / "alp.jsonl", rows)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a UTF-8 BOM is not part of the first record
    examples, rejected = read_examples(path)
    assert rejected == []
    assert [e.messages for e in examples] == [
        [user("Переведи\n\ncat"), bot("кот")],
        [sys_("Ты бот."), user("Скажи привет"), bot("Привет!")],
        [user("Считай"), bot("1 2 3")],
    ]
    assert [e.id for e in examples] == ["alp:0", "alp:1", "alp:2"]
    assert examples[1].where == f"{tmp_path / 'alp.jsonl'}:2"
    assert examples[0].prompt == "Переведи\n\ncat"


def test_sharegpt_roles_mapped_and_system_kept(tmp_path):
    rows = [
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q1"},
                           {"from": "gpt", "value": "a1"}, {"from": "user", "value": "q2"},
                           {"from": "chatgpt", "value": "a2"}]},
        {"messages": [{"from": "human", "value": "q"}, {"from": "bing", "value": "a"}], "system": "S2"},
        {"conversations": [{"from": "system", "value": ""}, {"from": "Human", "value": "q"},
                           {"from": "assistant", "value": "a"}]},
    ]  # fmt: skip
    examples, rejected = read_examples(write_jsonl(tmp_path / "sg.jsonl", rows), source="sg")
    assert rejected == []
    assert examples[0].messages == [sys_("S"), user("q1"), bot("a1"), user("q2"), bot("a2")]
    assert examples[1].messages == [sys_("S2"), user("q"), bot("a")]
    assert examples[2].messages == [user("q"), bot("a")]  # an empty system message is no message


def test_messages_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [sys_("S"), user("q"), bot("a")]}, {"messages": [user("q"), bot("a"), user("x")]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    examples, rejected = read_examples(tmp_path / "chat.parquet", fmt="messages")
    assert [e.messages for e in examples] == [rows[0]["messages"]]
    assert [(r.reason, r.where) for r in rejected] == [
        ("not_alternating", f"{tmp_path / 'chat.parquet'}:row 2")
    ]
    assert rejected[0].record == rows[1]


def test_seed_tasks_one_example_per_instance(tmp_path):
    rows = [
        {"instruction": "Назови столицу", "name": "capitals", "orig_instruction": "Name the capital",
         "instances": [{"input": "Франция", "output": "Париж"}, {"input": "", "output": "Москва"}]},
        {"instruction": "Пошути", "instances": [{"input": "", "output": "Шутка"}]},
    ]  # fmt: skip
    examples, rejected = read_examples(write_jsonl(tmp_path / "seed.jsonl", rows))
    assert rejected == []
    assert [e.id for e in examples] == ["seed:0:0", "seed:0:1", "seed:1:0"]
    assert examples[0].messages == [user("Назови столицу\n\nФранция"), bot("Париж")]
    assert examples[1].messages == [user("Назови столицу"), bot("Москва")]
    assert examples[0].meta == {"name": "capitals", "orig_instruction": "Name the capital"}
    assert examples[2].meta == {}


def test_preference_forms_as_pairs_and_examples(tmp_path):
    rows = [
        {"prompt": "Вопрос?", "chosen": "Хороший ответ", "rejected": "Плохой ответ"},
        {"chosen": HH + " Хорошо.", "rejected": HH + " Не скажу."},
        {"chosen": [user("q"), bot("good")], "rejected": [user("q"), bot("bad")]},
        {"prompt": [user("q")], "chosen": [bot("good")], "rejected": [bot("bad")]},  # TRL conversational
        {"prompt": HH, "chosen": " Хорошо.", "rejected": " Плохо."},  # HH split into prompt / replies
        {"chosen": "good", "rejected": "bad"},  # no prompt at all: a pair, but not an SFT example
    ]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    pairs, rejected = read_pairs(path)
    assert rejected == []
    hh_prompt = [user("Привет"), bot("Здравствуйте!"), user("Как дела?")]
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ([user("Вопрос?")], "Хороший ответ", "Плохой ответ"),
        (hh_prompt, "Хорошо.", "Не скажу."),
        ([user("q")], "good", "bad"),
        ([user("q")], "good", "bad"),
        (hh_prompt, " Хорошо.", " Плохо."),
        ([], "good", "bad"),
    ]
    examples, rejected = read_examples(path)
    assert examples[1].messages == hh_prompt + [bot("Хорошо.")]
    assert examples[3].messages == [user("q"), bot("good")]
    assert [(r.id, r.reason) for r in rejected] == [("pref:5", "not_alternating")]


def test_parse_transcript():
    assert parse_transcript("\n\nHuman:  hi \n\nAssistant: hello\n\nHuman: x") == [
        user("hi"), bot("hello"), user("x")
    ]  # fmt: skip
    assert parse_transcript("Human: hi\n\nAssistant: yo") == [user("hi"), bot("yo")]
    assert parse_transcript("just a reply") == []
    assert parse_transcript("a reply that quotes\n\nHuman: something") == []  # text before the first marker


def test_json_list_and_save_to_disk_folders(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [
        {"instruction": "i", "input": "", "output": "o"},
        {"instruction": "j", "input": "x", "output": "p"},
    ]
    (tmp_path / "list.json").write_text(json.dumps(rows + [[1, 2]]), encoding="utf-8")
    examples, rejected = read_examples(tmp_path / "list.json")
    assert len(examples) == 2 and examples[1].where.endswith("list.json:row 2")
    assert (rejected[0].reason, rejected[0].record) == ("bad_record", "[1, 2]")

    Dataset.from_list(rows).save_to_disk(tmp_path / "ds")
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(
        tmp_path / "dd"
    )
    DatasetDict({"validation": Dataset.from_list(rows)}).save_to_disk(tmp_path / "nodd")
    for name in ("ds", "dd"):
        examples, rejected = read_examples(tmp_path / name)
        assert rejected == [] and [e.messages[-1]["content"] for e in examples] == ["o", "p"]
        assert examples[0].source == name
    assert examples[1].where == f"{tmp_path / 'dd' / 'train'}:row 2"
    with pytest.raises(InputError, match=r"nodd.*no 'train' split.*validation"):
        read_examples(tmp_path / "nodd")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="plain"):
        read_examples(tmp_path / "plain")


# ------------------------------------------------------------------------------------------ rejected records


def test_check_messages_reasons():
    assert check_messages([sys_("s"), user("q"), bot("a"), user("q2"), bot("a2")]) is None
    assert check_messages([user("q"), {"role": "tool", "content": "x"}, bot("a")])[0] == "bad_role"
    reason, detail = check_messages([user("q"), sys_("s"), bot("a")])
    assert reason == "bad_role" and "message 2" in detail
    assert check_messages([sys_("s"), user("q")])[0] == "no_assistant"
    assert check_messages([]) == ("no_assistant", "no assistant message (roles: none)")
    assert check_messages([user("q"), bot("  \n")])[0] == "empty_answer"
    assert check_messages([user(""), bot("a")])[0] == "empty_prompt"
    reason, detail = check_messages([user("q"), bot("a"), bot("b")])
    assert reason == "not_alternating" and "message 3 is assistant, expected user" in detail
    assert "user, assistant, assistant" in detail
    assert check_messages([bot("a")])[0] == "not_alternating"
    reason, detail = check_messages([user("q"), bot("a"), user("q2")])
    assert reason == "not_alternating" and "ends with a user message" in detail


def test_unusable_conversations_are_rejected_with_the_record():
    rec = {"conversations": [{"from": "human", "value": "q"}]}
    out = one(rec)
    rejected_as(out, "no_assistant")
    assert out.record is rec and out.id == "s:0" and out.where == "f:1"
    rejected_as(one({"instruction": "q", "output": " "}), "empty_answer")
    rejected_as(one({"instruction": "", "output": "a"}), "empty_prompt")
    detail = rejected_as(one({"messages": [user("q"), user("q2"), bot("a")]}), "not_alternating")
    assert "message 2" in detail
    assert "'robot'" in rejected_as(one({"conversations": [{"from": "robot", "value": "q"}]}), "bad_role")
    # one unusable instance rejects the whole seed task, naming the instance
    seed = {"instruction": "q", "instances": [{"input": "", "output": "a"}, {"input": "", "output": ""}]}
    assert rejected_as(one(seed), "empty_answer").startswith("instance 1:")


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"instruction": "q", "output": None}, "output"),
        ({"instruction": 5, "output": "a"}, "instruction"),
        ({"instruction": "q", "input": ["x"], "output": "a"}, "input"),
        (
            {"messages": [user("q"), {"role": "assistant", "content": [{"type": "text"}]}]},
            "messages[1].content",
        ),
        ({"messages": [user("q"), "a"]}, "messages[1]"),
        ({"instruction": "q", "instances": [{"input": "", "output": 3}]}, "instances[0].output"),
        ({"instruction": "q", "instances": []}, "instances"),
        ({"chosen": 1, "rejected": "b"}, "chosen"),
    ],
)
def test_non_string_content_is_a_bad_record_naming_the_field(record, field):
    assert f"'{field}'" in rejected_as(one(record), "bad_record")


def test_bad_pairs():
    def pair(record):
        return record_pair(record, "auto", "s", 0, "f:1")

    assert isinstance(pair({"chosen": HH + " a", "rejected": HH + " b"}), Pair)
    rejected_as(pair({"prompt": "q", "chosen": "same ", "rejected": " same"}), "identical_pair")
    rejected_as(pair({"prompt": "q", "chosen": "a", "rejected": " "}), "empty_answer")
    rejected_as(pair({"chosen": HH + " ", "rejected": HH + " b"}), "empty_answer")
    hh_other = "\n\nHuman: Привет\n\nAssistant: Другое\n\nHuman: Как дела?\n\nAssistant: b"
    detail = rejected_as(pair({"chosen": HH + " a", "rejected": hh_other}), "prompt_mismatch")
    assert "message 2" in detail
    lists = {"chosen": [user("q"), bot("a")], "rejected": [user("other q"), bot("b")]}
    rejected_as(pair(lists), "prompt_mismatch")
    rejected_as(pair({"chosen": [user("q")], "rejected": [user("q"), bot("b")]}), "no_assistant")
    rejected_as(pair({"chosen": [user("q"), bot("a"), user("x")], "rejected": "b"}), "not_alternating")
    broken = "\n\nHuman: q\n\nAssistant: a\n\nAssistant: again\n\nHuman: q2\n\nAssistant:"
    rejected_as(pair({"chosen": broken + " x", "rejected": broken + " y"}), "not_alternating")
    assert "not a preference pair" in rejected_as(pair({"instruction": "q", "output": "a"}), "bad_record")
    rejected_as(pair({"text": "x"}), "unknown_format")


def test_broken_json_line_keeps_the_raw_line(tmp_path):
    good = {"instruction": "q", "output": "a"}
    path = write_jsonl(tmp_path / "b.jsonl", [good, '{"instruction": "q", "out', "", "[1, 2]", good])
    records = list(read_records(path))
    assert [i for i, _, _ in records] == [0, 1, 2, 3]  # the blank line is skipped
    assert isinstance(records[1][2], BadLine) and records[1][2].raw == '{"instruction": "q", "out'
    examples, rejected = read_examples(path)
    assert len(examples) == 2
    assert [(r.reason, r.where, r.record) for r in rejected] == [
        ("bad_record", f"{path}:2", '{"instruction": "q", "out'),
        ("bad_record", f"{path}:4", "[1, 2]"),
    ]
    assert "invalid JSON" in rejected[0].detail and "list" in rejected[1].detail


def test_unknown_format_names_the_keys(tmp_path):
    detail = rejected_as(one({"text": "x", "lang": "ru"}), "unknown_format")
    assert "text, lang" in detail
    detail = rejected_as(one({"instruction": "q", "output": "a"}, fmt="sharegpt"), "bad_record")
    assert "not a sharegpt record" in detail and "instruction, output" in detail
    with pytest.raises(ValueError, match="alpaca, sharegpt, messages, preference, seed"):
        read_examples(tmp_path / "x.jsonl", fmt="chatml")
    with pytest.raises(ValueError, match="preference"):
        read_pairs(tmp_path / "x.jsonl", fmt="alpaca")
    assert set(FORMATS) == {"alpaca", "sharegpt", "messages", "preference", "seed"}


def test_input_errors_name_the_file(tmp_path):
    bad = tmp_path / "latin1.jsonl"
    data = b'{"instruction": "q", "output": "a"}\n{"instruction": "caf\xe9", "output": "a"}\n'
    bad.write_bytes(data)
    with pytest.raises(InputError, match=rf"latin1\.jsonl:2: not valid UTF-8 \(byte {data.index(0xE9)}:"):
        read_examples(bad)
    (tmp_path / "latin1.json").write_bytes(b'[\n{"instruction": "caf\xe9"}]')
    with pytest.raises(InputError, match=r"latin1\.json:2: not valid UTF-8"):
        list(read_records(tmp_path / "latin1.json"))
    (tmp_path / "obj.json").write_text('{"instruction": "q"}', encoding="utf-8")
    with pytest.raises(InputError, match=r"obj\.json: expected a JSON list"):
        list(read_records(tmp_path / "obj.json"))
    with pytest.raises(InputError, match=r"input not found: .*missing\.jsonl"):
        read_examples(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"data\.csv: unsupported input type '\.csv'"):
        read_examples(tmp_path / "data.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"broken\.parquet: cannot read as parquet"):
        read_pairs(tmp_path / "broken.parquet")
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty\.jsonl: no records"):
        read_examples(tmp_path / "empty.jsonl")


def test_every_record_is_used_or_rejected(tmp_path):
    rows = [
        {"instruction": "q", "instances": [{"input": "", "output": "a"}, {"input": "x", "output": "b"}]},
        {"instruction": "q", "output": "a"},
        {"instruction": "q", "output": ""},
        "not json",
        {"text": "x"},
        {"messages": [user("q"), bot("a")]},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"conversations": [{"from": "gpt", "value": "a"}]},
    ]
    path = write_jsonl(tmp_path / "mix.jsonl", rows)
    examples, rejected = read_examples(path)
    used = {e.where for e in examples}
    assert len(examples) == 5 and len(used) == 4
    assert len(used) + len(rejected) == len(rows)
    assert Counter(r.reason for r in rejected) == {
        "empty_answer": 1, "bad_record": 1, "unknown_format": 1, "not_alternating": 1
    }  # fmt: skip
    assert not used & {r.where for r in rejected}
    examples, rejected = read_examples(path, limit=3)
    assert len({e.where for e in examples}) + len(rejected) == 3
    pairs, rejected = read_pairs(path)
    assert len(pairs) + len(rejected) == len(rows) and len(pairs) == 1


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.shared
def test_rulm_seed_tasks(shared):
    examples, rejected = read_examples(shared / "instruct" / "ru_alpaca_seed_tasks.jsonl")
    assert (len(examples), rejected) == (137, [])
    assert len({e.id for e in examples}) == 137
    assert all(e.messages[0]["role"] == "user" and e.messages[-1]["role"] == "assistant" for e in examples)
    assert sum("orig_instruction" in e.meta for e in examples) == 125  # 12 tasks have no English original


@pytest.mark.shared
def test_hh_rlhf_harmless_pairs(shared):
    path = shared / "instruct" / "hh_rlhf_harmless_base_test.jsonl"
    pairs, rejected = read_pairs(path)
    assert len(pairs) + len(rejected) == 2312
    assert Counter(r.reason for r in rejected) == {
        "prompt_mismatch": 5,
        "empty_answer": 4,
        "not_alternating": 4,
    }
    assert len(pairs) == 2299
    assert all(p.prompt and p.prompt[-1]["role"] == "user" and p.chosen != p.rejected for p in pairs)
    assert all(isinstance(r.record, dict) and r.where.startswith(str(path)) for r in rejected)
    examples, rejected = read_examples(path)  # the chosen conversation as SFT data
    assert len({e.where for e in examples}) + len(rejected) == 2312
