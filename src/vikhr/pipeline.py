"""Run the stages, skipping those whose fingerprint still matches the manifest.

The stages form a graph, not a chain: each stage names the stages whose output it reads (`DEPENDS`, or
`depends(cfg)` when that depends on the config). A stage's fingerprint covers its config section, its input
files, its code version and the fingerprints of the stages it reads; when any of them changes, that stage and the
stages that read it run again — and only those (changing `sft.lr` reruns sft and evaluate, not the reward model).

A run directory belongs to one config (`run.json`): another config pointed at it is an error before any work.
With `reuse`, a stage whose fingerprint matches a finished stage in another run directory is linked from there
instead of computed (the ablation runner shares stages across variants this way).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from vikhr.config import SHIPPED_CONFIGS, Config, ConfigError, dump_yaml, resolve_path
from vikhr.fsutil import staged_dir
from vikhr.log import get_logger
from vikhr.manifest import Manifest, digest, package_versions, write_json_atomic
from vikhr.rundir import RunDir
from vikhr.stages import STAGES, get_stage, stage_names
from vikhr.train.dist import is_main_process

log = get_logger(__name__)

RUN_FILE = "run.json"
"""A run directory's owner: which config made it (`config_identity`)."""


@dataclass
class Plan:
    name: str
    fingerprint: str
    action: str  # "run" or "skip"
    reason: str


def open_rundir(cfg: Config) -> RunDir:
    return RunDir(resolve_path(cfg, cfg.run_dir))


def config_identity(cfg: Config) -> str:
    """The config a run directory belongs to: a shipped config's name, or the config file's absolute path."""
    if not cfg.config_path:
        return "defaults"
    path = Path(cfg.config_path).resolve()
    return path.stem if path.parent == SHIPPED_CONFIGS.resolve() else str(path)


def check_owner(cfg: Config, rundir: RunDir, claim: bool = False) -> None:
    """Refuse a run directory that another config made (its outputs would be silently mixed with this config's);
    with `claim`, record this config as the owner of a new run directory."""
    me = config_identity(cfg)
    f = rundir.path / RUN_FILE
    owner = None
    if f.is_file():
        try:
            owner = json.loads(f.read_text(encoding="utf-8")).get("config")
        except json.JSONDecodeError as e:
            raise ConfigError(f"{f}: not valid JSON ({e}); move it away to adopt the run directory") from e
    if owner is not None and owner != me:
        raise ConfigError(
            f"run_dir {rundir.path} was made by another config ({owner}), not {me}: set `run_dir` to another "
            f"folder (or delete {f} to adopt the run directory with its outputs)"
        )
    if claim and owner is None and is_main_process():
        write_json_atomic(f, {"config": me, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})


def stage_depends(stage, cfg: Config) -> tuple[str, ...]:
    """Names of the stages whose output `stage` reads under `cfg`."""
    fn = getattr(stage, "depends", None)
    return tuple(fn(cfg)) if fn is not None else tuple(getattr(stage, "DEPENDS", ()))


def configured_stages(cfg: Config) -> list[str]:
    """`cfg.stages` checked (known names, pipeline order, no repeats), or every stage when it is empty."""
    names = stage_names()
    if not cfg.stages:
        return names
    for s in cfg.stages:
        if s not in names:
            raise ConfigError(f"{cfg.config_path or 'config'}: `stages` names an unknown stage {s!r} "
                              f"(stages, in order: {', '.join(names)})")  # fmt: skip
    order = [names.index(s) for s in cfg.stages]
    for (a, i), (b, j) in zip(
        zip(cfg.stages, order, strict=False), zip(cfg.stages[1:], order[1:], strict=False), strict=False
    ):
        if j == i:
            raise ConfigError(f"{cfg.config_path or 'config'}: `stages` names {a!r} twice")
        if j < i:
            raise ConfigError(
                f"{cfg.config_path or 'config'}: `stages` names {b!r} after {a!r}, but {b} comes first (it "
                f"feeds later stages); the order is: {', '.join(names)}"
            )
    return list(cfg.stages)


