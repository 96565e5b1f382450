"""Side-by-side answers of two or more models to the same prompts, with language purity and speed per answer.

The Vikhr paper (Table 6) shows answers of adapted models to everyday Russian questions next to each other; the
differences a reader sees are English words left in Russian text, mixed-script words and answer length. This
module loads one model at a time, generates through `vikhr.eval.generate.generate_answers` (the serving
engine), scores each answer with `vikhr.eval.purity`, and writes `sbs.json`, `sbs.md` (one table: a row per
prompt, a column per model) and a self-contained `sbs.html` with the offending words highlighted.

`vikhr eval sbs NAME=PATH NAME=PATH ...` runs it from the command line (`add_sbs_arguments`, `cmd_sbs`).
"""

from __future__ import annotations

import argparse
import gc
import html
import json
import os
import sys
import time
from pathlib import Path

import torch

from vikhr.eval.generate import generate_answers
from vikhr.eval.purity import Purity, aggregate, classified_words, purity
from vikhr.log import get_logger
from vikhr.models import named_models
from vikhr.scripts import LANGUAGE_SCRIPTS

logger = get_logger(__name__)

PROMPTS_FILE = Path(__file__).resolve().parent / "prompts" / "ru_everyday.txt"
"""The bundled prompts: everyday Russian questions (recipes, travel, health, letters, explanations, code)."""
FILES = {"json": "sbs.json", "markdown": "sbs.md", "html": "sbs.html"}


def read_prompts(path: str | Path) -> list[str]:
    """Non-blank lines of a UTF-8 file, stripped, one prompt per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); expected one prompt per line") from e
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts (expected one prompt per line)")
    return prompts


def bundled_prompts() -> list[str]:
    """The bundled everyday Russian questions (`prompts/ru_everyday.txt`), in file order."""
    return read_prompts(PROMPTS_FILE)


# ------------------------------------------------------------------------------------------------ generation


def _answer_entry(answer, language: str) -> dict:
    chars = len(answer.text)
    return {
        "text": answer.text,
        "tokens": answer.tokens,
        "chars": chars,
        "finish_reason": answer.finish_reason,
        "seconds": answer.seconds,
        "chars_per_s": chars / answer.seconds if answer.seconds > 0 else 0.0,
        "purity": purity(answer.text, language).as_dict(),
    }


def _one_model(path: str, prompts: list[str], chat: bool | None, settings: dict) -> dict:
    """Load the model at `path`, answer every prompt, free the model; the model's entry of the result."""
    from vikhr.serve.engine import Engine

    loaded = Engine.load(path, dtype=settings["dtype"], device=settings["device"])
    model, tokenizer = loaded.model, loaded.tokenizer
    use_chat = bool(tokenizer.chat_template) if chat is None else chat
    info = {"path": path, "chat": use_chat, "dtype": str(model.dtype).removeprefix("torch."),
            "device": str(model.device), "vocab": len(tokenizer)}  # fmt: skip
    del loaded
    t0 = time.perf_counter()
    try:
        answers = generate_answers(
            model, tokenizer, prompts, max_new_tokens=settings["max_new_tokens"],
            temperature=settings["temperature"], seed=settings["seed"], chat=use_chat,
        )  # fmt: skip
    finally:
        device = model.device
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    wall = time.perf_counter() - t0
    entries = [_answer_entry(a, settings["language"]) for a in answers]
    chars = sum(e["chars"] for e in entries)
    return {
        **info,
        "seconds": wall,
        "mean_chars": chars / len(entries),
        "mean_tokens": sum(e["tokens"] for e in entries) / len(entries),
        "chars_per_s": chars / wall if wall > 0 else 0.0,
        "purity": aggregate([Purity(**e["purity"]) for e in entries]),
        "answers": entries,
    }


