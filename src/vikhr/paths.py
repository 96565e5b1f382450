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
    """The offline data folder, if it exists: $VIKHR_SHARED_DATA when set (then no other place is looked at, so
    `VIKHR_SHARED_DATA=/nonexistent` means "none"), else `../shared/data` beside the checkout or the cwd."""
    env = os.environ.get("VIKHR_SHARED_DATA")
    if env:
        candidates = [Path(env)]
    else:
        candidates = [PACKAGE_DIR.parents[2] / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None
