"""Writing systems: the one definition of each script's letters, used by the corpus filters, the tokenizer's
`extend` filters, generation-speed and language-purity checks.

`CYRILLIC` covers the Cyrillic block (U+0400-U+04FF), Cyrillic Supplement (U+0500-U+052F) and Extended-A/B/C
(combining letters and historic forms); the Armenian capitals that follow at U+0531 are not in it.
"""

from __future__ import annotations

import re

CYRILLIC = "\u0400-\u052f\u1c80-\u1c8f\u2de0-\u2dff\ua640-\ua69f"
"""Regex character class (without brackets) of Cyrillic letters."""
LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"
"""Regex character class of Latin letters (Basic Latin, Latin-1 letters, Extended-A/B, Extended Additional)."""

SCRIPTS: dict[str, str] = {"cyrillic": CYRILLIC, "latin": LATIN}
"""Script name -> character class."""
LANGUAGE_SCRIPTS: dict[str, str] = {
    **dict.fromkeys(("ru", "uk", "be", "bg", "kk", "sr"), CYRILLIC),
    **dict.fromkeys(("en", "de", "fr", "es", "it", "pt"), LATIN),
}
"""Language code -> character class of its script's letters; add an entry to support another language."""

CYRILLIC_RE = re.compile(f"[{CYRILLIC}]")
LATIN_RE = re.compile(f"[{LATIN}]")

UTF8_LEAD_BYTES: dict[str, frozenset[int]] = {"cyrillic": frozenset(range(0xD0, 0xD4))}
"""UTF-8 lead bytes that only begin characters of the script: 0xD0-0xD3 begin exactly U+0400-U+04FF (the
Cyrillic block, every Russian letter). 0xD4 is left out: it begins the Cyrillic Supplement *and* the Armenian
capitals (U+0531-U+053F), so a byte-level token holding it could match Armenian text."""


def has_cyrillic(text: str) -> bool:
    """True when `text` contains at least one Cyrillic letter."""
    return CYRILLIC_RE.search(text) is not None
