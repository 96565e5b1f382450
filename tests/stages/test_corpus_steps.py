"""ParagraphReader + HeuristicFilter through datatrove's LocalPipelineExecutor: input = kept + dropped."""

import gzip
import json
import pickle
from collections import Counter
from pathlib import Path

import pytest
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.writers import JsonlWriter

from vikhr.config import CorpusConfig, DataConfig, FilterConfig
from vikhr.corpus.filters import REASONS, FilterOptions
from vikhr.corpus.readers import ReadOptions, source_inputs
from vikhr.corpus.steps import (
    STAT_KEYS,
    HeuristicFilter,
    ParagraphReader,
    filter_options,
    load_read_stats,
    read_options,
)

RU = [
    "Однажды летом мы пошли на реку, и там было тихо, тепло и очень хорошо.",
    "Коротко.",
    "The quick brown fox jumps over the lazy dog again and again today.",
    "да " * 30,
    "Вечером пришёл сосед и долго рассказывал о своих новых пчёлах и саде.",
]
GUTENBERG = (
    "\ufeffThe Project Gutenberg EBook of Nothing\r\n\r\nThis eBook is for the use of anyone anywhere\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK NOTHING ***\r\n\r\n"
    "Иван Петрович встал рано утром и пошёл гулять по старому парку.\r\n\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK NOTHING ***\r\n\r\nLicence text follows here, long enough.\r\n"
)


def make_inputs(root: Path) -> list:
    (root / "prose").mkdir(parents=True)
    (root / "prose" / "a.txt").write_text("\n\n".join(RU) + "\n", encoding="utf-8")
    (root / "prose" / "b.txt").write_bytes(
        "Мороз и солнце; день чудесный! Ещё ты дремлешь, друг.\n".encode("cp1251")
    )
    (root / "prose" / "pg1.txt").write_bytes(GUTENBERG.encode())
    (root / "prose" / "empty.txt").write_text("")
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in RU[:3]]
    lines.insert(1, '{"text": "сломанная строка')
    (root / "web.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return source_inputs({"books": [root / "prose"], "web": [root / "web.jsonl"]})


def read_jsonl_folder(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            out.extend(json.loads(line) for line in fh)
    return out


@pytest.mark.parametrize(("fallback", "workers"), [("cp1251", 2), ("", 1)])
def test_reader_and_filter_account_for_every_paragraph(tmp_path, fallback, workers):
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    reader = ParagraphReader(
        inputs,
        ReadOptions(paragraph_mode="blank", encoding_fallback=fallback),
        dropped_writer=JsonlWriter(str(out / "dropped"), output_filename="read-${rank}.jsonl.gz"),
        stats_folder=str(out / "stats"),
    )
    heuristics = HeuristicFilter(
        FilterOptions(language="ru", min_chars=20, min_words=3),
        exclusion_writer=JsonlWriter(str(out / "dropped"), output_filename="filter-${rank}.jsonl.gz"),
    )
    pipeline = [reader, heuristics, JsonlWriter(str(out / "kept"))]
    pickle.loads(pickle.dumps(pipeline))  # datatrove ships steps to worker processes
    LocalPipelineExecutor(pipeline, tasks=2, workers=workers, logging_dir=str(out / "logs")).run()

    stats = load_read_stats(out / "stats")
    assert len(list((out / "stats").glob("read-*.json"))) == 2
    kept, dropped = read_jsonl_folder(out / "kept"), read_jsonl_folder(out / "dropped")
    per_source = Counter(d["metadata"]["source"] for d in kept + dropped)
    for source, s in stats.items():
        assert set(s) == set(STAT_KEYS)
        assert s["paragraphs"] + s["bad_records"] == per_source[source], source
    assert stats["books"]["files"] == 4 and stats["web"]["files"] == 1
    assert stats["web"] == {
        "files": 1,
        "documents": 3,
        "paragraphs": 3,
        "chars": sum(map(len, RU[:3])),
        "bad_records": 1,
    }

    ids = [d["id"] for d in kept + dropped]
    assert len(ids) == len(set(ids))
    assert all(d["metadata"].get("reason") for d in dropped)
    reasons = Counter(d["metadata"]["reason"] for d in dropped)
    assert reasons["broken_json"] == 1 and reasons["empty_file"] == 1
    assert reasons["too_short"] == 2 and reasons["wrong_script"] == 2 and reasons["repetitive"] == 1
    assert reasons["boilerplate"] == 5  # Gutenberg header (2), START and END markers, licence
    assert set(reasons) <= set(REASONS) | {"broken_json", "empty_file", "not_utf8"}

    broken = next(d for d in dropped if d["metadata"]["reason"] == "broken_json")
    assert broken["id"] == "web/web.jsonl:2#bad" and broken["text"] == '{"text": "сломанная строка'
    assert broken["metadata"]["line"] == 2 and "web.jsonl:2" in broken["metadata"]["message"]
    by_id = {d["id"]: d for d in kept}
    first = by_id["books/a.txt#0"]
    assert first["text"] == RU[0]
    assert first["metadata"] == {
        "source": "books", "doc": "a.txt", "para": 0, "file": str(tmp_path / "in" / "prose" / "a.txt"), "line": 1,
        "file_index": 0, "seq": 0,
    }  # fmt: skip
    assert by_id["books/a.txt#4"]["metadata"]["line"] == 9
    body = [d for d in kept if d["metadata"]["doc"] == "pg1.txt"]
    assert [d["text"] for d in body] == ["Иван Петрович встал рано утром и пошёл гулять по старому парку."]
    cp1251 = [d for d in kept + dropped if d["metadata"]["doc"] == "b.txt"]
    if fallback:
        assert [d["id"] for d in cp1251] == ["books/b.txt#0"] and cp1251[0]["text"].startswith("Мороз")
    else:
        assert [(d["id"], d["metadata"]["reason"]) for d in cp1251] == [("books/b.txt#bad", "not_utf8")]
        assert "b.txt" in cp1251[0]["metadata"]["message"]


def test_options_from_config():
    opts = read_options(
        DataConfig(text_field="body"), CorpusConfig(paragraph_mode="blank", encoding_fallback="cp1251")
    )
    assert (opts.text_field, opts.paragraph_mode, opts.encoding_fallback, opts.on_bad_record) == (
        "body", "blank", "cp1251", "skip"
    )  # fmt: skip
    f = filter_options(FilterConfig(min_chars=5, boilerplate=False), "en")
    assert (f.language, f.min_chars, f.boilerplate, f.max_top_ngram_share) == ("en", 5, False, 0.4)
    with pytest.raises(ValueError, match="no script known"):
        HeuristicFilter(FilterOptions(language="xx"))
    HeuristicFilter(FilterOptions(language="xx", min_script_share=0))
