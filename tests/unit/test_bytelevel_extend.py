"""Extending a byte-level BPE tokenizer: continued merge learning and the "English encodes as before" invariant."""

from __future__ import annotations

import functools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from vikhr.tokenizer.bytelevel import (
    append_merges,
    bytes_to_unicode,
    extend_bytelevel_tokenizer,
    is_bytelevel_bpe,
    learn_continued_merges,
    script_filter,
    token_bytes,
)

# ------------------------------------------------------------------------------------------- merge learning


def naive_merges(word_counts, num_merges, min_frequency=2, allowed=None):
    """Reference learner: recount every pair from scratch at each step."""
    words = {tuple(w): c for w, c in word_counts.items()}
    made = {s for w in words for s in w}
    banned: set[tuple[str, str]] = set()
    merges = []
    while len(merges) < num_merges:
        counts: Counter = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:], strict=False):
                counts[p] += c
        candidates = [(-c, p) for p, c in counts.items() if p not in banned]
        if not candidates:
            break
        neg, (a, b) = min(candidates)
        if -neg < min_frequency:
            break
        if a + b in made or (allowed is not None and not allowed(a + b)):
            banned.add((a, b))
            continue
        made.add(a + b)
        merges.append((a, b))
        new_words: dict = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


def test_most_frequent_pair_first_and_min_frequency():
    wc = {("a", "b", "c"): 5, ("a", "b"): 3, ("b", "c"): 1}
    assert learn_continued_merges(wc, 10) == [("a", "b"), ("ab", "c")]
    assert learn_continued_merges(wc, 10, min_frequency=6) == [("a", "b")]
    assert learn_continued_merges(wc, 1) == [("a", "b")]
    assert learn_continued_merges(wc, 0) == []


def test_allowed_filter_is_respected():
    wc = {("a", "b", "c"): 5, ("a", "b"): 3, ("b", "c"): 1}
    merges = learn_continued_merges(wc, 10, allowed=lambda s: s != "ab")
    assert merges == [("b", "c"), ("a", "bc")]
    assert learn_continued_merges(wc, 10, allowed=lambda s: False) == []


def test_ties_are_broken_by_pair_string_and_order_does_not_matter():
    items = [(("x", "y"), 2), (("p", "q"), 2), (("m", "n", "o"), 2)]
    expected = learn_continued_merges(dict(items), 10)
    assert expected[0] == ("m", "n")
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert learn_continued_merges(dict(items), 10) == expected


def test_a_result_made_twice_is_skipped():
    wc = {("a", "b", "c"): 4, ("a", "bc"): 3}
    assert learn_continued_merges(wc, 10) == [("a", "b"), ("ab", "c")]


@pytest.mark.parametrize("seed", range(6))
def test_matches_naive_reference(seed):
    rng = random.Random(seed)
    alphabet = "abcdeé"
    wc: dict = {}
    for _ in range(60):
        word = tuple(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
        wc[word] = wc.get(word, 0) + rng.randint(1, 20)
    allowed = (lambda s: "e" in s) if seed % 2 else None
    assert learn_continued_merges(wc, 40, allowed=allowed) == naive_merges(wc, 40, allowed=allowed)


# --------------------------------------------------------------------------------------------- byte helpers


def as_bytelevel(text: str) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def test_byte_alphabet_and_script_filter():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("a")] == "a"
    assert token_bytes(as_bytelevel(" привет")) == " привет".encode()
    assert token_bytes("日") is None  # not a byte-level character
    cyr = script_filter("cyrillic")
    assert cyr(as_bytelevel(" при")) and cyr(as_bytelevel("ё,")) and cyr(as_bytelevel("ӿ"))
    # lead byte 0xD4 also begins the Armenian capitals: not a Cyrillic-only byte (vikhr.scripts.UTF8_LEAD_BYTES)
    assert not cyr(as_bytelevel("Ԁ")) and not cyr(as_bytelevel("Ա"))
    assert not cyr(as_bytelevel(" the")) and not cyr(as_bytelevel("é")) and not cyr(as_bytelevel("日本"))
    assert not cyr("日")
    anything = script_filter("any")
    assert anything(as_bytelevel(" the")) and anything(as_bytelevel(" при")) and not anything("日")
    with pytest.raises(ValueError, match="unknown script"):
        script_filter("klingon")


