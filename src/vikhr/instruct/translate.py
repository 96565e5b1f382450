"""Translated instruction sets, the way the Vikhr paper built Veles and ruFLAN.

`translate_examples` asks any OpenAI-compatible endpoint (through the shared `LLMClient`: bounded concurrency,
retries, disk cache, token accounting) to translate English conversations into the target language:

- mode `translate` (Veles, from OpenHermes): every message is translated, the assistant replies too;
- mode `generate` (ruFLAN, from FLAN): the system and user messages (and earlier replies) are translated,
  and the final reply is written anew: the endpoint answers the translated conversation, told to answer in the
  target language.

Every message is one translation request (identical texts, such as a shared system prompt, are sent once).
Before it is sent, fenced code blocks, inline code and URLs become placeholders (⟦0⟧, ⟦1⟧, ...) the translator
is told to copy unchanged; they are put back byte for byte afterwards. Each answer is checked, and an example with any
failing message is rejected with the first failure's reason:

    llm_error       the request failed after the client's retries (error status, a body that is not JSON, ...)
    empty_answer    the answer is empty
    truncated       the answer stopped at the completion limit
    markup_lost     a placeholder is missing, duplicated or unknown
    markup_changed  the number of list items, headings or table rows changed, a code fence appeared, or a code
                    block's placeholder no longer stands on its own line
    wrong_language  too few of the prose letters (code, URLs, math and acronyms excluded) are in the target
                    script, or a text with prose came back without any
    length_changed  a text of some length came back under a third or over three times as long (an answer to the
                    request instead of its translation, a summary)
    bad_example     the conversation is not a usable example (`formats.check_messages`)

The output folder (replaced as a whole when done) holds `<name>.jsonl` (OpenAI messages form, which
`formats.read_examples` reads back as `messages` records, with the English `orig_messages`), `rejected.jsonl`
(reason, detail, the source example and the raw answer) and `stats.json` (counts, `kept + rejected == total`,
tokens and USD). Every response is cached by the client: a rerun sends only the requests that failed, and gives
the same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vikhr.eval.purity import mask_non_prose
from vikhr.fsutil import staged_dir
from vikhr.instruct.formats import FORMATS, Example, Messages, Rejected, check_messages, read_examples
from vikhr.llm.client import ChatResult, LLMClient, LLMError
from vikhr.llm.translation import (
    LANGUAGE_NAMES,
    REJECTED_FILE,
    STATS_FILE,
    add_endpoint_arguments,
    ask,
    check_arguments,
    check_out_dir,
    client_from_args,
    completion_limit,
    cost_line,
    counts_line,
    default_name,
    in_target_language,
    require_some_answer,
    run_cost,
    script_name,
    script_share,
    tally,
    target_script,
    write_jsonl,
)
from vikhr.log import get_logger, setup_logging
from vikhr.manifest import write_json_atomic
from vikhr.scripts import LANGUAGE_SCRIPTS

log = get_logger(__name__)

Mode = Literal["translate", "generate"]
MODES = ("translate", "generate")
MAX_TOKENS = 4096
"""Default completion limit of a generated reply, and the most a translation request may ask for."""
MIN_LENGTH_CHECKED = 80
"""Texts shorter than this (placeholders aside) skip the length check: short phrases change length freely."""
LENGTH_RATIO = (1 / 3, 3.0)
"""Least and most length of a translation relative to its source (both placeholders aside)."""

TRANSLATE_PROMPT = (
    "You are a professional translator from English into {language}. The user sends you one message of a "
    "conversation between a person and an AI assistant: a question, a request, an instruction, a system "
    "prompt or an answer. Translate it into natural, accurate {language}, as a native speaker would write it; "
    "do not answer it, carry it out or comment on it. Keep the formatting exactly: line breaks and blank lines, "
    "Markdown list markers and numbering, headings, tables, bold and italics. Tokens such as ⟦0⟧ stand for "
    "code and links that must not change: copy every one of them exactly once, unchanged, to its place in the "
    "translated text, and keep a token that stands alone on its line alone on its line. Keep numbers, "
    "formulas, units and identifiers as they are; write proper names in their usual {language} form. Reply "
    "with only the translation."
)
GENERATE_PROMPT = (
    "Always reply in {language}, whatever language the request is in; keep code, formulas and identifiers as "
    "they are."
)

# -- placeholders and markup ---------------------------------------------------------------------------------

_PROTECTED = re.compile(
    r"```.*?(?:```|\Z)"  # fenced code block; unclosed: to the end (a reply cut at its length limit)
    r"|~~~.*?(?:~~~|\Z)"
    r"|``[^\n]+?``"  # inline code with backticks inside
    r"|`[^`\n]+`"  # inline code
    r"|(?:https?|ftp)://[^\s<>\"'`]+|www\.[^\s<>\"'`]+"  # URL
    r"|⟦\s*\d+\s*⟧",  # text that looks like a placeholder already: protected too, so it round-trips
    re.DOTALL,
)
_URL_TAIL = ".,;:!?'\"*_"
_PLACEHOLDER = re.compile(r"⟦\s*(\d+)\s*⟧")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+\S", re.MULTILINE)
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+\S", re.MULTILINE)
_TABLE_ROW = re.compile(r"^[ \t]*\|.*\|[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"```|~~~")
_LETTER = re.compile(r"[^\W\d_]")


def placeholder(i: int) -> str:
    """The placeholder of the `i`-th protected span: ⟦i⟧."""
    return f"⟦{i}⟧"


@dataclass(frozen=True)
class Protected:
    """A text with its code and URLs replaced by placeholders: `text` holds ⟦i⟧ where `spans[i]` was."""

    text: str
    spans: tuple[str, ...]


def _url_end(url: str) -> int:
    """Length of `url` without the sentence punctuation after it (and an unmatched closing bracket)."""
    end = len(url)
    while end:
        ch = url[end - 1]
        if ch in _URL_TAIL or (ch == ")" and url.count("(", 0, end) < url.count(")", 0, end)):
            end -= 1
        elif ch == "]" and url.count("[", 0, end) < url.count("]", 0, end):
            end -= 1
        else:
            break
    return end


def protect(text: str) -> Protected:
    """Replace fenced code blocks, inline code, URLs (and existing ⟦n⟧ tokens) by numbered placeholders."""
    parts: list[str] = []
    spans: list[str] = []
    pos = 0
    for m in _PROTECTED.finditer(text):
        span = m.group()
        if span[0] not in "`~⟦":
            span = span[: _url_end(span)]
            if not span or ("://" not in span and span.rstrip("/") == "www."):
                continue
        parts.append(text[pos : m.start()])
        parts.append(placeholder(len(spans)))
        spans.append(span)
        pos = m.start() + len(span)
    parts.append(text[pos:])
    return Protected("".join(parts), tuple(spans))


def placeholder_problem(text: str, n: int) -> str | None:
    """Why the placeholders ⟦0⟧..⟦n-1⟧ of `text` do not appear exactly once each (None when they do)."""
    found = [int(m.group(1)) for m in _PLACEHOLDER.finditer(text)]
    missing = [i for i in range(n) if i not in found]
    doubled = sorted({i for i in found if found.count(i) > 1})
    unknown = sorted({i for i in found if i >= n})
    problems = [
        f"{what} {', '.join(placeholder(i) for i in ids)}"
        for what, ids in (("missing", missing), ("duplicated", doubled), ("unknown", unknown))
        if ids
    ]
    return "; ".join(problems) or None


def restore(text: str, spans: Sequence[str]) -> str:
    """Put the protected spans back in place of their placeholders (one pass: a span is never re-read)."""
    return _PLACEHOLDER.sub(lambda m: spans[int(m.group(1))], text)


def markup_counts(text: str) -> dict[str, int]:
    """Markdown list items (-, *, + or 1. / 1) markers), headings (#) and table rows (| ... |) of a text."""
    return {
        "list items": len(_LIST_ITEM.findall(text)),
        "headings": len(_HEADING.findall(text)),
        "table rows": len(_TABLE_ROW.findall(text)),
    }


def _alone(text: str) -> set[int]:
    """Placeholders that stand alone on their line."""
    return {int(m.group(1)) for m in re.finditer(r"^[ \t]*⟦\s*(\d+)\s*⟧[ \t]*$", text, re.MULTILINE)}


def markup_problem(masked_source: str, masked_answer: str) -> str | None:
    """Why a translation (placeholders still in) changed the source's markup (None when it did not)."""
    before, after = markup_counts(masked_source), markup_counts(masked_answer)
    changed = [f"{k} {before[k]} -> {after[k]}" for k in before if before[k] != after[k]]
    if _FENCE.search(masked_answer):
        changed.append("a code fence appeared")
    moved = sorted(_alone(masked_source) - _alone(masked_answer))
    if moved:
        changed.append(f"{', '.join(placeholder(i) for i in moved)} no longer on a line of its own")
    return "; ".join(changed) or None


def _prose(masked: str) -> str:
    """A masked text without its placeholders, code, URLs and e-mail addresses: what a reader reads as prose."""
    return mask_non_prose(_PLACEHOLDER.sub(" ", masked))


def needs_translation(text: str) -> bool:
    """Whether a text has any letter outside code, URLs and placeholders (else it is kept as it is)."""
    return _LETTER.search(_prose(protect(text).text)) is not None


def language_problem(text: str, source: str | None, script: str, min_share: float) -> str | None:
    """Why `text` is not in the target language (None when it is); see `in_target_language`.

    With a `source` (the English text it translates), a text identical to it without English words passes, and
    one without prose letters fails when the source had some (an answer such as "4" instead of a translation).
    """
    prose = mask_non_prose(text)
    share = script_share(prose, script)
    if source is not None:
        source = mask_non_prose(source)
        if share is None and script_share(source, script) is not None:
            return "no prose letters came back"
    if in_target_language(prose, script, min_share, source):
        return None
    return f"{script_name(script)} share {share or 0.0:.2f} < {min_share:.2f}: {text.strip()[:80]!r}"


def length_problem(masked_source: str, masked_answer: str) -> str | None:
    """Why a translation's length is implausible for its source (None when it is not or the source is short)."""
    n_src = len(" ".join(_PLACEHOLDER.sub(" ", masked_source).split()))
    n_out = len(" ".join(_PLACEHOLDER.sub(" ", masked_answer).split()))
    if n_src < MIN_LENGTH_CHECKED:
        return None
    lo, hi = LENGTH_RATIO
    if not lo <= n_out / n_src <= hi:
        return f"{n_out} characters back for {n_src} sent (ratio {n_out / n_src:.2f})"
    return None


# -- one message ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request's result: the text to keep, or the reason and detail of a failure; `raw` is the answer."""

    text: str | None
    reason: str = ""
    detail: str = ""
    raw: str = ""


def _answer_problem(ans: ChatResult | LLMError) -> Outcome | None:
    """The failure every answer can have: an error, an empty answer, a cut one."""
    if isinstance(ans, LLMError):
        return Outcome(None, "llm_error", ans.message)
    if not ans.text.strip():
        return Outcome(None, "empty_answer", f"the answer is empty (finish reason {ans.finish_reason})")
    if ans.finish_reason == "length":
        return Outcome(None, "truncated", "the answer stopped at the completion limit", ans.text)
    return None


def judge_translation(
    source: str, prot: Protected, ans: ChatResult | LLMError, script: str, min_share: float
) -> Outcome:
    """Check one translated message and restore its code and URLs; see the module docstring for the reasons."""
    if failed := _answer_problem(ans):
        return failed
    assert isinstance(ans, ChatResult)
    out = ans.text.strip()
    checks = (
        ("markup_lost", lambda: placeholder_problem(out, len(prot.spans))),
        ("markup_changed", lambda: markup_problem(prot.text, out)),
        ("wrong_language", lambda: language_problem(restore(out, prot.spans), source, script, min_share)),
        ("length_changed", lambda: length_problem(prot.text, out)),
    )
    for reason, check in checks:
        if detail := check():
            return Outcome(None, reason, detail, ans.text)
    lead = source[: len(source) - len(source.lstrip())]
    trail = source[len(source.rstrip()) :]
    return Outcome(lead + restore(out, prot.spans) + trail, raw=ans.text)


def judge_reply(ans: ChatResult | LLMError, script: str, min_share: float) -> Outcome:
    """Check one generated reply: an answer, complete, in the target language (a reply without prose, such as a
    number, passes)."""
    if failed := _answer_problem(ans):
        return failed
    assert isinstance(ans, ChatResult)
    if detail := language_problem(ans.text, None, script, min_share):
        return Outcome(None, "wrong_language", detail, ans.text)
    return Outcome(ans.text.strip(), raw=ans.text)


def translation_request(masked: str, language: str, max_tokens: int) -> tuple[Messages, int]:
    """(messages, completion limit) of one translation request."""
    system = TRANSLATE_PROMPT.format(language=LANGUAGE_NAMES.get(language, language))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": masked}]
    return messages, completion_limit(len(masked), cap=max_tokens)


def generation_request(translated: Messages, language: str) -> Messages:
    """The translated conversation up to its last user message, with the instruction to answer in `language`
    appended to its system message (or as one)."""
    rule = GENERATE_PROMPT.format(language=LANGUAGE_NAMES.get(language, language))
    head = [dict(m) for m in translated]
    if head and head[0]["role"] == "system":
        head[0]["content"] = f"{head[0]['content'].rstrip()}\n\n{rule}"
        return head
    return [{"role": "system", "content": rule}, *head]


# -- a whole set ---------------------------------------------------------------------------------------------


@dataclass
class TranslateResult:
    """What `translate_examples` wrote: counts (total == kept + rejected) and the three files."""

    kept: int
    rejected: int
    total: int
    data: Path
    rejected_file: Path
    stats_file: Path
    cost: dict
    """This run's prompt / completion / cached tokens, requests and cache hits, USD when prices were given,
    and `all_items`: the tokens (and USD) of every answer, cached ones included."""
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    """Rejections by reason, most common first."""
    requests: dict[str, int] = dataclasses.field(default_factory=dict)
    """Distinct requests by kind: `translations`, `generations`."""


def _to_translate(ex: Example, mode: str) -> list[int]:
    """Indices of the messages of `ex` that are translated (in `generate` mode all but the final reply)."""
    n = len(ex.messages) - (1 if mode == "generate" else 0)
    return list(range(n))


def translate_examples(
    examples: Sequence[Example],
    client: LLMClient,
    out_dir: Path,
    *,
    mode: Mode = "translate",
    language: str = "ru",
    name: str = "translated",
    price_in: float = 0.0,
    price_out: float = 0.0,
    limit: int | None = None,
    min_script_share: float = 0.8,
    max_tokens: int = MAX_TOKENS,
    unreadable: Sequence[Rejected] = (),
    sources: Sequence[str | Path] = (),
) -> TranslateResult:
    """Translate `examples` with the model behind `client` and write the output folder (module docstring).

    Requests go at temperature 0 through `client.chat_many`, the translations first, then (mode `generate`) one
    reply per example whose messages all passed, at most `max_tokens` long. A failure is a rejection with its
    reason, never a crash; an unreachable endpoint or a rejected key raises, and so does a phase where every
    request failed: nothing is written then. `unreadable` (the reader's rejections) go to rejected.jsonl too and
    count in the total. `price_in` / `price_out` are USD per 1M prompt / completion tokens; `sources` (the input
    files) are recorded in stats.json.
    """
    check_arguments(name, language, limit, min_script_share, price_in, price_out)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, {f"{name}.jsonl", REJECTED_FILE, STATS_FILE})
    examples = list(examples[:limit] if limit is not None else examples)
    if not examples:
        raise ValueError(f"no examples to translate ({len(unreadable)} records rejected by the reader)")
    script = target_script(language)
    model = client.model  # before the batch: an unreachable endpoint fails here, once
    before = client.stats

    problems = {i: check_messages(ex.messages) for i, ex in enumerate(examples)}
    usable = {i: examples[i] for i, p in problems.items() if p is None}
    judge = dict(script=script, min_share=min_script_share)
    answers, translated, failures = _translate_phase(client, usable, mode, language, max_tokens, name, judge)
    gen_answers: list[ChatResult | LLMError] = []
    if mode == "generate":
        gen_answers = _generate_phase(client, translated, failures, usable, language, max_tokens, name, judge)

    kept_rows: list[dict[str, Any]] = []
    rejected_rows = [_unreadable_row(r) for r in unreadable]
    for i, ex in enumerate(examples):
        if i in translated:
            kept_rows.append(
                {"messages": translated[i], "id": ex.id, "source": ex.source, "orig_messages": ex.messages}
            )
        elif (problem := problems[i]) is not None:
            rejected_rows.append(
                _rejected_row(ex, "bad_example", f"{problem[0]}: {problem[1]}", [], None, "")
            )
        else:
            k, first = failures[i][0]
            notes = [
                f"message {k + 1} ({ex.messages[k]['role']}): {o.reason}: {o.detail}" for k, o in failures[i]
            ]
            rejected_rows.append(_rejected_row(ex, first.reason, first.detail, notes, k, first.raw))

    total = len(examples) + len(unreadable)
    kept = len(kept_rows)
    reasons = tally(total, kept, rejected_rows)
    if not kept:
        log.warning("translate %s: no example passed the checks (%s)", name, reasons)
    cost = run_cost(before, client.stats, [*answers, *gen_answers], price_in, price_out)
    counts = {"translations": len(answers), "generations": len(gen_answers)}
    stats = {
        "name": name, "mode": mode, "sources": [str(s) for s in sources], "language": language, "model": model,
        "base_url": client.base_url, "min_script_share": min_script_share, "max_tokens": max_tokens,
        "total": total, "kept": kept, "rejected": len(rejected_rows), "unreadable": len(unreadable),
        "reasons": reasons, "requests": counts, "cost": cost, "llm": client.stats.as_dict(),
    }  # fmt: skip
    with staged_dir(out_dir) as tmp:
        write_jsonl(tmp / f"{name}.jsonl", kept_rows)
        write_jsonl(tmp / REJECTED_FILE, rejected_rows)
        write_json_atomic(tmp / STATS_FILE, stats)
    log.info(
        "translate %s (%s): %d of %d kept, %s; %s",
        name, mode, kept, total, reasons or "none rejected", client.summary(),
    )  # fmt: skip
    return TranslateResult(
        kept=kept, rejected=len(rejected_rows), total=total, data=out_dir / f"{name}.jsonl",
        rejected_file=out_dir / REJECTED_FILE, stats_file=out_dir / STATS_FILE, cost=cost, reasons=reasons,
        requests=counts,
    )  # fmt: skip


