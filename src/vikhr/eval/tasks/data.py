"""Task data: locating `data_files`, reading JSON Lines, and giving the docs the shape `datasets` gives them.

lm-eval loads `dataset_path: json` through `datasets` (5.x), which infers one Arrow schema for all splits. The
docs a template sees therefore have every top-level column (a key missing from a line is None), and numbers at
a place that holds both integers and floats are floats (`1` renders as `1.0`); values of incompatible types,
and objects whose keys differ between lines, are kept as written. `conform_docs` reproduces these rules so
that templates render the same text. Not reproduced: pyarrow reads strings that look like dates as timestamps
(they stay strings here)."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from vikhr.eval.tasks.errors import TaskError

GLOB_CHARS = frozenset("*?[")


def _candidates(name: str, base_dir: Path) -> list[Path]:
    path = Path(name).expanduser()
    return [path] if path.is_absolute() else [base_dir / path, Path.cwd() / path]


def _expand(candidate: Path, name: str) -> list[Path]:
    if GLOB_CHARS & set(name):
        return sorted(
            Path(p).resolve() for p in glob.glob(str(candidate), recursive=True) if Path(p).is_file()
        )
    return [candidate.resolve()] if candidate.is_file() else []


def locate(name: str, base_dir: Path) -> list[Path]:
    """The files a `data_files` entry names: an absolute path as is; a relative one against `base_dir` (the
    folder of the YAML file that sets it) first, then the current directory (where lm-eval itself looks). Glob
    patterns expand to their sorted matches. Empty when nothing exists."""
    for candidate in _candidates(name, base_dir):
        if files := _expand(candidate, name):
            return files
    return []


def absolute_name(name: str, base_dir: Path) -> str | None:
    """`name` made absolute the way `locate` resolves it (a glob stays a glob); None when nothing matches."""
    for candidate in _candidates(name, base_dir):
        if _expand(candidate, name):
            return str(candidate.absolute() if GLOB_CHARS & set(name) else candidate.resolve())
    return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON Lines file; blank lines are skipped; a line that is not UTF-8, not JSON or
    not an object raises TaskError naming the file and the line."""
    rows = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskError(f"{path}: line {lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}: line {lineno}: broken JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise TaskError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


# ------------------------------------------------------------------------ the schema `datasets` would infer
# A type is one of: None (only nulls seen), "bool", "int", "float", "str", "json" (kept as written: values
# of incompatible types, or objects whose keys differ between rows), ("list", item type), ("struct", {field:
# type}).

_SCALARS = {bool: "bool", int: "int", float: "float", str: "str"}


def _type_of(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return ("struct", {k: _type_of(v) for k, v in value.items()}) if value else "json"
    if isinstance(value, list):
        item = None
        for v in value:
            item = _merge(item, _type_of(v))
        return ("list", item)
    return _SCALARS.get(type(value), "json")


def _merge(a: Any, b: Any) -> Any:
    if a is None or a == b:
        return b
    if b is None:
        return a
    if (a, b) in (("int", "float"), ("float", "int")):
        return "float"
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0] == "list":
        return ("list", _merge(a[1], b[1]))
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0] == "struct" and set(a[1]) == set(b[1]):
        return ("struct", {k: _merge(t, b[1][k]) for k, t in a[1].items()})
    return "json"


def _conform(value: Any, kind: Any) -> Any:
    if value is None:
        return None
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(kind, tuple) and kind[0] == "struct" and isinstance(value, dict):
        return {k: _conform(value.get(k), t) for k, t in kind[1].items()}
    if isinstance(kind, tuple) and kind[0] == "list" and isinstance(value, list):
        return [_conform(v, kind[1]) for v in value]
    return value


def conform_docs(
    splits: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The docs of every split given one shared schema (see the module docstring), and its column names."""
    columns: dict[str, Any] = {}
    for rows in splits.values():
        for row in rows:
            for key, value in row.items():
                columns[key] = _merge(columns.get(key), _type_of(value))
    conformed = {
        s: [{k: _conform(r.get(k), t) for k, t in columns.items()} for r in rows]
        for s, rows in splits.items()
    }
    return conformed, list(columns)
