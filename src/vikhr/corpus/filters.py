"""Heuristic paragraph filters: each takes a paragraph and plain thresholds and returns a reason or None.

`check(text, opts)` runs them in a fixed order (`REASONS`) and returns the first reason that applies. The
thresholds are tuned for paragraphs, not documents: a short Russian paragraph with a few repeated function words
is prose, and only a paragraph made mostly of repeats is dropped as `repetitive`. A bound of 0 turns its filter off.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from vikhr.scripts import LANGUAGE_SCRIPTS

REASONS = ("too_long", "too_short", "boilerplate", "too_few_words", "wrong_script", "repetitive")
"""Every reason `check` can return, in the order the filters run."""

SCRIPTS = LANGUAGE_SCRIPTS
"""Language code -> regex character class of its script's letters (`vikhr.scripts`)."""

WORD_RE = re.compile(r"\w+(?:['’-]\w+)*")
LETTER_RE = re.compile(r"[^\W\d_]")
LETTERS_RE = re.compile(r"[^\W\d_]+")
REPEAT_WINDOW = 8
"""A word counts as repeated when it equals one of the previous this-many words (case-insensitive)."""
NGRAM = 3
NGRAM_MIN_WORDS = 20
"""The top word-n-gram share is only measured on paragraphs with at least this many words."""

