"""The run directory: one folder per stage output, written in a staging folder and renamed into place.

A stage's folder exists only once the stage finished; a crash leaves a `.staging-<stage>-*` folder that the next
run removes, never a folder that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vikhr.log import get_logger
from vikhr.manifest import MANIFEST, Manifest

log = get_logger(__name__)


class RunDir:
    """A run directory with its manifest."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.path / MANIFEST)

    def stage_dir(self, name: str) -> Path:
        """Where the finished output of stage `name` lives."""
        return self.path / name

    def is_done(self, name: str) -> bool:
        """The stage has a finished folder and a manifest record."""
        return self.stage_dir(name).is_dir() and self.manifest.get(name) is not None

    def clean_staging(self) -> None:
        """Remove staging folders left by interrupted runs."""
        for p in self.path.glob(".staging-*"):
            log.warning("removing unfinished output %s from an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """Yield a fresh staging folder; on success it replaces the stage's folder, on error it is removed."""
        tmp = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=self.path))
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = self.stage_dir(name)
        old = None
        if final.exists():
            old = self.path / f".staging-{name}-old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
