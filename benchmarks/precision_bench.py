"""float32 vs bf16 autocast on this machine: the issue's matmul and the transplant's calibration, one process.

    .venv/bin/python benchmarks/precision_bench.py [--tokens 8192] [--repeats 3] [--model smollm2-135m-instruct]

Prints what `vikhr.precision` chooses here (and why: the CPU's native-bf16 flags), then the median seconds of
  1. one 2048x576 @ 576x32000 matmul (SmolLM2's hidden size, the demo's vocabulary), one thread and all threads;
  2. the calibration of the `calibrated` transplant method on real SmolLM2-135M-Instruct: the frozen model's hidden
     states over `--tokens` tokens of the bundled Russian text, then one fitting epoch over 32,000 rows;
each under `VIKHR_COMPUTE_DTYPE=float32` and `=bfloat16` (the override of the helper), alternating, with the
ratio bf16 / float32 (above 1: bf16 is slower). Writes benchmarks/results/precision_bench_<cpu flag>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from vikhr import precision
from vikhr.models import resolve_model
from vikhr.paths import BUNDLED_DATA
from vikhr.transplant.calibrate import CalibrationOptions, fit_rows, pack

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "bfloat16")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def matmul_case(threads: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 576), torch.randn(576, 32000)
    out: dict[str, list[float]] = {d: [] for d in DTYPES}
    for _ in range(repeats):
        for d in DTYPES:
            os.environ[precision.ENV] = d

            def run() -> None:
                with precision.autocast("cpu"):
                    _ = a @ b

            out[d].append(timed(run))
    return {d: statistics.median(v) for d, v in out.items()}


def calibration_case(model_spec: str, tokens: int, repeats: int) -> dict[str, dict[str, float]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vikhr.transplant.calibrate import final_hidden_states

    path = resolve_model(model_spec)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((BUNDLED_DATA / "ru").rglob("*.txt"))[:20])
    rows = pack(tok(text)["input_ids"], 256, tokens)
    opts = CalibrationOptions(tokens=tokens, epochs=1)
    head = model.get_output_embeddings().weight
    fit_ids = list(range(head.shape[0] - 32000, head.shape[0]))
    out: dict[str, dict[str, list[float]]] = {d: {"hidden_s": [], "fit_epoch_s": []} for d in DTYPES}
    for _ in range(repeats):
        for d in DTYPES:
            os.environ[precision.ENV] = d
            t = time.perf_counter()
            hidden, targets = final_hidden_states(model, rows)
            out[d]["hidden_s"].append(time.perf_counter() - t)
            out[d]["fit_epoch_s"].append(
                timed(lambda h=hidden, y=targets: fit_rows(h, y, head, fit_ids, opts))
            )
    return {d: {k: statistics.median(v) for k, v in m.items()} for d, m in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192, help="calibration tokens (the demo: 40,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    os.environ.pop(precision.ENV, None)
    native = precision.cpu_native_bf16()
    chosen = precision.dtype_name(precision.compute_dtype("cpu"))
    cpu = {
        "machine": platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native,
        "threads": torch.get_num_threads(),
        "vikhr_chooses": chosen,
    }
    print(f"CPU: {cpu}")
    all_threads = torch.get_num_threads()
    result: dict = {"cpu": cpu, "settings": vars(args), "matmul_2048x576x32000_s": {}}
    for threads in sorted({1, all_threads}):
        m = matmul_case(threads, max(args.repeats, 3))
        result["matmul_2048x576x32000_s"][f"{threads}_threads"] = m
        print(f"matmul, {threads} thread(s): float32 {m['float32']:.3f} s, bf16 autocast {m['bfloat16']:.3f} s, "
              f"bf16/float32 {m['bfloat16'] / m['float32']:.2f}x")  # fmt: skip
    torch.set_num_threads(all_threads)
    c = calibration_case(args.model, args.tokens, args.repeats)
    result["calibration_s"] = c
    for part in ("hidden_s", "fit_epoch_s"):
        f32, bf = c["float32"][part], c["bfloat16"][part]
        print(f"calibration {part} ({args.tokens} tokens): float32 {f32:.1f} s, bf16 {bf:.1f} s, "
              f"bf16/float32 {bf / f32:.2f}x")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"precision_bench_{'native_bf16' if native else 'no_native_bf16'}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
