"""The corpus stage end to end on small real inputs, with the bad inputs the issue names."""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vikhr import pipeline
from vikhr.config import ConfigError, load_config
from vikhr.corpus.engine import ExecutorOptions, make_executor
from vikhr.corpus.readers import InputError
from vikhr.paths import BUNDLED_DATA


def chekhov_paragraphs(n: int) -> list[str]:
    out = []
    for f in sorted((BUNDLED_DATA / "ru" / "chekhov").glob("*.txt")):
        out += [x for x in f.read_text(encoding="utf-8").splitlines() if len(x.split()) >= 12]
        if len(out) >= n:
            return out[:n]
    return out


def edit(text: str, rng: random.Random) -> str:
    words = text.split()
    words[rng.randrange(len(words))] = "слово"
    return " ".join(words)


@pytest.fixture
def corpus_dir(tmp_path, tiny_smollm):
    rng = random.Random(0)
    paras = chekhov_paragraphs(60)
    books = tmp_path / "in" / "books"
    books.mkdir(parents=True)
    (books / "a.txt").write_text("\n".join(paras[:30]) + "\n", encoding="utf-8")
    # b.txt: an exact copy, a near copy (one word changed), fresh text, a line in Latin script, BOM + CRLF
    b = [paras[0], edit(paras[1], rng), *paras[30:40], "This paragraph is written in English, not Russian."]
    (books / "b.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(b).encode() + b"\r\n")
    (books / "cp1251.txt").write_bytes("\n".join(paras[40:45]).encode("cp1251"))
    (books / "empty.txt").write_bytes(b"")
    news = tmp_path / "in" / "news"
    news.mkdir()
    lines = [json.dumps({"text": p}, ensure_ascii=False) for p in paras[45:50]]
    lines.insert(2, '{"text": "broken')
    (news / "n.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"body": paras[50:55]}), news / "no_text_column.parquet")
    tok = tiny_smollm  # counts Table 2's tokens
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"run_dir: run\nsource_model: {tiny_smollm}\n"
        "corpus:\n  sources: {books: [in/books], news: [in/news]}\n  encoding_fallback: cp1251\n"
        f"  count_tokenizer: {tok}\n  workers: 1\n",
        encoding="utf-8",
    )
    return tmp_path, cfg


def test_corpus_stage_accounts_for_everything(corpus_dir):
    root, cfg_path = corpus_dir
    cfg = load_config(cfg_path)
    from vikhr.stages import corpus

    rundir = pipeline.open_rundir(cfg)
    record = corpus.run(cfg, rundir)
    out = root / "run" / "corpus"
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))["sources"]
    dropped = pq.read_table(out / "dropped").to_pylist()
    kept = pq.read_table(out / "data").to_pylist()
    for src in ("books", "news"):
        s = stats[src]
        n_dropped = sum(1 for d in dropped if d["source"] == src)
        assert s["input"]["paragraphs"] + s["input"]["bad_records"] == s["kept"]["paragraphs"] + n_dropped
    reasons = {d["reason"] for d in dropped}
    assert {
        "exact_duplicate",
        "near_duplicate",
        "wrong_script",
        "broken_json",
        "missing_column",
        "empty_file",
    } <= reasons
    exact = next(d for d in dropped if d["reason"] == "exact_duplicate")
    near = next(d for d in dropped if d["reason"] == "near_duplicate")
    assert exact["duplicate_of"] == "books/a.txt#0" and near["duplicate_of"] == "books/a.txt#1"
    assert exact["doc"] == "b.txt" and exact["line"] == 1
    broken = next(d for d in dropped if d["reason"] == "broken_json")
    assert broken["line"] == 3 and broken["text"] == '{"text": "broken'
    # documents re-assembled from kept paragraphs, in order; the cp1251 file decoded, the jsonl lines after the bad one kept
    docs = {d["id"]: d for d in kept}
    a = docs["books/a.txt"]["text"].split("\n")
    assert a == chekhov_paragraphs(60)[:30]
    assert "books/cp1251.txt" in docs and docs["books/cp1251.txt"]["paragraphs"] == 5
    assert sum(1 for d in kept if d["source"] == "news") == 5
    assert (
        record.metrics["kept_tokens"] > 0
        and (out / "table.md").read_text(encoding="utf-8").count("| books |") == 1
    )


def test_tokenizer_stage_reads_the_corpus_output(corpus_dir):
    root, cfg_path = corpus_dir
    cfg = load_config(
        cfg_path, ["tokenizer.vocab_size=400", "data.extra=[]", "tokenizer.report_tokenizers=[]"]
    )
    pipeline.run(cfg, stop="tokenizer")
    stats = json.loads((root / "run" / "tokenizer" / "stats.json").read_text(encoding="utf-8"))
    assert stats["training_text"]["target_source"].endswith("corpus/data")


def test_strict_modes_stop_with_file_and_line(corpus_dir):
    root, cfg_path = corpus_dir
    cfg = load_config(cfg_path, ["corpus.on_bad_record=error"])
    from vikhr.stages import corpus

    with pytest.raises(Exception, match=r"n\.jsonl:3"):
        corpus.run(cfg, pipeline.open_rundir(cfg))
    assert not (root / "run" / "corpus").exists()  # nothing finished-looking left behind


