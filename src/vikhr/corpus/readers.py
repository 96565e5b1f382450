"""Read text from folders, .txt, .jsonl and .parquet files, with errors that name the file and line.

Two views of the same per-file readers (`read_file`):
- `iter_documents` yields whole `Document`s and fills a `ReadReport` (the tokenizer and transplant stages);
- `iter_paragraph_records` yields one `ParagraphRecord` per paragraph with its provenance, and a `BadRecord` for
  anything that could not be read as text (the corpus stage writes those to its dropped output).

A file that is not UTF-8 is decoded with a fallback encoding when one is configured (with a warning naming it),
else it is an error or a recorded `BadRecord`; a broken .jsonl line or parquet row is an error or a `BadRecord`,
and reading goes on with the next line. Nothing is dropped silently. Only one file is held in memory at a time.
"""

from __future__ import annotations

import codecs
import json
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vikhr.corpus.filters import gutenberg_body, has_gutenberg_markers
from vikhr.log import get_logger
from vikhr.paths import BUNDLED_DATA

log = get_logger(__name__)

SUFFIXES = (".txt", ".jsonl", ".parquet")
BUNDLED_PREFIX = "bundled:"
PARAGRAPH_MODES = ("line", "blank")
PARQUET_BATCH_ROWS = 1024


class InputError(ValueError):
    """An input file is missing, unreadable or malformed; the message names it (and the line)."""


@dataclass
class Document:
    text: str
    source: str
    line: int | None = None


@dataclass
class BadRecord:
    """Input that could not be read as text: where it is, why (`reason`), and its raw content, so nothing is lost.

    Reasons: `not_utf8` (file or jsonl line), `broken_json`, `missing_field`, `not_string`, `null_text` (parquet
    null), `missing_column`, `unreadable` (not parquet), `empty_file`.
    """

    file: str
    line: int | None
    """1-based jsonl line or parquet row; None when the whole file is concerned."""
    reason: str
    message: str
    """What went wrong, naming the file (and line)."""
    raw: str = ""
    """The raw content: the jsonl line, the value's JSON, the file's text with undecodable bytes escaped."""
    source: str = ""
    doc: str = ""
    file_index: int = -1

    def metadata(self) -> dict:
        """Provenance (where known), `reason` and `message`, for the dropped output."""
        out = {"source": self.source, "doc": self.doc, "file": self.file, "line": self.line}
        out |= {"file_index": self.file_index, "reason": self.reason, "message": self.message}
        return {k: v for k, v in out.items() if v is not None and v != "" and v != -1}


@dataclass(slots=True)
class ParagraphRecord:
    """One paragraph and where it came from: the corpus stage's unit of work."""

    text: str
    source: str
    doc: str
    """Stable document key: path relative to the spec root (.txt), `relpath:LINE` (.jsonl), `relpath:ROW` (.parquet)."""
    para: int
    """0-based index of the paragraph in its document (every paragraph counts, boilerplate too)."""
    file: str
    line: int
    """1-based line where the paragraph starts (.txt), the jsonl line, or the parquet row."""
    file_index: int
    """Index of the file in the whole input list (sources in config order, files sorted)."""
    seq: int
    """0-based paragraph counter within the file."""
    boilerplate: bool = False
    """Outside a Project Gutenberg START/END marker pair (header, licence footer)."""

    def metadata(self) -> dict:
        """Provenance as a dict (plus `boilerplate: True` when marked)."""
        out = dict(source=self.source, doc=self.doc, para=self.para, file=self.file, line=self.line)
        out |= dict(file_index=self.file_index, seq=self.seq)
        if self.boilerplate:
            out["boilerplate"] = True
        return out


@dataclass(frozen=True)
class ReadOptions:
    """How `iter_paragraph_records` reads files: plain values (the corpus stage fills them from the config)."""

    paragraph_mode: str = "line"
    """`line`: every non-empty line; `blank`: runs of non-blank lines, inner newlines kept (see `iter_paragraphs`)."""
    text_field: str = "text"
    encoding_fallback: str = ""
    on_decode_error: str = "skip"
    on_bad_record: str = "skip"
    gutenberg: bool = True
    """Mark paragraphs outside Project Gutenberg START/END markers as boilerplate."""

    def __post_init__(self) -> None:
        if self.paragraph_mode not in PARAGRAPH_MODES:
            raise ValueError(f"unknown paragraph mode {self.paragraph_mode!r} (expected line or blank)")
        for name in ("on_decode_error", "on_bad_record"):
            if getattr(self, name) not in ("error", "skip"):
                raise ValueError(f"{name} must be error or skip, got {getattr(self, name)!r}")
        if self.encoding_fallback:
            codecs.lookup(self.encoding_fallback)  # LookupError names an unknown encoding now, not mid-run


