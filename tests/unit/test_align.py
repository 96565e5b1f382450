"""Token alignment for the `base` KL reference: boundaries, shared vocabulary, and the aligned KL."""

from __future__ import annotations

import pytest
import torch

from vikhr.train.align import (
    aligned_kl,
    aligned_positions,
    encode_tokens,
    prediction_boundaries,
    shared_keys,
    shared_vocab_map,
    token_keys,
)
from vikhr.train.kl import chunked_kl, kl_from_logits

# ------------------------------------------------------------------------------------ hand-made tokenizations

TEXT = "abcd"
SPLIT = [("a", 0, 1), ("b", 1, 2), ("c", 2, 3), ("d", 3, 4)]
MERGED = [("a", 0, 1), ("bc", 1, 3), ("d", 3, 4)]
ALL = {"a", "b", "c", "d", "bc"}


def test_identical_tokenizations_align_everywhere():
    assert aligned_positions(TEXT, SPLIT, SPLIT, ALL) == [(0, 0), (1, 1), (2, 2)]
    assert aligned_positions(TEXT, MERGED, MERGED, ALL, same_next=True) == [(0, 0), (1, 1)]


def test_merge_removes_exactly_the_inner_boundary():
    # base boundaries 1, 2, 3; the new side's merge "bc" has none at 2
    assert prediction_boundaries(TEXT, SPLIT) == [1, 2, 3]
    assert prediction_boundaries(TEXT, MERGED) == [1, 3]
    assert aligned_positions(TEXT, MERGED, SPLIT, ALL) == [(0, 0), (1, 2)]
    assert aligned_positions(TEXT, SPLIT, MERGED, ALL) == [(0, 0), (2, 1)]
    # asking for the same next token on both sides also drops the position before the merge ("bc" vs "b")
    assert aligned_positions(TEXT, MERGED, SPLIT, ALL, same_next=True) == [(1, 2)]


def test_next_token_missing_from_a_vocabulary_is_excluded():
    assert aligned_positions(TEXT, MERGED, SPLIT, ALL - {"bc"}) == [(1, 2)]  # the new side's next token
    assert aligned_positions(TEXT, SPLIT, MERGED, ALL - {"bc"}) == [(2, 1)]  # the base side's next token
    assert aligned_positions(TEXT, SPLIT, SPLIT, ALL - {"c"}) == [(0, 0), (2, 2)]


def test_pieces_of_a_multibyte_character_are_not_aligned():
    text = "a😀b"
    whole = [("a", 0, 1), ("😀", 1, 2), ("b", 2, 3)]
    # byte-level pieces of one character both carry its offsets
    pieces = [("a", 0, 1), (b"\xf0\x9f", 1, 2), (b"\x98\x80", 1, 2), ("b", 2, 3)]
    assert prediction_boundaries(text, pieces) == [None, None, 2]
    shared = {"a", "b", "😀", b"\xf0\x9f", b"\x98\x80"}
    assert aligned_positions(text, pieces, whole, shared) == [(2, 1)]
    assert aligned_positions(text, pieces, pieces, shared) == [(2, 2)]


def test_leading_space_inside_or_trimmed_out_of_the_offsets():
    text = "Hello  world"
    included = [("Hello", 0, 5), (" ", 5, 6), (" world", 6, 12)]  # byte-level Ġ / SentencePiece ▁ style
    trimmed = [("Hello", 0, 5), (" ", 5, 6), (" world", 7, 12)]
    attached = [("Hello ", 0, 6), (" world", 6, 12)]
    shared = {"Hello", " ", " world", "Hello "}
    assert prediction_boundaries(text, trimmed) == [5, 6]
    assert aligned_positions(text, included, trimmed, shared) == [(0, 0), (1, 1)]
    assert aligned_positions(text, included, attached, shared) == [(1, 0)]
    # characters other than whitespace in a gap (dropped by a normaliser) leave the prefix unknown
    assert prediction_boundaries("a\x00b", [("a", 0, 1), ("b", 2, 3)]) == [None]


