"""What the toolkit's LLM translators share: script checks, batched requests, cost accounting, output folder.

Used by `vikhr eval translate` (multiple-choice benchmarks) and `vikhr instruct translate` (instruction sets):

- `script_share` / `has_english_word` / `in_target_language`: is a text written in the target language's script
  (math, code and LaTeX commands, variables and acronyms do not count as prose);
- `completion_limit` / `ask`: requests through `LLMClient.chat_many` at temperature 0, one batch per completion
  limit, so that a request (and its cache key) never depends on the other items of a run;
- `run_cost` / `usd`: this run's tokens from the client's counters, and what every answer cost, cached ones
  included;
- `check_arguments` / `check_out_dir` / `write_jsonl` / `tally`: argument checks, the folder a staged write may
  replace, and the `kept + rejected == total` accounting;
- `add_endpoint_arguments` / `client_from_args` / `cost_line`: the endpoint and price options of both commands.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vikhr.llm.client import ChatResult, LLMClient, LLMError, LLMStats
from vikhr.log import get_logger
from vikhr.scripts import LANGUAGE_SCRIPTS, LATIN, SCRIPTS

log = get_logger(__name__)

MIN_MAX_TOKENS = 512
"""Smallest completion limit of a translation request; longer texts get one token per character."""
REJECTED_FILE = "rejected.jsonl"
STATS_FILE = "stats.json"

LANGUAGE_NAMES = {
    "ru": "Russian", "uk": "Ukrainian", "be": "Belarusian", "bg": "Bulgarian", "kk": "Kazakh", "sr": "Serbian",
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
}  # fmt: skip
"""Language code -> English name used in the translator's instructions."""

# -- script checks -------------------------------------------------------------------------------------------

_NOT_PROSE = re.compile(
    r"\$\$.*?\$\$|\$[^$\n]{1,200}\$|\\\(.*?\\\)|\\\[.*?\\\]|`[^`]*`|\\[A-Za-z]+", re.DOTALL
)
"""Math spans ($...$, $$...$$, \\(...\\), \\[...\\]), inline code and LaTeX commands: not counted as prose."""
_LETTER_RUN = re.compile(r"[^\W\d_]+")
_LATIN_RUN = re.compile(f"[{LATIN}]+")
_ENGLISH_RUN = re.compile(r"[a-z]{4,}")


def script_share(text: str, script: str) -> float | None:
    """Share of the prose letters of `text` that belong to `script` (a character class from `vikhr.scripts`).

    Prose letters are all letters except those in math spans, inline code and LaTeX commands, and Latin words of
    one letter (variables) or without a lowercase letter (acronyms, Roman numerals, formulas such as H2O):
    "I, II и III" is Russian. None when no letter counts.
    """
    target = re.compile(f"[{script}]")
    n = hits = 0
    for run in _LETTER_RUN.findall(_NOT_PROSE.sub(" ", text)):
        if _LATIN_RUN.fullmatch(run) and (len(run) == 1 or run.upper() == run):
            continue
        n += len(run)
        hits += sum(1 for ch in run if target.match(ch))
    return hits / n if n else None


def has_english_word(text: str) -> bool:
    """True when a Latin word outside math, code and LaTeX commands has 4+ lowercase letters in a row
    ("the", "NaCl", "DNA", "mol", "sin" do not; "above", "Paris" do)."""
    return any(_ENGLISH_RUN.search(w) for w in _LATIN_RUN.findall(_NOT_PROSE.sub(" ", text)))


def in_target_language(text: str, script: str, min_share: float, source: str | None = None) -> bool:
    """Whether `text` counts as written in the target language.

    True when it has no prose letters (numbers, formulas), when at least `min_share` of its prose letters are in
    `script`, or when it is identical to its `source` and has no Latin word with 4+ lowercase letters in a row
    (formulas, symbols, names such as "NaCl", "DNA", "pH" that are not translated).
    """
    share = script_share(text, script)
    if share is None or share >= min_share:
        return True
    return source is not None and text.strip() == source.strip() and not has_english_word(text)


