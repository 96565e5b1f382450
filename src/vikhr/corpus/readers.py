"""Read text from folders, .txt, .jsonl and .parquet files, with errors that name the file and line.

Every reader yields `Document`s and fills a `ReadReport`; a file that cannot be decoded is either an error or
skipped with a warning and recorded (never silently lost).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vikhr.log import get_logger
from vikhr.paths import BUNDLED_DATA

log = get_logger(__name__)

SUFFIXES = (".txt", ".jsonl", ".parquet")
BUNDLED_PREFIX = "bundled:"


class InputError(ValueError):
    """An input file is missing, unreadable or malformed; the message names it (and the line)."""


@dataclass
class Document:
    text: str
    source: str
    line: int | None = None


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
    files: list[Path] = []
    for spec in specs:
        p = resolve_spec(spec, base)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not found:
                raise InputError(f"{p}: folder has no {', '.join(SUFFIXES)} files")
            files.extend(found)
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise InputError(f"{p}: unsupported input type {p.suffix!r} (expected {', '.join(SUFFIXES)})")
            files.append(p)
        else:
            raise InputError(f"input not found: {p}")
    return files


def _decode(path: Path, data: bytes, on_decode_error: str, report: ReadReport) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        msg = f"{path}: not valid UTF-8 (byte {e.start}, line {line}: {e.reason})"
        if on_decode_error == "error":
            raise InputError(msg + "; convert it to UTF-8 or set data.on_decode_error=skip") from e
        log.warning("%s; skipped (set data.on_decode_error=error to stop instead)", msg)
        report.skipped.append(
            {"path": str(path), "reason": f"not valid UTF-8 at byte {e.start}, line {line}"}
        )
        return None
    return text.removeprefix("\ufeff")


def read_txt(path: Path, on_decode_error: str, report: ReadReport) -> Iterator[Document]:
    """A .txt file is one document (BOM removed, CRLF turned into LF)."""
    text = _decode(path, path.read_bytes(), on_decode_error, report)
    if text is not None:
        yield Document(text.replace("\r\n", "\n"), str(path))


def read_jsonl(path: Path, text_field: str, on_decode_error: str, report: ReadReport) -> Iterator[Document]:
    """Each line of a .jsonl file is a JSON object with the text in `text_field`."""
    text = _decode(path, path.read_bytes(), on_decode_error, report)
    if text is None:
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(obj, dict) or text_field not in obj:
            keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
            raise InputError(f"{path}:{i}: no field {text_field!r} (found: {keys}); set data.text_field")
        value = obj[text_field]
        if not isinstance(value, str):
            raise InputError(f"{path}:{i}: field {text_field!r} is {type(value).__name__}, expected a string")
        yield Document(value, str(path), i)


def read_parquet(path: Path, text_field: str) -> Iterator[Document]:
    """Rows of a .parquet file, the text in column `text_field`."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise InputError(f"{path}: cannot read as parquet ({e})") from e
    names = pf.schema_arrow.names
    if text_field not in names:
        raise InputError(
            f"{path}: no column {text_field!r} (columns: {', '.join(names)}); set data.text_field"
        )
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                continue
            if not isinstance(value, str):
                raise InputError(f"{path}: row {row}: column {text_field!r} is not text")
            yield Document(value, str(path), row)


def iter_documents(
    specs: Iterable[str | Path],
    *,
    base: Path | None = None,
    text_field: str = "text",
    on_decode_error: str = "skip",
    report: ReadReport | None = None,
) -> Iterator[Document]:
    """Documents from every input in `specs`, in a stable order; `report` collects counts and skipped files."""
    report = report if report is not None else ReadReport()
    for path in expand_inputs(specs, base):
        report.files += 1
        suffix = path.suffix.lower()
        if suffix == ".txt":
            docs = read_txt(path, on_decode_error, report)
        elif suffix == ".jsonl":
            docs = read_jsonl(path, text_field, on_decode_error, report)
        else:
            docs = read_parquet(path, text_field)
        for doc in docs:
            report.documents += 1
            report.chars += len(doc.text)
            yield doc


def paragraphs(text: str) -> list[str]:
    """Non-empty lines of a text (a line is a paragraph in the inputs we read), whitespace inside kept."""
    return [line for line in text.split("\n") if line.strip()]


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
