"""Pre-flight diagnostics of a transplanted model, before any training: is it a sane starting point?

Bits per character on held-out text for the base (its own tokenizer) and the transplanted model, the uniform
bound, greedy continuations, embedding-norm statistics per kind of row, and how much of the output distribution
the new rows take compared with how often new tokens really occur.
"""

from __future__ import annotations

import json

from vikhr.eval.bpc import (
    bits_per_char,
    embedding_norm_stats,
    greedy_continuations,
    output_mass,
    uniform_bits_per_char,
)
from vikhr.log import get_logger
from vikhr.transplant.mapping import TokenMap

log = get_logger(__name__)


def model_side(model, tokenizer, texts: dict[str, list[str]], prompts: list[str]) -> dict:
    """Bits per character per language and greedy continuations of one model with its tokenizer."""
    out: dict = {"bits_per_char": {}, "tokens_per_char": {}, "uniform_bits_per_char": {}}
    for lang, lines in texts.items():
        r = bits_per_char(model, tokenizer, lines)
        out["bits_per_char"][lang] = round(r.bits_per_char, 4)
        out["tokens_per_char"][lang] = round(r.tokens_per_char, 4)
        out["uniform_bits_per_char"][lang] = round(
            uniform_bits_per_char(len(tokenizer), r.tokens, r.chars), 4
        )
    out["continuations"] = dict(zip(prompts, greedy_continuations(model, tokenizer, prompts), strict=True))
    return out


def row_groups(tmap: TokenMap, padded_size: int) -> dict[str, list[int]]:
    return {
        "copied": tmap.ids("copied"),
        "special": tmap.ids("special"),
        "new": tmap.ids("pieces"),
        "fallback": tmap.ids("fallback"),
        "padding": list(range(len(tmap), padded_size)),
    }


def new_row_dominance(model, tokenizer, lines: list[str], new_rows: list[int], factor: float) -> dict:
    """Mass the model puts on new rows vs the share of new tokens in the actual tokenization of `lines`."""
    mass = output_mass(model, tokenizer, lines, new_rows)
    ids = [i for line in lines for i in tokenizer(line, add_special_tokens=False)["input_ids"]]
    new = set(new_rows)
    share = sum(1 for i in ids if i in new) / max(1, len(ids))
    warn = mass > 0.5 and mass > factor * share
    return {"mass_on_new_rows": round(mass, 4), "share_of_new_tokens": round(share, 4), "warning": warn}


def norm_stats(model, groups: dict[str, list[int]], tied: bool) -> dict:
    out = {"embedding": embedding_norm_stats(model.get_input_embeddings().weight.detach(), groups)}
    if not tied:
        out["lm_head"] = embedding_norm_stats(model.get_output_embeddings().weight.detach(), groups)
    return out


def markdown(report: dict) -> str:
    """The report as Markdown, for people."""
    b, n = report["base"], report["transplanted"]
    lines = [
        f"# Transplant report: `{report['method']}`",
        "",
        f"Base `{report['source_model']}` → vocabulary of {report['vocab_size']:,} tokens "
        f"(padded to {report['padded_vocab_size']:,}), LM head {'tied' if report['tied'] else 'untied'}.",
        "",
        "Rows: " + ", ".join(f"{k} {v:,}" for k, v in report["rows"].items()),
        "",
        "| language | base bits/char | transplanted bits/char | uniform bound (new vocab) | ratio to bound |",
        "|---|---:|---:|---:|---:|",
    ]
    for lang, v in n["bits_per_char"].items():
        bound = n["uniform_bits_per_char"][lang]
        lines.append(f"| {lang} | {b['bits_per_char'][lang]:.3f} | {v:.3f} | {bound:.3f} | {v / bound:.2f} |")
    d = report["dominance"]
    lines += [
        "",
        f"Output mass on new rows: {d['mass_on_new_rows']:.3f} (new tokens are {d['share_of_new_tokens']:.3f} "
        f"of the actual tokens){' — **WARNING: new rows dominate the output**' if d['warning'] else ''}.",
        "",
        "## Greedy continuations",
        "",
        "| prompt | base | transplanted |",
        "|---|---|---|",
    ]
    for p in n["continuations"]:
        esc = [
            json.dumps(x, ensure_ascii=False)[1:-1].replace("|", "\\|")
            for x in (b["continuations"][p], n["continuations"][p])
        ]
        lines.append(f"| {p} | {esc[0]} | {esc[1]} |")
    lines += [
        "",
        "## Embedding norms",
        "",
        "| matrix | rows | count | mean | std | min | max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for matrix, groups in report["norms"].items():
        for g, st in groups.items():
            if st.get("count"):
                lines.append(
                    f"| {matrix} | {g} | {st['count']:,} | {st['mean']} | {st['std']} | {st['min']} | {st['max']} |"
                )
    if report.get("calibration"):
        c = report["calibration"]
        lines += ["", f"Calibration: {c['tokens']:,} tokens, {c['rows_seen']:,} of {c['rows_trained']:,} new rows seen, "
                  f"training loss by epoch {c['losses']}, held-out {c['heldout_losses']} (kept epoch {c['best_epoch']}), "
                  f"{c['seconds_hidden'] + c['seconds_fit']:.0f} s."]  # fmt: skip
    return "\n".join(lines) + "\n"


def summary_metrics(report: dict) -> dict:
    """The few numbers that go into the manifest."""
    n = report["transplanted"]
    return {
        "bits_per_char": n["bits_per_char"],
        "base_bits_per_char": report["base"]["bits_per_char"],
        "uniform_bits_per_char": n["uniform_bits_per_char"],
        "rows": report["rows"],
        "mass_on_new_rows": report["dominance"]["mass_on_new_rows"],
        "dominance_warning": report["dominance"]["warning"],
    }