def test_annotate_without_an_endpoint_is_a_clear_error(corpus_dir, capsys):
    root, cfg_path = corpus_dir
    from vikhr.cli import main

    assert main(["corpus", "-c", str(cfg_path)]) == 0
    rc = main(["corpus", "annotate", "-c", str(cfg_path), "llm.base_url=http://127.0.0.1:9/v1",
               "llm.model=judge", "llm.max_retries=0", f"llm.cache_dir={root / 'cache'}"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot reach the LLM endpoint http://127.0.0.1:9/v1" in err and "vikhr serve" in err


def test_unknown_source_input_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("corpus:\n  sources: {x: [nowhere]}\n", encoding="utf-8")
    from vikhr.stages import corpus

    with pytest.raises(InputError, match="nowhere"):
        corpus.input_files(load_config(cfg))


@pytest.mark.slow
def test_a_single_100mb_line_is_dropped_as_too_long_and_kept_in_dropped(tmp_path, tiny_smollm):
    src = tmp_path / "in"
    src.mkdir()
    line = ("слово " * 17_000_000)[:100_000_000]
    (src / "huge.txt").write_text(
        line + "\nОбычный абзац текста, который нужно оставить.\n", encoding="utf-8"
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"run_dir: run\nsource_model: {tiny_smollm}\ncorpus:\n  sources: {{s: [in]}}\n", encoding="utf-8"
    )
    from vikhr.stages import corpus

    c = load_config(cfg)
    corpus.run(c, pipeline.open_rundir(c))
    dropped = pq.read_table(tmp_path / "run" / "corpus" / "dropped").to_pylist()
    assert [(d["reason"], len(d["text"])) for d in dropped] == [("too_long", 100_000_000)]
    kept = pq.read_table(tmp_path / "run" / "corpus" / "data").to_pylist()
    assert [k["paragraphs"] for k in kept] == [1]


@pytest.mark.distributed
def test_ray_executor_with_two_tasks_gives_the_local_result(corpus_dir):
    pytest.importorskip("ray")
    root, cfg_path = corpus_dir
    from vikhr.stages import corpus

    tables = {}
    for kind in ("local", "ray"):
        cfg = load_config(cfg_path, [f"run_dir=run-{kind}", f"corpus.executor={kind}", "corpus.tasks=2"])
        corpus.run(cfg, pipeline.open_rundir(cfg))
        out = root / f"run-{kind}" / "corpus"
        tables[kind] = (
            (out / "table.md").read_text(encoding="utf-8"),
            sorted(r["id"] for r in pq.read_table(out / "dropped").to_pylist()),
        )
    assert tables["local"] == tables["ray"]


def test_quality_filter_drops_low_scores_and_keeps_the_balance(corpus_dir):
    root, cfg_path = corpus_dir
    from vikhr.corpus.quality import train_classifier
    from vikhr.stages import corpus

    good = chekhov_paragraphs(200)[60:200]
    rng = random.Random(1)
    bad = ["".join(rng.sample(p, len(p))) for p in good]  # the same letters, shuffled
    train_classifier(good + bad, ["good"] * len(good) + ["bad"] * len(bad), root / "clf", kind="linear")
    junk = root / "in" / "books" / "junk.txt"
    junk.write_text("\n".join(bad[:5]) + "\n", encoding="utf-8")
    cfg = load_config(cfg_path, ["corpus.quality.filter=true", f"corpus.quality.classifier={root / 'clf'}"])
    corpus.run(cfg, pipeline.open_rundir(cfg))
    out = root / "run" / "corpus"
    dropped = pq.read_table(out / "dropped").to_pylist()
    low = [d for d in dropped if d["reason"] == "low_quality"]
    assert {d["doc"] for d in low} >= {"junk.txt"} and len(low) >= 5
    kept = pq.read_table(out / "data").to_pylist()
    assert all(0 <= k["quality"] <= 1 for k in kept) and "books/junk.txt" not in {k["id"] for k in kept}


def test_slurm_executor_is_rejected_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("corpus:\n  executor: slurm\n", encoding="utf-8")
    # datatrove's Slurm executor submits and returns: the stage would read results that do not exist yet
    with pytest.raises(
        ConfigError, match=r"c\.yaml: `corpus\.executor` must be one of \['local', 'ray'\], got 'slurm'"
    ):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"`corpus\.executor`.*'slurm'"):
        load_config(None, ["corpus.executor=slurm"])
    with pytest.raises(ValueError, match=r"unknown corpus\.executor 'slurm' \(local, ray\)"):
        make_executor([], name="x", tasks=1, opts=ExecutorOptions("slurm", tmp_path))


def test_filtering_off_keeps_every_paragraph_read(corpus_dir):
    """The unfiltered arm of Table 8: no heuristic filter, no dedup; only unreadable records are dropped."""
    root, cfg_path = corpus_dir
    cfg = load_config(cfg_path, ["corpus.filtering=false"])
    from vikhr.stages import corpus

    corpus.run(cfg, pipeline.open_rundir(cfg))
    out = root / "run" / "corpus"
    reasons = {d["reason"] for d in pq.read_table(out / "dropped").to_pylist()}
    assert reasons <= {"broken_json", "missing_column", "empty_file"} and "broken_json" in reasons
    kept = pq.read_table(out / "data").to_pylist()
    b = next(d for d in kept if d["id"] == "books/b.txt")["text"].split("\n")
    assert b[0] == chekhov_paragraphs(60)[0]  # the exact duplicate is kept
    assert b[-1].startswith("This paragraph is written in English")  # and the Latin-script line