def _select(cfg: Config, start: str | None, stop: str | None) -> list[str]:
    names = stage_names()
    i = names.index(get_stage(start).NAME) if start else 0
    j = names.index(get_stage(stop).NAME) if stop else len(names) - 1
    if i > j:
        raise ValueError(f"--from {start} comes after --to {stop}")
    window = names[i : j + 1]
    if start and start == stop:  # `vikhr sft`: the one stage asked for, whether `stages` lists it or not
        return window
    return [n for n in configured_stages(cfg) if n in window]


def fingerprints(cfg: Config) -> dict[str, str]:
    """Every stage's fingerprint under `cfg`: version, config section, input files, and the fingerprints of the
    stages it reads."""
    out: dict[str, str] = {}
    for stage in STAGES:
        deps = stage_depends(stage, cfg)
        for d in deps:
            if d not in out:
                raise RuntimeError(f"stage {stage.NAME} reads {d!r}, which is not an earlier stage")
        out[stage.NAME] = digest(
            {
                "version": stage.VERSION,
                "config": stage.config_section(cfg),
                "inputs": stage.inputs(cfg),
                "up": {d: out[d] for d in deps},
            }
        )
    return out


def plan(
    cfg: Config,
    rundir: RunDir,
    start: str | None = None,
    stop: str | None = None,
    force=(),
    check: bool = True,
) -> list[Plan]:
    """Decide for each selected stage whether it runs, and why; with `check`, a stage reading the output of a
    stage that is neither selected nor finished is an error here, before any work."""
    force = set(force)
    for f in force:
        get_stage(f)
    selected = _select(cfg, start, stop)
    fps = fingerprints(cfg)
    runs: set[str] = set()
    out = []
    for stage in STAGES:
        if stage.NAME not in selected:
            continue
        fp = fps[stage.NAME]
        deps = stage_depends(stage, cfg)
        rec = rundir.manifest.get(stage.NAME)
        rerun = [d for d in deps if d in runs]
        if stage.NAME in force:
            action, reason = "run", "forced"
        elif not rundir.is_done(stage.NAME):
            action, reason = "run", "not run yet"
        elif rerun:
            action, reason = "run", f"{', '.join(rerun)} runs again"
        elif rec.get("fingerprint") != fp:
            action, reason = "run", "config or inputs changed"
        else:
            action, reason = "skip", "up to date"
        if action == "run":
            runs.add(stage.NAME)
            soft = set(getattr(stage, "SOFT", ()))  # read only when finished
            missing = [
                d for d in deps if d not in selected and d not in soft and not rundir.stage_dir(d).is_dir()
            ]
            if missing and check:
                names = " and ".join(f"the {d} stage" for d in missing)
                raise FileNotFoundError(
                    f"stage {stage.NAME} reads the output of {names}, not finished in {rundir.path} and not among "
                    f"the stages to run ({', '.join(selected)}): run {names} first"
                )
        out.append(Plan(stage.NAME, fp, action, reason))
    return out


def reusable(name: str, fingerprint: str, reuse: list[Path]) -> tuple[Path, dict] | None:
    """A finished `name` stage with this fingerprint in one of the `reuse` run directories."""
    for other in reuse:
        other = Path(other)
        if not (other / "manifest.json").is_file() or not (other / name).is_dir():
            continue
        rec = Manifest(other / "manifest.json").get(name)
        if rec and rec.get("fingerprint") == fingerprint:
            return other, rec
    return None


def _link_tree(src: Path, dst: Path) -> None:
    """Copy `src` into the empty folder `dst` with hard links (a copy where links are not possible): no extra disk
    space, and a later rerun in `src` (which replaces its folder) leaves these files as they were."""
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            try:
                os.link(Path(root) / f, dst / rel / f)
            except OSError:
                shutil.copy2(Path(root) / f, dst / rel / f)


