"""One definition of each script: the corpus filter, the tokenizer's extend filters and the speed report agree."""

import inspect
import re

from vikhr.corpus import filters
from vikhr.eval.speed import cyrillic_share
from vikhr.scripts import CYRILLIC, LANGUAGE_SCRIPTS, UTF8_LEAD_BYTES, has_cyrillic
from vikhr.tokenizer import spm


def test_cyrillic_letters_and_not_armenian():
    for ch in "АяЁёЇїҐґӘәԀԯ":
        assert has_cyrillic(ch), ch
    for ch in "ԱՖabcαβ1":  # U+0531 / U+0556: Armenian capitals right after the Cyrillic Supplement
        assert not has_cyrillic(ch), ch
    assert cyrillic_share("Ա Б") == 0.5


def test_every_user_shares_the_definition():
    assert filters.SCRIPTS["ru"] == LANGUAGE_SCRIPTS["ru"] == CYRILLIC
    assert inspect.signature(spm.extend_sp_proto).parameters["keep"].default is has_cyrillic
    assert re.fullmatch(f"[{CYRILLIC}]+", "Чехов")


def test_utf8_lead_bytes_start_only_cyrillic_letters():
    lead = UTF8_LEAD_BYTES["cyrillic"]
    starts = {chr(cp).encode()[0] for cp in range(0x0400, 0x0500)}
    assert starts == set(lead)
    armenian = {chr(cp).encode()[0] for cp in range(0x0531, 0x0557)}
    assert not armenian & lead
