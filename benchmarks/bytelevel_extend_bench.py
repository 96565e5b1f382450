"""Extend SmolLM2's byte-level BPE with merges learned on RusLit; measure FLORES devtest before and after.

For each requested size N: wall time, Russian and English characters per token (FLORES-200 devtest) for the base and
the extended tokenizer, the number of English lines that encode differently (must be 0) and round-trip failures.
Prints a table and writes benchmarks/results/bytelevel_extend.json.

Run: `python benchmarks/bytelevel_extend_bench.py [--num-new 40000 20000] [--max-files K] [--base DIR]`.
Each RusLit file is one text; `--max-files` takes the first K files in sorted order (a documented sample).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from transformers import AutoTokenizer

from vikhr.log import get_logger, setup_logging
from vikhr.paths import shared_data_dir
from vikhr.tokenizer.bytelevel import extend_bytelevel_tokenizer, token_bytes

OUT_JSON = Path(__file__).resolve().parent / "results" / "bytelevel_extend.json"
log = get_logger("bench.bytelevel_extend")


def ruslit_texts(root: Path, max_files: int | None) -> Iterator[str]:
    """RusLit files as texts, sorted by path; files that are not UTF-8 are skipped with a warning."""
    files = sorted(root.glob("**/*.txt"))[:max_files]
    for f in files:
        try:
            yield f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            log.warning("skipping %s: not UTF-8 (%s)", f, e.reason)


def chars_per_token(tok, lines: list[str]) -> float:
    """Characters per token over `lines`, special tokens left out."""
    tokens = sum(len(tok(line, add_special_tokens=False)["input_ids"]) for line in lines)
    return sum(len(line) for line in lines) / tokens


def compare(base, new, ru: list[str], en: list[str]) -> dict:
    """FLORES figures for the base and the extended tokenizer."""
    return {
        "ru_chars_per_token_base": round(chars_per_token(base, ru), 4),
        "ru_chars_per_token_new": round(chars_per_token(new, ru), 4),
        "en_chars_per_token_base": round(chars_per_token(base, en), 4),
        "en_chars_per_token_new": round(chars_per_token(new, en), 4),
        "en_lines_changed": sum(base.encode(x) != new.encode(x) for x in en),
        "ru_lines_changed": sum(base.encode(x) != new.encode(x) for x in ru),
        "roundtrip_failures": sum(new.decode(new.encode(x, add_special_tokens=False)) != x for x in ru + en),
    }


def partial_utf8_tokens(base, new) -> int:
    """New tokens whose bytes are not valid UTF-8 on their own (they start or end inside a character)."""
    added = new.get_vocab().keys() - base.get_vocab().keys()
    count = 0
    for token in added:
        try:
            token_bytes(token).decode("utf-8")
        except UnicodeDecodeError:
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-new", type=int, nargs="+", default=[40000])
    parser.add_argument("--max-files", type=int, default=None, help="use only the first K RusLit files")
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument(
        "--base", type=Path, default=None, help="base tokenizer folder (default: SmolLM2-135M)"
    )
    args = parser.parse_args()
    setup_logging("INFO")

    data = shared_data_dir()
    if data is None:
        print("no shared data folder (set VIKHR_SHARED_DATA); nothing to measure")
        return 1
    base_dir = args.base or data / "tokenizers" / "smollm2-135m"
    ru = (data / "parallel" / "flores200.devtest.rus_Cyrl").read_text(encoding="utf-8").splitlines()
    en = (data / "parallel" / "flores200.devtest.eng_Latn").read_text(encoding="utf-8").splitlines()
    base = AutoTokenizer.from_pretrained(base_dir)

    runs = []
    for n in args.num_new:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = extend_bytelevel_tokenizer(
                base_dir,
                ruslit_texts(data / "ru" / "ruslit", args.max_files),
                n,
                Path(tmp) / "tok",
                min_frequency=args.min_frequency,
            )
            seconds = time.perf_counter() - start
            new = AutoTokenizer.from_pretrained(Path(tmp) / "tok")
            runs.append(
                {
                    "num_new_requested": n,
                    **vars(result),
                    "wall_seconds": round(seconds, 1),
                    **compare(base, new, ru, en),
                    "new_tokens_partial_utf8": partial_utf8_tokens(base, new),
                }
            )

    report = {
        "base": str(base_dir),
        "corpus": "RusLit" + (f" (first {args.max_files} files)" if args.max_files else " (all files)"),
        "eval": f"FLORES-200 devtest, {len(ru)} ru / {len(en)} en lines",
        "runs": runs,
    }
    out_json = OUT_JSON if args.base is None else OUT_JSON.with_name(f"bytelevel_extend_{base_dir.name}.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    print(
        "| new | size | seconds | RU c/t base -> new | EN c/t base -> new | EN lines changed | round-trip fails |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['new_tokens']} | {r['final_size']} | {r['wall_seconds']} "
            f"| {r['ru_chars_per_token_base']:.3f} -> {r['ru_chars_per_token_new']:.3f} "
            f"| {r['en_chars_per_token_base']:.3f} -> {r['en_chars_per_token_new']:.3f} "
            f"| {r['en_lines_changed']} | {r['roundtrip_failures']} |"
        )
    print(f"wrote {out_json}")
    return 0 if all(r["en_lines_changed"] == 0 and r["roundtrip_failures"] == 0 for r in runs) else 2


if __name__ == "__main__":
    sys.exit(main())
