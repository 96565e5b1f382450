"""Where things live: the cache for imported models, the optional shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DATA = PACKAGE_DIR / "data"


def cache_dir() -> Path:
    """Cache root for imported models and the like: $VIKHR_CACHE or ~/.cache/vikhr."""
    return Path(os.environ.get("VIKHR_CACHE", Path.home() / ".cache" / "vikhr"))


def shared_data_dir() -> Path | None:
    """The offline data folder ($VIKHR_SHARED_DATA, else `../shared/data` beside the checkout), if it exists."""
    env = os.environ.get("VIKHR_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [PACKAGE_DIR.parents[2] / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None
