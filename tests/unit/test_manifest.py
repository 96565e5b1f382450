import json

import pytest

from vikhr import manifest
from vikhr.manifest import Manifest, StageRecord, digest, path_fingerprint
from vikhr.rundir import RunDir


def test_path_fingerprint_follows_content_not_mtime(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_text("one")
    fp = path_fingerprint(d)
    (d / "a.txt").write_text("one")  # same content, new mtime
    assert path_fingerprint(d) == fp
    (d / "a.txt").write_text("two")
    assert path_fingerprint(d)["hash"] != fp["hash"]
    (d / "b.txt").write_text("x")
    assert path_fingerprint(d)["files"] == 2
    assert path_fingerprint(tmp_path / "missing") == {"missing": True}


def test_large_files_hash_their_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "LARGE_FILE", 10)
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 100)
    h = manifest.file_digest(f)
    f.write_bytes(b"a" * 99 + b"b")
    assert manifest.file_digest(f) != h


def test_digest_is_order_independent():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_manifest_round_trip_and_corrupt_file(tmp_path):
    m = Manifest(tmp_path / "manifest.json")
    m.put(StageRecord(name="tokenizer", fingerprint="x", metrics={"v": 1}))
    again = Manifest(tmp_path / "manifest.json")
    assert again.get("tokenizer")["metrics"] == {"v": 1}
    again.drop("tokenizer")
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"] == {}
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ValueError, match="manifest is not valid JSON"):
        Manifest(tmp_path / "manifest.json")


def test_staging_is_atomic(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.staging("s") as out:
        (out / "f").write_text("1")
    assert (rd.stage_dir("s") / "f").read_text() == "1"
    with pytest.raises(RuntimeError), rd.staging("s") as out:
        (out / "f").write_text("2")
        raise RuntimeError("boom")
    assert (rd.stage_dir("s") / "f").read_text() == "1"  # the finished output is untouched
    assert not list(rd.path.glob(".staging-*"))
    with rd.staging("s") as out:
        (out / "g").write_text("3")
    assert sorted(p.name for p in rd.stage_dir("s").iterdir()) == ["g"]
    (rd.path / ".staging-s-crashed").mkdir()
    rd.clean_staging()
    assert not list(rd.path.glob(".staging-*"))
