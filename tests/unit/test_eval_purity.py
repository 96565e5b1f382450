"""Language purity: Latin and mixed-script words in Russian answers, what is excluded, the aggregate."""

import pytest

from vikhr.eval.purity import Purity, aggregate, classified_words, classify_word, mask_non_prose, purity


def test_paper_examples_latin_words_counted():
    # the kind of answer the paper's Table 6 shows: English words left inside a Russian recipe
    p = purity("Возьмите lavash, положите meat и овощи, подавайте это dish горячим.")
    assert p.latin_words == ["lavash", "meat", "dish"]
    assert (p.words, p.target, p.latin, p.mixed, p.other) == (10, 7, 3, 0, 0)
    assert p.latin_share == pytest.approx(3 / 10) and p.mixed_share == 0.0


def test_mixed_script_words_both_ways():
    # a Latin letter inside a Cyrillic word, and a Cyrillic "а" (U+0430) inside a Latin word
    p = purity("Расwте тесто, потом pizz\u0430 готова")
    assert p.mixed_words == ["Расwте", "pizz\u0430"]
    assert p.mixed == 2 and p.latin == 0 and p.target == 3
    assert classify_word("Mосква") == "mixed"  # Latin capital M
    assert classify_word("Москва") == "target" and classify_word("Moscow") == "latin"


def test_numbers_and_punctuation_are_not_words():
    p = purity("В 2024 году 15% — это 3,5 млн; 42 !!! ...")
    assert p.words == 4 and p.target == 4  # В году это млн
    assert purity("12 345 6.7 -- %").words == 0
    # digits split words: COVID-19 is one Latin word, 2024 none
    assert purity("COVID-19").latin_words == ["COVID"]


def test_hyphen_apostrophe_and_stress_marks_stay_inside_words():
    p = purity("кто-то сказал don't, а за\u0301мок стоит")
    assert p.words == 6 and p.latin_words == ["don't"]
    assert [w for *_, w in classified_words("кто-то -- нечто-", "ru")] == ["target", "target"]


def test_code_spans_and_fenced_blocks_excluded():
    text = "Вот функция:\n```python\ndef dish(meat):\n    return meat\n```\nВызовите `dish(meat)` один раз."
    p = purity(text)
    assert p.latin == 0 and p.words == 5  # Вот функция Вызовите один раз
    # an unclosed fence (answer cut at max_tokens) runs to the end
    assert purity("Пример:\n```\nprint('hello world')").words == 1


def test_urls_emails_and_link_targets_excluded():
    text = (
        "Смотрите https://example.com/recipe?meat=1 и www.lavash.ru, пишите chef@example.com, "
        "[рецепт](http://example.org/dish) и [сайт](/docs/page)."
    )
    p = purity(text)
    assert p.latin == 0 and p.target == 6  # Смотрите и пишите рецепт и сайт
    assert "https" not in mask_non_prose(text) and "рецепт" in mask_non_prose(text)
    assert len(mask_non_prose(text)) == len(text)  # offsets preserved for highlighting


def test_offsets_point_into_the_original_text():
    text = "См. `code` и meat здесь"
    spans = [(text[s:e], k) for s, e, k in classified_words(text)]
    assert spans == [("См", "target"), ("и", "target"), ("meat", "latin"), ("здесь", "target")]


def test_other_scripts_and_latin_languages():
    p = purity("Слово λόγος и 漢字")
    assert p.other == 2 and p.target == 2
    en = purity("The word Москва and Mосква", "en")  # Cyrillic words are "other" in English, nothing is Latin
    assert (en.target, en.latin, en.mixed, en.other) == (3, 0, 0, 2)


def test_unknown_language_is_named():
    with pytest.raises(ValueError, match="'xx'"):
        purity("текст", "xx")
    with pytest.raises(ValueError, match="'xx'"):
        purity("", "xx")


def test_empty_text():
    p = purity("")
    assert p.words == 0 and p.latin_share == 0.0 and p.mixed_share == 0.0


def test_aggregate_math():
    results = [
        purity("раз два meat четыре"),  # 1 of 4 Latin
        purity("dish dish пять шесть Расwте"),  # 2 of 5 Latin, 1 mixed
        purity("только русские слова здесь"),  # pure
        purity("```\ncode only\n```"),  # no words at all
    ]
    agg = aggregate(results)
    assert agg["answers"] == 4 and agg["empty"] == 1
    assert agg["words"] == 13 and agg["latin"] == 3 and agg["mixed"] == 1
    assert agg["latin_share"] == pytest.approx(3 / 13) and agg["mixed_share"] == pytest.approx(1 / 13)
    assert agg["mean_latin_share"] == pytest.approx((1 / 4 + 2 / 5 + 0) / 3)
    assert agg["answers_with_latin"] == pytest.approx(2 / 3) and agg["answers_with_mixed"] == pytest.approx(
        1 / 3
    )
    top = agg["top_offending"]
    assert top[0] == {"word": "dish", "count": 2, "kind": "latin"}
    assert {t["word"] for t in top} == {"dish", "meat", "расwте"}
    assert aggregate([])["words"] == 0 and aggregate([])["latin_share"] == 0.0


def test_aggregate_top_is_limited():
    words = " ".join(f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(30))
    agg = aggregate([purity(words)])
    assert len(agg["top_offending"]) == 20 and agg["latin"] == 30
    assert Purity(**purity("meat").as_dict()) == purity("meat")
