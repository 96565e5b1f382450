"""Language purity of generated answers: how many words are not in the target language's script.

The Vikhr paper (Table 6) shows adapted models leaving English words ("dish", "lavash", "meat") or mixed-script
words ("Рас**те") inside Russian answers. `purity` counts, among the words of an answer, those written purely in
the target script, purely in Latin (words that should have been Russian), mixing the two (a Latin letter inside
a Cyrillic word or the other way round, e.g. "pizzа" with a Cyrillic "а"), and in other scripts.

What is not prose is removed before counting: fenced code blocks (an unclosed fence runs to the end, as in an
answer cut at `max_tokens`), inline code, URLs, e-mail addresses and Markdown link targets (the link text stays).
A word is a run of Unicode letters (combining accents such as a stress mark stay inside it) with inner hyphens or
apostrophes allowed ("кто-то", "don't"); digits and underscores are not letters, so "COVID-19" gives one word and
"2024" none.

For a language written in Latin (`en`, `de`, ...) the target script *is* Latin: `latin` and `mixed` then count
nothing and words in any other script (Cyrillic included) count as `other`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cache

from vikhr.scripts import LANGUAGE_SCRIPTS, LATIN

_EXCLUDED = re.compile(
    r"(?:```|~~~).*?(?:```|~~~|\Z)"  # fenced code block; unclosed: to the end
    r"|`[^`\n]+`"  # inline code
    r"|(?<=\])\([^()\s]*(?:\s+\"[^\"]*\")?\)"  # Markdown link target: [text](target "title")
    r"|(?:https?://|ftp://|www\.)\S+"  # URL
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail address
    re.DOTALL,
)
_MARKS = "\u0300-\u036f"  # combining diacritics (stress marks in Russian text)
_WORD = re.compile(rf"[^\W\d_](?:[^\W\d_]|[{_MARKS}]|[-'’](?=[^\W\d_]))*")
_LETTER = re.compile(r"[^\W\d_]")

KINDS = ("target", "latin", "mixed", "other")


@dataclass
class Purity:
    """Word counts of one answer by script."""

    words: int
    """Words with at least one letter, after the exclusions."""
    target: int
    """Words purely in the target script."""
    latin: int
    """Words purely in Latin script (words that should have been in the target language)."""
    mixed: int
    """Words mixing target-script and Latin letters ("Расwте", "pizzа" with a Cyrillic "а")."""
    other: int
    """Words in other scripts, or mixing the target script with one that is neither it nor Latin."""
    latin_share: float
    """`latin / words` (0.0 when there are no words)."""
    mixed_share: float
    """`mixed / words` (0.0 when there are no words)."""
    latin_words: list[str] = field(default_factory=list)
    """The Latin words, in order of appearance."""
    mixed_words: list[str] = field(default_factory=list)
    """The mixed-script words, in order of appearance."""

    def as_dict(self) -> dict:
        return asdict(self)


@cache
def _classes(language: str) -> tuple[re.Pattern, re.Pattern | None]:
    """(target letter regex, Latin letter regex or None when the target script is Latin)."""
    if language not in LANGUAGE_SCRIPTS:
        raise ValueError(
            f"unknown language {language!r}: use one of {', '.join(sorted(LANGUAGE_SCRIPTS))} "
            "(vikhr.scripts.LANGUAGE_SCRIPTS)"
        )
    target = LANGUAGE_SCRIPTS[language]
    return re.compile(f"[{target}]"), None if target == LATIN else re.compile(f"[{LATIN}]")


def mask_non_prose(text: str) -> str:
    """`text` with code, URLs, e-mail addresses and link targets replaced by spaces of the same length.

    Offsets into the result are offsets into `text`, so words found in it can be highlighted in the original.
    """
    return _EXCLUDED.sub(lambda m: " " * len(m.group()), text)


def classify_word(word: str, language: str = "ru") -> str:
    """The kind of one word: "target", "latin", "mixed" or "other" (see `Purity`)."""
    target_re, latin_re = _classes(language)
    n = has_target = has_latin = 0
    for ch in _LETTER.findall(word):
        n += 1
        if target_re.match(ch):
            has_target += 1
        elif latin_re is not None and latin_re.match(ch):
            has_latin += 1
    if has_target and has_latin:
        return "mixed"
    if has_target == n:
        return "target"
    if has_latin == n:
        return "latin"
    return "other"


def classified_words(text: str, language: str = "ru") -> list[tuple[int, int, str]]:
    """(start, end, kind) of every counted word of `text`, offsets into `text` itself."""
    _classes(language)  # an unknown language fails even on an empty text
    return [
        (m.start(), m.end(), classify_word(m.group(), language)) for m in _WORD.finditer(mask_non_prose(text))
    ]


def purity(text: str, language: str = "ru") -> Purity:
    """Count the words of `text` by script relative to `language` (a key of `vikhr.scripts.LANGUAGE_SCRIPTS`)."""
    counts = Counter({k: 0 for k in KINDS})
    offending: dict[str, list[str]] = {"latin": [], "mixed": []}
    for start, end, kind in classified_words(text, language):
        counts[kind] += 1
        if kind in offending:
            offending[kind].append(text[start:end])
    words = sum(counts.values())
    return Purity(
        words=words,
        target=counts["target"],
        latin=counts["latin"],
        mixed=counts["mixed"],
        other=counts["other"],
        latin_share=counts["latin"] / words if words else 0.0,
        mixed_share=counts["mixed"] / words if words else 0.0,
        latin_words=offending["latin"],
        mixed_words=offending["mixed"],
    )


def aggregate(results: list[Purity], top: int = 20) -> dict:
    """Purity of a model over its answers.

    `latin_share` and `mixed_share` are micro averages (over all words of all answers); `mean_latin_share`,
    `answers_with_latin` and `answers_with_mixed` (shares of answers with at least one such word) are taken over
    the answers that have words at all (`answers - empty`), so an empty answer never counts as pure.
    `top_offending`: the `top` most frequent Latin and mixed words, lowercased, with their counts and kinds.
    """
    scored = [r for r in results if r.words]
    words = sum(r.words for r in results)
    latin = sum(r.latin for r in results)
    mixed = sum(r.mixed for r in results)
    counts: Counter[tuple[str, str]] = Counter()
    for r in results:
        counts.update(("latin", w.lower()) for w in r.latin_words)
        counts.update(("mixed", w.lower()) for w in r.mixed_words)
    n = len(scored)
    return {
        "answers": len(results),
        "empty": len(results) - n,
        "words": words,
        "target": sum(r.target for r in results),
        "latin": latin,
        "mixed": mixed,
        "other": sum(r.other for r in results),
        "latin_share": latin / words if words else 0.0,
        "mixed_share": mixed / words if words else 0.0,
        "mean_latin_share": sum(r.latin_share for r in scored) / n if n else 0.0,
        "answers_with_latin": sum(1 for r in scored if r.latin) / n if n else 0.0,
        "answers_with_mixed": sum(1 for r in scored if r.mixed) / n if n else 0.0,
        "top_offending": [{"word": w, "count": c, "kind": kind} for (kind, w), c in counts.most_common(top)],
    }
