"""The compute dtype, decided once from what the device really supports.

bfloat16 halves memory traffic and is fast where the hardware has it: CUDA GPUs from Ampere on, x86 CPUs with
AVX512-BF16 or AMX, ARM CPUs with the BF16 extension. Elsewhere PyTorch emulates it, and on an AVX2-only CPU
`torch.autocast("cpu", bfloat16)` is several times *slower* than float32 (a 2048×576 @ 576×32000 matmul measured
1.65 s in float32 vs 10.9 s under bf16 autocast on such a machine). Every place that computes — the transplant's
calibration, the trainer's reference model and mixed precision, evaluation, serving — asks `compute_dtype` instead
of deciding for itself. `VIKHR_COMPUTE_DTYPE=float32|bfloat16` overrides the decision (benchmarks, debugging).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path

import torch

ENV = "VIKHR_COMPUTE_DTYPE"
_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def choose_dtype(device_type: str, *, cuda_bf16: bool, cpu_native_bf16: bool) -> torch.dtype:
    """The decision itself, on plain facts: bf16 on a GPU that supports it or a CPU with native bf16, else fp32."""
    if device_type == "cuda":
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if device_type == "cpu":
        return torch.bfloat16 if cpu_native_bf16 else torch.float32
    return torch.float32


@functools.cache
def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX on x86, the BF16 extension on ARM)."""
    cpu = torch.cpu
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    if platform.machine().lower() in ("aarch64", "arm64"):
        info = Path("/proc/cpuinfo")
        if info.is_file():
            for line in info.read_text(errors="replace").splitlines():
                if line.lower().startswith("features") and "bf16" in line.split(":", 1)[-1].split():
                    return True
    return False


def compute_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype to compute in on `device` (see the module docstring); `$VIKHR_COMPUTE_DTYPE` overrides it."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in _NAMES:
            raise ValueError(f"{ENV}={forced!r}: use one of {', '.join(_NAMES)}")
        return _NAMES[forced]
    dev = torch.device(device)
    cuda_bf16 = dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return choose_dtype(
        dev.type, cuda_bf16=cuda_bf16, cpu_native_bf16=dev.type == "cpu" and cpu_native_bf16()
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def autocast(device: str | torch.device):
    """Autocast to the compute dtype when it is lower than float32; a no-op context otherwise."""
    dev = torch.device(device)
    dtype = compute_dtype(dev)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)
