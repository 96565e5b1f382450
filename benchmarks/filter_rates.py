"""Share of paragraphs each heuristic filter drops with the default thresholds, per reason.

    .venv/bin/python benchmarks/filter_rates.py                      # bundled Chekhov, all of RusLit, Gutenberg
    .venv/bin/python benchmarks/filter_rates.py --name X --lang ru --mode line PATH ...

Reads with the corpus stage's reader (cp1251 fallback for RusLit's one Windows-1251 file) and applies
`vikhr.corpus.filters.check` with `FilterOptions()` (the same defaults as `corpus.filters`); Gutenberg
header/footer paragraphs count as `boilerplate`. Prints a table per corpus; no dedup, no quality model.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from vikhr.corpus.filters import FilterOptions, check
from vikhr.corpus.readers import BadRecord, ReadOptions, iter_paragraph_records, source_inputs
from vikhr.paths import BUNDLED_DATA, shared_data_dir


def measure(name: str, lang: str, mode: str, specs: list[str]) -> None:
    files = source_inputs({name: specs})
    opts = FilterOptions(language=lang)
    reasons, dchars, bad = Counter(), Counter(), Counter()
    n = chars = 0
    t = time.perf_counter()
    for r in iter_paragraph_records(files, ReadOptions(paragraph_mode=mode, encoding_fallback="cp1251")):
        if isinstance(r, BadRecord):
            bad[r.reason] += 1
            continue
        n += 1
        chars += len(r.text)
        reason = "boilerplate" if r.boilerplate else check(r.text, opts)
        if reason:
            reasons[reason] += 1
            dchars[reason] += len(r.text)
    total = sum(reasons.values())
    print(f"\n{name} ({mode} paragraphs): {len(files)} files, {n:,} paragraphs, {chars:,} chars, "
          f"bad records {dict(bad) or 0}, {time.perf_counter() - t:.1f} s")  # fmt: skip
    print("| reason | paragraphs | % paragraphs | % characters |\n|---|---:|---:|---:|")
    for k, v in reasons.most_common():
        print(f"| {k} | {v:,} | {100 * v / n:.2f} | {100 * dchars[k] / chars:.2f} |")
    print(f"| **all** | {total:,} | {100 * total / n:.2f} | {100 * sum(dchars.values()) / chars:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*")
    ap.add_argument("--name", default="custom")
    ap.add_argument("--lang", default="ru")
    ap.add_argument("--mode", default="line", choices=["line", "blank"])
    args = ap.parse_args()
    if args.specs:
        measure(args.name, args.lang, args.mode, args.specs)
        return
    measure("chekhov (bundled)", "ru", "line", [str(BUNDLED_DATA / "ru" / "chekhov")])
    shared = shared_data_dir()
    if shared is not None:
        measure("ruslit", "ru", "line", [str(shared / "ru" / "ruslit")])
        measure("gutenberg", "en", "blank", [str(shared / "en" / "gutenberg")])


if __name__ == "__main__":
    main()
