import json
import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vikhr.corpus.readers import (
    BadRecord,
    InputError,
    ParagraphRecord,
    ReadOptions,
    ReadReport,
    iter_documents,
    iter_paragraph_records,
    iter_paragraphs,
    source_inputs,
)

SKIP = ReadOptions(on_bad_record="skip")


@pytest.fixture
def caplog(caplog, monkeypatch):
    """caplog that also sees `vikhr` records after `setup_logging` turned propagation off."""
    monkeypatch.setattr(logging.getLogger("vikhr"), "propagate", True)
    return caplog


def records(files, opts=SKIP):
    out = list(iter_paragraph_records(files, opts))
    return [r for r in out if isinstance(r, ParagraphRecord)], [r for r in out if isinstance(r, BadRecord)]


def test_line_and_blank_modes():
    text = "Первая строка\nвторая строка\n\n  \nтретья\n\n\nчетвёртая\n"
    assert list(iter_paragraphs(text, "line")) == [
        (1, "Первая строка"), (2, "вторая строка"), (5, "третья"), (8, "четвёртая")
    ]  # fmt: skip
    assert list(iter_paragraphs(text, "blank")) == [
        (1, "Первая строка\nвторая строка"),
        (5, "третья"),
        (8, "четвёртая"),
    ]
    assert list(iter_paragraphs("a\n  b  \n", "blank")) == [(1, "a\n  b  ")]  # inner newlines and spaces kept
    assert list(iter_paragraphs("", "blank")) == [] and list(iter_paragraphs("\n\n", "line")) == []
    with pytest.raises(ValueError, match="unknown paragraph mode"):
        list(iter_paragraphs("a", "sentence"))
    with pytest.raises(ValueError, match="unknown paragraph mode"):
        ReadOptions(paragraph_mode="sentence")


