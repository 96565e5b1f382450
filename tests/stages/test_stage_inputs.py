"""Every stage reads the same target text: the corpus stage's filtered output when it exists (the transplant's
calibration included), else `data.target`."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_run_config

from vikhr import pipeline
from vikhr.config import load_config
from vikhr.rundir import RunDir
from vikhr.stages import common
from vikhr.stages import transplant as transplant_stage

MARK = "Project Gutenberg License, see www.gutenberg.org for details"


def make_config(tmp_path: Path, source_model: Path):
    extra = tmp_path / "extra.txt"
    extra.write_text("\n".join([MARK] * 50), encoding="utf-8")  # boilerplate: the corpus stage drops it
    settings = {
        "data": {"target": ["bundled:ru", str(extra)]},
        "transplant": {
            "method": "calibrated",
            "eval_lines": 3,
            "calibration_tokens": 200_000,
            "calibration_epochs": 1,
        },
    }
    return load_config(tiny_run_config(tmp_path, source_model, settings))


def test_calibration_reads_the_corpus_output(tmp_path, tiny_smollm, monkeypatch):
    cfg = make_config(tmp_path, tiny_smollm)
    rundir = RunDir(tmp_path / "run")
    assert common.target_specs(cfg, rundir)[1] == "data.target"
    seen: list[str] = []
    real = transplant_stage.calibrate

    def spy(model, stream, rows, tied, opts):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(rundir.stage_dir("tokenizer") / "hf")
        seen.append(tok.decode(stream))
        return real(model, stream, rows, tied, opts)

    monkeypatch.setattr(transplant_stage, "calibrate", spy)
    pipeline.run(cfg, stop="transplant")
    rundir = RunDir(tmp_path / "run")  # the manifest as the run left it
    specs, source, field = common.target_specs(cfg, rundir)
    assert (
        source == "corpus stage" and specs == [str(rundir.stage_dir("corpus") / "data")] and field == "text"
    )
    assert len(seen) == 1 and len(seen[0]) > 10_000
    assert "gutenberg" not in seen[0].lower()  # raw data.target would have put the boilerplate in
