"""The compute dtype comes from the device's real capability, and every place that computes follows it: on a CPU
without native bf16, calibration runs in float32 (bf16 autocast there is several times slower)."""

import platform

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vikhr import precision
from vikhr.precision import choose_dtype, compute_dtype
from vikhr.transplant.calibrate import final_hidden_states


def test_the_decision():
    assert choose_dtype("cuda", cuda_bf16=True, cpu_native_bf16=False) == torch.bfloat16
    assert choose_dtype("cuda", cuda_bf16=False, cpu_native_bf16=True) == torch.float32  # e.g. a V100 or T4
    assert choose_dtype("cpu", cuda_bf16=True, cpu_native_bf16=False) == torch.float32  # AVX2 only
    assert choose_dtype("cpu", cuda_bf16=False, cpu_native_bf16=True) == torch.bfloat16  # AVX512-BF16 / AMX
    assert choose_dtype("mps", cuda_bf16=False, cpu_native_bf16=True) == torch.float32


def test_this_cpu_is_read_from_its_flags():
    if platform.machine().lower() in ("x86_64", "amd64"):
        native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        assert precision.cpu_native_bf16() is native
    assert compute_dtype("cpu") == (torch.bfloat16 if precision.cpu_native_bf16() else torch.float32)


def test_environment_override(monkeypatch):
    monkeypatch.setenv(precision.ENV, "float32")
    assert compute_dtype("cpu") == torch.float32
    monkeypatch.setenv(precision.ENV, "bfloat16")
    assert compute_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv(precision.ENV, "fp8")
    with pytest.raises(ValueError, match="VIKHR_COMPUTE_DTYPE"):
        compute_dtype("cpu")


def _tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("native", [False, True])
def test_calibration_follows_the_cpu(monkeypatch, native):
    monkeypatch.delenv(precision.ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: native)
    model = _tiny()
    rows = torch.randint(0, 64, (3, 16))
    hidden, targets = final_hidden_states(model, rows)
    with torch.no_grad():
        exact = model.model(input_ids=rows).last_hidden_state[:, :-1].reshape(-1, 32)
    if native:  # computed under bf16 autocast: close, not equal
        assert not torch.equal(hidden, exact) and torch.allclose(hidden, exact, atol=0.1)
    else:  # float32 all the way
        assert torch.equal(hidden, exact)
    assert torch.equal(targets, rows[:, 1:].reshape(-1))
