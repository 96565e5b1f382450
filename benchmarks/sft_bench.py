"""Instruction tuning of SmolLM2 on the bundled Russian seed tasks: what does the `sft` stage change?

The real `sft` stage runs once per model on the 137 rulm seed tasks (`bundled:instruct/ru_seed_tasks.jsonl`, a
held-out share kept aside by example id), with the same settings:
  pretrained   the demo's pre-trained model (`runs/demo/pretrain/model`: new Russian vocabulary, continued
               pre-training) — run `make demo` (or `vikhr run -c demo --to pretrain`) first
  source       the original SmolLM2-135M-Instruct (its own English-centric vocabulary and ChatML template)
Reported per model (from the stage's own report): held-out assistant-token loss before and after tuning, and for
the bundled Russian everyday prompts (not in the training data) answered greedily before and after: the share of
answers that end with the end-of-turn token before the length limit, Latin-word and mixed-script-word shares
(`vikhr.eval.purity`), mean length; plus training time.

    .venv/bin/python benchmarks/sft_bench.py
    .venv/bin/python benchmarks/sft_bench.py --models source --epochs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from vikhr import pipeline
from vikhr.config import load_config
from vikhr.eval.speed import machine_info
from vikhr.log import setup_logging

ROOT = Path(__file__).resolve().parents[1]
SEEDS = "bundled:instruct/ru_seed_tasks.jsonl"


def run_model(name: str, model: str, root: Path, overrides: list[str]) -> dict:
    run_dir = root / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config("demo", [f"run_dir={run_dir}", f"sft.model={model}", f"sft.data=[{SEEDS}]", *overrides])
    t0 = time.perf_counter()
    pipeline.run(cfg, "sft", "sft")
    report = json.loads((run_dir / "sft" / "sft_report.json").read_text(encoding="utf-8"))
    return {"model": model, "seconds": round(time.perf_counter() - t0, 1), **{
        k: report[k] for k in ("held_out_answer_loss", "answers", "timings")}, "data": report["data"],
        "settings": report["settings"]}  # fmt: skip


def table(results: dict) -> str:
    lines = ["| model | held-out answer loss before → after | stop by themselves before → after | "
             "Latin words after | mixed words after | mean chars after | time |",
             "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in results.items():
        loss, a = r["held_out_answer_loss"], r["answers"]
        lines.append(
            f"| {name} | {loss['before']:.3f} → {loss['after']:.3f} | {a['before']['stop_share']:.0%} → "
            f"{a['after']['stop_share']:.0%} | {a['after']['latin_share']:.1%} | {a['after']['mixed_share']:.1%} | "
            f"{a['after']['mean_chars']:.0f} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="pretrained,source", help="which of: pretrained, source")
    ap.add_argument("--pretrained", default=str(ROOT / "runs" / "demo" / "pretrain" / "model"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-sft"))
    ap.add_argument("--eval-share", type=float, default=0.15, help="held-out share of the seed tasks")
    ap.add_argument("--max-prompts", type=int, default=24, help="bundled Russian prompts answered")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sft_smollm2.json"))
    ap.add_argument("overrides", nargs="*", help="more key=value overrides of the demo config (sft.lr=...)")
    args = ap.parse_args()
    setup_logging("INFO")
    specs = {"pretrained": args.pretrained, "source": "source"}
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [n for n in names if n not in specs]
    if unknown:
        ap.error(f"unknown model(s) {unknown}: use pretrained, source")
    if "pretrained" in names and not (Path(args.pretrained) / "config.json").is_file():
        ap.error(
            f"no pre-trained model at {args.pretrained}: run `make demo` or `vikhr run -c demo --to pretrain`"
        )
    overrides = [f"sft.eval_share={args.eval_share}", f"sft.max_prompts={args.max_prompts}", *args.overrides]
    results = {n: run_model(n, specs[n], Path(args.work), overrides) for n in names}
    print(table(results))
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
           "results": results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
