"""Folders that appear only when complete: written in a staging folder beside them, renamed into place.

`staged_dir` is the one implementation of "write into a staging folder, rename into place when done, remove it on
failure" used by the run directory's stages, model imports, merges, tokenizer extensions and quality classifiers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

STAGING_PREFIX = ".staging-"
"""Staging folders are named `.staging-<final name>-<random>` beside the final folder (hidden, easy to sweep)."""


@contextlib.contextmanager
def staged_dir(final: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh empty folder beside `final`; it becomes `final` when the block ends without an error.

    On any exception (KeyboardInterrupt included) the staging folder is removed and an existing `final` is left as
    it was. On success the staged tree gets the usual permissions (mkdtemp makes folders 0700, some writers make
    files 0600) and is renamed into place. An existing `final` is replaced (`replace=True`: moved aside, the new
    folder renamed in, the old one deleted; if the second rename fails the old folder is put back); with
    `replace=False` an existing `final` raises `FileExistsError` and is kept (e.g. a concurrent writer won).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{final.name}-", dir=final.parent))
    try:
        yield tmp
        fix_permissions(tmp)
        _move_into_place(tmp, final, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename


def _move_into_place(tmp: Path, final: Path, replace: bool) -> None:
    if not replace:
        try:
            os.rename(tmp, final)  # an existing non-empty folder makes this fail; an empty one is replaced
        except OSError as e:
            if final.exists():
                raise FileExistsError(f"{final} already exists") from e
            raise
        return
    if not (final.exists() or final.is_symlink()):
        os.rename(tmp, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{final.name}-old-", dir=final.parent)) / final.name
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        old.parent.rmdir()
        raise
    shutil.rmtree(old.parent, ignore_errors=True)


def fix_permissions(root: Path) -> None:
    """Give `root` and everything under it the permissions the umask allows (folders and executables 0777, other
    files 0666), as a normally created tree would have; symlinks are left alone."""
    umask = os.umask(0)
    os.umask(umask)
    dir_mode, file_mode = 0o777 & ~umask, 0o666 & ~umask
    root.chmod(dir_mode)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(parent, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                os.chmod(p, dir_mode)
            elif stat.S_ISREG(st.st_mode):
                os.chmod(p, dir_mode if st.st_mode & 0o111 else file_mode)