def script_name(script: str) -> str:
    """The name of a script's character class ("cyrillic", "latin") for messages."""
    return next((n for n, cls in SCRIPTS.items() if cls == script), "target-script")


def target_script(language: str) -> str:
    """The character class of `language`'s letters; warns when that is Latin (the checks cannot tell it from
    English then)."""
    script = LANGUAGE_SCRIPTS[language]
    if script == LATIN:
        log.warning(
            "%s is written in Latin script, as English is: the script checks cannot tell them apart", language
        )
    return script


# -- requests ------------------------------------------------------------------------------------------------


def completion_limit(chars: int, cap: int | None = None) -> int:
    """Completion limit of a translation: a power of two at least `MIN_MAX_TOKENS` and at least `chars` (a
    translation is about as long as its source; a token holds a character or more), cut to `cap` if given."""
    need = max(MIN_MAX_TOKENS, chars)
    limit = 1 << (need - 1).bit_length()
    return min(limit, cap) if cap else limit


def ask(
    client: LLMClient, convs: Sequence[list[dict[str, str]]], limits: Sequence[int], desc: str
) -> list[ChatResult | LLMError]:
    """`client.chat_many` at temperature 0, one batch per completion limit (so an item's request, and its cache
    key, never depends on the other items); answers in input order. A failed request leaves its `LLMError`."""
    answers: list[ChatResult | LLMError | None] = [None] * len(convs)
    for limit in sorted(set(limits)):
        idx = [i for i, n in enumerate(limits) if n == limit]
        label = desc + (f" (≤{limit} tokens)" if len(set(limits)) > 1 else "")
        got = client.chat_many([convs[i] for i in idx], desc=label, temperature=0, max_tokens=limit)
        for i, a in zip(idx, got, strict=True):
            answers[i] = a
    return [a for a in answers if a is not None]


def require_some_answer(answers: Sequence[ChatResult | LLMError], what: str = "translation") -> None:
    """Raise when every request of a run failed (a wrong model id, a broken endpoint): nothing is written."""
    if answers and all(isinstance(a, LLMError) for a in answers):
        raise LLMError(f"every {what} request failed, nothing written; the first error: {answers[0]}")


# -- cost ----------------------------------------------------------------------------------------------------


def usd(prompt: int, completion: int, price_in: float, price_out: float) -> float | None:
    """USD of `prompt` / `completion` tokens at `price_in` / `price_out` per 1M tokens; None without prices."""
    if not (price_in or price_out):
        return None
    return round((prompt * price_in + completion * price_out) / 1e6, 6)


def run_cost(
    before: LLMStats,
    after: LLMStats,
    answers: Iterable[ChatResult | LLMError],
    price_in: float,
    price_out: float,
) -> dict[str, Any]:
    """This run's tokens and requests (the client's counters), and what every answer cost, cached ones too."""
    keys = ("prompt_tokens", "completion_tokens", "cached_tokens", "requests", "cache_hits")
    run = {k: getattr(after, k) - getattr(before, k) for k in keys}
    got = [a for a in answers if isinstance(a, ChatResult)]
    p_all = sum(int(a.usage.get("prompt_tokens") or 0) for a in got)
    c_all = sum(int(a.usage.get("completion_tokens") or 0) for a in got)
    return {
        **run,
        "usd": usd(run["prompt_tokens"], run["completion_tokens"], price_in, price_out),
        "price_in_per_1m": price_in,
        "price_out_per_1m": price_out,
        "all_items": {
            "prompt_tokens": p_all, "completion_tokens": c_all, "usd": usd(p_all, c_all, price_in, price_out)
        },
    }  # fmt: skip