def test_provenance_of_txt_paragraphs(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a.txt").write_bytes("\ufeffодин\r\n\r\nдва\r\nтри\r\n".encode())
    (tmp_path / "src" / "sub" / "b.txt").write_text("четыре\n", encoding="utf-8")
    (tmp_path / "other.txt").write_text("пять\n\nшесть", encoding="utf-8")
    files = source_inputs({"books": [tmp_path / "src"], "misc": [tmp_path / "other.txt"]})
    assert [(s, f.name, r.name) for s, f, r in files] == [
        ("books", "a.txt", "src"), ("books", "b.txt", "src"), ("misc", "other.txt", tmp_path.name)
    ]  # fmt: skip
    paras, bad = records(files)
    assert bad == []
    got = [(p.text, p.source, p.doc, p.para, p.line, p.file_index, p.seq) for p in paras]
    assert got == [
        ("один", "books", "a.txt", 0, 1, 0, 0),
        ("два", "books", "a.txt", 1, 3, 0, 1),
        ("три", "books", "a.txt", 2, 4, 0, 2),
        ("четыре", "books", "sub/b.txt", 0, 1, 1, 0),
        ("пять", "misc", "other.txt", 0, 1, 2, 0),
        ("шесть", "misc", "other.txt", 1, 3, 2, 1),
    ]
    assert paras[0].file == str(tmp_path / "src" / "a.txt")
    blank, _ = records(files, ReadOptions(paragraph_mode="blank"))
    assert [(p.text, p.line, p.para) for p in blank[:2]] == [("один", 1, 0), ("два\nтри", 3, 1)]
    assert paras[0].metadata() == {
        "source": "books", "doc": "a.txt", "para": 0, "file": paras[0].file, "line": 1, "file_index": 0, "seq": 0
    }  # fmt: skip


def test_provenance_of_jsonl_and_parquet(tmp_path):
    lines = [{"text": "а\nб"}, {"text": "в"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    pq.write_table(pa.table({"text": ["г\n\nд", "е"]}), tmp_path / "e.parquet")
    paras, bad = records(source_inputs({"s": [tmp_path]}))
    assert bad == []
    got = [(p.text, p.doc, p.para, p.line, p.file_index, p.seq) for p in paras]
    assert got == [
        ("а", "d.jsonl:1", 0, 1, 0, 0),
        ("б", "d.jsonl:1", 1, 1, 0, 1),
        ("в", "d.jsonl:2", 0, 2, 0, 2),
        ("г", "e.parquet:1", 0, 1, 1, 0),
        ("д", "e.parquet:1", 1, 1, 1, 1),
        ("е", "e.parquet:2", 0, 2, 1, 2),
    ]


def test_cp1251_file_with_and_without_fallback(tmp_path, caplog):
    bad = tmp_path / "Руслан.txt"
    bad.write_bytes("У лукоморья дуб зелёный;\nЗлатая цепь на дубе том".encode("cp1251"))
    files = [("poems", bad, tmp_path)]
    with caplog.at_level(logging.WARNING, logger="vikhr"):
        paras, errs = records(files, ReadOptions(encoding_fallback="cp1251"))
    assert [p.text for p in paras] == ["У лукоморья дуб зелёный;", "Златая цепь на дубе том"] and errs == []
    assert any("Руслан.txt" in r.getMessage() and "cp1251" in r.getMessage() for r in caplog.records)
    paras, errs = records(files, ReadOptions(on_decode_error="skip"))
    assert paras == [] and len(errs) == 1
    e = errs[0]
    assert (e.reason, e.source, e.doc, e.file, e.file_index) == (
        "not_utf8",
        "poems",
        "Руслан.txt",
        str(bad),
        0,
    )
    assert "line 1" in e.message and "\\x" in e.raw  # undecodable bytes kept, escaped
    with pytest.raises(InputError, match=r"Руслан\.txt: not valid UTF-8"):
        records(files, ReadOptions(on_decode_error="error"))
    with pytest.raises(LookupError):
        ReadOptions(encoding_fallback="no-such-codec")


@pytest.mark.shared
def test_real_cp1251_file_decodes_with_fallback(shared):
    bad = shared / "ru" / "ruslit" / "poems" / "Pushkin" / "Руслан и Людмила.txt"
    paras, errs = records([("p", bad, bad.parent)], ReadOptions(encoding_fallback="cp1251"))
    assert errs == [] and len(paras) > 1000
    assert any("Людмила" in p.text for p in paras)


def test_jsonl_broken_line_in_the_middle(tmp_path, caplog):
    p = tmp_path / "x.jsonl"
    p.write_text(
        '{"text": "один"}\n{"text": broken}\n{"body": "нет поля"}\n{"text": 5}\n\n{"text": "после"}\n',
        encoding="utf-8",
    )
    with p.open("ab") as f:
        f.write('{"text": "в cp1251"}\n'.encode("cp1251") + '{"text": "конец"}\n'.encode())
    with caplog.at_level(logging.WARNING, logger="vikhr"):
        paras, bad = records([("s", p, tmp_path)])
    assert [(x.text, x.doc, x.line) for x in paras] == [
        ("один", "x.jsonl:1", 1),
        ("после", "x.jsonl:6", 6),
        ("конец", "x.jsonl:8", 8),
    ]
    assert [(b.reason, b.line, b.doc) for b in bad] == [
        ("broken_json", 2, "x.jsonl:2"), ("missing_field", 3, "x.jsonl:3"), ("not_string", 4, "x.jsonl:4"),
        ("not_utf8", 7, "x.jsonl:7"),
    ]  # fmt: skip
    assert bad[0].raw == '{"text": broken}' and bad[0].message.startswith(f"{p}:2: invalid JSON")
    assert "found: body" in bad[1].message and "expected a string" in bad[2].message
    assert any("x.jsonl:2" in r.getMessage() for r in caplog.records)
    assert any("4 bad records" in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError, match=r"x\.jsonl:2: invalid JSON"):
        records([("s", p, tmp_path)], ReadOptions(on_bad_record="error"))


def test_parquet_bad_rows_and_missing_column(tmp_path):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"body": ["a"], "id": [1]}), p)
    paras, bad = records([("s", p, tmp_path)])
    assert paras == [] and [(b.reason, b.doc, b.line) for b in bad] == [("missing_column", "x.parquet", None)]
    assert str(p) in bad[0].message and "columns: body, id" in bad[0].message
    with pytest.raises(InputError, match=r"x\.parquet: no column 'text' \(columns: body, id\)"):
        records([("s", p, tmp_path)], ReadOptions(on_bad_record="error"))
    q = tmp_path / "y.parquet"
    pq.write_table(pa.table({"text": pa.array([b"bytes", None, b"x"], pa.binary())}), q)
    paras, bad = records([("s", q, tmp_path)])
    assert [(b.reason, b.doc) for b in bad] == [
        ("not_string", "y.parquet:1"),
        ("null_text", "y.parquet:2"),
        ("not_string", "y.parquet:3"),
    ]
    with pytest.raises(InputError, match=r"y\.parquet: row 1: column 'text' is not text"):
        records([("s", q, tmp_path)], ReadOptions(on_bad_record="error"))
    (tmp_path / "z.parquet").write_bytes(b"not parquet")
    _, bad = records([("s", tmp_path / "z.parquet", tmp_path)])
    assert bad[0].reason == "unreadable"


