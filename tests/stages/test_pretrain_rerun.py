"""A rerun never publishes stale results: the pretrain stage resumes only for exactly the inputs that produced its
checkpoints. After a finished run, an upstream change (the transplant method) or `--force pretrain` trains from
step 0 and publishes new weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import tiny_run_config
from transformers import AutoModelForCausalLM

from vikhr import pipeline
from vikhr.config import load_config


def make_config(tmp_path: Path, source_model: Path, *extra: str):
    settings = {
        "transplant": {"method": "mean", "eval_lines": 3, "prompts": ["Привет"]},
        "pretrain": {"max_steps": 3, "save_steps": 3, "eval_steps": 3, "lr": 1e-2, "warmup_steps": 0,
                     "eval_max_rows": 2, "logging_steps": 1},
    }  # fmt: skip
    return load_config(tiny_run_config(tmp_path, source_model, settings), list(extra))


def _report(run: Path) -> dict:
    return json.loads((run / "pretrain" / "pretrain_report.json").read_text(encoding="utf-8"))


def _trained_steps(run: Path) -> list[int]:
    history = json.loads((run / "pretrain" / "log_history.json").read_text(encoding="utf-8"))
    return sorted({h["step"] for h in history if "loss" in h})


def _weights(run: Path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(run / "pretrain" / "model", dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_upstream_change_and_force_train_from_step_0(tmp_path, tiny_smollm):
    run = tmp_path / "run"
    cfg = make_config(tmp_path, tiny_smollm)
    pipeline.run(cfg, stop="pretrain")
    assert _report(run)["data"]["resumed_from"] is None and _trained_steps(run) == [1, 2, 3]
    first = _weights(run)
    assert (run / "pretrain.work" / "checkpoint-3").is_dir()  # a finished run leaves its last checkpoint

    # an upstream change: the transplant method. Every stage from transplant on reruns, pretrain from step 0.
    cfg = make_config(tmp_path, tiny_smollm, "transplant.method=random")
    steps = {p.name: p.action for p in pipeline.run(cfg, stop="pretrain")}
    assert steps == {"corpus": "skip", "tokenizer": "skip", "transplant": "run", "pretrain": "run"}
    assert _report(run)["data"]["resumed_from"] is None and _trained_steps(run) == [1, 2, 3]
    second = _weights(run)
    assert any(not torch.equal(second[k], first[k]) for k in first)

    # --force pretrain: the same inputs, but a fresh run (not a resume of the finished one).
    steps = {
        p.name: p.action for p in pipeline.run(cfg, start="pretrain", stop="pretrain", force=["pretrain"])
    }
    assert steps == {"pretrain": "run"}
    assert _report(run)["data"]["resumed_from"] is None and _trained_steps(run) == [1, 2, 3]
    third = _weights(run)
    assert all(torch.equal(third[k], second[k]) for k in second)  # same inputs and seed: the same weights


def test_interrupted_work_with_other_inputs_is_not_resumed(tmp_path, tiny_smollm):
    """A checkpoint left by a run on different training text is not resumed, even with the same settings."""
    run = tmp_path / "run"
    cfg = make_config(tmp_path, tiny_smollm, "pretrain.max_steps=2", "pretrain.save_steps=2")
    pipeline.run(cfg, stop="pretrain")
    (run / "pretrain").rename(run / "pretrain.old")  # as if the stage had died after its last checkpoint
    text = tmp_path / "other.txt"
    text.write_text(
        "\n".join(f"Совсем другой текст номер {i}, длинный и новый." for i in range(200)), "utf-8"
    )
    cfg = make_config(
        tmp_path, tiny_smollm, "pretrain.max_steps=2", "pretrain.save_steps=2", f"pretrain.data=[{text}]"
    )
    pipeline.run(cfg, start="pretrain", stop="pretrain")
    assert _report(run)["data"]["resumed_from"] is None and _trained_steps(run) == [1, 2]
    stamp = json.loads((run / "pretrain.work" / "fingerprint.json").read_text(encoding="utf-8"))
    assert set(stamp["parts"]) >= {"model", "text", "settings", "code", "transplant", "world_size"}
