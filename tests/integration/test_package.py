"""The package as users install it: a wheel built from this checkout carries the launcher configs, the experiment
configs and the bundled data, and a non-editable install finds all of them without the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "vikhr"
LAUNCHERS = ["ddp", "fsdp", "zero2", "zero3"]
EXPERIMENTS = ["demo.yaml", "mistral-7b-ru.yaml"]
# build outputs and local state at the checkout's root: not part of the source tree a wheel is built from
IGNORED_AT_ROOT = {".git", ".venv", ".ci", "runs", "build", "dist", "shared", ".pytest_cache", ".ruff_cache"}

# Runs in the installed copy, from a folder outside the checkout; prints what it found as JSON.
PROBE = """
import json, sys
import vikhr
from vikhr.config import load_config
from vikhr.corpus.readers import resolve_spec
from vikhr.paths import BUNDLED_DATA, PACKAGE_DIR
from vikhr.train.launch import launcher_config, launcher_names

names = json.loads(sys.argv[1])
configs = PACKAGE_DIR / "configs"
for name in json.loads(sys.argv[2]):
    load_config(configs / name)  # every key valid in the installed copy
print(json.dumps({
    "file": vikhr.__file__,
    "names": launcher_names(),
    "launchers": {n: str(launcher_config(n)) for n in names},
    "bundled_data": str(BUNDLED_DATA),
    "bundled_ru": str(resolve_spec("bundled:ru")),
    "ru_files": sorted(str(p.relative_to(BUNDLED_DATA)) for p in (BUNDLED_DATA / "ru").rglob("*") if p.is_file()),
    "demo_target": [str(resolve_spec(s)) for s in load_config(configs / "demo.yaml").data.target],
}))
"""


def _files(folder: Path, base: Path = PKG) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in folder.rglob("*") if p.is_file())


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    return skip | (IGNORED_AT_ROOT & set(names) if Path(folder) == ROOT else set())


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "-q", "--no-deps"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (so no build/ or egg-info is written into the working tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-tree"
    shutil.copytree(ROOT, src, ignore=_ignore, symlinks=True)
    out = tmp / "dist"
    _pip("wheel", "--no-build-isolation", "-w", str(out), str(src))
    (whl,) = out.glob("vikhr-*.whl")
    return whl


def test_wheel_contains_configs_and_bundled_data(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for n in LAUNCHERS:
        assert f"vikhr/configs/accelerate/{n}.yaml" in names
    for n in EXPERIMENTS:
        assert f"vikhr/configs/{n}" in names
    data = _files(PKG / "data")
    ru = [f for f in data if f.startswith("data/ru/")]
    assert len(ru) > 50  # file names with spaces and Cyrillic among them
    missing = [f for f in data if f"vikhr/{f}" not in names]
    assert not missing, f"bundled data missing from the wheel: {missing[:5]}"
    shipped_ru = [n for n in names if n.startswith("vikhr/data/ru/") and not n.endswith("/")]
    assert len(shipped_ru) == len(ru)


def test_non_editable_install_finds_launchers_and_data(wheel, tmp_path):
    site = tmp_path / "site"
    _pip("install", "--no-index", "--target", str(site), str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(LAUNCHERS), json.dumps(EXPERIMENTS)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    site = site.resolve()
    assert Path(got["file"]).is_relative_to(site), got["file"]
    assert got["names"] == LAUNCHERS
    for n in LAUNCHERS:
        p = Path(got["launchers"][n])
        assert p.is_relative_to(site) and p.is_file() and p.name == f"{n}.yaml"
    data = Path(got["bundled_data"])
    assert data == site / "vikhr" / "data" and data.is_dir()
    assert Path(got["bundled_ru"]) == data / "ru"
    assert got["demo_target"] == [str(data / "ru")]
    src_ru = _files(PKG / "data" / "ru", base=PKG / "data")
    assert got["ru_files"] == src_ru and len(src_ru) > 50