def _translate_phase(
    client: LLMClient,
    examples: dict[int, Example],
    mode: str,
    language: str,
    max_tokens: int,
    name: str,
    judge: dict[str, Any],
) -> tuple[list[ChatResult | LLMError], dict[int, Messages], dict[int, list[tuple[int, Outcome]]]]:
    """Translate the messages of `examples` (index -> example), each distinct text once.

    Returns the answers, the translated messages of every example whose messages all passed, and for the others
    (message index, failed outcome) pairs. A text with nothing to translate is kept as it is, never sent.
    """
    texts = {ex.messages[k]["content"] for ex in examples.values() for k in _to_translate(ex, mode)}
    protected = {t: protect(t) for t in sorted(texts) if needs_translation(t)}
    requests = [translation_request(p.text, language, max_tokens) for p in protected.values()]
    answers = _ask_or_stop(client, [r for r, _ in requests], [n for _, n in requests], f"translate {name}")
    done = {
        t: judge_translation(t, p, a, **judge) for (t, p), a in zip(protected.items(), answers, strict=True)
    }
    translated: dict[int, Messages] = {}
    failures: dict[int, list[tuple[int, Outcome]]] = {}
    for i, ex in examples.items():
        msgs, bad = [], []
        for k in _to_translate(ex, mode):
            got = done.get(ex.messages[k]["content"]) or Outcome(ex.messages[k]["content"])
            if got.text is None:
                bad.append((k, got))
            msgs.append({"role": ex.messages[k]["role"], "content": got.text or ""})
        if bad:
            failures[i] = bad
        else:
            translated[i] = msgs
    return answers, translated, failures