def test_zero_width_special_tokens():
    with_bos = [("<s>", 0, 0), *SPLIT, ("</s>", 0, 0)]
    assert prediction_boundaries(TEXT, with_bos) == [
        0,
        1,
        2,
        3,
        None,
    ]  # bos predicts the first token; eos is never next
    assert aligned_positions(TEXT, with_bos, SPLIT, ALL) == [(1, 0), (2, 1), (3, 2)]
    assert aligned_positions(TEXT, with_bos, with_bos, ALL | {"<s>", "</s>"}) == [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 3),
    ]


# ------------------------------------------------------------------------------------------------ aligned KL


def test_aligned_kl():
    g = torch.Generator().manual_seed(0)
    new_logits, base_logits = torch.randn(9, 20, generator=g), torch.randn(9, 15, generator=g)
    new_ids, base_ids = torch.tensor([0, 3, 4, 7, 19]), torch.tensor([2, 0, 14, 5, 6])
    kl = aligned_kl(new_logits, base_logits, new_ids, base_ids)
    assert kl.item() > 0
    # each side renormalised over the shared ids
    logp = torch.log_softmax(new_logits[:, new_ids], -1)
    logq = torch.log_softmax(base_logits[:, base_ids], -1)
    torch.testing.assert_close(kl, (logp.exp() * (logp - logq)).sum(-1).mean())
    # identical predictions over the shared tokens: 0, whatever the other tokens hold
    same = base_logits.clone()
    same[:, base_ids] = new_logits[:, new_ids] + 3.0
    assert aligned_kl(new_logits, same, new_ids, base_ids).abs().item() < 1e-6
    assert aligned_kl(new_logits, new_logits, torch.arange(20), torch.arange(20)).item() == 0.0
    for seed in range(5):
        g.manual_seed(seed)
        other = torch.randn(9, 15, generator=g)
        for direction in ("reverse", "forward"):
            assert aligned_kl(new_logits, other, new_ids, base_ids, direction=direction).item() >= 0


def test_aligned_kl_equals_chunked_kl_on_gathered_head_rows():
    g = torch.Generator().manual_seed(1)
    h_new, w_new = (
        torch.randn(11, 8, generator=g, dtype=torch.float64),
        torch.randn(30, 8, generator=g).double(),
    )
    h_base, w_base = torch.randn(11, 6, generator=g).double(), torch.randn(25, 6, generator=g).double()
    new_ids, base_ids = torch.tensor([1, 2, 5, 9, 29]), torch.tensor([0, 24, 3, 4, 8])
    want = aligned_kl(h_new @ w_new.T, h_base @ w_base.T, new_ids, base_ids)
    got = chunked_kl(h_new, w_new[new_ids], ref_hidden=h_base, ref_weight=w_base[base_ids], chunk=4)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(
        want, kl_from_logits((h_new @ w_new.T)[:, new_ids], (h_base @ w_base.T)[:, base_ids])
    )


# ------------------------------------------------------------------------------------ tokenizers built in tests


