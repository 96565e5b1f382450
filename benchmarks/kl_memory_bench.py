"""Peak memory of the chunked KL / CE against the brute-force formula (one forward + backward, CPU).

    .venv/bin/python benchmarks/kl_memory_bench.py [--tokens 8192] [--hidden 576] [--vocab 49152]

Each case runs in a fresh process (peak RSS is per process) and reports the peak resident memory above the inputs.
Default sizes: 8k tokens of SmolLM2 (hidden 576, vocabulary 49,152). The brute-force case materialises the full
[tokens x vocab] logits of both sides (~1.6 GB each here). Writes benchmarks/results/kl_memory_bench.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [("chunked", 256), ("chunked", 1024), ("chunked", 4096), ("fused", 1024), ("brute", 0)]


def one(mode: str, chunk: int, n: int, h: int, v: int) -> dict:
    """Run one case in this process; the peak RSS above the inputs and the loss."""
    import torch

    from vikhr.train.kl import ce_and_kl, chunked_kl, kl_from_logits

    torch.manual_seed(0)
    hidden = torch.randn(n, h, requires_grad=True)
    weight = (torch.randn(v, h) * 0.05).requires_grad_()
    ref_h, ref_w = hidden.detach() + 0.1 * torch.randn(n, h), weight.detach().clone()
    labels = torch.randint(0, v, (n,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if mode == "chunked":
        loss = chunked_kl(hidden, weight, ref_hidden=ref_h, ref_weight=ref_w, chunk=chunk)
    elif mode == "fused":
        ce, kl = ce_and_kl(hidden, weight, labels, ref_h, ref_w, chunk=chunk)
        loss = ce + 0.5 * kl
    else:
        loss = kl_from_logits(hidden @ weight.T, ref_h @ ref_w.T)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {
        "mode": mode,
        "chunk": chunk,
        "loss": loss.item(),
        "peak_mib": round(peak),
        "seconds": round(time.perf_counter() - t, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # internal: MODE CHUNK in a child process
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one(args.case[0], int(args.case[1]), args.tokens, args.hidden, args.vocab)))
        return
    rows = []
    for mode, chunk in CASES:
        cmd = [sys.executable, __file__, "--case", mode, str(chunk), "--tokens", str(args.tokens),
               "--hidden", str(args.hidden), "--vocab", str(args.vocab)]  # fmt: skip
        rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
    print(
        f"{args.tokens} tokens, hidden {args.hidden}, vocabulary {args.vocab}, forward + backward, CPU float32"
    )
    print("| case | chunk | loss | peak MiB above inputs | seconds |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['chunk'] or '-'} | {r['loss']:.5f} | {r['peak_mib']:,} | {r['seconds']} |")
    RESULTS.mkdir(exist_ok=True)
    out = {"tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab, "cases": rows}
    (RESULTS / "kl_memory_bench.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
