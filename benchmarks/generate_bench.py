"""Russian characters per second: SmolLM2-135M-Instruct vs itself moved onto a 40k Russian vocabulary.

    .venv/bin/python benchmarks/generate_bench.py [--prompts 3] [--chars 300] [--repeats 3] [--sequential]

Builds (or reuses) the transplanted model with the real pipeline: benchmarks/configs/smollm2-ruslit-40k.yaml
(SentencePiece 40k on RusLit, `replace`, calibrated transplant) run up to the transplant stage in
<cache>/bench/smollm2-ruslit-40k, so a second run skips the finished stages. Then both models decode the same
FLORES devtest RU continuations token by token with the KV cache (`vikhr.eval.speed.compare`), and sample
freely as a second figure. Claim checked: the transplanted model's forced-decoding chars/s is at least 2x
the base's (exit status 1 if not). Writes benchmarks/results/generate_bench.json (machine info, raw timings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vikhr import pipeline
from vikhr.config import load_config, resolve_path
from vikhr.eval.speed import compare, flores_texts, markdown_tables
from vikhr.log import get_logger, setup_logging
from vikhr.paths import cache_dir, shared_data_dir

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "configs" / "smollm2-ruslit-40k.yaml"
RESULTS = HERE / "results"
BASE = "smollm2-135m-instruct"
CLAIM = 2.0

log = get_logger("vikhr.bench.generate")


def build_transplanted(run_dir: Path) -> tuple[Path, dict]:
    """Run the pipeline up to the transplant stage (finished stages skipped); the model folder, a record."""
    overrides = [f"run_dir={run_dir}"]
    cfg = load_config(CONFIG, overrides)
    target = resolve_path(cfg, cfg.data.target[0])
    shared = shared_data_dir()
    if not target.is_dir():  # shared data elsewhere ($VIKHR_SHARED_DATA): point the config at it
        if shared is None or not (shared / "ru" / "ruslit").is_dir():
            sys.exit(f"needs RusLit at {target} or in the shared data folder ($VIKHR_SHARED_DATA)")
        overrides.append(f"data.target=[{shared / 'ru' / 'ruslit'}]")
        cfg = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    steps = pipeline.run(cfg, stop="transplant")
    record = {
        "config": str(CONFIG.relative_to(HERE.parent)),
        "overrides": overrides,
        "run_dir": str(run_dir),
        "stages": {p.name: p.action for p in steps},
        "build_seconds": round(time.perf_counter() - t0, 1),
        "stage_seconds": {r["stage"]: r["seconds"] for r in pipeline.status(cfg)},
    }
    return run_dir / "transplant" / "model", record


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=3, help="prompt + continuation pairs")
    ap.add_argument("--chars", type=int, default=300, help="characters of each continuation, at least")
    ap.add_argument("--free-chars", type=int, default=150, help="characters sampled per prompt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-free", dest="free", action="store_false", help="skip free generation")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument(
        "--sequential", dest="interleave", action="store_false",
        help="measure one model after the other (default: both loaded, repeats alternate)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS / "generate_bench.json")
    args = ap.parse_args()
    setup_logging("INFO")

    model_dir, build = build_transplanted(cache_dir() / "bench" / "smollm2-ruslit-40k")
    texts = flores_texts(args.prompts, args.chars)
    t0 = time.perf_counter()
    result = compare(
        {"smollm2-135m (base)": BASE, "smollm2-ruslit-40k (transplanted)": model_dir},
        texts,
        repeats=args.repeats,
        warmup=args.warmup,
        free=args.free,
        threads=args.threads,
        interleave=args.interleave,
        free_chars=args.free_chars,
    )
    transplanted = result["models"]["smollm2-ruslit-40k (transplanted)"]
    ratio = transplanted["forced"]["ratio_chars_per_s"]
    result["measure_seconds"] = round(time.perf_counter() - t0, 1)
    result["build"] = build
    result["claim"] = {
        "statement": f"forced-decoding Russian chars/s of the transplanted model >= {CLAIM}x the base's",
        "ratio": ratio,
        "holds": ratio >= CLAIM,
        "ratio_by_repeat": transplanted["forced"]["ratio_chars_per_s_by_repeat"],
        "free_ratio": transplanted["free"]["ratio_chars_per_s"] if args.free else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown_tables(result))
    print(f"claim: {result['claim']['statement']}: {ratio:.2f}x -> {'holds' if ratio >= CLAIM else 'FAILS'}")
    free_cpt, forced_cpt = (
        transplanted[k]["chars_per_token"] if k in transplanted else 0 for k in ("free", "forced")
    )
    if args.free and free_cpt < 0.8 * forced_cpt:
        print(
            f"note: sampling, the transplanted model uses short pieces ({free_cpt:.2f} chars/token vs "
            f"{forced_cpt:.2f} on FLORES): before continued pretraining its free-generation speed-up is "
            "smaller than the forced one"
        )
    print(f"(measured in {result['measure_seconds']:.0f} s; results in {args.out})")
    return 0 if ratio >= CLAIM else 1


if __name__ == "__main__":
    sys.exit(main())
