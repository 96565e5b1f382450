"""Tokenizer efficiency on FLORES devtest for every tokenizer in the shared data folder (Vikhr Table 1 / Figure 1).

Prints the Markdown tables and the wall time; writes report.json, report.md and efficiency.png to
benchmarks/results/tokenizer_report/. Run: `python benchmarks/tokenizer_report_bench.py`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from vikhr.log import setup_logging
from vikhr.tokenizer.report import (
    default_texts,
    default_tokenizers,
    efficiency_report,
    markdown_table,
    write_report,
)

OUT_DIR = Path(__file__).resolve().parent / "results" / "tokenizer_report"


def main() -> int:
    setup_logging("INFO")
    tokenizers = default_tokenizers()
    if not tokenizers:
        print("no shared data folder with tokenizers/ (set VIKHR_SHARED_DATA); nothing to measure")
        return 1
    start = time.perf_counter()
    report = efficiency_report(tokenizers, default_texts())
    seconds = time.perf_counter() - start
    report["wall_seconds"] = round(seconds, 2)
    paths = write_report(report, OUT_DIR, title="Tokenizer efficiency on FLORES-200 devtest")
    print(markdown_table(report))
    print(
        f"{len(tokenizers)} tokenizers x {len(report['languages'])} languages in {seconds:.2f} s (loading included)"
    )
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