def side_by_side(
    models: dict[str, str | Path],
    prompts: list[str],
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.0,
    seed: int = 0,
    chat: bool | None = None,
    language: str = "ru",
    dtype: str = "auto",
    device: str | None = None,
) -> dict:
    """Answers of every model to every prompt, one model loaded at a time, with purity and speed.

    Models are folders or aliases (`vikhr.models.resolve_model`), all resolved before the first is loaded.
    `chat=None` uses each model's chat template when it has one and a plain continuation otherwise (recorded
    per model as `chat`). Per model: `chars_per_s` is all answers' characters over the wall time of generating
    them together (the batched throughput), `seconds` that wall time, `purity` the `purity.aggregate` of its
    answers; per answer: text, tokens, chars, finish_reason, seconds (submit to finish, under batching),
    chars_per_s and purity.
    """
    from vikhr.models import resolve_model

    if not models:
        raise ValueError("no models to compare")
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError("no prompts")
    if language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown language {language!r}: use one of {', '.join(sorted(LANGUAGE_SCRIPTS))}")
    paths = {name: resolve_model(str(spec)) for name, spec in models.items()}
    settings = {
        "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "chat": chat,
        "language": language, "dtype": dtype, "device": device,
    }  # fmt: skip
    result: dict = {"settings": settings, "prompts": list(prompts), "models": {}}
    for name, path in paths.items():
        logger.info("answering %d prompts with %s (%s)", len(prompts), name, path)
        entry = _one_model(path, prompts, chat, settings)
        result["models"][name] = entry
        p = entry["purity"]
        logger.info(
            "%s: %.0f chars per answer, %.1f chars/s, Latin words %.1f%%, mixed %.1f%%",
            name, entry["mean_chars"], entry["chars_per_s"], 100 * p["latin_share"], 100 * p["mixed_share"],
        )  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------------- output


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _meta(a: dict) -> str:
    cut = ", cut at the limit" if a["finish_reason"] == "length" else ""
    return (
        f"{a['chars']} chars, Latin {_pct(a['purity']['latin_share'])}, "
        f"mixed {_pct(a['purity']['mixed_share'])}, {a['chars_per_s']:.1f} chars/s{cut}"
    )


def _md_cell(text: str) -> str:
    """Text safe inside a Markdown table cell: HTML escaped, backslashes and pipes escaped, newlines as <br>."""
    text = html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def _settings_line(result: dict) -> str:
    s = result["settings"]
    how = (
        "greedy"
        if s["temperature"] == 0
        else f"temperature {s['temperature']}, seed {s['seed']} + prompt index"
    )
    return (
        f"{len(result['prompts'])} prompts, {how}, up to {s['max_new_tokens']} new tokens; "
        f"words outside the script of `{s['language']}` counted after removing code, URLs and e-mails."
    )


