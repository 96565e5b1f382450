"""Corpus stage: read the target-language sources, split paragraphs, filter, deduplicate, score, write shards.

Runs as a chain of datatrove pipelines (local processes by default, Ray with `corpus.executor`):
1. read + split + heuristic filters (one task per input file, up to 64), bad records and filtered paragraphs
   written with their reason;
2. exact and MinHash-LSH near-duplicate removal across the whole corpus (`vikhr.corpus.dedup`), every removed
   paragraph written with the id of the paragraph it duplicates;
3. optionally the quality classifier (`vikhr corpus annotate` trains it) scoring every kept paragraph;
then, in this process and streaming, documents are re-assembled from their kept paragraphs (or paragraphs kept as
they are), written as parquet shards, and the per-source table (the paper's Table 2) is computed and checked:
input = kept + dropped for every source.

Output folder `corpus/`:
  data/part-NNNNN.parquet    kept text: id, source, doc, text, paragraphs, chars (+ quality)
  dropped/part-NNNNN.parquet every dropped paragraph or bad record: id, source, doc, para, reason, duplicate_of,
                             text, file, line
  stats.json, table.md       per source: documents, paragraphs, characters, bytes, tokens; kept / dropped by reason
  logs/                      datatrove's logs and stats, one folder per pipeline

The chain works in `<run_dir>/corpus.work/` (outside the staged output, so an interruption keeps it): a rerun with
the same settings and inputs skips the datatrove tasks already completed there; other settings or inputs, or
`--force`, start fresh. The work folder is removed once the output is in place.
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from vikhr.config import Config, resolve_path, to_dict
from vikhr.corpus.engine import ExecutorOptions, auto_tasks, make_executor
from vikhr.corpus.readers import InputError, source_inputs
from vikhr.log import get_logger
from vikhr.manifest import StageRecord, path_fingerprint
from vikhr.rundir import RunDir, keyed_work

log = get_logger(__name__)

NAME = "corpus"
VERSION = 1
DEPENDS: tuple[str, ...] = ()
"""Stages whose output this one reads: it reruns when one of them does."""

DATA_COLUMNS = ("id", "source", "doc", "text", "paragraphs", "chars")
SMALL_CORPUS_BYTES = 32 << 20
"""Below this much input the local executor runs tasks in-process (no worker start-up) unless `corpus.workers`."""
MAX_COUNTED_CHARS = 1_000_000
"""Dropped items longer than this are not tokenized for the table (their characters are reported instead)."""
DROPPED_COLUMNS = ("id", "source", "doc", "para", "reason", "duplicate_of", "text", "file", "line")


def sources(cfg: Config) -> dict[str, list[str]]:
    """Named sources: `corpus.sources`, else one per `data.target` entry named after its last path part."""
    if cfg.corpus.sources:
        return {k: list(v) for k, v in cfg.corpus.sources.items()}
    out: dict[str, list[str]] = {}
    for spec in cfg.data.target:
        name = Path(str(spec).removeprefix("bundled:")).name or str(spec)
        while name in out:
            name += "_"
        out[name] = [spec]
    return out


def input_files(cfg: Config) -> list[tuple[str, Path, Path]]:
    """(source, file, the folder ids are relative to) for every input file, sources in config order."""
    return source_inputs(sources(cfg), resolve_path(cfg, "."))


def run(cfg: Config, rundir: RunDir) -> StageRecord:
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from vikhr.corpus.dedup import run_dedup
    from vikhr.corpus.steps import (
        HeuristicFilter,
        ParagraphReader,
        filter_options,
        load_read_stats,
        read_options,
    )

    c = cfg.corpus
    record = StageRecord(name=NAME, started=time.time())
    files = input_files(cfg)
    tasks = auto_tasks(len(files), c.tasks)
    # A small corpus runs its tasks one after another in this process: starting worker processes costs more.
    small = sum(f.stat().st_size for _, f, _ in files) < SMALL_CORPUS_BYTES
    workers = c.workers or (1 if small and c.executor == "local" else 0)
    timings: dict[str, float] = {}
    work = rundir.work_dir(NAME)
    keyed_work(work, work_key(cfg))  # datatrove skips the tasks completed there
    opts = ExecutorOptions(c.executor, work / "logs", workers, dict(c.executor_options))
    t0 = time.perf_counter()
    read = [
        ParagraphReader(files, read_options(cfg.data, c), stats_folder=str(work / "stats"),
                        dropped_writer=JsonlWriter(str(work / "dropped" / "read"))),
        HeuristicFilter(filter_options(c.filters, cfg.language),
                        exclusion_writer=JsonlWriter(str(work / "dropped" / "filters"))),
        JsonlWriter(str(work / "paragraphs")),
    ]  # fmt: skip
    if not c.filtering:  # the unfiltered baseline: every paragraph read is kept
        read.pop(1)
    make_executor(read, name="read", tasks=tasks, opts=opts).run()
    timings["read_filter_s"] = time.perf_counter() - t0
    read_stats = load_read_stats(work / "stats")
    if not any(v["paragraphs"] for v in read_stats.values()):
        raise InputError(_nothing_read(work / "dropped" / "read", files))

    if c.filtering:
        t0 = time.perf_counter()
        dedup = run_dedup(
            work / "paragraphs", work / "deduped", work / "dropped" / "dedup", work / "dedup",
            opts=c.dedup, executor=opts, tasks=tasks,
        )  # fmt: skip
        timings["dedup_s"] = time.perf_counter() - t0
        kept_dir = work / "deduped"
    else:
        dedup = {"skipped": "corpus.filtering is off"}
        kept_dir = work / "paragraphs"

    if c.quality.filter and c.filtering:
        from vikhr.corpus.steps_quality import QualityScorer

        t0 = time.perf_counter()
        scorer = [
            JsonlReader(str(kept_dir)),
            QualityScorer(str(classifier_dir(cfg)), threshold=c.quality.threshold,
                          exclusion_writer=JsonlWriter(str(work / "dropped" / "quality"))),
            JsonlWriter(str(work / "scored")),
        ]  # fmt: skip
        make_executor(scorer, name="quality", tasks=tasks, opts=opts).run()
        kept_dir = work / "scored"
        timings["quality_s"] = time.perf_counter() - t0

    with rundir.staging(NAME) as out:
        t0 = time.perf_counter()
        counter = _token_counter(cfg)
        stats = _new_stats(read_stats, list(sources(cfg)))
        _write_kept(kept_dir, out / "data", c.output_unit, c.shard_rows, stats, counter)
        _write_dropped(work / "dropped", out / "dropped", c.shard_rows, stats, counter)
        timings["assemble_s"] = time.perf_counter() - t0
        _check_balance(stats)
        summary = {"sources": stats, "dedup": dedup, "timings": {k: round(v, 1) for k, v in timings.items()},
                   "tokenizer": counter.name, "output_unit": c.output_unit}  # fmt: skip
        (out / "stats.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
        (out / "table.md").write_text(table_markdown(stats, counter.name), encoding="utf-8")
        shutil.copytree(work / "logs", out / "logs")  # datatrove's logs and stats per step, with the output
        log.info("corpus table:\n%s", table_markdown(stats, counter.name))
    rundir.clear_work(NAME)

    total = _totals(stats)
    record.metrics = total | {"timings": summary["timings"]}
    record.outputs = {"data": "corpus/data", "dropped": "corpus/dropped", "table": "corpus/table.md"}
    return record


# ---- the work folder: datatrove's intermediate files and completion markers, kept across interruptions ----------

UNKEYED = ("workers", "executor_options", "count_tokenizer", "shard_rows", "output_unit")
"""`corpus` settings that do not change what the datatrove chain computes (how many tasks run at once, how the
in-process assembly counts and shards): changing them resumes the work folder instead of starting over."""


def work_key(cfg: Config) -> dict:
    """What the work folder's files were computed from: the stage's settings and input fingerprints."""
    section = config_section(cfg)
    section["corpus"] = {k: v for k, v in section["corpus"].items() if k not in UNKEYED}
    section.pop("source_model")  # only names the tokenizer that counts Table 2's tokens
    return {"version": VERSION, "config": section, "inputs": inputs(cfg)}


def _nothing_read(bad_folder: Path, files: list[tuple[str, Path, Path]]) -> str:
    """The error when no input gave a paragraph: every file with what went wrong with it."""
    why = {}
    for d in iter_docs(bad_folder):
        m = d.get("metadata", {})
        why.setdefault(m.get("file"), m.get("reason"))
    listed = "; ".join(f"{f} ({why.get(str(f), 'no text')})" for _, f, _ in files[:10])
    more = f" and {len(files) - 10} more" if len(files) > 10 else ""
    return f"no text in the corpus inputs: {listed}{more}"


def classifier_dir(cfg: Config) -> Path:
    """The trained quality classifier: `corpus.quality.classifier`, else `<run_dir>/quality/classifier`."""
    q = cfg.corpus.quality.classifier
    return resolve_path(cfg, q) if q else resolve_path(cfg, cfg.run_dir) / "quality" / "classifier"


# ---- reading the datatrove outputs back -------------------------------------------------------------------------


def iter_docs(folder: Path) -> Iterator[dict]:
    """Documents written by datatrove's JsonlWriter under `folder`, file by file, in file order."""
    for f in sorted(Path(folder).rglob("*.jsonl*")):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


