"""The pretrain stage on a GPU under each shipped launcher (one process each: FSDP2 and ZeRO wrap even then).

Run on a machine with CUDA: `.venv/bin/python -m pytest -m gpu tests/gpu`. zero2/zero3 need `pip install -e .[deepspeed]`.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CONFIG = """run_dir: run
pretrain:
  seq_len: 64
  batch_size: 2
  grad_accum: 2
  max_steps: 4
  save_steps: 2
  max_documents: 4
  report_to: []
  logging_steps: 1
  eval_max_rows: 4
transplant:
  eval_lines: 5
"""


@pytest.mark.parametrize("launcher", ["ddp", "fsdp", "zero2", "zero3"])
@pytest.mark.parametrize("reference", ["init", "none"])
def test_stage_under_launcher(tmp_path, tiny_mistral, launcher, reference):
    if launcher.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    shutil.copytree(tiny_mistral, tmp_path / "run" / "transplant" / "model")
    (tmp_path / "exp.yaml").write_text(CONFIG, encoding="utf-8")
    cmd = [sys.executable, "-m", "vikhr", "pretrain", "-c", "exp.yaml", f"pretrain.reference={reference}",
           "--launcher", launcher, "--num-processes", "1"]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    out = tmp_path / "run" / "pretrain"
    history = json.loads((out / "log_history.json").read_text())
    losses = [h["ce"] for h in history if "ce" in h and "loss" in h]
    assert len(losses) == 4 and all(x == x for x in losses)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    start = AutoModelForCausalLM.from_pretrained(tiny_mistral)
    changed = [not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters(), strict=True)]
    assert all(changed), "every weight (body, embeddings, untied head) should have trained"
