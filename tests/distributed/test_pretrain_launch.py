"""The pretrain stage under launchers: two torchrun processes on CPU (gloo) write one output with world size 2;
`vikhr pretrain --launcher FILE` re-executes itself under `accelerate launch`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from vikhr.cli import main

pytestmark = pytest.mark.distributed

CONFIG = """run_dir: run
pretrain:
  seq_len: 32
  batch_size: 2
  grad_accum: 1
  max_steps: 3
  max_documents: 3
  report_to: []
  logging_steps: 1
  eval_max_rows: 4
transplant:
  eval_lines: 3
"""


def _setup(tmp_path: Path, tiny_smollm: Path) -> Path:
    shutil.copytree(tiny_smollm, tmp_path / "run" / "transplant" / "model")
    (tmp_path / "exp.yaml").write_text(CONFIG, encoding="utf-8")
    return tmp_path / "exp.yaml"


def _check_output(run: Path, world: int) -> None:
    report = json.loads((run / "pretrain" / "pretrain_report.json").read_text())
    assert report["data"]["world_size"] == world and report["data"]["steps"] == 3
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    assert manifest["pretrain"]["metrics"]["steps"] == 3
    assert not list(run.glob(".staging-*"))
    AutoModelForCausalLM.from_pretrained(run / "pretrain" / "model")


def test_stage_in_two_torchrun_processes(tmp_path, tiny_smollm):
    cfg = _setup(tmp_path, tiny_smollm)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vikhr", "pretrain", "-c", str(cfg)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    _check_output(tmp_path / "run", world=2)


def test_launcher_flag_reexecutes_under_accelerate(tmp_path, tiny_smollm, monkeypatch):
    cfg = _setup(tmp_path, tiny_smollm)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    launcher = Path(__file__).with_name("accelerate_cpu.yaml")
    assert main(["pretrain", "-c", str(cfg), "--launcher", str(launcher)]) == 0
    _check_output(tmp_path / "run", world=1)
