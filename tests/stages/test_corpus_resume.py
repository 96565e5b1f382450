"""An interrupted corpus stage resumes from `<run_dir>/corpus.work`; other settings or `--force` start fresh."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vikhr import pipeline
from vikhr.config import load_config
from vikhr.corpus.readers import InputError
from vikhr.manifest import digest
from vikhr.paths import BUNDLED_DATA
from vikhr.rundir import keyed_work
from vikhr.stages import corpus


def _write_inputs(root: Path, n_files: int) -> Path:
    """`n_files` Chekhov stories plus an exact copy of the first (so dedup removes something); the config."""
    src = root / "in"
    src.mkdir()
    stories = sorted((BUNDLED_DATA / "ru" / "chekhov").glob("*.txt"))[:n_files]
    for f in stories:
        shutil.copy(f, src / f.name)
    shutil.copy(stories[0], src / "copy.txt")
    cfg = root / "c.yaml"
    cfg.write_text(
        'run_dir: run\nsource_model: ""\ncorpus:\n  sources: {books: [in]}\n  workers: 1\n', encoding="utf-8"
    )
    return cfg


def _vikhr_corpus(cfg: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "vikhr", "corpus", "-c", str(cfg)], cwd=cfg.parent, stdout=fh,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip


def _markers(logs: Path) -> dict[str, int]:
    """Every datatrove completion marker under `logs`: `<step>/<rank>` -> mtime in ns."""
    return {
        f"{p.parent.parent.name}/{p.name}": p.stat().st_mtime_ns for p in sorted(logs.glob("*/completions/*"))
    }


def _tasks(logs: Path) -> dict[str, int]:
    """Tasks of each datatrove step that started, from its executor.json."""
    return {
        p.parent.name: json.loads(p.read_text(encoding="utf-8"))["tasks"]
        for p in logs.glob("*/executor.json")
    }


def _outputs(out: Path) -> dict:
    """What a corpus run produced, minus timings."""
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    stats.pop("timings")
    stats["dedup"].pop("seconds")
    rows = {
        part: sorted(pq.read_table(out / part).to_pylist(), key=lambda r: r["id"])
        for part in ("data", "dropped")
    }
    return {"table": (out / "table.md").read_text(encoding="utf-8"), "stats": stats, **rows}


def _plant_finished_read(cfg) -> Path:
    """A work folder that claims, under `cfg`'s key, that every read task finished (but holds no output):
    honouring it makes the stage find no text; starting fresh makes it run normally."""
    work = pipeline.open_rundir(cfg).work_dir("corpus")
    assert keyed_work(work, corpus.work_key(cfg)) is False  # a new folder, stamped with the key
    done = work / "logs" / "read" / "completions"
    done.mkdir(parents=True)
    for rank in range(len(corpus.input_files(cfg))):
        (done / f"{rank:05d}").touch()
    return work


@pytest.mark.slow
def test_killed_during_dedup_resumes_skipping_finished_tasks(tmp_path):
    cfg_path = _write_inputs(tmp_path, 8)
    straight = load_config(cfg_path, ["run_dir=straight"])
    pipeline.run(straight, "corpus", "corpus")

    run = tmp_path / "run"
    logs = run / "corpus.work" / "logs"
    proc = _vikhr_corpus(cfg_path, tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while not any((logs / "dedup-signatures" / "completions").glob("*")):  # the first dedup task finished
        assert proc.poll() is None, (
            "ended before a dedup task finished in corpus.work:\n" + (tmp_path / "killed.log").read_text()
        )
        assert time.monotonic() < deadline, "dedup never started"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    assert not (run / "corpus").exists()
    before, tasks = _markers(logs), _tasks(logs)
    done = {step: sum(k.startswith(f"{step}/") for k in before) for step in tasks}
    assert done["read"] == tasks["read"] == 9
    assert done.get("dedup-filter", 0) < tasks["read"], "the run finished before it was killed"

    rerun = _vikhr_corpus(cfg_path, tmp_path / "rerun.log")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()
    text = (tmp_path / "rerun.log").read_text()
    assert "corpus.work: resuming" in text
    finished = [s for s in tasks if done[s] == tasks[s]]
    assert text.count("Not doing anything as all") == len(finished)
    for step in set(tasks) - set(finished):
        if done[step]:
            assert f"Skipping {done[step]} already completed tasks" in text, step
    # every task that had finished before the kill kept its marker untouched (logs are kept in corpus/logs)
    after = _markers(run / "corpus" / "logs")
    assert {k: after.get(k) for k in before} == before
    assert _outputs(run / "corpus") == _outputs(tmp_path / "straight" / "corpus")
    assert not (run / "corpus.work").exists()  # removed once the output is in place


def test_work_key_follows_settings_and_inputs_not_worker_counts(tmp_path):
    cfg_path = _write_inputs(tmp_path, 2)
    key = digest(corpus.work_key(load_config(cfg_path)))
    assert digest(corpus.work_key(load_config(cfg_path, ["corpus.workers=3", "corpus.shard_rows=10"]))) == key
    assert digest(corpus.work_key(load_config(cfg_path, ["corpus.dedup.threshold=0.9"]))) != key
    (tmp_path / "in" / "copy.txt").write_text("Другой текст.\n", encoding="utf-8")
    assert digest(corpus.work_key(load_config(cfg_path))) != key


def test_changed_settings_wipe_the_work_folder(tmp_path):
    cfg_path = _write_inputs(tmp_path, 2)
    cfg = load_config(cfg_path)
    work = _plant_finished_read(cfg)
    (work / "sentinel").touch()
    with pytest.raises(InputError, match="no text"):  # same settings: the planted completions are honoured
        pipeline.run(load_config(cfg_path, ["corpus.workers=2"]), "corpus", "corpus")
    assert (work / "sentinel").exists()

    changed = load_config(cfg_path, ["corpus.dedup.threshold=0.9"])
    pipeline.run(changed, "corpus", "corpus")  # other settings: the work folder is wiped, the read runs
    stats = json.loads((tmp_path / "run" / "corpus" / "stats.json").read_text(encoding="utf-8"))
    assert stats["sources"]["books"]["kept"]["paragraphs"] > 0
    assert stats["dedup"]["exact_duplicate"] > 0
    assert not work.exists()


def test_force_starts_fresh(tmp_path):
    cfg_path = _write_inputs(tmp_path, 2)
    cfg = load_config(cfg_path)
    work = _plant_finished_read(cfg)
    with pytest.raises(InputError, match="no text"):
        pipeline.run(cfg, "corpus", "corpus")
    assert (work / "logs" / "read" / "completions" / "00000").exists()

    pipeline.run(cfg, "corpus", "corpus", force=("corpus",))
    stats = json.loads((tmp_path / "run" / "corpus" / "stats.json").read_text(encoding="utf-8"))
    assert stats["sources"]["books"]["kept"]["paragraphs"] > 0
    assert not work.exists()
