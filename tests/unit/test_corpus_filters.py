import time

import pytest

from vikhr.corpus.filters import (
    REASONS,
    SCRIPTS,
    FilterOptions,
    boilerplate_reason,
    check,
    gutenberg_body,
    has_gutenberg_markers,
    length_reason,
    repeated_word_share,
    repetition_reason,
    script_reason,
    script_share,
    top_ngram_share,
    words,
    words_reason,
)

PROSE_RU = "Однажды летом мы пошли на реку, и там было тихо, тепло и очень хорошо."
PROSE_EN = "Once upon a time there lived an old man who had three sons and a small garden."


def test_length_both_sides():
    assert length_reason("x" * 20, 20, 100) is None
    assert length_reason("x" * 19, 20, 100) == "too_short"
    assert length_reason("   " + "x" * 19 + "   ", 20, 100) == "too_short"  # surrounding spaces do not count
    assert length_reason("x" * 100, 20, 100) is None
    assert length_reason("x" * 101, 20, 100) == "too_long"
    assert length_reason("x", 0, 0) is None  # 0 turns both bounds off


def test_words_both_sides():
    assert words("Кто-то сказал: don't — 12 раз!") == ["Кто-то", "сказал", "don't", "12", "раз"]
    assert words_reason("— Да, барин.", 3) == "too_few_words"
    assert words_reason("— Да, барин, сейчас.", 3) is None
    assert words_reason("— ... !", 1) == "too_few_words"
    assert words_reason("", 0) is None


def test_script_share_and_reason():
    assert script_share(PROSE_RU, "ru") == 1.0
    assert script_share(PROSE_EN, "ru") == 0.0
    assert script_share(PROSE_EN, "en") == 1.0
    assert script_share("1234 — 5678", "ru") == 0.0  # no letters at all
    mixed = "Он сказал: c'est la vie, mon ami"  # 8 Cyrillic of 23 letters
    assert script_share(mixed, "ru") == pytest.approx(8 / 23)
    assert script_reason(mixed, "ru", 0.5) == "wrong_script"
    assert script_reason(mixed, "ru", 0.3) is None
    assert script_reason(mixed, "en", 0.5) is None
    assert script_reason(PROSE_EN, "ru", 0) is None  # off
    assert script_share("Ёжик и ёлка, Ґ", "uk") == 1.0
    with pytest.raises(ValueError, match="no script known for language 'xx'"):
        script_share("abc", "xx")


def test_script_table_is_extendable(monkeypatch):
    monkeypatch.setitem(SCRIPTS, "el", "\u0370-\u03ff")
    assert script_share("Καλημέρα κόσμε", "el") > 0.9


def test_repeated_word_share_both_sides():
    assert repeated_word_share([]) == 0.0
    assert repeated_word_share("a b c d".split()) == 0.0
    assert repeated_word_share("Да да да да".split()) == 0.75  # case-insensitive
    # a repeat further back than the window does not count
    ws = ["x"] + [f"w{i}" for i in range(8)] + ["x"]
    assert repeated_word_share(ws, window=8) == 0.0
    assert repeated_word_share(ws, window=9) == 0.1
    spam = "купить " * 10 + "дёшево"
    assert repetition_reason(spam, 0.5, 0) == "repetitive"
    assert repetition_reason(spam, 0.95, 0) is None
    assert repetition_reason(spam, 0, 0) is None


def test_top_ngram_share_both_sides():
    ws = "раз два три раз два три раз два три".split()
    assert top_ngram_share(ws) == 1.0
    assert top_ngram_share("a b c d e f".split()) == 0.0  # no 3-gram occurs twice
    # 20 words: one 3-gram twice (6 of 20 equal-length words = 0.3)
    ws = [
        "aa",
        "bb",
        "cc",
        *"d1 d2 d3 d4 d5 d6 d7".split(),
        "aa",
        "bb",
        "cc",
        *"e1 e2 e3 e4 e5 e6 e7".split(),
    ]
    assert len(ws) == 20 and top_ngram_share(ws) == pytest.approx(0.3)
    text = " ".join(ws)
    assert repetition_reason(text, 0, 0.25) == "repetitive"
    assert repetition_reason(text, 0, 0.35) is None
    # under 20 words the n-gram measure is not applied
    short = "раз два три раз два три раз два три"
    assert repetition_reason(short, 0, 0.1) is None


def test_normal_prose_passes_every_filter():
    for text, lang in ((PROSE_RU, "ru"), (PROSE_EN, "en")):
        assert check(text, FilterOptions(language=lang)) is None
    poem = "Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный — пора, красавица, проснись."
    assert check(poem, FilterOptions()) is None


def test_boilerplate_lines():
    assert boilerplate_reason("This eBook is for the use of anyone anywhere at no cost") == "boilerplate"
    assert boilerplate_reason("End of the Project Gutenberg EBook of Dead Souls") == "boilerplate"
    assert boilerplate_reason("© 2020 Издательство. Все права защищены.") == "boilerplate"
    assert boilerplate_reason("https://example.com/a?b=c") == "boilerplate"
    assert boilerplate_reason("  <info@example.ru>, www.example.ru; ") == "boilerplate"
    assert boilerplate_reason("Пишите на info@example.ru, мы ответим") is None  # text around the address
    assert boilerplate_reason(PROSE_RU) is None
    opts = FilterOptions(min_chars=0, min_words=0, min_script_share=0)
    assert check("Пишите: https://example.com/long/path", opts) is None
    assert check("https://example.com/long/path", opts) == "boilerplate"
    assert check("https://example.com/long/path", FilterOptions(boilerplate=False, min_chars=0)) is not None


def test_gutenberg_markers():
    paras = [
        "The Project Gutenberg EBook of X",
        "Title: X",
        "*** START OF THIS PROJECT GUTENBERG EBOOK X ***",
        "Chapter 1",
        "It was a dark night.",
        "*** END OF THIS PROJECT GUTENBERG EBOOK X ***",
        "Licence text",
    ]
    assert gutenberg_body(paras) == (3, 5)
    assert gutenberg_body(iter(paras)) == (3, 5)  # one pass over an iterator
    assert has_gutenberg_markers("\n".join(paras))
    squashed = [
        "head",
        "***START OF THE PROJECT GUTENBERG EBOOK X***",
        "body",
        "***END OF THE PROJECT GUTENBERG EBOOK X***",
    ]
    assert gutenberg_body(squashed) == (2, 3)
    assert gutenberg_body(["a", "b", "* * *", "c"]) == (0, 4)  # no markers: everything is body
    assert not has_gutenberg_markers("a\n* * *\nb")
    assert gutenberg_body(["head", "*** START OF THE PROJECT GUTENBERG EBOOK X ***", "body"]) == (2, 3)
    assert gutenberg_body([]) == (0, 0)


def test_check_order_and_reasons():
    opts = FilterOptions(min_chars=20, min_words=3)
    assert check("коротко", opts) == "too_short"
    assert check("x" * 200_000, opts) == "too_long"
    assert check("Project Gutenberg License, see the terms", opts) == "boilerplate"
    assert check("Длинноесловобезпробелов!!!", opts) == "too_few_words"
    assert check(PROSE_EN, opts) == "wrong_script"
    assert check("да " * 30, opts) == "repetitive"
    assert {check(t, opts) for t in ("коротко", PROSE_EN, "да " * 30)} <= set(REASONS)


def test_huge_string_is_dropped_quickly():
    big = "слово " * (100_000_000 // 12)  # 100 MB of UTF-8
    t = time.perf_counter()
    assert check(big, FilterOptions()) == "too_long"
    assert time.perf_counter() - t < 0.5