@pytest.fixture(scope="module")
def smollm(bytelevel_tokenizer):
    """The SmolLM2-like byte-level tokenizer trained in the session."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bytelevel_tokenizer)


@pytest.fixture(scope="module")
def extended(bytelevel_tokenizer, smollm, ru_sample, tmp_path_factory):
    """The byte-level tokenizer extended with ~300 merges learned on bundled Russian prose."""
    from vikhr.tokenizer.build import extend_bytelevel

    out = tmp_path_factory.mktemp("ext") / "tok"
    tok, info = extend_bytelevel(bytelevel_tokenizer, smollm, ru_sample[:400], out, num_new=300,
                                 keep_cyrillic_only=True)  # fmt: skip
    assert info["new"] > 100
    return tok


def _share(new_tok, base_tok, texts: list[str]) -> float:
    kn, kb = token_keys(new_tok), token_keys(base_tok)
    shared = set(kn.values()) & set(kb.values())
    aligned = positions = 0
    for text in texts:
        _, tn = encode_tokens(new_tok, text, kn)
        _, tb = encode_tokens(base_tok, text, kb)
        aligned += len(aligned_positions(text, tn, tb, shared))
        positions += len(tn) - 1
    return aligned / positions


def test_shared_vocab_map_of_a_tokenizer_with_itself_is_the_identity(smollm):
    new_ids, base_ids = shared_vocab_map(smollm, smollm)
    assert torch.equal(new_ids, torch.arange(len(smollm))) and torch.equal(base_ids, new_ids)
    keys = token_keys(smollm)
    assert keys[smollm.convert_tokens_to_ids("Ġthe")] == b" the"
    assert keys[smollm.eos_token_id] == smollm.eos_token  # special tokens by content


def test_self_alignment_skips_only_byte_pieces_of_one_character(smollm):
    text = "Привет, мир 😀! Hello world."
    keys = token_keys(smollm)
    _, toks = encode_tokens(smollm, text, keys)
    pairs = aligned_positions(text, toks, toks, set(keys.values()))
    assert all(a == b for a, b in pairs)
    skipped = sorted(set(range(len(toks) - 1)) - {a for a, _ in pairs})
    # the emoji (and any Cyrillic letter without a token of its own) is split into byte pieces that carry their
    # character's offsets: the positions predicting a piece whose span overlaps a neighbour's are the only ones
    # left out
    spans = [(s, e) for _, s, e in toks] + [(len(text), len(text))]
    overlapping = [
        t for t in range(len(toks) - 1) if spans[t + 1][0] < spans[t][1] or spans[t + 1][1] > spans[t + 2][0]
    ]
    assert skipped == overlapping and len(skipped) >= 3  # at least the emoji's last three bytes


@pytest.mark.slow
def test_extended_vocabulary_aligns_english_almost_everywhere(smollm, extended, heldout):
    new_ids, base_ids = shared_vocab_map(extended, smollm)
    assert len(new_ids) == len(smollm) and torch.equal(new_ids, base_ids)  # extend keeps every base id
    assert shared_keys(extended, smollm) == set(token_keys(smollm).values())
    en = _share(extended, smollm, heldout["en"][:50])
    ru = _share(extended, smollm, heldout["ru"][:50])
    assert en >= 0.95
    assert 0.2 < ru < en


def _prefix_bytes(tokens, upto: int, text: str) -> bytes:
    """Bytes of tokens[0..upto]; a SentencePiece dummy-prefix space the text does not have is dropped."""
    data = b"".join(k for k, _, _ in tokens[: upto + 1] if isinstance(k, bytes))
    return data[1:] if data.startswith(b" ") and not text.startswith(" ") else data


def _check_cross_family(spm_tok, bytelevel_tok, texts: list[str]) -> int:
    """Every aligned pair sees the same characters and predicts a shared token on both sides; returns the pairs."""
    kn, kb = token_keys(spm_tok), token_keys(bytelevel_tok)
    keys = set(kn.values()) & set(kb.values())
    total = 0
    for text in texts:
        _, tn = encode_tokens(spm_tok, text, kn, add_special_tokens=True)
        _, tb = encode_tokens(bytelevel_tok, text, kb)
        pairs = aligned_positions(text, tn, tb, keys)
        total += len(pairs)
        for t, u in pairs:
            assert _prefix_bytes(tn, t, text) == _prefix_bytes(tb, u, text), (text, t, u)
            assert tn[t + 1][0] in keys and tb[u + 1][0] in keys
    return total


def test_cross_family_pairs_share_their_prefix(spm_tokenizer, smollm, heldout):
    """SentencePiece (▁, byte fallback, bos) against byte-level BPE: every aligned pair sees the same characters."""
    from transformers import AutoTokenizer

    spm_tok = AutoTokenizer.from_pretrained(spm_tokenizer)
    assert _check_cross_family(spm_tok, smollm, heldout["en"][:10] + heldout["ru"][:10]) > 200


@pytest.mark.shared
def test_cross_family_pairs_on_real_mistral_and_smollm2(shared, flores):
    """The same on the real tokenizers (Mistral's shipped fast conversion, SmolLM2's 49k vocabulary) and FLORES."""
    from transformers import AutoTokenizer

    mistral = AutoTokenizer.from_pretrained(shared / "tokenizers" / "mistral-7b-v0.1")
    smollm = AutoTokenizer.from_pretrained(shared / "tokenizers" / "smollm2-135m")
    assert _check_cross_family(mistral, smollm, flores["en"][:10] + flores["ru"][:10]) > 200