def test_is_bytelevel_bpe_and_append_merges_keep_the_format():
    seq = {"type": "Sequence", "pretokenizers": [{"type": "Split"}, {"type": "ByteLevel"}]}
    assert is_bytelevel_bpe({"model": {"type": "BPE"}, "pre_tokenizer": seq})
    assert not is_bytelevel_bpe({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "Metaspace"}})
    assert not is_bytelevel_bpe({"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "ByteLevel"}})
    for merges in (["a b"], [["a", "b"]]):
        vocab = {"a": 0, "b": 1, "ab": 2}
        tj = {"model": {"vocab": vocab, "merges": merges}, "added_tokens": [{"id": 5, "content": "<s>"}]}
        out, first = append_merges(tj, [("ab", "a"), ("b", "b")])
        assert first == 6 and out["model"]["vocab"] == {**vocab, "<s>": 5, "aba": 6, "bb": 7}
        assert out["model"]["merges"][1:] == (
            ["ab a", "b b"] if isinstance(merges[0], str) else [["ab", "a"], ["b", "b"]]
        )
        assert tj["model"]["merges"] == merges  # input untouched
        with pytest.raises(ValueError, match="already in the base"):
            append_merges(tj, [("a", "b")])
    clash = {
        "model": {"vocab": {"a": 0, "b": 1}, "merges": []},
        "added_tokens": [{"id": 1, "content": "<s>"}],
    }
    with pytest.raises(ValueError, match="clashes"):
        append_merges(clash, [("a", "b")])


# ----------------------------------------------------------------------------------------------- whole bases


def ruslit_lines(root: Path, n: int) -> list[str]:
    lines: list[str] = []
    for f in sorted((root / "ru" / "ruslit").glob("**/*.txt")):
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        lines += [x for x in text.splitlines() if x.strip()]
        if len(lines) >= n:
            return lines[:n]
    return lines


def chars_per_token(tok, lines: list[str]) -> float:
    ids = tok(lines, add_special_tokens=False)["input_ids"]
    return sum(map(len, lines)) / sum(map(len, ids))


@functools.cache
def load(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def assert_extension_invariants(
    base_dir: Path, out_dir: Path, num_new: int, result, texts: dict[str, list[str]]
) -> None:
    base, new = load(base_dir), load(out_dir)
    assert result.new_tokens == num_new and result.final_size == result.base_size + num_new == len(new)
    assert result.base_size == len(base)

    base_vocab, new_vocab = base.get_vocab(), new.get_vocab()
    assert all(new_vocab.get(t) == i for t, i in base_vocab.items())
    added = sorted(i for t, i in new_vocab.items() if t not in base_vocab)
    assert added == list(range(len(base), len(base) + num_new))

    en, ru = texts["en"], texts["ru"]
    assert sum(a != b for a, b in zip(base(en)["input_ids"], new(en)["input_ids"], strict=True)) == 0
    assert chars_per_token(new, ru) > chars_per_token(base, ru)
    for line in ru[:200] + en[:200]:
        assert new.decode(new.encode(line, add_special_tokens=False)) == line

    chat = [{"role": "user", "content": "Привет! How are you?"}, {"role": "assistant", "content": "Хорошо."}]
    assert new.apply_chat_template(chat, tokenize=False) == base.apply_chat_template(chat, tokenize=False)
    chat = [
        {"role": "user", "content": "Hi! How are you?"},
        {"role": "assistant", "content": "Fine, thanks."},
    ]
    rendered = base.apply_chat_template(chat, tokenize=False)
    assert new(rendered)["input_ids"] == base(rendered)["input_ids"]  # special tokens keep their ids
    assert (new.bos_token, new.eos_token, new.pad_token) == (base.bos_token, base.eos_token, base.pad_token)


def test_extend_a_smollm2_like_base(tmp_path, bytelevel_tokenizer, ru_sample, heldout):
    result = extend_bytelevel_tokenizer(bytelevel_tokenizer, ru_sample[:2000], 300, tmp_path / "tok")
    assert_extension_invariants(bytelevel_tokenizer, tmp_path / "tok", 300, result, heldout)
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".staging-*"))  # staging dir renamed away
    merges = json.loads((tmp_path / "tok" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    assert isinstance(merges[-1], list)  # same merge format as the base


@pytest.fixture(scope="module")
def ru_lines(shared) -> list[str]:
    return ruslit_lines(shared, 2000)


@pytest.mark.shared
@pytest.mark.parametrize(
    "name, lines, num_new", [("smollm2-135m", 2000, 300), ("llama-3", 500, 50), ("qwen3", 500, 50)]
)
def test_extend_real_bases(tmp_path, shared, flores, ru_lines, name, lines, num_new):
    """The real tokenizers' formats (SmolLM2's, Llama-3's and Qwen3's pre-tokenizers and merge lists) on FLORES."""
    base_dir = shared / "tokenizers" / name
    result = extend_bytelevel_tokenizer(base_dir, ru_lines[:lines], num_new, tmp_path / "tok")
    assert_extension_invariants(base_dir, tmp_path / "tok", num_new, result, flores)


# ------------------------------------------------------------------------------------------------ bad input


def test_sentencepiece_base_is_refused_with_its_folder(tmp_path, spm_tokenizer):
    with pytest.raises(ValueError, match=f"{spm_tokenizer}.*not a byte-level BPE"):
        extend_bytelevel_tokenizer(spm_tokenizer, ["привет мир"] * 10, 5, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_empty_or_unusable_text_raises(tmp_path, bytelevel_tokenizer):
    base_dir = bytelevel_tokenizer
    with pytest.raises(ValueError, match="no text"):
        extend_bytelevel_tokenizer(base_dir, [], 5, tmp_path / "a")
    with pytest.raises(ValueError, match="no text"):
        extend_bytelevel_tokenizer(base_dir, ["", ""], 5, tmp_path / "a")
    with pytest.raises(ValueError, match="learned 0 of 5"):
        extend_bytelevel_tokenizer(base_dir, ["only English here, again and again"] * 5, 5, tmp_path / "a")
    with pytest.raises(ValueError, match="unknown script"):
        extend_bytelevel_tokenizer(base_dir, ["привет"], 5, tmp_path / "a", script="klingon")
    with pytest.raises(TypeError, match="not one string"):
        extend_bytelevel_tokenizer(base_dir, "привет привет", 5, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_small_text_gives_fewer_tokens_and_out_dir_is_not_clobbered(tmp_path, bytelevel_tokenizer):
    base_dir = bytelevel_tokenizer
    result = extend_bytelevel_tokenizer(base_dir, ["Привет, мир! Привет, мир!"], 1000, tmp_path / "tok")
    assert 0 < result.new_tokens < 1000 and result.final_size == result.base_size + result.new_tokens
    with pytest.raises(FileExistsError):
        extend_bytelevel_tokenizer(base_dir, ["Привет, мир! Привет, мир!"], 5, tmp_path / "tok")
    again = extend_bytelevel_tokenizer(
        base_dir, ["Привет, мир! Привет, мир!"], 1, tmp_path / "tok", overwrite=True
    )
    assert again.new_tokens == 1
