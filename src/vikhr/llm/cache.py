"""On-disk cache of LLM responses, so a rerun or an interrupted job never pays twice for the same request.

The key is the sha256 of the canonical JSON of {endpoint path, model, full request body}. The base URL is
deliberately left out: the same request sent to the same model on a moved server (another port, a tunnel, a
different host serving the same weights) hits the cache. The flip side: two different servers that serve
*different* weights under the same model id share entries; give them different model ids (or cache folders).

Storage is one SQLite file in WAL mode (several processes may share it), used through one connection guarded by
a lock (several threads may share it). Only successful responses are stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

CACHE_FILE = "responses.sqlite"


def _normalise(value: Any) -> Any:
    """Integral floats become ints (`temperature=0` and `0.0` are one request); containers are recursed."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no whitespace and integral floats written as ints: equal requests, equal text."""
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(path: str, model: str, body: dict) -> str:
    """The cache key of a request: endpoint path (`/chat/completions`), model and full body; no base URL."""
    payload = {"path": "/" + path.strip("/"), "model": model, "body": body}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class ResponseCache:
    """Successful responses by request key, in `folder/responses.sqlite`; safe to share between threads."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / CACHE_FILE
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS responses ("
            " key TEXT PRIMARY KEY, path TEXT NOT NULL, model TEXT NOT NULL,"
            " response TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str) -> dict | None:
        """The stored response for `key`, or None."""
        with self._lock:
            row = self._conn.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, path: str, model: str, response: dict) -> None:
        """Store (or replace) the response for `key`; committed before returning."""
        text = json.dumps(response, ensure_ascii=False)
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, path, model, response, created) VALUES (?, ?, ?, ?, ?)",
                (key, path, model, text, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        """Close the connection (the file stays)."""
        with self._lock:
            self._conn.close()
