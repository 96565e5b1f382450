"""SLERP / linear merges: the formula against a reference, edge cases, and whole tiny model folders."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model_folder

from vikhr.merge import (
    DOT_THRESHOLD,
    add_merge_command,
    check_state_dicts,
    cosine,
    lerp,
    merge_models,
    merge_tensor,
    slerp,
)


def reference_slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """The textbook / mergekit formula in float64 numpy, written independently of vikhr.merge."""
    v0, v1 = a.double().numpy().ravel(), b.double().numpy().ravel()
    d = float(np.sum(v0 / np.linalg.norm(v0) * (v1 / np.linalg.norm(v1))))
    if abs(d) > 0.9995:
        res = (1 - t) * v0 + t * v1
    else:
        theta = np.arccos(d)
        res = np.sin((1 - t) * theta) / np.sin(theta) * v0 + np.sin(t * theta) / np.sin(theta) * v1
    return torch.from_numpy(res.reshape(a.shape)).float()


def test_slerp_endpoints_are_the_inputs():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert torch.equal(slerp(a, b, 0.0), a)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_circle():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    mid = slerp(a, b, 0.5)
    assert mid.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert cosine(mid, a) == pytest.approx(cosine(mid, b), abs=1e-6)
    assert cosine(mid, a) == pytest.approx(math.cos(math.pi / 4), abs=1e-6)
    # lerp would cut the chord instead: norm sqrt(0.5)
    assert lerp(a, b, 0.5).norm().item() == pytest.approx(math.sqrt(0.5), abs=1e-6)


def test_nearly_parallel_and_antiparallel_fall_back_to_lerp():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(64, generator=g)
    b = 2.0 * a + 1e-3 * torch.randn(64, generator=g)
    assert abs(cosine(a, b)) > DOT_THRESHOLD
    assert torch.equal(slerp(a, b, 0.3), lerp(a, b, 0.3))
    assert torch.allclose(slerp(a, -a, 0.5), torch.zeros(64))  # lerp of opposite vectors: the origin


@pytest.mark.parametrize("t", [0.1, 0.5, 0.77])
def test_slerp_matches_reference_on_random_tensors(t):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(32, 16, generator=g), 3.0 * torch.randn(32, 16, generator=g)
    assert torch.allclose(slerp(a, b, t), reference_slerp(a, b, t), rtol=1e-5, atol=1e-5)
    # unnormalised inputs: the norms are interpolated too, not forced to 1
    assert not torch.allclose(slerp(a, b, t).norm(), torch.tensor(1.0))


def test_bf16_in_bf16_out():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(10, 10, generator=g), torch.randn(10, 10, generator=g)
    out = slerp(a.bfloat16(), b.bfloat16(), 0.4)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference_slerp(a, b, 0.4), atol=0.05)


def test_check_state_dicts_shape_mismatch_names_tensor():
    sd_a = {"w": torch.zeros(3), "model.embed_tokens.weight": torch.zeros(40, 4)}
    sd_b = {"w": torch.zeros(3), "model.embed_tokens.weight": torch.zeros(49, 4)}
    with pytest.raises(
        ValueError, match=r"model\.embed_tokens\.weight.*\(40, 4\).*\(49, 4\).*transplant/model"
    ):
        check_state_dicts(sd_a, sd_b)


def test_int_buffers_are_copied_and_ties_must_match(tmp_path):
    emb_a, emb_b = torch.randn(5, 4), torch.randn(5, 4)
    sd_a = {"emb": emb_a, "head": emb_a, "steps": torch.tensor([3, 4])}
    sd_b = {"emb": emb_b, "head": emb_b, "steps": torch.tensor([3, 4])}
    assert check_state_dicts(sd_a, sd_b) == {"head": "emb"}
    steps, stats = merge_tensor(sd_a["steps"], sd_b["steps"], "linear", 0.5)
    assert torch.equal(steps, sd_a["steps"]) and steps.dtype == torch.int64 and stats["copied"]

    with pytest.raises(ValueError, match="non-float tensors differ"):
        merge_tensor(sd_a["steps"], torch.tensor([3, 5]), "linear", 0.5)
    with pytest.raises(ValueError, match="head is tied to emb in model A"):
        check_state_dicts(sd_a, {**sd_b, "head": emb_b.clone()})
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_models("a", "b", tmp_path / "out", "ties", 0.5)


# --- whole model folders -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(bytelevel_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny tied Llama folders with the SmolLM2-like tokenizer and different random weights."""
    tok = bytelevel_tokenizer
    torch.manual_seed(0)
    a = make_model_folder(tmp_path_factory.mktemp("merge-a"), tok)
    torch.manual_seed(1)
    b = make_model_folder(tmp_path_factory.mktemp("merge-b"), tok)
    return a, b


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_merge_models_writes_a_loadable_tied_folder(pair, tmp_path):
    a, b = pair
    out = tmp_path / "merged"
    summary = merge_models(str(a), str(b), out, "slerp", 0.5)
    merged, model_a, model_b = _load(out), _load(a), _load(b)

    assert merged.config.tie_word_embeddings is True
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    emb = merged.model.embed_tokens.weight
    expected = slerp(model_a.model.embed_tokens.weight, model_b.model.embed_tokens.weight, 0.5)
    assert torch.allclose(emb, expected, atol=1e-6)
    assert not torch.allclose(emb, model_a.model.embed_tokens.weight)
    assert not torch.allclose(emb, model_b.model.embed_tokens.weight)

    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "slerp" and record["t"] == 0.5
    assert record["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert set(record["per_tensor"]) == set(model_a.state_dict()) - {"lm_head.weight"}
    assert record["lerp_fallback"] >= 3  # the RMSNorm weights are all ones in both models
    assert summary["tensors"] == len(record["per_tensor"])
    assert (out / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    assert (out / "chat_template.jinja").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging dir left behind


def test_merge_t0_reproduces_model_a_exactly(pair, tmp_path):
    a, b = pair
    merge_models(str(a), str(b), tmp_path / "m", "slerp", 0.0)
    merged, model_a = _load(tmp_path / "m").state_dict(), _load(a).state_dict()
    assert merged.keys() == model_a.keys()
    for name, tensor in model_a.items():
        assert torch.equal(merged[name], tensor), name


def test_merge_rejects_tied_vs_untied_and_other_vocab(pair, bytelevel_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    a, _ = pair
    tok = bytelevel_tokenizer
    n = len(AutoTokenizer.from_pretrained(tok))
    untied = make_model_folder(tmp_path / "untied", tok, tie=False)
    with pytest.raises(ValueError, match="tied and an untied model"):
        merge_models(str(a), str(untied), tmp_path / "out1")
    bigger = make_model_folder(tmp_path / "bigger", tok, tie=True, extra_vocab=64)
    with pytest.raises(
        ValueError, match=rf"vocab_size is {n} in model A but {n + 64} in model B.*transplant/model"
    ):
        merge_models(str(a), str(bigger), tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    with pytest.raises(ValueError, match="already exists"):
        merge_models(str(a), str(a), untied)


def test_merge_command_end_to_end(pair, tmp_path, capsys):
    a, b = pair
    parser = argparse.ArgumentParser(prog="vikhr")
    add_merge_command(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli-merged"
    args = parser.parse_args(["merge", str(a), str(b), str(out), "--method", "linear", "--t", "0.25"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "linear" and printed["out"] == str(out)
    merged, model_a, model_b = _load(out), _load(a), _load(b)
    w = "model.layers.0.mlp.up_proj.weight"
    expected = 0.75 * model_a.state_dict()[w] + 0.25 * model_b.state_dict()[w]
    assert torch.allclose(merged.state_dict()[w], expected, atol=1e-6)
    with pytest.raises(SystemExit):
        parser.parse_args(["merge", str(a), str(b), str(out), "--t", "1.5"])
