import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vikhr.corpus.readers import (
    InputError,
    ReadReport,
    expand_inputs,
    iter_documents,
    paragraphs,
    sample_paragraphs,
)


def test_txt_jsonl_parquet_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes("\ufeffПервая строка\r\nВторая\r\n".encode())
    (tmp_path / "d" / "b.jsonl").write_text(
        json.dumps({"text": "jsonl текст"}, ensure_ascii=False) + "\n\n" + json.dumps({"text": "два"}) + "\n",
        encoding="utf-8",
    )
    pq.write_table(pa.table({"text": ["p1", None, "p2"], "id": [1, 2, 3]}), tmp_path / "d" / "c.parquet")
    (tmp_path / "d" / "ignored.csv").write_text("x")
    rep = ReadReport()
    docs = list(iter_documents([tmp_path / "d"], report=rep))
    assert [d.text for d in docs] == ["Первая строка\nВторая\n", "jsonl текст", "два", "p1", "p2"]
    assert docs[2].line == 3 and docs[2].source.endswith("b.jsonl")
    assert rep.files == 3 and rep.documents == 5 and rep.skipped == []


def test_non_utf8_is_skipped_with_a_record_or_an_error(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("ok", encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("строка\nещё".encode("cp1251"))
    rep = ReadReport()
    docs = list(iter_documents([tmp_path], report=rep))
    assert [d.text for d in docs] == ["ok"]
    assert rep.skipped and rep.skipped[0]["path"] == str(bad) and "line 1" in rep.skipped[0]["reason"]
    with pytest.raises(InputError, match=r"bad\.txt: not valid UTF-8"):
        list(iter_documents([bad], on_decode_error="error"))


@pytest.mark.shared
def test_real_non_utf8_file_in_ruslit(shared):
    bad = shared / "ru" / "ruslit" / "poems" / "Pushkin" / "Руслан и Людмила.txt"
    rep = ReadReport()
    assert list(iter_documents([bad], report=rep)) == []
    assert rep.skipped[0]["path"] == str(bad)
    with pytest.raises(InputError, match="Руслан и Людмила.txt"):
        list(iter_documents([bad], on_decode_error="error"))


def test_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "a"}\n{"text": broken}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"x\.jsonl:2: invalid JSON"):
        list(iter_documents([p]))
    p.write_text('{"body": "a"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"x\.jsonl:1: no field 'text' \(found: body\)"):
        list(iter_documents([p]))
    assert [d.text for d in iter_documents([p], text_field="body")] == ["a"]
    p.write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(InputError, match="expected a string"):
        list(iter_documents([p]))


def test_parquet_missing_column(tmp_path):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"body": ["a"]}), p)
    with pytest.raises(InputError, match=r"x\.parquet: no column 'text' \(columns: body\)"):
        list(iter_documents([p]))
    (tmp_path / "y.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot read as parquet"):
        list(iter_documents([tmp_path / "y.parquet"]))


def test_missing_empty_and_unsupported_inputs(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        expand_inputs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder has no"):
        expand_inputs([tmp_path / "empty"])
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(InputError, match="unsupported input type"):
        expand_inputs([tmp_path / "a.csv"])
    with pytest.raises(InputError, match="no bundled data named"):
        expand_inputs(["bundled:xx"])


def test_bundled_data_is_there():
    files = expand_inputs(["bundled:ru", "bundled:en"])
    assert len(files) > 10 and all(f.suffix == ".txt" for f in files)


def test_paragraphs_and_deterministic_sampling():
    assert paragraphs("a\n\n  \n b  c\n") == ["a", " b  c"]
    paras = [f"p{i}" * 10 for i in range(100)]
    a = sample_paragraphs(paras, 200, seed=1)
    assert a == sample_paragraphs(paras, 200, seed=1)
    assert a != sample_paragraphs(paras, 200, seed=2)
    assert 200 <= sum(map(len, a)) < 240
    assert sample_paragraphs(paras, 0, seed=1) == paras


def test_heldout_text_is_bundled_and_not_in_the_training_folders(monkeypatch):
    from vikhr.paths import BUNDLED_DATA
    from vikhr.tokenizer import report

    monkeypatch.setattr(report, "shared_data_dir", lambda: None)
    texts = report.default_texts()
    assert len(texts["ru"]) > 50 and len(texts["en"]) > 50
    training = "\n".join(d.text for d in iter_documents(["bundled:ru", "bundled:en"]))
    assert texts["ru"][5] not in training and texts["en"][5] not in training
    assert not list((BUNDLED_DATA / "ru").rglob("Крыжовник.txt"))
