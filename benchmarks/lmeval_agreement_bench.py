"""Same predictions as lm-evaluation-harness 0.4.13, and how much faster: vikhr's scorer vs lm-eval's HF backend.

Installs lm-eval 0.4.13 into its own environment (`.venv-lmeval`, with the same torch and transformers pins as
vikhr) unless it is there, exports vikhr's shipped tasks as lm-eval task YAML (`vikhr eval tasks --export`), then
runs both on the same model, dtype, batch size, thread count and items. Timed: the scoring of each task with the
model already loaded and each task warmed up on 2 items (lm-eval: `simple_evaluate` per task; vikhr:
`evaluate_tasks`). Printed: per task the items,
the share of items whose lm-eval request strings equal vikhr's, the predictions that agree for acc / acc_norm /
acc_bytes, the largest log-likelihood difference, the accuracies, both wall times and their ratio.

    .venv/bin/python benchmarks/lmeval_agreement_bench.py --tasks parus,mmlu_pro:100,rcb:100   # the README figures
    .venv/bin/python benchmarks/lmeval_agreement_bench.py --tasks parus:50 --model PATH
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
LMEVAL_VENV = ROOT / ".venv-lmeval"
PINS = ["torch==2.13.0", "transformers==5.24.0", "tokenizers==0.23.3", "sentencepiece==0.2.3", "protobuf"]


def lmeval_python() -> Path:
    """The lm-eval environment's python, created on first use (a few minutes, from the package index)."""
    py = LMEVAL_VENV / "bin" / "python"
    probe = [
        str(py),
        "-c",
        "import lm_eval, lm_eval.models.huggingface; assert lm_eval.__version__ == '0.4.13'",
    ]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"installing lm-eval 0.4.13 into {LMEVAL_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LMEVAL_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + PINS, check=True)
    subprocess.run(pip + ["lm_eval[hf]==0.4.13", *PINS], check=True)
    subprocess.run(probe, check=True)
    return py


def run_vikhr(
    model_dir: str, specs: list[tuple[str, int | None]], batch_size: int, dtype: str, out: Path
) -> dict:
    from vikhr.eval.harness import EvalSettings, evaluate_tasks, load_causal_lm
    from vikhr.eval.tasks import load_task

    model, tokenizer = load_causal_lm(model_dir, getattr(torch, dtype), "cpu")
    results = {}
    for name, _ in specs:  # untimed warm-up, as on the lm-eval side
        evaluate_tasks(model, tokenizer, [load_task(name)], EvalSettings(tasks=[name], limit=2), None)
    for name, limit in specs:
        settings = EvalSettings(tasks=[name], limit=limit or 0, batch_size=batch_size, dtype=dtype)
        task = load_task(name)
        t0 = time.perf_counter()
        res = evaluate_tasks(model, tokenizer, [task], settings, out / "samples")
        seconds = time.perf_counter() - t0
        rows = [
            json.loads(x)
            for x in (out / "samples" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        results[name] = {
            "seconds": seconds,
            "result": res[name],
            "rows": [r for r in rows if "skipped" not in r],
        }
        print(f"vikhr   {name}: {len(results[name]['rows'])} items in {seconds:.1f}s", flush=True)
    return results


def compare(name: str, ours: dict, theirs: dict) -> dict:
    """Per-item agreement: same request strings, same predicted choice and same 0/1 score for each metric."""
    from vikhr.eval.loglik import choice_predictions

    by_id = {s["doc_id"]: s for s in theirs["samples"]}
    same_prompt = 0
    agree = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    max_diff = 0.0
    n = 0
    for row in ours["rows"]:
        s = by_id.get(row["index"])
        if s is None:
            continue
        n += 1
        lm_ctx = [a[0] for a in s["arguments"]]
        lm_cont = [a[1] for a in s["arguments"]]
        continuations = [" " + c for c in row["choices"]]  # target_delimiter " " (every shipped task)
        same_prompt += int(all(c == row["context"] for c in lm_ctx) and lm_cont == continuations)
        ll_theirs = np.array(s["loglikelihoods"])
        ll_ours = np.array(row["loglikelihoods"])
        max_diff = max(max_diff, float(np.abs(ll_theirs - ll_ours).max()))
        theirs_pred = choice_predictions(
            s["loglikelihoods"], row["choices"]
        )  # lm-eval's argmax on its numbers
        for m in agree:
            same = theirs_pred[m] == row["predictions"][m] and float(s.get(m, -1)) == row["correct"][m]
            agree[m] += int(same)
    return {
        "items": n, "same_requests": same_prompt, "agree": agree, "max_abs_loglik_diff": max_diff,
        "vikhr_s": ours["seconds"], "lm_eval_s": theirs["seconds"], "speedup": theirs["seconds"] / ours["seconds"],
        "vikhr_acc": {m: v["value"] for m, v in ours["result"]["metrics"].items()},
        "lm_eval_acc": {m: theirs["results"].get(f"{m},none") for m in agree},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model folder or alias")
    ap.add_argument("--tasks", default="parus,mmlu_pro:100", help="TASK[:LIMIT],... (shipped task names)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--dtype", default="float32", help="both sides; float32 so float noise cannot flip a choice"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch's default)")
    ap.add_argument("--out", default="benchmarks/results/lmeval_agreement.json")
    args = ap.parse_args()

    from vikhr.eval.speed import machine_info
    from vikhr.eval.tasks import export_tasks
    from vikhr.models import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [
        (s.partition(":")[0], int(s.partition(":")[2]) if s.partition(":")[2] else None)
        for s in args.tasks.split(",")
    ]
    model_dir = resolve_model(args.model)
    py = lmeval_python()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_tasks([name for name, _ in specs], tmp / "tasks")
        theirs_file = tmp / "lmeval.json"
        cmd = [
            str(py), str(ROOT / "benchmarks" / "lmeval_driver.py"), model_dir, str(tmp / "tasks"), str(theirs_file),
            "--tasks", args.tasks, "--batch-size", str(args.batch_size), "--dtype", args.dtype,
            "--threads", str(torch.get_num_threads()),
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        theirs = json.loads(theirs_file.read_text(encoding="utf-8"))
        ours = run_vikhr(model_dir, specs, args.batch_size, args.dtype, tmp / "vikhr")
    table = {name: compare(name, ours[name], theirs["tasks"][name]) for name, _ in specs}
    result = {
        "model": args.model, "model_dir": model_dir, "dtype": args.dtype, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "lm_eval": theirs["lm_eval"], "machine": machine_info(), "tasks": table,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        "\n| task | items | same requests | agree acc | agree acc_norm | agree acc_bytes | max |Δll| | acc (vikhr / lm-eval) | lm-eval s | vikhr s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in table.items():
        print(
            f"| {name} | {r['items']} | {r['same_requests']} | {r['agree']['acc']} | {r['agree']['acc_norm']} | "
            f"{r['agree']['acc_bytes']} | {r['max_abs_loglik_diff']:.2e} | {r['vikhr_acc'].get('acc', 0):.3f} / "
            f"{r['lm_eval_acc'].get('acc') or 0:.3f} | {r['lm_eval_s']:.1f} | {r['vikhr_s']:.1f} | "
            f"{r['speedup']:.2f}x |"
        )
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
