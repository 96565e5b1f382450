"""benchmarks/pretrain_throughput.py --smoke: all four variants train a tiny Mistral on CPU and are reported."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pretrain_throughput.py"


@pytest.fixture
def one_thread():
    """One torch thread: the tiny steps are otherwise dominated by thread contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_smoke_reports_all_variants(tmp_path, one_thread, monkeypatch):
    spec = importlib.util.spec_from_file_location("pretrain_throughput", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    out = tmp_path / "x.json"

    assert bench.main(["--smoke", "--out", str(out)]) == 0

    result = json.loads(out.read_text(encoding="utf-8"))
    variants = result["variants"]
    assert set(variants) == {"hf_ce", "hf_ce_kl", "vikhr_ce", "vikhr_ce_kl"}
    for name, rec in variants.items():
        assert rec["status"] == "ok", (name, rec["error"])
        assert rec["tokens_per_s"] > 0
        assert len(rec["step_times_s"]) == 5  # 2 warmup + 3 timed
        assert all(math.isfinite(t) and t > 0 for t in rec["step_times_s"])
        assert math.isfinite(rec["median_step_s"]) and math.isfinite(rec["train_loss"])
    for name in ("hf_ce_kl", "vikhr_ce_kl"):
        assert variants[name]["flops_per_token_with_ref"] > variants[name]["flops_per_token"]
    for name in ("hf_ce", "vikhr_ce"):
        assert variants[name]["flops_per_token_with_ref"] is None
    # same seed, same data, KL = 0 at the start: every variant's loss is essentially the same CE
    losses = [rec["train_loss"] for rec in variants.values()]
    assert max(losses) - min(losses) < 1e-3
    assert result["goals"]["kl_speedup_vs_hf"]["value"] > 0
    assert result["goals"]["kl_overhead_vs_ce"]["value"] > 0
