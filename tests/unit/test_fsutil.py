"""`staged_dir`: a folder appears only when complete, replaces the old one, and is readable like a normal one."""

import os
import stat

import pytest

from vikhr.fsutil import staged_dir


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_failure_removes_the_staging_folder_and_keeps_the_old_final(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp != final and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("half")
        raise KeyboardInterrupt  # not only Exception: an interrupted process must not leave a staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in final.iterdir()] == ["old.txt"]


def test_failure_without_a_final_folder_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "a" / "out") as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError("boom")
    assert list((tmp_path / "a").iterdir()) == []


def test_success_replaces_the_final_folder_whole(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "stale.txt").write_text("stale")
    with staged_dir(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f.txt").write_text("new")
        assert not (final / "sub").exists()  # nothing visible until the block ends
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == ["sub", "sub/f.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old folder left


def test_renamed_tree_has_the_umask_permissions_not_0700(tmp_path):
    old_umask = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "out") as tmp:
            assert _mode(tmp) == 0o700  # mkdtemp's mode: the reason for the fix
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "weights.bin").write_bytes(b"x")
            os.chmod(tmp / "sub" / "weights.bin", 0o600)  # as safetensors writes them
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "run.sh", 0o700)
    finally:
        os.umask(old_umask)
    out = tmp_path / "out"
    assert _mode(out) == 0o755 and _mode(out / "sub") == 0o755
    assert _mode(out / "sub" / "weights.bin") == 0o644
    assert _mode(out / "run.sh") == 0o755  # an executable stays executable


def test_replace_false_keeps_an_existing_final_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "theirs.txt").write_text("theirs")
    with pytest.raises(FileExistsError), staged_dir(final, replace=False) as tmp:
        (tmp / "mine.txt").write_text("mine")
    assert [p.name for p in final.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