class _TokenCounter:
    def __init__(self, tokenizer, name: str) -> None:
        self.tokenizer, self.name = tokenizer, name

    def __call__(self, texts: list[str]) -> int:
        if not texts or self.tokenizer is None:
            return 0
        enc = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return sum(len(x) for x in enc)


def _token_counter(cfg: Config) -> _TokenCounter:
    """Counts Table 2's tokens: `corpus.count_tokenizer`, else the source model's tokenizer (none: 0 tokens)."""
    from transformers import AutoTokenizer

    from vikhr.models import resolve_model

    spec = cfg.corpus.count_tokenizer or cfg.source_model
    if not spec:
        return _TokenCounter(None, "no tokenizer")
    local = resolve_path(cfg, spec)
    # a local folder only needs tokenizer files; an alias is imported, a hub id passed on
    path = str(local) if local.is_dir() else resolve_model(spec)
    if local.is_dir() and not any((local / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        key = "corpus.count_tokenizer" if cfg.corpus.count_tokenizer else "source_model"
        raise FileNotFoundError(
            f"{key}: {local} has no tokenizer files (tokenizer.json, tokenizer_config.json)"
        )
    tok = AutoTokenizer.from_pretrained(path)
    tok.model_max_length = 1 << 40  # counting only: no "sequence too long" warnings
    return _TokenCounter(tok, spec)


def _new_stats(read_stats: dict[str, dict[str, int]], names: list[str]) -> dict[str, dict]:
    """Per source: what the readers saw (summed over tasks), and zeroed kept / dropped tallies."""
    stats = {n: _empty() for n in names}
    for src, counts in read_stats.items():
        stats.setdefault(src, _empty())["input"].update(counts)
    return stats


def _empty() -> dict:
    return {"input": Counter(), "kept": Counter(), "dropped": Counter(), "dropped_chars": Counter(),
            "dropped_tokens": 0, "dropped_bytes": 0, "dropped_uncounted_chars": 0}  # fmt: skip


class _Shards:
    """Rows buffered and written as parquet shards of `rows` rows."""

    def __init__(self, folder: Path, columns: tuple[str, ...], rows: int) -> None:
        self.folder, self.columns, self.rows = folder, columns, rows
        self.buf: list[dict] = []
        self.n = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        self.buf.append(row)
        if len(self.buf) >= self.rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buf and self.n:
            return
        cols = {c: [r.get(c) for r in self.buf] for c in self.columns}
        extra = sorted({k for r in self.buf for k in r} - set(self.columns))
        cols.update({k: [r.get(k) for r in self.buf] for k in extra})
        pq.write_table(pa.table(cols), self.folder / f"part-{self.n:05d}.parquet")
        self.n += 1
        self.buf = []


def _write_kept(folder: Path, dest: Path, unit: str, rows: int, stats: dict, count) -> None:
    """Kept paragraphs -> shards of documents (paragraphs of a document joined in order) or of paragraphs."""
    shards = _Shards(dest, DATA_COLUMNS, rows)
    pending: list[dict] = []

    def emit(paras: list[dict]) -> None:
        paras.sort(key=lambda d: d["metadata"]["seq"])
        m = paras[0]["metadata"]
        st = stats[m["source"]]
        texts = [p["text"] for p in paras]
        tokens = count(texts)
        st["kept"].update(paragraphs=len(paras), chars=sum(map(len, texts)), tokens=tokens,
                          bytes=sum(len(t.encode()) for t in texts), documents=1)  # fmt: skip
        if unit == "document":
            row = {"id": f"{m['source']}/{m['doc']}", "source": m["source"], "doc": m["doc"],
                   "text": "\n".join(texts), "paragraphs": len(paras), "chars": sum(map(len, texts)) + len(texts) - 1}  # fmt: skip
            if "quality" in m:
                row["quality"] = sum(p["metadata"]["quality"] for p in paras) / len(paras)
            shards.add(row)
        else:
            for p in paras:
                pm = p["metadata"]
                row = {"id": p["id"], "source": pm["source"], "doc": pm["doc"], "text": p["text"],
                       "paragraphs": 1, "chars": len(p["text"]), "para": pm["para"]}  # fmt: skip
                if "quality" in pm:
                    row["quality"] = pm["quality"]
                shards.add(row)

    key = None
    for d in iter_docs(folder):
        m = d["metadata"]
        k = (m["file_index"], m["doc"])
        if key is not None and k != key:
            emit(pending)
            pending = []
        key = k
        pending.append(d)
    if pending:
        emit(pending)
    shards.flush()


def _write_dropped(folder: Path, dest: Path, rows: int, stats: dict, count) -> None:
    """Every dropped paragraph and bad record -> shards, tallied per source and reason (tokens counted too)."""
    shards = _Shards(dest, DROPPED_COLUMNS, rows)
    batches: dict[str, list[str]] = defaultdict(list)
    for d in iter_docs(folder):
        m = d.get("metadata", {})
        src = m.get("source", "?")
        reason = m.get("reason") or m.get("filter_reason") or "unknown"
        text = d.get("text") or ""
        st = stats.setdefault(src, _empty())
        st["dropped"][reason] += 1
        st["dropped_chars"][reason] += len(text)
        st["dropped_bytes"] += len(text.encode())
        if len(text) <= MAX_COUNTED_CHARS:
            batches[src].append(text)
        else:  # a huge dropped item (too_long): tokenizing it would cost minutes and say nothing
            st["dropped_uncounted_chars"] += len(text)
        if len(batches[src]) >= 1000:
            st["dropped_tokens"] += count(batches.pop(src))
        shards.add({"id": d.get("id"), "source": src, "doc": m.get("doc"), "para": m.get("para"), "reason": reason,
                    "duplicate_of": m.get("duplicate_of"), "text": text, "file": m.get("file"),
                    "line": m.get("line")})  # fmt: skip
    for src, texts in batches.items():
        stats[src]["dropped_tokens"] += count(texts)
    shards.flush()


def _check_balance(stats: dict) -> None:
    """input = kept + dropped per source (paragraphs plus bad records), or a RuntimeError naming the source."""
    for src, st in stats.items():
        seen = st["input"]["paragraphs"] + st["input"]["bad_records"]
        accounted = st["kept"]["paragraphs"] + sum(st["dropped"].values())
        line = (
            f"{src}: input {seen} = kept {st['kept']['paragraphs']} + dropped {sum(st['dropped'].values())}"
        )
        if seen != accounted:
            raise RuntimeError(f"corpus accounting does not add up: {line} (difference {seen - accounted})")
        log.info("%s  ✓", line)


def _totals(stats: dict) -> dict:
    t = Counter()
    for st in stats.values():
        t["input_paragraphs"] += st["input"]["paragraphs"]
        t["input_chars"] += st["input"]["chars"]
        t["kept_paragraphs"] += st["kept"]["paragraphs"]
        t["kept_documents"] += st["kept"]["documents"]
        t["kept_chars"] += st["kept"]["chars"]
        t["kept_tokens"] += st["kept"]["tokens"]
        for r, n in st["dropped"].items():
            t[f"dropped_{r}"] += n
    return dict(t)


def table_markdown(stats: dict, tokenizer: str) -> str:
    """The paper's Table 2 for this corpus: per source, what came in, what was kept, and why the rest went."""
    reasons = sorted({r for st in stats.values() for r in st["dropped"]})
    head = ["source", "documents", "paragraphs", "characters", "MB", "tokens", "kept documents",
            "kept paragraphs", "kept characters", "kept MB", "kept tokens", "kept %", *(f"dropped: {r}" for r in reasons)]  # fmt: skip
    lines = [f"Tokens counted with {tokenizer}. Input = kept + dropped (paragraphs, plus unreadable records).", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]  # fmt: skip
    for src, st in stats.items():
        i, k = st["input"], st["kept"]
        tokens = k["tokens"] + st["dropped_tokens"]
        mb_in = (k["bytes"] + st["dropped_bytes"]) / 1e6
        pct = 100 * k["paragraphs"] / max(1, i["paragraphs"] + i["bad_records"])
        row = [src, i["documents"], i["paragraphs"], i["chars"], f"{mb_in:.1f}", tokens,
               k["documents"], k["paragraphs"], k["chars"], f"{k['bytes'] / 1e6:.1f}", k["tokens"], f"{pct:.1f}",
               *(st["dropped"].get(r, 0) for r in reasons)]  # fmt: skip
        lines.append("| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def annotate(cfg: Config, rundir: RunDir) -> dict:
    """`vikhr corpus annotate`: judge a sample of the kept corpus with the LLM, train the quality classifier."""
    import random

    import pyarrow.parquet as pq

    from vikhr.corpus.quality import annotate_and_train
    from vikhr.llm import LLMClient

    data = rundir.stage_dir(NAME) / "data"
    if not rundir.is_done(NAME) or not data.is_dir():
        raise InputError(f"no corpus in {rundir.stage_dir(NAME)}: run `vikhr corpus -c FILE` first")
    q = cfg.corpus.quality
    rng = random.Random(q.seed)
    sample: list[tuple[str, str]] = []
    seen = 0
    for f in sorted(data.glob("*.parquet")):  # reservoir sample: memory bounded by the sample
        for batch in pq.ParquetFile(f).iter_batches(columns=["id", "text"], batch_size=4096):
            for rid, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                seen += 1
                if len(sample) < q.annotate_items:
                    sample.append((rid, text))
                elif (j := rng.randrange(seen)) < q.annotate_items:
                    sample[j] = (rid, text)
    if not sample:
        raise InputError(f"{data}: the corpus has no kept text to annotate")
    out = resolve_path(cfg, cfg.run_dir) / "quality"
    log.info("judging %d of %d items with the LLM; results in %s", len(sample), seen, out)
    with LLMClient.from_config(cfg) as client:
        return annotate_and_train(sample, client, out, q)


def inputs(cfg: Config) -> dict:
    out = {f"{s}:{f}": path_fingerprint(f) for s, f, _ in input_files(cfg)}
    if cfg.corpus.quality.filter:
        out["classifier"] = path_fingerprint(classifier_dir(cfg))
    return out


def config_section(cfg: Config) -> dict:
    return {"corpus": to_dict(cfg.corpus), "language": cfg.language, "data": to_dict(cfg.data),
            "source_model": cfg.source_model}  # fmt: skip