@dataclass
class ReadReport:
    """What the readers saw: counts and the files they had to leave out, with the reason."""

    files: int = 0
    documents: int = 0
    chars: int = 0
    skipped: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "documents": self.documents,
            "chars": self.chars,
            "skipped": self.skipped,
        }


def resolve_spec(spec: str | Path, base: Path | None = None) -> Path:
    """A path from a config entry: `bundled:<name>` is the package's sample data, relative paths use `base`."""
    s = str(spec)
    if s.startswith(BUNDLED_PREFIX):
        p = BUNDLED_DATA / s[len(BUNDLED_PREFIX) :]
        if not p.exists():
            known = sorted(x.name for x in BUNDLED_DATA.iterdir()) if BUNDLED_DATA.is_dir() else []
            raise InputError(f"no bundled data named {s!r} (bundled: {', '.join(known) or 'none'})")
        return p
    p = Path(s).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def expand_inputs(specs: Iterable[str | Path], base: Path | None = None) -> list[Path]:
    """Input files in a stable order: folders are searched recursively for .txt/.jsonl/.parquet."""
    return [f for _, f in _expand_with_roots(specs, base)]


def _expand_with_roots(specs: Iterable[str | Path], base: Path | None) -> list[tuple[Path, Path]]:
    out: list[tuple[Path, Path]] = []
    for spec in specs:
        p = resolve_spec(spec, base)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not found:
                raise InputError(f"{p}: folder has no {', '.join(SUFFIXES)} files")
            out.extend((p, f) for f in found)
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise InputError(f"{p}: unsupported input type {p.suffix!r} (expected {', '.join(SUFFIXES)})")
            out.append((p.parent, p))
        else:
            raise InputError(f"input not found: {p}")
    return out


def source_inputs(
    sources: Mapping[str, Sequence[str | Path]], base: Path | None = None
) -> list[tuple[str, Path, Path]]:
    """(source, file, spec root) for every input file: sources in the given order, each spec's files sorted.

    A file listed twice, or two files with the same document key in one source, is an error (it would be counted
    twice or get the same ids).
    """
    out: list[tuple[str, Path, Path]] = []
    seen_files: dict[Path, str] = {}
    seen_keys: dict[tuple[str, str], Path] = {}
    for source, specs in sources.items():
        for root, f in _expand_with_roots(specs, base):
            real = f.resolve()
            if real in seen_files:
                raise InputError(f"{f}: listed twice (sources {seen_files[real]!r} and {source!r})")
            key = (source, doc_key(f, root))
            if key in seen_keys:
                raise InputError(
                    f"{f} and {seen_keys[key]}: same document key {key[1]!r} in source {source!r}; "
                    "split them into two sources"
                )
            seen_files[real], seen_keys[key] = source, f
            out.append((source, f, root))
    return out


def doc_key(path: Path, root: Path) -> str:
    """A file's key in its source: its path relative to the spec root (POSIX separators)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


class _Decoder:
    """Decodes one file's bytes: UTF-8 (BOM removed), else the fallback encoding (warning once), else fails."""

    def __init__(self, path: Path, fallback: str, on_decode_error: str) -> None:
        self.path, self.fallback, self.on_decode_error = path, fallback, on_decode_error
        self.warned = False

    def __call__(self, data: bytes, line: int | None = None) -> str | BadRecord:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            error = e
        where = f"{self.path}:{line}" if line else str(self.path)
        at_line = line or data[: error.start].count(b"\n") + 1
        if self.fallback:
            try:
                text = data.decode(self.fallback)
            except UnicodeDecodeError:
                pass
            else:
                if not self.warned:
                    log.warning(
                        "%s: not valid UTF-8 (line %d); decoded as %s", self.path, at_line, self.fallback
                    )
                    self.warned = True
                return text
        msg = f"{where}: not valid UTF-8 (byte {error.start}, line {at_line}: {error.reason})"
        if self.fallback:
            msg += f" nor {self.fallback}"
        if self.on_decode_error == "error":
            raise InputError(msg + "; convert it to UTF-8 or set data.on_decode_error=skip") from error
        return BadRecord(
            str(self.path), line, "not_utf8", msg, data.decode("utf-8", errors="backslashreplace")
        )


def _bad(bad: BadRecord, on_bad_record: str) -> BadRecord:
    """`bad` itself, or an InputError with its message when bad records are errors."""
    if on_bad_record == "error":
        raise InputError(bad.message)
    return bad


def read_txt(
    path: Path, *, encoding_fallback: str = "", on_decode_error: str = "skip"
) -> Iterator[Document | BadRecord]:
    """A .txt file is one document (BOM removed, CRLF turned into LF); an empty one is a `BadRecord`."""
    text = _Decoder(path, encoding_fallback, on_decode_error)(path.read_bytes())
    if isinstance(text, BadRecord):
        yield text
        return
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if not text or text.isspace():
        yield BadRecord(str(path), None, "empty_file", f"{path}: empty file", text)
        return
    yield Document(text, str(path), 1)


