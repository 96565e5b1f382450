"""The transplant stage on a tiny model: outputs load and generate, rows copied exactly, bad input refused."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from vikhr import pipeline
from vikhr.cli import main
from vikhr.config import load_config
from vikhr.stages import transplant as transplant_stage
from vikhr.transplant.mapping import build_token_map


def make_config(tmp_path: Path, source_model: Path, *extra: str):
    p = tiny_run_config(tmp_path, source_model)
    return p, load_config(p, list(extra))


def test_transplant_stage_end_to_end(tmp_path, tiny_smollm):
    _, cfg = make_config(tmp_path, tiny_smollm)
    steps = pipeline.run(cfg, stop="transplant")
    assert [(s.name, s.action) for s in steps] == [
        ("corpus", "run"),
        ("tokenizer", "run"),
        ("transplant", "run"),
    ]
    out = tmp_path / "run" / "transplant"
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_smollm)
    base_tok = AutoTokenizer.from_pretrained(tiny_smollm)
    assert len(tok) == 1500 and model.config.vocab_size == 1536
    assert model.config.tie_word_embeddings and model.get_output_embeddings().weight.data_ptr() == (
        model.get_input_embeddings().weight.data_ptr()
    )
    assert (
        model.config.eos_token_id
        == tok.convert_tokens_to_ids("<|im_end|>")
        == model.generation_config.eos_token_id
    )
    assert model.config.bos_token_id == tok.bos_token_id
    tmap = build_token_map(tok, base_tok)
    w, bw = model.get_input_embeddings().weight, base.get_input_embeddings().weight
    for i in tmap.ids("copied", "special"):
        assert torch.equal(w[i], bw[tmap.sources[i][0]])
    assert torch.count_nonzero(w[1500:]) == 0
    msgs = [{"role": "user", "content": "Привет"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 3
    report = json.loads((out / "transplant_report.json").read_text())
    assert report["rows"]["copied"] > 256 and report["rows"]["padding"] == 36
    assert set(report["transplanted"]["bits_per_char"]) == {"ru", "en"}
    assert report["calibration"]["losses"][-1] < report["calibration"]["losses"][0]
    assert report["calibration"]["best_epoch"] in (0, 1, 2)
    assert "Greedy continuations" in (out / "transplant_report.md").read_text()
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["transplant"]["metrics"]
    assert m["timings"]["transplant_s"] < 60
    # unchanged: all skip; a transplant setting changes: only transplant reruns
    assert [s.action for s in pipeline.run(cfg, stop="pretrain")] == [
        "skip",
        "skip",
        "skip",
        "run",
    ]  # not run yet
    assert [s.action for s in pipeline.run(cfg, stop="pretrain")] == ["skip", "skip", "skip", "skip"]
    cfg2 = load_config(tmp_path / "exp.yaml", ["transplant.method=mean"])
    assert [s.action for s in pipeline.run(cfg2, stop="pretrain")] == ["skip", "skip", "run", "run"]
    assert json.loads((out / "transplant_report.json").read_text())["calibration"] is None


def test_tokenizer_from_another_base_is_refused(tmp_path, tiny_smollm, tiny_mistral):
    _, cfg = make_config(tmp_path, tiny_smollm)
    pipeline.run(cfg, stop="tokenizer")
    _, other = make_config(tmp_path, tiny_mistral)
    rundir = pipeline.open_rundir(other)
    with pytest.raises(ValueError, match="was built for base"):
        transplant_stage.run(other, rundir)
    assert not (tmp_path / "run" / "transplant").exists()


def test_failure_midway_leaves_no_output(tmp_path, tiny_smollm, monkeypatch):
    _, cfg = make_config(tmp_path, tiny_smollm)
    pipeline.run(cfg, stop="tokenizer")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline.run(cfg)
    run = tmp_path / "run"
    assert not (run / "transplant").exists() and not list(run.glob(".staging-*"))
    assert "transplant" not in json.loads((run / "manifest.json").read_text())["stages"]


def test_bad_inputs(tmp_path, tiny_smollm, capsys):
    path, _ = make_config(tmp_path, tiny_smollm)
    assert main(["run", "-c", str(path), "transplant.method=magic"]) == 2
    assert "transplant.method" in capsys.readouterr().err
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    assert main(["run", "-c", str(path), f"source_model={no_weights}"]) == 2
    assert "has no tokenizer files" in capsys.readouterr().err
    for f in tiny_smollm.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, no_weights / f.name)
    assert main(["run", "-c", str(path), f"source_model={no_weights}"]) == 2
    assert "weights" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    p2, _ = make_config(fresh, tiny_smollm)
    assert main(["transplant", "-c", str(p2)]) == 2
    assert "run the tokenizer stage first" in capsys.readouterr().err
