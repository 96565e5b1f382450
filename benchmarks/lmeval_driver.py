"""Runs inside the separate lm-eval environment (`.venv-lmeval`), called by `lmeval_agreement_bench.py`.

Loads the model once with lm-eval's own HF backend, runs every task once on 2 items untimed (dataset preparation,
first-call allocations), then times `simple_evaluate` per task (model loading excluded)
and writes, per task, the wall time and every logged sample's (doc_id, arguments, log-likelihoods, is_greedy,
acc / acc_norm / acc_bytes) as JSON. Nothing of vikhr is imported here.

    .venv-lmeval/bin/python benchmarks/lmeval_driver.py MODEL_DIR TASKS_DIR OUT.json --tasks parus,mmlu_pro
"""

from __future__ import annotations

import argparse
import json
import time

import lm_eval
import torch
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tasks_dir")
    ap.add_argument("out")
    ap.add_argument("--tasks", required=True, help="comma-separated; TASK:LIMIT for a per-task limit")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = HFLM(pretrained=args.model, dtype=args.dtype, batch_size=args.batch_size, device="cpu")
    manager = TaskManager(include_path=args.tasks_dir)
    out = {
        "lm_eval": lm_eval.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tasks": {},
    }
    for spec in args.tasks.split(","):
        name, _, limit = spec.partition(":")
        t0 = time.perf_counter()
        res = simple_evaluate(
            model=lm,
            tasks=[name],
            limit=int(limit) if limit else None,
            task_manager=manager,
            log_samples=True,
            bootstrap_iters=0,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=1234,
        )
        seconds = time.perf_counter() - t0
        samples = []
        for s in res["samples"][name]:
            samples.append(
                {
                    "doc_id": s["doc_id"],
                    "arguments": [list(a) for a in s["arguments"]],
                    "loglikelihoods": [float(r[0]) for r in s["filtered_resps"]],
                    "greedy": [bool(r[1]) for r in s["filtered_resps"]],
                    **{m: s[m] for m in ("acc", "acc_norm", "acc_bytes") if m in s},
                }
            )
        out["tasks"][name] = {"seconds": seconds, "results": res["results"][name], "samples": samples}
        print(f"lm-eval {name}: {len(samples)} items in {seconds:.1f}s", flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1, default=str)


if __name__ == "__main__":
    main()