def _generate_phase(
    client: LLMClient,
    translated: dict[int, Messages],
    failures: dict[int, list[tuple[int, Outcome]]],
    examples: dict[int, Example],
    language: str,
    max_tokens: int,
    name: str,
    judge: dict[str, Any],
) -> list[ChatResult | LLMError]:
    """Ask for the reply to each translated prompt (each distinct conversation once) and check it: a reply that
    passes ends its conversation in `translated`, one that fails moves the example to `failures`. Returns the
    answers."""
    convs = {i: generation_request(m, language) for i, m in translated.items()}
    keys = {i: json.dumps(c, ensure_ascii=False, sort_keys=True) for i, c in convs.items()}
    distinct = {keys[i]: convs[i] for i in convs}
    answers = _ask_or_stop(client, list(distinct.values()), [max_tokens] * len(distinct), f"generate {name}")
    by_key = dict(zip(distinct, answers, strict=True))
    for i in list(translated):
        got = judge_reply(by_key[keys[i]], **judge)
        if got.text is None:
            failures[i] = [(len(examples[i].messages) - 1, got)]
            del translated[i]
        else:
            translated[i].append({"role": "assistant", "content": got.text})
    return answers


def _ask_or_stop(
    client: LLMClient, convs: list[Messages], limits: list[int], desc: str
) -> list[ChatResult | LLMError]:
    """`ask`; logs that a stopped run resumes from the cache, refuses a phase where every request failed."""
    try:
        answers = ask(client, convs, limits, desc)
    except LLMError:
        log.error("%s stopped; the answers received so far are cached, a rerun resumes", desc)
        raise
    require_some_answer(answers, "translation" if desc.startswith("translate") else "generation")
    return answers