# -- arguments, output folder, accounting --------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_arguments(
    name: str, language: str, limit: int | None, min_share: float, price_in: float, price_out: float
) -> None:
    """`ValueError` for a name that cannot name files, an unknown language, a bad limit, share or price."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"task name {name!r}: use letters, digits, '_', '.', '-' (it names files)")
    if language not in LANGUAGE_SCRIPTS:
        known = ", ".join(sorted(LANGUAGE_SCRIPTS))
        raise ValueError(
            f"unknown target language {language!r} (known: {known}; add it to vikhr.scripts.LANGUAGE_SCRIPTS)"
        )
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_script_share must be in (0, 1], got {min_share}")
    if price_in < 0 or price_out < 0:
        raise ValueError(f"prices must not be negative, got {price_in} / {price_out}")


def check_out_dir(out_dir: Path, ours: Iterable[str]) -> None:
    """Refuse an output folder that the final rename would destroy: one with files other than `ours`, or the
    working folder."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder")
    resolved, cwd = out_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ValueError(
            f"{out_dir} is (or holds) the working folder; the task folder is replaced as a whole"
        )
    keep = set(ours)
    other = sorted(p.name for p in out_dir.iterdir() if p.name not in keep)
    if other:
        shown = ", ".join(other[:5]) + (", ..." if len(other) > 5 else "")
        raise ValueError(
            f"{out_dir} holds other files ({shown}); the task folder is replaced as a whole: choose a new or "
            f"empty --out (one folder per task)"
        )


def tally(total: int, kept: int, rejected_rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Rejections by reason, most common first; raises when `kept + rejected != total`."""
    if kept + len(rejected_rows) != total:
        raise RuntimeError(f"accounting error: {kept} kept + {len(rejected_rows)} rejected != {total} items")
    return dict(Counter(r["reason"] for r in rejected_rows).most_common())


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object a line, UTF-8, non-ASCII kept readable."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# -- command line --------------------------------------------------------------------------------------------


def add_endpoint_arguments(p: argparse.ArgumentParser) -> None:
    """--base-url, --model, --price-in, --price-out, --concurrency (see `client_from_args`)."""
    p.add_argument(
        "--base-url",
        help="OpenAI-compatible endpoint ending in /v1 (default: $VIKHR_LLM_BASE_URL, $OPENAI_BASE_URL, "
        "http://127.0.0.1:8000/v1)",
    )
    p.add_argument("--model", help="model id (default: $VIKHR_LLM_MODEL, else the endpoint's first model)")
    p.add_argument(
        "--price-in", type=float, default=0.0, metavar="USD_PER_1M", help="USD per 1M prompt tokens"
    )
    p.add_argument(
        "--price-out", type=float, default=0.0, metavar="USD_PER_1M", help="USD per 1M completion tokens"
    )
    p.add_argument("--concurrency", type=int, help="requests in flight at once (default: 8)")


def client_from_args(args: argparse.Namespace) -> LLMClient:
    """A client from the environment, with the endpoint options given on the command line."""
    overrides = {"base_url": args.base_url, "model": args.model, "max_concurrency": args.concurrency}
    return LLMClient.from_env(**{k: v for k, v in overrides.items() if v is not None})


def default_name(path: Path, language: str) -> str:
    """`<file stem>_<language>` with characters that cannot name files replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(path).stem}_{language}")


def cost_line(cost: Mapping[str, Any]) -> str:
    """One line of a run's tokens, requests, cache hits and USD (when prices were given)."""
    money = f", ${cost['usd']:.4f}" if cost["usd"] is not None else ""
    return (
        f"cost: {cost['prompt_tokens']} prompt + {cost['completion_tokens']} completion tokens in "
        f"{cost['requests']} requests ({cost['cache_hits']} cache hits, {cost['cached_tokens']} cached tokens)"
        f"{money}"
    )


def counts_line(kept: int, total: int, reasons: Mapping[str, int]) -> str:
    """`kept K of N, rejected R (reason n, ...)`."""
    shown = ", ".join(f"{r} {n}" for r, n in reasons.items())
    return f"kept {kept} of {total}, rejected {total - kept}" + (f" ({shown})" if shown else "")
