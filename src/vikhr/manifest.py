"""The manifest: one JSON file per run directory recording, per stage, what went in and what came out.

A `StageRecord` holds the stage's config section, the fingerprints of its inputs, package versions, metrics,
timings and outputs. `fingerprint` of a record is what `vikhr run` compares to decide whether to skip a stage.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_PACKAGES = ("vikhr", "torch", "transformers", "tokenizers", "sentencepiece", "accelerate", "datasets", "trl")


@dataclass
class StageRecord:
    """What one stage did: written to the manifest when the stage finishes."""

    name: str
    fingerprint: str = ""
    config: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the outputs depend on."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


LARGE_FILE = 256 << 20
"""Files above this size (model weights) are fingerprinted by size and their first and last MiB."""


def file_digest(path: Path) -> str:
    """Content hash of a file (blake2b, 16 bytes), cached per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            if st.st_size > LARGE_FILE:
                h.update(str(st.st_size).encode() + f.read(1 << 20))
                f.seek(max(0, st.st_size - (1 << 20)))
                h.update(f.read())
            else:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def path_fingerprint(path: Path) -> dict:
    """Fingerprint of a file or folder (every file under it, by relative path and content hash)."""
    path = Path(path)
    if path.is_file():
        return {"files": 1, "bytes": path.stat().st_size, "hash": file_digest(path)}
    if not path.is_dir():
        return {"missing": True}
    h = hashlib.blake2b(digest_size=16)
    n = size = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_digest(f).encode())
        n += 1
        size += f.stat().st_size
    return {"files": n, "bytes": size, "hash": h.hexdigest()}


def digest(obj: Any) -> str:
    """Stable hash of JSON-able data."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename it into place, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Manifest:
    """The run directory's manifest.json: stage name -> StageRecord."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.stages: dict[str, dict] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{self.path}: manifest is not valid JSON ({e}); move it away to start over"
                ) from e
            self.stages = data.get("stages", {})

    def get(self, name: str) -> dict | None:
        return self.stages.get(name)

    def put(self, record: StageRecord) -> None:
        self.stages[record.name] = asdict(record)
        self.save()

    def drop(self, name: str) -> None:
        if self.stages.pop(name, None) is not None:
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": self.stages})
