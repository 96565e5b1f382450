"""Small-scale science for continued pre-training: does the KL term keep English while Russian improves?

SmolLM2-135M-Instruct moved onto a 40k Russian vocabulary (benchmarks/configs/smollm2-ruslit-40k.yaml, built once
with the real pipeline and cached, as in generate_bench.py) is trained by the real `pretrain` stage on a seeded
sample of RusLit documents, once per variant:
  no_kl    reference none (CE only)
  kl_init  CE + λ·KL to the transplanted model before training (same vocabulary)
  kl_base  CE + λ·KL to the original SmolLM2 with its own tokenizer, at aligned positions
Every variant sees the same rows in the same order with the same seed. Reported: held-out bits per character on
FLORES devtest RU and EN for the source model, the transplanted model and each trained one (the stage's own
evaluation), plus train CE/KL. The paper's Table 9 shape: RU falls with training, EN degrades less with KL.

    .venv/bin/python benchmarks/pretrain_science.py                      # CPU: 30 steps of 8 x 256 tokens
    .venv/bin/python benchmarks/pretrain_science.py --steps 2000 --batch 16 --seq-len 1024   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_bench import build_transplanted  # noqa: E402

from vikhr.config import load_config  # noqa: E402
from vikhr.eval.speed import machine_info  # noqa: E402
from vikhr.log import setup_logging  # noqa: E402
from vikhr.paths import cache_dir, shared_data_dir  # noqa: E402
from vikhr.rundir import RunDir  # noqa: E402
from vikhr.stages import pretrain  # noqa: E402

CONFIG = Path(__file__).resolve().parent / "configs" / "smollm2-ruslit-40k.yaml"
VARIANTS = {"no_kl": "none", "kl_init": "init", "kl_base": "base"}


def run_variant(name: str, transplant_dir: Path, root: Path, overrides: list[str]) -> dict:
    """Train one variant with the pretrain stage in its own run directory (the transplant linked in)."""
    run_dir = root / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir / "transplant").symlink_to(transplant_dir)
    cfg = load_config(CONFIG, [f"run_dir={run_dir}", f"pretrain.reference={VARIANTS[name]}", *overrides])
    t0 = time.perf_counter()
    record = pretrain.run(cfg, RunDir(run_dir))
    report = json.loads((run_dir / "pretrain" / "pretrain_report.json").read_text(encoding="utf-8"))
    last = [h for h in report_history(run_dir) if "ce" in h]
    return {
        "reference": VARIANTS[name], "seconds": round(time.perf_counter() - t0, 1), "steps": record.metrics["steps"],
        "bits_per_char": report["bits_per_char"], "base_bits_per_char": report["base_bits_per_char"],
        "first_ce": last[0]["ce"] if last else None, "last_ce": last[-1]["ce"] if last else None,
        "last_kl": last[-1]["kl"] if last else None, "data": report["data"],
    }  # fmt: skip


def source_bpc(cfg) -> dict[str, float]:
    """SmolLM2 itself on the same held-out lines the stage scores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vikhr.models import resolve_model
    from vikhr.stages.common import held_out_texts
    from vikhr.train.report import bpc_table

    path = resolve_model(cfg.source_model)
    texts = held_out_texts(cfg, cfg.transplant.eval_texts, "transplant.eval_texts", cfg.transplant.eval_lines)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    return bpc_table({"source": (model, AutoTokenizer.from_pretrained(path))}, texts)["source"]


def report_history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "pretrain" / "log_history.json").read_text(encoding="utf-8"))


def table(results: dict) -> str:
    first = next(iter(results.values()))
    rows = [("source model (SmolLM2, own tokenizer)", first["base_bits_per_char"])]
    rows.append(("transplanted (40k RU vocabulary)", first["bits_per_char"]["transplanted"]))
    rows += [(f"trained, {name}", r["bits_per_char"]["trained"]) for name, r in results.items()]
    out = ["| model | RU bpc (FLORES) | EN bpc (FLORES) |", "|---|---:|---:|"]
    out += [f"| {n} | {b.get('ru', float('nan')):.4f} | {b.get('en', float('nan')):.4f} |" for n, b in rows]
    out += ["", "| variant | train CE first -> last | last KL | seconds |", "|---|---|---:|---:|"]
    for name, r in results.items():
        out.append(
            f"| {name} | {r['first_ce']:.3f} -> {r['last_ce']:.3f} | {r['last_kl']:.4f} | {r['seconds']} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--variants", default="no_kl,kl_init,kl_base", help="comma-separated: " + ", ".join(VARIANTS)
    )
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per variant")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="rows per step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--kl-weight", type=float, default=1.0)
    ap.add_argument("--documents", type=int, default=40, help="RusLit documents sampled (seeded)")
    ap.add_argument("--eval-lines", type=int, default=60, help="FLORES devtest lines per language")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument(
        "--rebuild", action="store_true", help="replan the cached transplant build with the pipeline"
    )
    ap.add_argument("--out", default="benchmarks/results/pretrain_science_cpu.json")
    args = ap.parse_args(argv)
    setup_logging("INFO")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    cached = cache_dir() / "bench" / "smollm2-ruslit-40k"
    if (cached / "transplant" / "model" / "config.json").is_file() and not args.rebuild:
        # reused as is: replanning would rebuild it whenever an upstream stage's code version changed
        model_dir, build = cached / "transplant" / "model", {"run_dir": str(cached), "reused": True}
    else:
        model_dir, build = build_transplanted(cached)
    overrides = [
        f"pretrain.data=[{shared_data_dir() / 'ru' / 'ruslit'}]", f"pretrain.max_documents={args.documents}",
        f"pretrain.max_steps={args.steps}", f"pretrain.seq_len={args.seq_len}", f"pretrain.batch_size={args.batch}",
        "pretrain.grad_accum=1", f"pretrain.lr={args.lr}", f"pretrain.kl_weight={args.kl_weight}",
        "pretrain.warmup_steps=3", "pretrain.report_to=[]", "pretrain.logging_steps=1",
        f"pretrain.eval_steps={args.steps}", f"pretrain.save_steps={args.steps}", "pretrain.eval_max_rows=16",
        f"transplant.eval_lines={args.eval_lines}",
    ]  # fmt: skip
    root = cache_dir() / "bench" / "pretrain-science"
    results = {name: run_variant(name, model_dir.parent, root, overrides) for name in names}
    source = source_bpc(load_config(CONFIG, overrides))
    for r in results.values():
        r["base_bits_per_char"] = source
    out = {"machine": machine_info(), "args": vars(args), "transplant_build": build, "variants": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(table(results))
    sys.stdout.write(f"\nwritten to {args.out} (threads: {os.environ.get('OMP_NUM_THREADS', 'default')})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
