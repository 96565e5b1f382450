"""Run the stages in order, skipping those whose fingerprint still matches the manifest.

A stage's fingerprint covers its config section, its input files, the fingerprints of the stages before it and
its code version; when any of them changes the stage and everything downstream run again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vikhr.config import Config, dump_yaml, resolve_path
from vikhr.log import get_logger
from vikhr.manifest import digest, package_versions
from vikhr.rundir import RunDir
from vikhr.stages import STAGES, get_stage, stage_names
from vikhr.train.dist import is_main_process

log = get_logger(__name__)


@dataclass
class Plan:
    name: str
    fingerprint: str
    action: str  # "run" or "skip"
    reason: str


def open_rundir(cfg: Config) -> RunDir:
    return RunDir(resolve_path(cfg, cfg.run_dir))


def _select(start: str | None, stop: str | None) -> list:
    names = stage_names()
    i = names.index(get_stage(start).NAME) if start else 0
    j = names.index(get_stage(stop).NAME) if stop else len(names) - 1
    if i > j:
        raise ValueError(f"--from {start} comes after --to {stop}")
    return STAGES[i : j + 1]


def plan(
    cfg: Config, rundir: RunDir, start: str | None = None, stop: str | None = None, force=()
) -> list[Plan]:
    """Decide for each selected stage whether it runs, and why."""
    force = set(force)
    for f in force:
        get_stage(f)
    selected = {s.NAME for s in _select(start, stop)}
    upstream = ""
    dirty = False
    out = []
    for stage in STAGES:
        fp = digest(
            {
                "version": stage.VERSION,
                "config": stage.config_section(cfg),
                "inputs": stage.inputs(cfg),
                "up": upstream,
            }
        )
        upstream = fp
        if stage.NAME not in selected:
            continue
        rec = rundir.manifest.get(stage.NAME)
        if stage.NAME in force:
            action, reason = "run", "forced"
        elif not rundir.is_done(stage.NAME):
            action, reason = "run", "not run yet"
        elif dirty:
            action, reason = "run", "an earlier stage runs again"
        elif rec.get("fingerprint") != fp:
            action, reason = "run", "config or inputs changed"
        else:
            action, reason = "skip", "up to date"
        dirty = dirty or action == "run"
        out.append(Plan(stage.NAME, fp, action, reason))
    return out


def _clear_forced(rundir: RunDir, steps: list[Plan]) -> None:
    """A forced stage starts fresh: its resume state (`<stage>.work`) from an earlier attempt is removed."""
    for p in steps:
        if p.action == "run" and p.reason == "forced":
            rundir.clear_work(p.name)


def run(cfg: Config, start=None, stop=None, force=(), dry_run: bool = False) -> list[Plan]:
    """Run the pipeline (or just print the plan with `dry_run`)."""
    rundir = open_rundir(cfg)
    steps = plan(cfg, rundir, start, stop, force)
    rundir.forced = {p.name for p in steps if p.action == "run" and p.reason == "forced"}
    for p in steps:
        log.info("%-10s %-4s (%s)", p.name, p.action, p.reason)
    if dry_run:
        return steps
    main = is_main_process()  # under `accelerate launch` every rank runs the stage; rank 0 keeps the books
    if main:
        rundir.clean_staging()
        _clear_forced(rundir, steps)
        (rundir.path / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    for p in steps:
        if p.action == "skip":
            continue
        stage = get_stage(p.name)
        log.info("stage %s: starting", p.name)
        t0 = time.time()
        if main:
            rundir.manifest.drop(p.name)  # a failed rerun must not leave the old record claiming success
        record = stage.run(cfg, rundir)
        if not main:
            continue
        record.fingerprint = p.fingerprint
        record.config = stage.config_section(cfg)
        record.inputs = stage.inputs(cfg)
        record.versions = package_versions()
        record.started = t0
        record.seconds = round(time.time() - t0, 2)
        rundir.manifest.put(record)
        log.info("stage %s: done in %.1fs -> %s", p.name, record.seconds, rundir.stage_dir(p.name))
    return steps


def status(cfg: Config) -> list[dict]:
    """Each stage's state (done / stale / not run) with its key metrics."""
    rundir = open_rundir(cfg)
    rows = []
    for p in plan(cfg, rundir):
        rec = rundir.manifest.get(p.name) or {}
        state = "done" if p.action == "skip" else ("stale" if rundir.is_done(p.name) else "not run")
        rows.append(
            {"stage": p.name, "state": state, "reason": p.reason, "seconds": rec.get("seconds"),
             "metrics": rec.get("metrics", {}), "dir": str(Path(rundir.stage_dir(p.name)))}
        )  # fmt: skip
    return rows
