"""datatrove pipeline steps of the corpus stage: read paragraphs with provenance, apply the heuristic filters.

`ParagraphReader` turns (source, file, spec root) inputs into one datatrove `Document` per paragraph, writes every
bad record to its `dropped_writer` and the per-task input counts to `<stats_folder>/read-NNNNN.json`.
`HeuristicFilter` drops paragraphs with `filters.check` and puts the reason in `metadata["reason"]`. Both are
picklable (plain values and datatrove writers only), as datatrove's worker processes need.

Metadata of a paragraph: source, doc, para, file, line, file_index, seq (and `boilerplate: True` outside a Project
Gutenberg START/END pair); its id is `{source}/{doc}#{para}`. A bad record is written with the provenance that is
known, `reason` and `message`, its raw content as text, and the id `{source}/{doc}#bad`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from vikhr.config import CorpusConfig, DataConfig, FilterConfig
from vikhr.corpus.filters import FilterOptions, check, script_pattern
from vikhr.corpus.readers import BadRecord, ReadOptions, read_paragraphs

STAT_KEYS = ("files", "documents", "paragraphs", "chars", "bad_records")
"""Per-source counts in `read-NNNNN.json`: input = paragraphs + bad_records."""


def read_options(data: DataConfig, corpus: CorpusConfig) -> ReadOptions:
    """The reader's options from the config."""
    return ReadOptions(
        paragraph_mode=corpus.paragraph_mode,
        text_field=data.text_field,
        encoding_fallback=corpus.encoding_fallback,
        on_decode_error=data.on_decode_error,
        on_bad_record=corpus.on_bad_record,
    )


def filter_options(filters: FilterConfig, language: str) -> FilterOptions:
    """The heuristic filters' thresholds from the config (the same field names) and the target language."""
    return FilterOptions(language=language, **dataclasses.asdict(filters))


def bad_record_document(bad: BadRecord) -> Document:
    """A bad record as a datatrove Document for the dropped output: raw content, provenance, reason."""
    return Document(text=bad.raw, id=f"{bad.source}/{bad.doc}#bad", metadata=bad.metadata())


def load_read_stats(stats_folder: str | Path) -> dict[str, dict[str, int]]:
    """Per-source input counts summed over every task's `read-NNNNN.json`."""
    total: dict[str, dict[str, int]] = {}
    for f in sorted(Path(stats_folder).glob("read-*.json")):
        for source, counts in json.loads(f.read_text(encoding="utf-8")).items():
            acc = total.setdefault(source, dict.fromkeys(STAT_KEYS, 0))
            for k, v in counts.items():
                acc[k] = acc.get(k, 0) + v
    return total


class ParagraphReader(PipelineStep):
    """Reads files[rank::world_size] of the inputs into one Document per paragraph; bad records go to
    `dropped_writer`, per-source input counts to `<stats_folder>/read-{rank:05d}.json`."""

    name = "📖 Paragraphs"
    type = "📖 - READER"

    def __init__(
        self,
        inputs: Sequence[tuple[str, str | Path, str | Path]],
        options: ReadOptions,
        *,
        dropped_writer: DiskWriter,
        stats_folder: DataFolderLike,
    ) -> None:
        super().__init__()
        self.inputs = [(str(s), str(f), str(r)) for s, f, r in inputs]
        self.options = options
        self.dropped_writer = dropped_writer
        self.stats_folder = get_datafolder(stats_folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        counts = {s: dict.fromkeys(STAT_KEYS, 0) for s, _, _ in self.inputs}
        with self.dropped_writer as dropped:
            for i in range(rank, len(self.inputs), world_size):
                source, file, root = self.inputs[i]
                c = counts[source]
                c["files"] += 1
                self.stat_update("files")
                for rec in read_paragraphs(source, Path(file), Path(root), i, self.options):
                    if isinstance(rec, BadRecord):
                        c["bad_records"] += 1
                        self.stat_update("bad_records", f"bad_{rec.reason}")
                        dropped.write(bad_record_document(rec), rank)
                        continue
                    c["paragraphs"] += 1
                    c["chars"] += len(rec.text)
                    if rec.para == 0:
                        c["documents"] += 1
                        self.stat_update("documents")
                    doc = Document(
                        text=rec.text, id=f"{source}/{rec.doc}#{rec.para}", metadata=rec.metadata()
                    )
                    self.stat_update("paragraphs")
                    self.update_doc_stats(doc)
                    yield doc
        with self.stats_folder.open(f"read-{rank:05d}.json", "w") as f:
            json.dump(counts, f, indent=1, ensure_ascii=False)


class HeuristicFilter(BaseFilter):
    """Drops paragraphs that fail `filters.check` (or are marked Gutenberg boilerplate), reason in metadata."""

    name = "🧹 Heuristics"

    def __init__(self, options: FilterOptions, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        if options.min_script_share > 0:
            script_pattern(options.language)  # an unknown language fails here, not in a worker
        self.options = options

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.options.boilerplate and doc.metadata.get("boilerplate"):
            reason = "boilerplate"
        else:
            reason = check(doc.text, self.options)
        if reason is None:
            return True
        doc.metadata["reason"] = reason
        return False, reason