def _json_text(path: Path, i: int, line: str, text_field: str) -> str | BadRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return BadRecord(
            str(path), i, "broken_json", f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno})", line
        )
    if not isinstance(obj, dict) or text_field not in obj:
        keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
        msg = f"{path}:{i}: no field {text_field!r} (found: {keys}); set data.text_field"
        return BadRecord(str(path), i, "missing_field", msg, line)
    value = obj[text_field]
    if not isinstance(value, str):
        msg = f"{path}:{i}: field {text_field!r} is {type(value).__name__}, expected a string"
        return BadRecord(str(path), i, "not_string", msg, line)
    return value


def read_jsonl(
    path: Path,
    text_field: str = "text",
    *,
    encoding_fallback: str = "",
    on_decode_error: str = "skip",
    on_bad_record: str = "error",
) -> Iterator[Document | BadRecord]:
    """Each line of a .jsonl file is a JSON object with the text in `text_field`; read line by line.

    A broken line is an InputError (`on_bad_record="error"`) or a `BadRecord`, and reading goes on.
    """
    decode = _Decoder(path, encoding_fallback, on_decode_error)
    seen = False
    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            if i == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw or raw.isspace():
                continue
            seen = True
            line = decode(raw.rstrip(b"\r\n"), i)
            if isinstance(line, BadRecord):
                yield line
                continue
            value = _json_text(path, i, line, text_field)
            yield (
                _bad(value, on_bad_record) if isinstance(value, BadRecord) else Document(value, str(path), i)
            )
    if not seen:
        yield BadRecord(str(path), None, "empty_file", f"{path}: empty file (no JSON lines)")


def read_parquet(
    path: Path, text_field: str = "text", *, on_bad_record: str = "error"
) -> Iterator[Document | BadRecord]:
    """Rows of a .parquet file, the text in column `text_field`; a null is a `BadRecord` (`null_text`)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        yield _bad(
            BadRecord(str(path), None, "unreadable", f"{path}: cannot read as parquet ({e})"), on_bad_record
        )
        return
    names = pf.schema_arrow.names
    if text_field not in names:
        msg = f"{path}: no column {text_field!r} (columns: {', '.join(names)}); set data.text_field"
        yield _bad(BadRecord(str(path), None, "missing_column", msg), on_bad_record)
        return
    if pf.metadata.num_rows == 0:
        yield BadRecord(str(path), None, "empty_file", f"{path}: empty file (no rows)")
        return
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=PARQUET_BATCH_ROWS):
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, str):
                yield Document(value, str(path), row)
            elif value is None:
                yield BadRecord(
                    str(path), row, "null_text", f"{path}: row {row}: column {text_field!r} is null"
                )
            else:
                msg = f"{path}: row {row}: column {text_field!r} is not text ({type(value).__name__})"
                raw = json.dumps(value, ensure_ascii=False, default=str)
                yield _bad(BadRecord(str(path), row, "not_string", msg, raw), on_bad_record)


def read_file(
    path: Path,
    *,
    text_field: str = "text",
    encoding_fallback: str = "",
    on_decode_error: str = "skip",
    on_bad_record: str = "error",
) -> Iterator[Document | BadRecord]:
    """Documents and bad records of one input file, by suffix; bad records are logged (the first, then a count)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        items = read_txt(path, encoding_fallback=encoding_fallback, on_decode_error=on_decode_error)
    elif suffix == ".jsonl":
        items = read_jsonl(
            path, text_field, encoding_fallback=encoding_fallback, on_decode_error=on_decode_error,
            on_bad_record=on_bad_record,
        )  # fmt: skip
    elif suffix == ".parquet":
        items = read_parquet(path, text_field, on_bad_record=on_bad_record)
    else:
        raise InputError(f"{path}: unsupported input type {path.suffix!r} (expected {', '.join(SUFFIXES)})")
    bad = 0
    for item in items:
        if isinstance(item, BadRecord):
            bad += 1
            if bad == 1:
                log.warning("%s; left out and recorded (%s)", item.message, item.reason)
        yield item
    if bad > 1:
        log.warning("%s: %d bad records in all, each left out and recorded", path, bad)


def iter_documents(
    specs: Iterable[str | Path],
    *,
    base: Path | None = None,
    text_field: str = "text",
    on_decode_error: str = "skip",
    report: ReadReport | None = None,
) -> Iterator[Document]:
    """Documents from every input in `specs`, in a stable order; `report` collects counts and skipped files.

    Malformed records are errors here; undecodable and empty files are skipped and listed in `report.skipped`
    (parquet nulls are left out, as before).
    """
    report = report if report is not None else ReadReport()
    for path in expand_inputs(specs, base):
        report.files += 1
        for doc in read_file(path, text_field=text_field, on_decode_error=on_decode_error):
            if isinstance(doc, BadRecord):
                if doc.reason != "null_text":
                    report.skipped.append({"path": doc.file, "reason": doc.message})
                continue
            report.documents += 1
            report.chars += len(doc.text)
            yield doc