def _rejected_row(
    ex: Example, reason: str, detail: str, problems: list[str], message: int | None, raw: str
) -> dict[str, Any]:
    return {
        "id": ex.id, "source": ex.source, "where": ex.where, "reason": reason, "detail": detail,
        "problems": problems or [f"{reason}: {detail}"], "message": message, "raw": raw,
        "orig_messages": ex.messages,
    }  # fmt: skip


def _unreadable_row(r: Rejected) -> dict[str, Any]:
    return {**r.as_dict(), "problems": [f"{r.reason}: {r.detail}"], "stage": "read"}


# -- command line --------------------------------------------------------------------------------------------


def add_translate_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `vikhr instruct translate IN... --out DIR ...`; sets `func` to `cmd_translate`."""
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="IN",
        help="English instruction data: .jsonl, .json list, .parquet or a save_to_disk folder, in any format "
        "vikhr.instruct.formats reads (alpaca, sharegpt, messages, preference, seed)",
    )
    p.add_argument("--out", required=True, type=Path, help="the output folder (created or replaced)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="translate",
        help="translate: every message, replies too (Veles); generate: translate the prompts, the endpoint "
        "writes the reply in the target language (ruFLAN)",
    )
    p.add_argument("--name", help="name of the data file (default: the first IN's stem_LANG)")
    p.add_argument("--limit", type=int, help="translate only the first N examples")
    p.add_argument("--language", default="ru", choices=sorted(LANGUAGE_SCRIPTS), help="target language")
    p.add_argument(
        "--format",
        default="auto",
        choices=("auto", *FORMATS),
        help="record format of the inputs (default: auto)",
    )
    add_endpoint_arguments(p)
    p.add_argument(
        "--min-script-share",
        type=float,
        default=0.8,
        help="least share of target-script letters in the prose of each translated message and reply",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=MAX_TOKENS,
        help="completion limit of a generated reply, and the most a translation may ask for",
    )
    p.set_defaults(func=cmd_translate)


def cmd_translate(args: argparse.Namespace) -> int:
    """`vikhr instruct translate`: translate English instruction sets; prints a short summary."""
    setup_logging("INFO")
    examples: list[Example] = []
    unreadable: list[Rejected] = []
    for path in args.inputs:
        got, bad = read_examples(path, fmt=args.format, limit=args.limit or 0)
        examples += got
        unreadable += bad
    name = args.name or default_name(args.inputs[0], args.language)
    with client_from_args(args) as client:
        res = translate_examples(
            examples, client, args.out, mode=args.mode, language=args.language, name=name,
            price_in=args.price_in, price_out=args.price_out, limit=args.limit,
            min_script_share=args.min_script_share, max_tokens=args.max_tokens, unreadable=unreadable,
            sources=args.inputs,
        )  # fmt: skip
    lines = [
        counts_line(res.kept, res.total, res.reasons),
        cost_line(res.cost),
        f"data: {res.data}",
        f"rejected: {res.rejected_file}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
