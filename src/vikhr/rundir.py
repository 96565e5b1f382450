"""The run directory: one folder per stage output, written in a staging folder and renamed into place.

A stage's folder exists only once the stage finished; a crash leaves a `.staging-<stage>-*` folder that the next
run removes, never a folder that looks finished. A stage that can resume keeps its intermediate state in
`<stage>.work/` (outside the staged output, so a crash keeps it); `--force` clears it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from vikhr.fsutil import STAGING_PREFIX, staged_dir
from vikhr.log import get_logger
from vikhr.manifest import MANIFEST, Manifest, digest, write_json_atomic
from vikhr.train.dist import is_main_process

log = get_logger(__name__)


WORK_KEY = "fingerprint.json"
"""The stamp in a work folder: the digest of the key it was made for, and of each of the key's parts."""


def keyed_work(work: Path, key: dict[str, Any], resume: bool = True) -> bool:
    """Make `work` hold resume state for exactly `key`. True when it already did (keep it and resume); otherwise
    it is emptied and stamped with `key` (on the main process; every rank takes the same decision) and False is
    returned: start from the beginning. `key` is everything the work's results depend on (settings, upstream
    outputs by content, code version), or a rerun after a change "resumes" stale results."""
    stamp = work / WORK_KEY
    want = digest(key)
    try:
        old = json.loads(stamp.read_text(encoding="utf-8")) if stamp.is_file() else None
    except json.JSONDecodeError:
        old = None
    same = old is not None and old.get("digest") == want
    if same and resume:
        log.info("%s: resuming (its inputs are unchanged)", work.name)
        return True
    if is_main_process():
        if work.exists():
            parts = (old or {}).get("parts", {})
            changed = sorted(k for k, v in key.items() if parts.get(k) != digest(v)) + sorted(
                set(parts) - set(key)
            )
            why = "resume is off" if same else f"changed: {', '.join(changed) or 'no readable stamp'}"
            log.info("%s: starting fresh (%s)", work.name, why)
            shutil.rmtree(work)
        work.mkdir(parents=True)
        parts = {k: digest(v) for k, v in key.items()}
        write_json_atomic(stamp, {"digest": want, "parts": parts})
    return False


class RunDir:
    """A run directory with its manifest."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.path / MANIFEST)
        self.forced: set[str] = set()
        """Stages this invocation runs with `--force`: they must not resume (every rank sees this, while only
        rank 0 clears the work folder)."""

    def stage_dir(self, name: str) -> Path:
        """Where the finished output of stage `name` lives."""
        return self.path / name

    def is_done(self, name: str) -> bool:
        """The stage has a finished folder and a manifest record."""
        return self.stage_dir(name).is_dir() and self.manifest.get(name) is not None

    def work_dir(self, name: str) -> Path:
        """Where stage `name` keeps state to resume from after an interruption (`<run_dir>/<name>.work`)."""
        return self.path / f"{name}.work"

    def clear_work(self, name: str) -> None:
        """Remove stage `name`'s resume state, so that its next run starts fresh (the key stamp goes first, so a
        half-removed folder is never resumed)."""
        work = self.work_dir(name)
        if work.exists():
            log.info("%s: removing %s", name, work)
            (work / WORK_KEY).unlink(missing_ok=True)
            shutil.rmtree(work)

    def clean_staging(self) -> None:
        """Remove staging folders left by interrupted runs."""
        for p in self.path.glob(f"{STAGING_PREFIX}*"):
            log.warning("removing unfinished output %s from an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)

    def staging(self, name: str) -> contextlib.AbstractContextManager[Path]:
        """A fresh staging folder; on success it replaces the stage's folder, on error it is removed."""
        return staged_dir(self.stage_dir(name))