def _line_spans(text: str) -> Iterator[tuple[int, int, int]]:
    """(1-based line number, start, end) of each line of `text`, without copying it."""
    start, lineno, n = 0, 1, len(text)
    while start < n:
        end = text.find("\n", start)
        if end < 0:
            end = n
        yield lineno, start, end
        start, lineno = end + 1, lineno + 1


def iter_paragraphs(text: str, mode: str = "line") -> Iterator[tuple[int, str]]:
    """(1-based start line, paragraph) for each paragraph of a text (LF line ends), in linear time.

    `line`: every non-blank line is a paragraph. `blank`: paragraphs are runs of non-blank lines separated by
    blank (whitespace-only) lines; the inner newlines are kept as they are, so verse keeps its lines and the
    document can be rebuilt exactly. Whitespace inside a paragraph is kept in both modes.
    """
    if mode == "line":
        for lineno, s, e in _line_spans(text):
            line = text[s:e]
            if line and not line.isspace():
                yield lineno, line
        return
    if mode != "blank":
        raise ValueError(f"unknown paragraph mode {mode!r} (expected line or blank)")
    first, p_start, p_end = 0, -1, 0
    for lineno, s, e in _line_spans(text):
        if s == e or text[s:e].isspace():
            if p_start >= 0:
                yield first, text[p_start:p_end]
                p_start = -1
        else:
            if p_start < 0:
                first, p_start = lineno, s
            p_end = e
    if p_start >= 0:
        yield first, text[p_start:p_end]


def paragraphs(text: str) -> list[str]:
    """Non-empty lines of a text (a line is a paragraph in the inputs we read), whitespace inside kept."""
    return [p for _, p in iter_paragraphs(text, "line")]


def _document_paragraphs(text: str, mode: str, gutenberg: bool) -> Iterator[tuple[int, str, bool]]:
    """(start line, paragraph, boilerplate) of one document; Gutenberg header/footer marked when asked."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    start, end = 0, -1
    if gutenberg and has_gutenberg_markers(text):
        start, end = gutenberg_body(p for _, p in iter_paragraphs(text, mode))
    for i, (line, p) in enumerate(iter_paragraphs(text, mode)):
        yield line, p, end >= 0 and not start <= i < end


def read_paragraphs(
    source: str, path: Path, root: Path, file_index: int, opts: ReadOptions
) -> Iterator[ParagraphRecord | BadRecord]:
    """The paragraphs of one input file with their provenance, and its bad records (with source and doc set)."""
    rel = doc_key(path, root)
    is_txt = path.suffix.lower() == ".txt"
    seq = 0
    items = read_file(
        path, text_field=opts.text_field, encoding_fallback=opts.encoding_fallback,
        on_decode_error=opts.on_decode_error, on_bad_record=opts.on_bad_record,
    )  # fmt: skip
    for item in items:
        if isinstance(item, BadRecord):
            item.source, item.file_index = source, file_index
            item.doc = rel if item.line is None else f"{rel}:{item.line}"
            yield item
            continue
        doc = rel if is_txt else f"{rel}:{item.line}"
        paras = _document_paragraphs(item.text, opts.paragraph_mode, opts.gutenberg)
        for para, (line, text, boiler) in enumerate(paras):
            line = line if is_txt else item.line or 0
            yield ParagraphRecord(text, source, doc, para, str(path), line, file_index, seq, boiler)
            seq += 1


def iter_paragraph_records(
    files: Sequence[tuple[str, Path, Path]], opts: ReadOptions | None = None
) -> Iterator[ParagraphRecord | BadRecord]:
    """Paragraph records and bad records of every (source, file, spec root) in order (see `source_inputs`)."""
    opts = opts or ReadOptions()
    for i, (source, path, root) in enumerate(files):
        yield from read_paragraphs(source, Path(path), Path(root), i, opts)


def sample_paragraphs(paras: list[str], max_chars: int, seed: int) -> list[str]:
    """A deterministic random sample of paragraphs totalling about `max_chars` (all of them when 0 or enough)."""
    total = sum(len(p) for p in paras)
    if max_chars <= 0 or total <= max_chars:
        return list(paras)
    order = list(range(len(paras)))
    random.Random(seed).shuffle(order)
    out, n = [], 0
    for i in order:
        if n >= max_chars:
            break
        out.append(paras[i])
        n += len(paras[i])
    return out