def test_empty_files_are_recorded_not_errors(tmp_path):
    (tmp_path / "a.txt").write_text(" \n\n")
    (tmp_path / "b.jsonl").write_text("")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "c.parquet")
    files = source_inputs({"s": [tmp_path]})
    for opts in (SKIP, ReadOptions(on_bad_record="error", on_decode_error="error")):
        paras, bad = records(files, opts)
        assert paras == [] and [(b.reason, b.doc) for b in bad] == [
            ("empty_file", "a.txt"), ("empty_file", "b.jsonl"), ("empty_file", "c.parquet")
        ]  # fmt: skip
    rep = ReadReport()
    assert list(iter_documents([tmp_path], report=rep)) == []
    assert rep.files == 3 and len(rep.skipped) == 3 and "empty file" in rep.skipped[0]["reason"]


def test_gutenberg_header_and_footer_are_marked(tmp_path):
    text = (
        "\ufeffThe Project Gutenberg EBook of X\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n\r\n"
        "Chapter 1\r\n\r\nIt was a dark night.\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\n\r\nLicence\r\n"
    )
    (tmp_path / "pg1.txt").write_bytes(text.encode())
    paras, _ = records([("en", tmp_path / "pg1.txt", tmp_path)])
    assert [(p.text, p.boilerplate) for p in paras] == [
        ("The Project Gutenberg EBook of X", True),
        ("*** START OF THIS PROJECT GUTENBERG EBOOK X ***", True),
        ("Chapter 1", False),
        ("It was a dark night.", False),
        ("*** END OF THIS PROJECT GUTENBERG EBOOK X ***", True),
        ("Licence", True),
    ]
    assert paras[0].metadata()["boilerplate"] is True and "boilerplate" not in paras[2].metadata()
    paras, _ = records([("en", tmp_path / "pg1.txt", tmp_path)], ReadOptions(gutenberg=False))
    assert not any(p.boilerplate for p in paras)


def test_duplicate_inputs_are_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("a")
    (tmp_path / "b" / "x.txt").write_text("b")
    with pytest.raises(InputError, match="listed twice"):
        source_inputs({"s": [tmp_path / "a"], "t": [tmp_path / "a" / "x.txt"]})
    with pytest.raises(InputError, match="same document key 'x.txt'"):
        source_inputs({"s": [tmp_path / "a", tmp_path / "b"]})
    assert len(source_inputs({"s": [tmp_path / "a"], "t": [tmp_path / "b"]})) == 2


def test_a_100mb_line_reads_in_linear_time(tmp_path):
    big = "word " * 20_000_000
    p = tmp_path / "big.jsonl"
    with p.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"text": big}) + "\n" + json.dumps({"text": "small"}) + "\n")
    t = time.perf_counter()
    paras, bad = records([("s", p, tmp_path)], ReadOptions(paragraph_mode="blank"))
    assert [len(x.text) for x in paras] == [len(big), 5] and bad == []
    assert time.perf_counter() - t < 10
