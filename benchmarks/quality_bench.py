"""Timings of the quality classifier and the quality judge: the wall-clock figures the tests do not assert.

    .venv/bin/python benchmarks/quality_bench.py [--repeats 5] [--texts 80] [--out FILE]

1. `train_classifier(kind="encoder")` on bundled Chekhov paragraphs and as many junk paragraphs (a tiny random
   BERT with a WordPiece tokenizer trained on the texts, 1 epoch, batch 16, as in tests/unit/test_quality.py),
   against two baselines on the same texts: the bare fine-tuning loop (same model, batches and AdamW steps, without
   the split, the evaluation and the save) and `kind="linear"` (TF-IDF + logistic regression).
2. `judge` of 3 items (attempts=3, max_retries=1) against a closed loopback port until it raises
   `LLMUnreachableError`, against one bare httpx request to the same port (the cost of learning it is closed).

The variants run interleaved, one warm-up round first, then `--repeats` rounds; figures are medians, ratios are
median / median. Prints a table, writes benchmarks/results/quality_bench.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vikhr.paths import BUNDLED_DATA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import tiny_encoder  # noqa: E402  (the test suite's tiny encoder, one definition)

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------------ the inputs


def labelled_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`n` texts, half Chekhov paragraphs (good), half shuffled characters / repeated words (bad), shuffled."""
    good: list[str] = []
    for f in sorted((BUNDLED_DATA / "ru" / "chekhov").glob("*.txt")):
        good += [x for x in f.read_text(encoding="utf-8").split("\n") if 120 <= len(x) <= 1200]
        if len(good) >= n // 2:
            break
    good = good[: n // 2]
    rng = random.Random(seed)
    words = " ".join(good).split()
    bad = []
    for i, src in enumerate(good):
        chars = list(src)
        rng.shuffle(chars)
        bad.append("".join(chars) if i % 2 else " ".join([rng.choice(words)] * 8 + rng.sample(words, 5)))
    pairs = [(t, "good") for t in good] + [(t, "bad") for t in bad]
    rng.shuffle(pairs)
    return [t for t, _ in pairs], [label for _, label in pairs]


# ------------------------------------------------------------------------------------------------ the cases


def bare_loop(encoder: Path, texts: list[str], labels: list[str], batch_size: int = 16) -> None:
    """One epoch of the fine-tuning steps alone: load, tokenize each batch, forward, backward, AdamW."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(encoder)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=2, dtype=torch.float32
    ).train()
    y = torch.tensor([int(label == "good") for label in labels])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    n_train = int(len(texts) * 0.8)  # train_classifier trains on 80%
    for i in range(0, n_train, batch_size):
        enc = tok(texts[i : min(i + batch_size, n_train)], truncation=True, max_length=256, padding=True,
                  return_tensors="pt")  # fmt: skip
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, y[i : min(i + batch_size, n_train)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def judge_unreachable(port: int, cache: Path) -> None:
    from vikhr.config import LLMConfig
    from vikhr.corpus.quality import judge
    from vikhr.llm import LLMClient, LLMUnreachableError

    cfg = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="judge", max_retries=1, backoff_s=0.01,
                    max_backoff_s=0.1)  # fmt: skip
    client = LLMClient(cfg, cache_dir=cache)
    try:
        judge(["Текст."] * 3, client, attempts=3, show_progress=False)
    except LLMUnreachableError:
        pass
    else:
        raise RuntimeError("the judge reached a closed port")
    finally:
        client.close()


def bare_connect(port: int) -> None:
    import httpx

    try:
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, timeout=5)
    except httpx.ConnectError:
        return
    raise RuntimeError("a closed port answered")


# -------------------------------------------------------------------------------------------------- the runs


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_rounds(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """One untimed warm-up round, then `repeats` rounds; within a round the cases run one after another."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    return times


def summary(times: dict[str, list[float]], baselines: dict[str, str]) -> dict[str, dict]:
    med = {name: statistics.median(ts) for name, ts in times.items()}
    out = {}
    for name, ts in times.items():
        row = {"median_s": med[name], "min_s": min(ts), "max_s": max(ts), "runs_s": ts}
        if name in baselines:
            row[f"ratio_to_{baselines[name]}"] = med[name] / med[baselines[name]]
        out[name] = row
    return out


def machine() -> dict:
    import sklearn
    import torch
    import transformers

    return {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "scikit-learn": sklearn.__version__,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--texts", type=int, default=80, help="labelled texts for the classifiers (half good)")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality_bench.json")
    args = ap.parse_args()
    import transformers

    from vikhr.corpus.quality import train_classifier

    logging.getLogger("vikhr").setLevel(logging.CRITICAL)  # the judge's expected "cannot reach" errors
    transformers.logging.set_verbosity_error()  # "newly initialized" notes of every classifier head

    load_before = os.getloadavg()
    texts, labels = labelled_texts(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        enc = tiny_encoder(tmp / "encoder", texts)
        runs = iter(range(10**6))

        def classifier(kind: str) -> Callable[[], object]:
            kw = {"encoder": str(enc), "epochs": 1, "batch_size": 16, "lr": 1e-3} if kind == "encoder" else {}
            return lambda: train_classifier(texts, labels, tmp / f"clf-{next(runs)}", kind=kind, seed=0, **kw)

        print(f"classifiers: {len(texts)} texts, {args.repeats} rounds after a warm-up ...", flush=True)
        clf_times = run_rounds(
            {
                "encoder_classifier": classifier("encoder"),
                "bare_finetune_loop": lambda: bare_loop(enc, texts, labels),
                "linear_classifier": classifier("linear"),
            },
            args.repeats,
        )
        port = closed_port()
        print(
            f"unreachable judge: closed port {port}, {args.repeats * 4} rounds after a warm-up ...",
            flush=True,
        )
        judge_times = run_rounds(
            {
                "judge_unreachable": lambda: judge_unreachable(port, tmp / "llm-cache"),
                "bare_connect": lambda: bare_connect(port),
            },
            args.repeats * 4,
        )
    load_after = os.getloadavg()

    results = {
        **summary(clf_times, {"encoder_classifier": "bare_finetune_loop"}),
        **summary(judge_times, {"judge_unreachable": "bare_connect"}),
    }
    results["encoder_classifier"]["ratio_to_linear_classifier"] = (
        results["encoder_classifier"]["median_s"] / results["linear_classifier"]["median_s"]
    )
    print(f"\n{'case':<22} {'median s':>10} {'min s':>9} {'max s':>9}  ratio")
    for name, row in results.items():
        ratios = ", ".join(
            f"{v:.2f}x {k[len('ratio_to_') :]}" for k, v in row.items() if k.startswith("ratio_to_")
        )
        print(f"{name:<22} {row['median_s']:>10.4f} {row['min_s']:>9.4f} {row['max_s']:>9.4f}  {ratios}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    record = {
        "settings": {
            "repeats": args.repeats, "texts": len(texts), "encoder": "BERT 1 layer, hidden 32, WordPiece 500",
            "epochs": 1, "batch_size": 16, "judge_items": 3, "judge_attempts": 3, "max_retries": 1,
            "judge_rounds": args.repeats * 4,
        },
        "machine": machine(), "load_average_before": load_before, "load_average_after": load_after,
        "results": results,
        "former_test_limits_s": {"encoder_classifier": 30, "judge_unreachable_and_annotate": 10},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
