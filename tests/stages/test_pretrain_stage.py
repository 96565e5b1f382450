"""The pretrain stage on a tiny model: a plain HF model comes out, an interrupted run resumes to the same weights
as a straight one, bad input is refused with a clear message; and (slow) SmolLM2 learns Russian from RusLit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from vikhr.cli import main
from vikhr.config import ConfigError, load_config
from vikhr.rundir import RunDir
from vikhr.stages import pretrain
from vikhr.train import TrainingDiverged
from vikhr.train.trainer import KLTrainer

SETTINGS = [
    "pretrain.seq_len=32", "pretrain.batch_size=2", "pretrain.grad_accum=2", "pretrain.max_steps=4",
    "pretrain.save_steps=2", "pretrain.eval_steps=2", "pretrain.max_documents=3", "pretrain.report_to=[]",
    "pretrain.lr=1e-2", "pretrain.warmup_steps=0", "pretrain.eval_max_rows=4", "transplant.eval_lines=3",
    "pretrain.logging_steps=1",
]  # fmt: skip


def make_run(tmp_path: Path, model_dir: Path, *extra: str, name: str = "run"):
    """A run directory whose transplant stage output is `model_dir` (copied), and its config."""
    run = tmp_path / name
    shutil.copytree(model_dir, run / "transplant" / "model")
    cfg = load_config(None, [f"run_dir={run}", "data.target=[bundled:ru]", *SETTINGS, *extra])
    return cfg, RunDir(run)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).named_parameters())


def test_stage_writes_a_plain_model_and_a_report(tmp_path, tiny_smollm):
    cfg, rundir = make_run(tmp_path, tiny_smollm)
    record = pretrain.run(cfg, rundir)
    out = rundir.stage_dir("pretrain")
    assert record.metrics["steps"] == 4
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.use_cache is True
    with safe_open(str(next((out / "model").glob("*.safetensors"))), framework="pt") as f:
        assert all(not k.startswith(("module.", "_orig_mod.")) for k in f.keys())
    tok = AutoTokenizer.from_pretrained(out / "model")
    ids = tok("Привет", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3
    start = weights(tiny_smollm)
    assert any(not torch.equal(v, start[k]) for k, v in model.named_parameters())
    report = json.loads((out / "pretrain_report.json").read_text())
    assert report["data"]["source"] == "data.target" and report["data"]["eval_documents"] >= 1
    assert set(report["bits_per_char"]) == {"transplanted", "trained"}
    history = json.loads((out / "log_history.json").read_text())
    assert [h["kl"] for h in history if "kl" in h][0] < 1e-6  # KL to the start is 0 at the first step
    assert any("eval_target_ce" in h for h in history)
    assert (out / "loss.png").stat().st_size > 1000
    assert "Held-out bits per character" in (out / "pretrain_report.md").read_text()


def test_interrupted_run_resumes_to_the_straight_runs_weights(tmp_path, tiny_smollm, monkeypatch):
    cfg, rundir = make_run(tmp_path, tiny_smollm, name="straight")
    pretrain.run(cfg, rundir)
    straight = weights(rundir.stage_dir("pretrain") / "model")

    cfg, rundir = make_run(tmp_path, tiny_smollm, name="resumed")
    step = KLTrainer.training_step

    def crash_after_checkpoint(self, *a, **k):
        if self.state.global_step == 3:
            raise KeyboardInterrupt("power cut")
        return step(self, *a, **k)

    monkeypatch.setattr(KLTrainer, "training_step", crash_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run(cfg, rundir)
    assert (rundir.path / pretrain.WORK / "checkpoint-2").is_dir() and not rundir.stage_dir(
        "pretrain"
    ).exists()
    monkeypatch.setattr(KLTrainer, "training_step", step)
    pretrain.run(cfg, rundir)
    report = json.loads((rundir.stage_dir("pretrain") / "pretrain_report.json").read_text())
    assert report["data"]["resumed_from"].endswith("checkpoint-2")
    for k, v in weights(rundir.stage_dir("pretrain") / "model").items():
        torch.testing.assert_close(v, straight[k], rtol=0, atol=1e-5)


def test_changed_settings_start_fresh(tmp_path, tiny_smollm):
    cfg, rundir = make_run(tmp_path, tiny_smollm)
    pretrain.run(cfg, rundir)
    cfg = load_config(
        None, [f"run_dir={rundir.path}", "data.target=[bundled:ru]", *SETTINGS, "pretrain.lr=1e-3"]
    )
    pretrain.run(cfg, rundir)
    report = json.loads((rundir.stage_dir("pretrain") / "pretrain_report.json").read_text())
    assert report["data"]["resumed_from"] is None


def test_bad_inputs(tmp_path, tiny_smollm, capsys):
    # a corpus too short for one row
    cfg, rundir = make_run(tmp_path, tiny_smollm, "pretrain.seq_len=100000", name="short")
    with pytest.raises(ValueError, match="too short for one sequence of seq_len=100000"):
        pretrain.run(cfg, rundir)
    # an empty corpus
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    cfg, rundir = make_run(
        tmp_path, tiny_smollm, f"pretrain.data=[{tmp_path / 'empty.txt'}]", name="empty-data"
    )
    with pytest.raises(ValueError, match="no text in pretrain.data"):
        pretrain.run(cfg, rundir)
    # a tokenizer larger than the model's embedding
    small = tmp_path / "small"
    shutil.copytree(tiny_smollm, small)
    conf = json.loads((small / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(small)
    model.resize_token_embeddings(conf["vocab_size"] - 10)
    model.save_pretrained(small)
    cfg, rundir = make_run(tmp_path, small, name="mismatch")
    with pytest.raises(ValueError, match="embedding has .* rows"):
        pretrain.run(cfg, rundir)
    # no transplanted model yet; an unknown launcher; a preset contradicted by an explicit value
    cfg = load_config(None, [f"run_dir={tmp_path / 'empty'}"])
    with pytest.raises(FileNotFoundError, match="run the transplant stage first"):
        pretrain.run(cfg, RunDir(tmp_path / "empty"))
    assert main(["pretrain", "--launcher", "nope"]) == 2
    assert "unknown launcher 'nope'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="pretrain.lr: 0.1.*preset: paper"):
        load_config(None, ["pretrain.preset=paper", "pretrain.lr=0.1"])
    paper = load_config(None, ["pretrain.preset=paper", "pretrain.lr=0.001"]).pretrain
    assert (paper.lr, paper.adam_beta1, paper.grad_accum, paper.batch_size, paper.seq_len) == (
        1e-3,
        0.99,
        128,
        3,
        1024,
    )


def test_nan_stops_the_stage_and_names_the_checkpoint(tmp_path, tiny_smollm, monkeypatch):
    cfg, rundir = make_run(tmp_path, tiny_smollm)
    step = KLTrainer.training_step

    def poisoned(self, model, *a, **k):
        if self.state.global_step == 2:
            model.model.norm.weight.data.fill_(float("nan"))
        return step(self, model, *a, **k)

    monkeypatch.setattr(KLTrainer, "training_step", poisoned)
    with pytest.raises(TrainingDiverged, match="optimizer step 3.*checkpoint-2"):
        pretrain.run(cfg, rundir)
    assert not rundir.stage_dir("pretrain").exists()


@pytest.mark.slow
@pytest.mark.shared
def test_smollm2_learns_russian_from_ruslit(tmp_path, shared):
    """The real SmolLM2 (its own vocabulary, as the transplanted model) trained on RusLit for a few steps:
    held-out Russian bits per char and the training CE fall."""
    from vikhr.models import resolve_model

    src = Path(resolve_model("smollm2-135m-instruct"))
    cfg, rundir = make_run(
        tmp_path, src, f"pretrain.data=[{shared / 'ru' / 'ruslit'}]", "pretrain.seq_len=128",
        "pretrain.batch_size=4", "pretrain.grad_accum=1", "pretrain.max_steps=8", "pretrain.lr=3e-4",
        "pretrain.warmup_steps=2", "pretrain.save_steps=8", "pretrain.eval_steps=8", "pretrain.max_documents=8",
        "transplant.eval_lines=20",
    )  # fmt: skip
    pretrain.run(cfg, rundir)
    report = json.loads((rundir.stage_dir("pretrain") / "pretrain_report.json").read_text())
    bpc = report["bits_per_char"]
    assert bpc["trained"]["ru"] < bpc["transplanted"]["ru"] - 0.05
    history = [
        h for h in json.loads((rundir.stage_dir("pretrain") / "log_history.json").read_text()) if "ce" in h
    ]
    assert sum(h["ce"] for h in history[-3:]) < sum(h["ce"] for h in history[:3])
