"""Vocabulary-stage figures on real data: speed of a 40k tokenizer on all of RusLit, its efficiency on FLORES,
exactness of the fast conversion, and `extend` on Mistral-7B / Llama-2 against the naive way of appending pieces.

    .venv/bin/python benchmarks/tokenizer_bench.py [--repeats 3] [--vocab 40000]

Prints a table and writes benchmarks/results/tokenizer_bench.json. Nothing here is asserted in CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vikhr.corpus.readers import ReadReport, iter_documents, paragraphs
from vikhr.paths import shared_data_dir
from vikhr.tokenizer import spm

RESULTS = Path(__file__).resolve().parent / "results"


def cpt(sp, lines: list[str]) -> float:
    return sum(map(len, lines)) / sum(len(x) for x in sp.encode(lines))


def differing(a, b, lines: list[str]) -> int:
    return sum(x != y for x, y in zip(a.encode(lines), b.encode(lines), strict=True))


def append_naively(base, new):
    """The Chinese-LLaMA merge script's way: every new piece appended with score 0 (a baseline, not our method)."""
    out = spm.sp_pb2.ModelProto()
    out.CopyFrom(base)
    have = {p.piece for p in base.pieces}
    for p in new.pieces:
        if p.type == spm.NORMAL and p.piece not in have:
            q = out.pieces.add()
            q.piece, q.score, q.type = p.piece, 0.0, spm.NORMAL
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=40_000)
    args = ap.parse_args()
    shared = shared_data_dir()
    if shared is None:
        sys.exit("needs ../shared/data (RusLit, FLORES, tokenizers)")

    t0 = time.perf_counter()
    rep = ReadReport()
    paras: list[str] = []
    for doc in iter_documents([shared / "ru" / "ruslit"], report=rep):
        paras.extend(paragraphs(doc.text))
    read_s = time.perf_counter() - t0
    chars = sum(map(len, paras))

    train_s, total_s = [], []
    tmp = Path(tempfile.mkdtemp(prefix="vikhr-bench-"))
    for i in range(args.repeats):
        t0 = time.perf_counter()
        model = spm.train_sentencepiece(paras, tmp / f"m{i}", spm.SpmOptions(vocab_size=args.vocab))
        t1 = time.perf_counter()
        fast = spm.proto_to_tokenizer_json(spm.load_proto(model))
        fast.save(str(tmp / f"tokenizer{i}.json"))
        t2 = time.perf_counter()
        train_s.append(t1 - t0)
        total_s.append(t2 - t0 + read_s)

    pdir = shared / "parallel"
    ru = (pdir / "flores200.devtest.rus_Cyrl").read_text(encoding="utf-8").splitlines()
    en = (pdir / "flores200.devtest.eng_Latn").read_text(encoding="utf-8").splitlines()
    gut: list[str] = []
    for f in sorted((shared / "en" / "gutenberg").glob("pg*.txt")):
        gut.extend(f.read_bytes().decode("utf-8").split("\n"))  # BOM and CRLF kept
    sp = spm.processor(model)
    new = spm.load_proto(model)
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "corpus": {"files": rep.files, "skipped": rep.skipped, "paragraphs": len(paras), "chars": chars},
        "vocab": args.vocab,
        "seconds": {
            "read": round(read_s, 2),
            "sentencepiece_median": round(statistics.median(train_s), 2),
            "total_median": round(statistics.median(total_s), 2),
            "runs": [round(x, 2) for x in total_s],
        },
        "flores_chars_per_token": {"ru": round(cpt(sp, ru), 3), "en": round(cpt(sp, en), 3)},
        "fast_vs_sentencepiece_differing_lines": {
            name: spm.check_equivalence(sp, fast, lines).differing
            for name, lines in [("flores_ru", ru), ("flores_en", en), ("gutenberg", gut)]
        },
        "extend": {},
    }
    for name in ("mistral-7b-v0.1", "llama-2"):
        base = spm.load_proto(shared / "tokenizers" / name / "tokenizer.model")
        sp_base = spm.processor(base)
        ours, stats = spm.extend_sp_proto(base, new)
        naive = append_naively(base, new)
        sp_ours, sp_naive = spm.processor(ours), spm.processor(naive)
        fast_ours = spm.proto_to_tokenizer_json(ours)
        res["extend"][name] = {
            "base_ru": round(cpt(sp_base, ru), 3),
            "ours": {
                "vocab": len(ours.pieces),
                "added": stats.added,
                "shared": stats.shared,
                "dropped_by_filter": stats.dropped_by_filter,
                "ru": round(cpt(sp_ours, ru), 3),
                "en_lines_changed": differing(sp_base, sp_ours, en),
                "fast_vs_sentencepiece": spm.check_equivalence(sp_ours, fast_ours, ru + en).differing,
            },
            "naive_score0": {
                "vocab": len(naive.pieces),
                "ru": round(cpt(sp_naive, ru), 3),
                "en_lines_changed": differing(sp_base, sp_naive, en),
            },
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tokenizer_bench.json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")

    s = res["seconds"]
    print(f"RusLit: {rep.files} files ({len(rep.skipped)} skipped: not UTF-8), {chars:,} characters")
    print(
        f"{args.vocab} pieces, median of {args.repeats}: {s['total_median']} s wall end to end "
        f"(read {s['read']} s + SentencePiece {s['sentencepiece_median']} s + conversion); runs {s['runs']}"
    )
    print(
        f"FLORES chars/token: ru {res['flores_chars_per_token']['ru']}, en {res['flores_chars_per_token']['en']}"
    )
    print(f"fast vs SentencePiece, differing lines: {res['fast_vs_sentencepiece_differing_lines']}")
    print("\n| base | method | vocab | RU chars/token | EN FLORES lines changed |\n|---|---|---:|---:|---:|")
    for name, r in res["extend"].items():
        print(f"| {name} | base | 32,000 | {r['base_ru']} | 0 |")
        print(
            f"| {name} | append, score 0 | {r['naive_score0']['vocab']:,} | {r['naive_score0']['ru']} "
            f"| {r['naive_score0']['en_lines_changed']} |"
        )
        print(
            f"| {name} | vikhr extend | {r['ours']['vocab']:,} | {r['ours']['ru']} | {r['ours']['en_lines_changed']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
