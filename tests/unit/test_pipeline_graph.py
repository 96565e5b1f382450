"""The pipeline is a graph: a changed setting reruns its stage and the stages that read it, nothing else; a stage
list out of order, a run directory made by another config and a stage reading an unfinished one fail before work;
a stage with the same fingerprint in another run directory is reused (linked), not recomputed; `vikhr ablate`
validates every variant first and computes each shared stage once."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import vikhr.stages
from vikhr import pipeline
from vikhr.ablate import build_studies, run_ablation, split_values
from vikhr.config import ConfigError, load_config
from vikhr.manifest import Manifest, StageRecord

CALLS: list[str] = []


def _fake(name: str, deps: tuple[str, ...], key: str):
    """A fake stage whose config section is the one field of `cfg.llm` named by
    `key`: each fake stage has its own knob."""

    def run(cfg, rundir):
        CALLS.append(name)
        with rundir.staging(name) as out:
            ups = {d: (rundir.stage_dir(d) / "out.txt").read_text() for d in deps}
            (out / "out.txt").write_text(f"{name}:{getattr(cfg.llm, key)}:{sorted(ups.items())}")
        return StageRecord(name=name, metrics={"value": getattr(cfg.llm, key)})

    return SimpleNamespace(
        NAME=name, VERSION=1, DEPENDS=deps, run=run, inputs=lambda cfg: {},
        config_section=lambda cfg: {key: getattr(cfg.llm, key)},
    )  # fmt: skip


@pytest.fixture
def graph(monkeypatch):
    """a -> b, c (independent), d <- (b, c): the shape of corpus -> tokenizer ... and reward -> instruct -> sft."""
    stages = [
        _fake("a", (), "model"),
        _fake("b", ("a",), "temperature"),
        _fake("c", (), "max_tokens"),
        _fake("d", ("b", "c"), "max_retries"),
    ]
    monkeypatch.setattr(vikhr.stages, "STAGES", stages)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    CALLS.clear()
    return stages


def _cfg(tmp_path: Path, run_dir: str = "run", name: str = "exp.yaml", **llm) -> object:
    path = tmp_path / name
    path.write_text(json.dumps({"run_dir": run_dir, "llm": {"model": "m", **llm}}), encoding="utf-8")
    return load_config(path)


def test_a_change_reruns_only_the_stage_and_what_reads_it(graph, tmp_path):
    pipeline.run(_cfg(tmp_path))
    assert CALLS == ["a", "b", "c", "d"]
    CALLS.clear()
    steps = pipeline.run(_cfg(tmp_path))
    assert CALLS == [] and {p.action for p in steps} == {"skip"}
    steps = pipeline.run(_cfg(tmp_path, max_tokens=77))  # c's knob: c and d, not a or b
    assert CALLS == ["c", "d"]
    assert [(p.name, p.action) for p in steps] == [("a", "skip"), ("b", "skip"), ("c", "run"), ("d", "run")]
    assert steps[3].reason == "c runs again"
    CALLS.clear()
    pipeline.run(_cfg(tmp_path, max_tokens=77), force=["a"])  # forcing a reruns b and d, not c
    assert CALLS == ["a", "b", "d"]


def test_stage_list_order_and_missing_inputs_fail_before_work(graph, tmp_path):
    cfg = _cfg(tmp_path)
    cfg.stages = ["b", "a"]
    with pytest.raises(ConfigError, match="names 'a' after 'b'"):
        pipeline.run(cfg)
    cfg.stages = ["a", "nope"]
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        pipeline.run(cfg)
    cfg.stages = ["a", "b", "d"]  # d reads c, which is neither listed nor finished
    with pytest.raises(FileNotFoundError, match="stage d reads the output of the c stage, not finished"):
        pipeline.run(cfg)
    assert CALLS == []
    cfg.stages = ["a", "c"]
    pipeline.run(cfg)
    assert CALLS == ["a", "c"]


def test_run_directory_of_another_config_is_refused(graph, tmp_path):
    pipeline.run(_cfg(tmp_path))
    CALLS.clear()
    other = _cfg(tmp_path, name="other.yaml")
    with pytest.raises(ConfigError, match="was made by another config"):
        pipeline.run(other)
    assert CALLS == [] and (tmp_path / "run" / "d" / "out.txt").is_file()  # nothing touched


def test_same_fingerprint_in_another_run_directory_is_linked_not_recomputed(graph, tmp_path):
    pipeline.run(_cfg(tmp_path))
    CALLS.clear()
    variant = _cfg(tmp_path, run_dir="variant", max_tokens=5)
    steps = pipeline.run(variant, reuse=[tmp_path / "run"])
    assert CALLS == ["c", "d"]  # a and b come from the first run directory
    assert [p.reason.startswith("reused") for p in steps] == [True, True, False, False]
    a_first, a_linked = tmp_path / "run" / "a" / "out.txt", tmp_path / "variant" / "a" / "out.txt"
    assert a_linked.read_text() == a_first.read_text()
    assert a_linked.stat().st_ino == a_first.stat().st_ino  # a hard link: no second copy on disk
    man = json.loads((tmp_path / "variant" / "manifest.json").read_text())
    assert man["stages"]["a"]["reused_from"] == str(tmp_path / "run")
    CALLS.clear()
    pipeline.run(_cfg(tmp_path))  # rerunning the first directory keeps the variant's linked files intact
    assert CALLS == []


def test_real_graph_changes_stay_downstream():
    """On the shipped stages: a setting reruns its stage and its readers only."""
    base = pipeline.fingerprints(load_config("demo"))

    def changed(*overrides: str) -> set[str]:
        fps = pipeline.fingerprints(load_config("demo", list(overrides)))
        return {k for k in fps if fps[k] != base[k]}

    later = {"evaluate"} | ({"report"} if "report" in base else set())
    assert changed("sft.lr=1e-4") == {"sft"} | later
    assert changed("evaluate.limit=5") == later
    assert changed("reward.epochs=2") == {"reward", "instruct", "sft"} | later
    assert changed("pretrain.kl_weight=0.5") == {"pretrain", "sft"} | later
    assert "reward" not in changed("tokenizer.vocab_size=16000")


# ------------------------------------------------------------------- vikhr ablate on the same fake graph


def _config(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps({"run_dir": "run", "llm": {"model": "m"}}), encoding="utf-8")
    return str(path)


def test_split_values_keeps_brackets():
    assert split_values("instruct.use=[a],[a, b],[]") == ("instruct.use", ["[a]", "[a, b]", "[]"])
    assert split_values("tokenizer.vocab_size=16000, 32000") == ("tokenizer.vocab_size", ["16000", "32000"])
    for bad in ("tokenizer.vocab_size", "x=1", "=1,2", "x=1,"):
        with pytest.raises(ConfigError):
            split_values(bad)


def test_unknown_key_fails_before_anything_runs(graph, tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain\.no_such_key"):
        build_studies(_config(tmp_path), ["llm.max_tokens=1,2", "pretrain.no_such_key=1,2"], [], [], None)
    with pytest.raises(ConfigError, match="must be int"):
        build_studies(_config(tmp_path), ["llm.max_tokens=1,lots"], [], [], None)
    with pytest.raises(ConfigError, match="unknown"):
        build_studies(_config(tmp_path), [], ["nope"], [], None)
    assert CALLS == [] and not (tmp_path / "run-ablate").exists()


def test_shared_stages_are_computed_once(graph, tmp_path):
    # llm.max_tokens is stage c's knob: a and b are the same in every variant, c and d differ
    base, studies = build_studies(_config(tmp_path), ["llm.max_tokens=1,2,3"], [], [], None)
    results = run_ablation(base, studies)
    assert CALLS == ["a", "b", "c", "d", "c", "d", "c", "d"]
    folder = tmp_path / "run-ablate" / "llm.max_tokens"
    table = json.loads((folder / "table.json").read_text())
    assert [r["computed"] for r in table["rows"]] == [["a", "b", "c", "d"], ["c", "d"], ["c", "d"]]
    assert {s["stage"] for s in table["shared"]} == {"a", "b"}
    assert [r["metrics"]["c.value"] for r in table["rows"]] == [1, 2, 3]  # the column that varies
    assert table["columns"] == ["c.value"]
    assert results[0]["plot"].stat().st_size > 5000 and "| 2 | 2 |" in results[0]["markdown"].read_text()
    linked = Manifest(folder / "llm.max_tokens=3" / "manifest.json").get("b")
    assert linked["reused_from"] == str(folder / "llm.max_tokens=1")
    CALLS.clear()
    run_ablation(*build_studies(_config(tmp_path), ["llm.max_tokens=1,2,3"], [], [], None))
    assert CALLS == []  # a rerun finds every variant finished


def test_base_run_directory_is_reused(graph, tmp_path):
    from vikhr import pipeline
    from vikhr.config import load_config

    pipeline.run(load_config(_config(tmp_path)))
    CALLS.clear()
    run_ablation(*build_studies(_config(tmp_path), ["llm.max_retries=7,9"], [], [], None))
    assert CALLS == ["d", "d"]  # a, b, c come from the config's own run directory


def test_a_training_stage_with_a_launcher_runs_under_accelerate(monkeypatch, tmp_path):
    """`pretrain.launcher: fsdp` makes `vikhr run` re-execute that stage under `accelerate launch` (here: a fake
    launcher that runs the child in-process, as rank 0), with the same config and overrides; then goes on."""
    import os

    import vikhr.train.launch
    from vikhr import cli

    stages = [
        _fake("a", (), "model"),
        _fake("pretrain", ("a",), "temperature"),
        _fake("d", ("pretrain",), "max_tokens"),
    ]
    monkeypatch.setattr(vikhr.stages, "STAGES", stages)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    CALLS.clear()
    launched = []

    def fake_relaunch(name, argv, num_processes=0):
        launched.append((name, argv, num_processes))
        monkeypatch.setenv("LOCAL_RANK", "0")
        try:
            return cli.main(argv)
        finally:
            os.environ.pop("LOCAL_RANK")

    monkeypatch.setattr(vikhr.train.launch, "relaunch", fake_relaunch)
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps({"run_dir": "run", "pretrain": {"launcher": "fsdp", "num_processes": 8}}))
    cfg = load_config(path, ["llm.temperature=0.5"])
    pipeline.run(cfg)
    assert CALLS == ["a", "pretrain", "d"]
    assert launched == [("fsdp", ["pretrain", "-c", str(path), "llm.temperature=0.5"], 8)]
    assert "0.5" in (tmp_path / "run" / "pretrain" / "out.txt").read_text()
    # the launcher is not part of the fingerprint: the same training, spread differently
    assert pipeline.fingerprints(cfg) == pipeline.fingerprints(
        load_config(path, ["llm.temperature=0.5", "pretrain.launcher="])
    )
    cfg.pretrain.launcher = "no-such-launcher"
    with pytest.raises(ValueError, match="unknown launcher"):
        pipeline.run(cfg, force=["pretrain"])


def test_cli_bad_ablation_key_exits_2_naming_it(tmp_path, capsys):
    from vikhr.cli import main

    assert main(["ablate", "-c", _config(tmp_path), "--grid", "pretrain.kl_wieght=0,1"]) == 2
    assert "pretrain.kl_wieght" in capsys.readouterr().err and not (tmp_path / "run-ablate").exists()