def _clear_forced(rundir: RunDir, steps: list[Plan]) -> None:
    """A forced stage starts fresh: its resume state (`<stage>.work`) from an earlier attempt is removed."""
    for p in steps:
        if p.action == "run" and p.reason == "forced":
            rundir.clear_work(p.name)


def run(
    cfg: Config, start=None, stop=None, force=(), dry_run: bool = False, reuse: list[Path] | tuple = ()
) -> list[Plan]:
    """Run the pipeline (or just print the plan with `dry_run`). With `reuse` (other run directories), a stage to
    run whose fingerprint matches a finished stage there is linked from there instead of computed."""
    rundir = open_rundir(cfg)
    check_owner(cfg, rundir)
    steps = plan(cfg, rundir, start, stop, force)
    rundir.forced = {p.name for p in steps if p.action == "run" and p.reason == "forced"}
    for p in steps:
        log.info("%-10s %-4s (%s)", p.name, p.action, p.reason)
    if dry_run:
        return steps
    main = is_main_process()  # under `accelerate launch` every rank runs the stage; rank 0 keeps the books
    check_owner(cfg, rundir, claim=True)
    if main:
        rundir.clean_staging()
        _clear_forced(rundir, steps)
        (rundir.path / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    for p in steps:
        if p.action == "skip":
            continue
        stage = get_stage(p.name)
        t0 = time.time()
        found = reusable(p.name, p.fingerprint, list(reuse)) if p.reason != "forced" else None
        if found is not None:
            other, rec = found
            if main:
                rundir.manifest.drop(p.name)
                with staged_dir(rundir.stage_dir(p.name)) as tmp:
                    _link_tree(other / p.name, tmp)
                rec = {**rec, "reused_from": str(other), "reused_seconds": round(time.time() - t0, 2)}
                rundir.manifest.stages[p.name] = rec
                rundir.manifest.save()
            p.reason = f"reused from {other}"
            log.info("stage %s: same fingerprint as in %s: reused (linked), not recomputed", p.name, other)
            continue
        log.info("stage %s: starting", p.name)
        if main:
            rundir.manifest.drop(p.name)  # a failed rerun must not leave the old record claiming success
        if _launched(cfg, rundir, p):
            continue
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


def _launched(cfg: Config, rundir: RunDir, p: Plan) -> bool:
    """Run a training stage whose config names a `launcher` under `accelerate launch` (the child processes run
    `vikhr <stage>` with the same config and overrides and write the manifest record); False when the stage should
    run in this process."""
    from vikhr.train import launch
    from vikhr.train.dist import under_launcher

    section = getattr(cfg, p.name, None)
    launcher = getattr(section, "launcher", "")
    if not launcher or under_launcher():
        return False
    launch.launcher_config(launcher)  # an unknown name fails here
    ident = config_identity(cfg)  # a shipped config by name: its relative paths stay taken from here
    if ident == "defaults":
        raise ValueError(
            f"{p.name}.launcher needs a config file to pass to the launched processes (use -c FILE)"
        )
    argv = [p.name, "-c", ident, *cfg.overrides]
    argv += ["--force"] if p.reason == "forced" else []
    rc = launch.relaunch(launcher, argv, section.num_processes)
    rundir.manifest = Manifest(rundir.manifest.path)
    if rc != 0 or not rundir.is_done(p.name):
        raise RuntimeError(
            f"stage {p.name} under `accelerate launch` ({launcher}) failed with exit status {rc}"
        )
    return True


def status(cfg: Config) -> list[dict]:
    """Each stage's state (done / stale / not run) with its key metrics."""
    rundir = open_rundir(cfg)
    rows = []
    for p in plan(cfg, rundir, check=False):
        rec = rundir.manifest.get(p.name) or {}
        state = "done" if p.action == "skip" else ("stale" if rundir.is_done(p.name) else "not run")
        rows.append(
            {"stage": p.name, "state": state, "reason": p.reason, "seconds": rec.get("seconds"),
             "metrics": rec.get("metrics", {}), "dir": str(Path(rundir.stage_dir(p.name)))}
        )  # fmt: skip
    return rows