def summary_markdown(result: dict) -> str:
    """One row per model: prompt mode, length, speed and purity."""
    lines = [
        "| model | mode | mean chars | chars/s | Latin words | mixed words | answers with Latin | most frequent |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, m in result["models"].items():
        p = m["purity"]
        top = ", ".join(f"{t['word']} ({t['count']})" for t in p["top_offending"][:8])
        lines.append(
            f"| {_md_cell(name)} | {'chat' if m['chat'] else 'continuation'} | {m['mean_chars']:.0f} | "
            f"{m['chars_per_s']:.1f} | {_pct(p['latin_share'])} | {_pct(p['mixed_share'])} | "
            f"{_pct(p['answers_with_latin'])} | {_md_cell(top)} |"
        )
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    """The side-by-side page: settings, the per-model summary, then one table of prompts × models."""
    names = list(result["models"])
    lines = [
        "# Side by side",
        "",
        _settings_line(result),
        "",
        summary_markdown(result),
        "| prompt | " + " | ".join(_md_cell(n) for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, prompt in enumerate(result["prompts"]):
        cells = []
        for n in names:
            a = result["models"][n]["answers"][i]
            cells.append(f"{_md_cell(a['text'])}<br>*{_md_cell(_meta(a))}*")
        lines.append(f"| {_md_cell(prompt)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def highlighted_html(text: str, language: str) -> str:
    """`text` HTML-escaped, with its Latin and mixed-script words inside <mark class="latin|mixed">."""
    out, pos = [], 0
    for start, end, kind in classified_words(text, language):
        if kind in ("latin", "mixed"):
            out.append(html.escape(text[pos:start]))
            out.append(f'<mark class="{kind}">{html.escape(text[start:end])}</mark>')
            pos = end
    out.append(html.escape(text[pos:]))
    return "".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 0.5em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.answer div.text { white-space: pre-wrap; }
td.num { text-align: right; }
div.meta { color: #666; font-size: 0.85em; margin-top: 0.5em; }
mark.latin { background: #ffd36b; }
mark.mixed { background: #ff8f8f; }
"""


def html_page(result: dict) -> str:
    """The side-by-side page as one self-contained HTML file."""
    e, names, lang = html.escape, list(result["models"]), result["settings"]["language"]
    rows = []
    for name, m in result["models"].items():
        p = m["purity"]
        top = ", ".join(f"{t['word']} ({t['count']})" for t in p["top_offending"])
        rows.append(
            f"<tr><td>{e(name)}</td><td>{e(m['path'])}</td><td>{'chat' if m['chat'] else 'continuation'}</td>"
            f"<td class=num>{m['mean_chars']:.0f}</td><td class=num>{m['chars_per_s']:.1f}</td>"
            f"<td class=num>{_pct(p['latin_share'])}</td><td class=num>{_pct(p['mixed_share'])}</td>"
            f"<td class=num>{_pct(p['answers_with_latin'])}</td><td>{e(top)}</td></tr>"
        )
    answers = []
    for i, prompt in enumerate(result["prompts"]):
        cells = "".join(
            f'<td class="answer"><div class="text">{highlighted_html(a["text"], lang)}</div>'
            f'<div class="meta">{e(_meta(a))}</div></td>'
            for a in (result["models"][n]["answers"][i] for n in names)
        )
        answers.append(f"<tr><td>{e(prompt)}</td>{cells}</tr>")
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    return f"""<!DOCTYPE html>
<html lang="{e(lang)}">
<head><meta charset="utf-8"><title>Side by side</title><style>{_CSS}</style></head>
<body>
<h1>Side by side</h1>
<p>{e(_settings_line(result))} <mark class="latin">Latin</mark> and <mark class="mixed">mixed-script</mark>
words are highlighted.</p>
<table>
<tr><th>model</th><th>path</th><th>mode</th><th>mean chars</th><th>chars/s</th><th>Latin words</th>
<th>mixed words</th><th>answers with Latin</th><th>most frequent</th></tr>
{"".join(rows)}
</table>
<table>
<tr><th>prompt</th>{head}</tr>
{"".join(answers)}
</table>
</body>
</html>
"""


def _write(path: Path, text: str) -> None:
    """Write `text` beside `path` and rename it into place, so a half-written file never appears."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_side_by_side(result: dict, out_dir: Path) -> dict[str, Path]:
    """Write `sbs.json`, `sbs.md` and `sbs.html` into `out_dir`; their paths by kind (json, markdown, html)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / name for kind, name in FILES.items()}
    _write(paths["json"], json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    _write(paths["markdown"], markdown(result))
    _write(paths["html"], html_page(result))
    logger.info("side-by-side written to %s", out_dir)
    return paths


# ------------------------------------------------------------------------------------------------------- CLI


def add_sbs_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `vikhr eval sbs` (and `cmd_sbs` as the parser's `func`)."""
    p.add_argument(
        "models", nargs="+", metavar="NAME=PATH", help="models as NAME=PATH_OR_ALIAS or PATH_OR_ALIAS"
    )
    p.add_argument(
        "--prompts", help="UTF-8 file, one prompt per line (default: the bundled everyday questions)"
    )
    p.add_argument("--out", default="sbs", help="output folder for sbs.json, sbs.md, sbs.html (default: sbs)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens per answer at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0, help="sampling: prompt i uses seed + i")
    p.add_argument(
        "--chat", action=argparse.BooleanOptionalAction, default=None,
        help="use the chat template (default: when the model has one; else continue the prompt text)",
    )  # fmt: skip
    p.add_argument("--language", default="ru", choices=sorted(LANGUAGE_SCRIPTS), help="target language")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.set_defaults(func=cmd_sbs)


def cmd_sbs(args: argparse.Namespace) -> int:
    """`vikhr eval sbs`: generate, write the three files, print the summary."""
    from vikhr.log import setup_logging

    setup_logging("INFO")
    models = named_models(args.models, "NAME=PATH")
    prompts = read_prompts(args.prompts) if args.prompts else bundled_prompts()
    result = side_by_side(
        models, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        chat=args.chat, language=args.language, dtype=args.dtype, device=args.device,
    )  # fmt: skip
    paths = write_side_by_side(result, Path(args.out))
    sys.stdout.write(summary_markdown(result))
    sys.stdout.write("".join(f"{kind}: {path}\n" for kind, path in paths.items()))
    return 0
