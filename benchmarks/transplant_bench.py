"""Transplant init methods compared before any training: SmolLM2-135M-Instruct on a 40k Russian vocabulary.

    .venv/bin/python benchmarks/transplant_bench.py [--modes replace extend] [--lines 60]

Trains the 40k SentencePiece tokenizer on RusLit (`replace`, SmolLM2's special tokens carried over) and the 40k
byte-level extension of SmolLM2 (`extend`), transplants the model with every init method, and measures bits per
character on the first N FLORES devtest RU (and EN) sentences, beside the base model and the uniform bound.
Calibration text is RusLit prose (never FLORES). Writes benchmarks/results/transplant_bench.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vikhr.corpus.readers import iter_documents, paragraphs, sample_paragraphs
from vikhr.eval.bpc import bits_per_char, start_token_id, uniform_bits_per_char
from vikhr.log import setup_logging
from vikhr.models import resolve_model
from vikhr.paths import shared_data_dir
from vikhr.tokenizer import build, spm
from vikhr.transplant.apply import build_matrices, install, is_tied
from vikhr.transplant.calibrate import CalibrationOptions, calibrate
from vikhr.transplant.mapping import build_token_map

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ["mean", "hewitt", "random", "first", "mean+first-out (untied)", "calibrated"]


def make_tokenizers(shared: Path, base_dir: str, work: Path, modes: list[str]) -> dict[str, Path]:
    paras: list[str] = []
    for doc in iter_documents([shared / "ru" / "ruslit"]):
        paras.extend(paragraphs(doc.text))
    base_tok = AutoTokenizer.from_pretrained(base_dir)
    out = {}
    if "replace" in modes:
        specials = build.special_tokens_of(base_tok)
        opts = spm.SpmOptions(
            vocab_size=40_000, special_tokens=tuple(specials.ordered()), unk_token=specials.unk, bos_token=None,
            eos_token=None,
        )  # fmt: skip
        model = spm.train_sentencepiece(paras, work / "spm", opts)
        out["replace"] = work / "replace"
        build.build_standalone(model, out["replace"], specials, base_tok.chat_template)
    if "extend" in modes:
        out["extend"] = work / "extend"
        build.extend_bytelevel(
            Path(base_dir), base_tok, paras, out["extend"], num_new=40_000, keep_cyrillic_only=True
        )
    return out


def untie(model) -> None:
    """Give a tied model its own LM head (a copy of the embedding)."""
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["replace", "extend"])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--lines", type=int, default=60)
    ap.add_argument("--calibration-tokens", type=int, default=40_000)
    args = ap.parse_args()
    setup_logging("WARNING")
    torch.manual_seed(0)
    shared = shared_data_dir()
    if shared is None:
        sys.exit("needs ../shared/data")
    base_dir = resolve_model("smollm2-135m-instruct")
    pdir = shared / "parallel"
    texts = {
        "ru": (pdir / "flores200.devtest.rus_Cyrl").read_text(encoding="utf-8").splitlines()[: args.lines],
        "en": (pdir / "flores200.devtest.eng_Latn").read_text(encoding="utf-8").splitlines()[: args.lines],
    }
    calib_paras: list[str] = []
    for doc in iter_documents([shared / "ru" / "ruslit" / "prose"]):
        calib_paras.extend(paragraphs(doc.text))
    calib_paras = sample_paragraphs(calib_paras, args.calibration_tokens * 8, seed=0)

    base_tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    res: dict = {"base": {}, "modes": {}, "lines": args.lines, "calibration_tokens": args.calibration_tokens}
    previous = RESULTS / "transplant_bench.json"
    if previous.is_file():  # a run with --methods X updates only those rows
        old = json.loads(previous.read_text())
        if old.get("lines") == args.lines and old.get("calibration_tokens") == args.calibration_tokens:
            res["modes"] = old.get("modes", {})
    for lang, lines in texts.items():
        res["base"][lang] = round(bits_per_char(base, base_tok, lines).bits_per_char, 3)
    del base
    work = Path(tempfile.mkdtemp(prefix="vikhr-transplant-bench-"))
    toks = make_tokenizers(shared, base_dir, work, args.modes)
    for mode, tok_dir in toks.items():
        tok = AutoTokenizer.from_pretrained(tok_dir)
        tmap = build_token_map(tok, base_tok)
        stream: list[int] = []
        for p in calib_paras:
            stream += [start_token_id(tok), *tok(p, add_special_tokens=False)["input_ids"]]
        rows = res["modes"].get(mode, {}) | {"vocab": len(tok), "rows": tmap.counts()}
        rows.setdefault("methods", {})
        for method in args.methods:
            model = AutoModelForCausalLM.from_pretrained(base_dir)
            t0 = time.perf_counter()
            if method.startswith("mean+first-out"):
                untie(model)
                install(model, build_matrices(model, tmap, "mean", "first", 64, 0))
            else:
                init = "mean" if method == "calibrated" else method
                install(model, build_matrices(model, tmap, init, "same", 64, 0))
            seconds = time.perf_counter() - t0
            entry = {"transplant_seconds": round(seconds, 1)}
            if method == "calibrated":
                opts = CalibrationOptions(tokens=args.calibration_tokens)
                c = calibrate(model, stream, tmap.ids("pieces", "fallback"), is_tied(model), opts)
                entry["calibration_seconds"] = round(c["seconds_hidden"] + c["seconds_fit"], 1)
            for lang, lines in texts.items():
                r = bits_per_char(model, tok, lines)
                entry[lang] = round(r.bits_per_char, 3)
                entry[f"uniform_{lang}"] = round(uniform_bits_per_char(len(tok), r.tokens, r.chars), 3)
            rows["methods"][method] = entry
            print(mode, method, entry, flush=True)
            RESULTS.mkdir(exist_ok=True)
            res["modes"][mode] = rows
            (RESULTS / "transplant_bench.json").write_text(
                json.dumps(res, indent=2, ensure_ascii=False) + "\n"
            )
    print(f"\nbits per character, first {args.lines} FLORES devtest sentences (base SmolLM2: RU {res['base']['ru']}, "
          f"EN {res['base']['en']})\n")  # fmt: skip
    print("| mode | method | RU bits/char | RU uniform bound | ratio | EN bits/char | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode, rows in res["modes"].items():
        for method, e in rows["methods"].items():
            secs = e["transplant_seconds"] + e.get("calibration_seconds", 0)
            print(f"| {mode} | {method} | {e['ru']} | {e['uniform_ru']} | {e['ru'] / e['uniform_ru']:.2f} | "
                  f"{e['en']} | {secs:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