LICENCE_PHRASES = (
    "project gutenberg",
    "gutenberg-tm",
    "gutenberg.org",
    "all rights reserved",
    "все права защищены",
    "creative commons",
    "this ebook is for the use of anyone",
    "this e-book is for the use of anyone",
)
"""Lower-case phrases that mark a licence or rights line (`boilerplate`)."""
_URL_EMAIL_RE = re.compile(r"(?:https?://|ftp://|www\.)\S+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
_GUTENBERG_START_RE = re.compile(r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG", re.I | re.M)
_GUTENBERG_END_RE = re.compile(r"^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG", re.I | re.M)
_GUTENBERG_ANY_RE = re.compile(r"\*{3}\s*(?:START|END) OF (?:THE|THIS) PROJECT GUTENBERG", re.I)


@dataclass(frozen=True)
class FilterOptions:
    """Thresholds of `check` as plain values (the corpus stage fills them from `FilterConfig`); 0: off."""

    language: str = "ru"
    min_chars: int = 5
    max_chars: int = 100_000
    min_words: int = 1
    min_script_share: float = 0.5
    max_repeated_word_share: float = 0.5
    max_top_ngram_share: float = 0.4
    boilerplate: bool = True


def words(text: str) -> list[str]:
    """The words of a text: runs of letters/digits, with inner apostrophes and hyphens."""
    return WORD_RE.findall(text)


def length_reason(text: str, min_chars: int, max_chars: int) -> str | None:
    """`too_long` above `max_chars`, `too_short` below `min_chars` (O(1), so a huge line is cheap to drop)."""
    if max_chars > 0 and len(text) > max_chars:
        return "too_long"
    if min_chars > 0 and len(text.strip()) < min_chars:
        return "too_short"
    return None


def words_reason(text: str, min_words: int, *, word_list: list[str] | None = None) -> str | None:
    """`too_few_words` when the paragraph has fewer than `min_words` words."""
    if min_words <= 0:
        return None
    n = len(word_list if word_list is not None else words(text))
    return "too_few_words" if n < min_words else None


@cache
def script_pattern(language: str) -> re.Pattern:
    """A regex matching a run of letters of `language`'s script (ValueError for a language not in `SCRIPTS`)."""
    if language not in SCRIPTS:
        raise ValueError(f"no script known for language {language!r} (known: {', '.join(sorted(SCRIPTS))})")
    return re.compile(f"[{SCRIPTS[language]}]+")


def script_share(text: str, language: str) -> float:
    """Share of the letters that belong to `language`'s script (0 for a text without letters)."""
    letters = sum(map(len, LETTERS_RE.findall(text)))
    if letters == 0:
        return 0.0
    return sum(map(len, script_pattern(language).findall(text))) / letters


def script_reason(text: str, language: str, min_share: float) -> str | None:
    """`wrong_script` when less than `min_share` of the letters are in the target language's script."""
    if min_share <= 0:
        return None
    return "wrong_script" if script_share(text, language) < min_share else None


def repeated_word_share(word_list: list[str], window: int = REPEAT_WINDOW) -> float:
    """Share of words equal (case-insensitive) to one of the `window` words before them."""
    if not word_list:
        return 0.0
    recent: deque[str] = deque(maxlen=window)
    repeats = 0
    for w in word_list:
        lw = w.lower()
        repeats += lw in recent
        recent.append(lw)
    return repeats / len(word_list)


def top_ngram_share(word_list: list[str], n: int = NGRAM) -> float:
    """Share of word characters covered by the most frequent word n-gram (0 when no n-gram occurs twice)."""
    if len(word_list) <= n:
        return 0.0
    lw = [w.lower() for w in word_list]
    grams = list(zip(*(lw[i:] for i in range(n)), strict=False))
    top, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0
    covered = bytearray(len(lw))
    for i, g in enumerate(grams):
        if g == top:
            covered[i : i + n] = b"\x01" * n
    total = sum(map(len, word_list))
    return sum(len(w) for w, c in zip(word_list, covered, strict=True) if c) / total


def repetition_reason(
    text: str,
    max_repeated_word_share: float,
    max_top_ngram_share: float,
    *,
    word_list: list[str] | None = None,
) -> str | None:
    """`repetitive` when too many words repeat a recent word, or (20+ words) one 3-gram covers too much text."""
    ws = word_list if word_list is not None else words(text)
    if max_repeated_word_share > 0 and repeated_word_share(ws) > max_repeated_word_share:
        return "repetitive"
    if max_top_ngram_share > 0 and len(ws) >= NGRAM_MIN_WORDS and top_ngram_share(ws) > max_top_ngram_share:
        return "repetitive"
    return None


def boilerplate_reason(text: str) -> str | None:
    """`boilerplate` for licence lines (Project Gutenberg, "all rights reserved"...) and URL/e-mail-only lines."""
    low = text.lower()
    if any(p in low for p in LICENCE_PHRASES):
        return "boilerplate"
    if "@" not in text and "//" not in text and "www." not in low:
        return None
    rest, n = _URL_EMAIL_RE.subn(" ", text)
    if n and not LETTER_RE.search(rest):
        return "boilerplate"
    return None


def has_gutenberg_markers(text: str) -> bool:
    """True when a text has a Project Gutenberg `*** START OF` or `*** END OF` marker (a cheap pre-check)."""
    return _GUTENBERG_ANY_RE.search(text) is not None


def gutenberg_body(paragraphs: Iterable[str]) -> tuple[int, int]:
    """Index range [start, end) of the paragraphs between Project Gutenberg's START and END markers.

    The marker paragraphs themselves are outside; without a START marker start is 0, without an END marker
    end is the number of paragraphs. Consumes the iterable once.
    """
    start, end, n, started = 0, None, 0, False
    for i, p in enumerate(paragraphs):
        n = i + 1
        if end is not None or "*" not in p:
            continue
        if not started and _GUTENBERG_START_RE.search(p):
            start, started = i + 1, True
        elif _GUTENBERG_END_RE.search(p):
            end = i
    return start, n if end is None else end


def check(text: str, opts: FilterOptions) -> str | None:
    """The first reason (in `REASONS` order) to drop a paragraph, or None to keep it."""
    reason = length_reason(text, opts.min_chars, opts.max_chars)
    if reason:
        return reason
    if opts.boilerplate and (reason := boilerplate_reason(text)):
        return reason
    ws = words(text)
    return (
        words_reason(text, opts.min_words, word_list=ws)
        or script_reason(text, opts.language, opts.min_script_share)
        or repetition_reason(text, opts.max_repeated_word_share, opts.max_top_ngram_share, word_list=ws)
    )
