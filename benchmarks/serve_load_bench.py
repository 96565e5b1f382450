"""Load test of `vikhr serve`: aggregate generated tokens/s under 8 concurrent clients vs one client.

    .venv/bin/python benchmarks/serve_load_bench.py [--model smollm2-135m-instruct] [--clients 8]
        [--requests 4] [--max-tokens 64] [--duration 300]

Starts a real `vikhr serve` process on loopback (port chosen by the OS), then:
1. one client sends `--single` requests one after another;
2. `--clients` clients each send `--requests` requests one after another, all at once (bounded by `--duration`:
   no client starts a new request after it).
Every request is a streamed chat completion of exactly `--max-tokens` tokens (`ignore_eos`), so both phases
generate the same amount per request. Prints aggregate tokens/s, the ratio, p50/p95 latency and time to first
token, failures; writes benchmarks/results/serve_load_bench.json. Loopback only; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from vikhr.serve.launch import start_server

RESULTS = Path(__file__).resolve().parent / "results"
QUESTIONS = [
    "Расскажи коротко о Москве.", "What is the capital of France?", "Напиши стихотворение о зиме.",
    "Explain what a neural network is.", "Как приготовить борщ?", "Give me three tips for learning Russian.",
    "Что такое машинное обучение?", "Describe the plot of War and Peace.",
]  # fmt: skip


def one_request(base: str, model: str, i: int, max_tokens: int) -> dict:
    """A streamed chat completion; latency, time to first token and generated tokens (from usage)."""
    body = {
        "model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "max_tokens": max_tokens, "temperature": 0.7, "seed": i, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    t0 = time.perf_counter()
    first = None
    tokens = 0
    try:
        with httpx.stream("POST", base + "/chat/completions", json=body, timeout=600) as r:
            if r.status_code != 200:
                r.read()
                return {"ok": False, "status": r.status_code, "error": r.text[:200]}
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    return {"ok": False, "status": 200, "error": ev["error"]["message"]}
                if first is None and ev["choices"] and ev["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
                if ev.get("usage"):
                    tokens = ev["usage"]["completion_tokens"]
    except httpx.HTTPError as e:
        return {"ok": False, "status": None, "error": repr(e)}
    return {"ok": True, "latency_s": time.perf_counter() - t0, "ttft_s": first, "tokens": tokens}


def phase(base: str, model: str, clients: int, per_client: int, max_tokens: int, duration: float) -> dict:
    """`clients` threads, each sending up to `per_client` requests back to back, none starting after `duration`."""
    results: list[dict] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def client(c: int) -> None:
        for k in range(per_client):
            if time.perf_counter() - t0 > duration:
                return
            r = one_request(base, model, c * per_client + k, max_tokens)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    lat = sorted(r["latency_s"] for r in ok)
    ttft = sorted(r["ttft_s"] for r in ok if r["ttft_s"] is not None)
    tokens = sum(r["tokens"] for r in ok)
    return {
        "clients": clients, "requests": len(results), "failed": len(results) - len(ok),
        "errors": [r for r in results if not r["ok"]][:5], "wall_s": round(wall, 2), "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(_pct(lat, 50), 2), "latency_p95_s": round(_pct(lat, 95), 2),
        "ttft_p50_s": round(_pct(ttft, 50), 3), "ttft_p95_s": round(_pct(ttft, 95), 3),
    }  # fmt: skip


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="requests per client in the concurrent phase")
    ap.add_argument("--single", type=int, default=8, help="requests in the one-client phase")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--duration", type=float, default=300, help="no request starts after this many seconds")
    ap.add_argument("--out", default=str(RESULTS / "serve_load_bench.json"))
    args = ap.parse_args()

    with start_server(
        args.model, "--served-model-name", "bench", "--max-batch", str(max(16, args.clients))
    ) as srv:
        one_request(srv.base_url, "bench", 0, 8)  # warm-up
        single = phase(srv.base_url, "bench", 1, args.single, args.max_tokens, args.duration)
        many = phase(srv.base_url, "bench", args.clients, args.requests, args.max_tokens, args.duration)
        stats = httpx.get(srv.base_url.removesuffix("/v1") + "/health").json()
    ratio = many["tokens_per_s"] / single["tokens_per_s"]
    report = {
        "model": args.model, "max_tokens": args.max_tokens, "single": single, "concurrent": many,
        "throughput_ratio": round(ratio, 2), "server_stats": stats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }  # fmt: skip
    print(f"model {args.model}, {args.max_tokens} tokens per request (streamed chat, loopback)")
    print(
        "| clients | requests | failed | tokens/s | p50 latency s | p95 latency s | p50 TTFT s | p95 TTFT s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in (single, many):
        print(f"| {p['clients']} | {p['requests']} | {p['failed']} | {p['tokens_per_s']} | {p['latency_p50_s']} | "
              f"{p['latency_p95_s']} | {p['ttft_p50_s']} | {p['ttft_p95_s']} |")  # fmt: skip
    print(f"aggregate throughput {args.clients} clients / 1 client: {ratio:.2f}x (goal >= 3x); "
          f"mean decode batch {stats['mean_batch']}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if many["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
