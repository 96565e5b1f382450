"""Bits per character, greedy continuations and embedding diagnostics on tiny Llama models built in the test."""

from __future__ import annotations

import math

import pytest
import torch

from vikhr.eval.bpc import (
    bits_per_char,
    embedding_norm_stats,
    greedy_continuations,
    output_mass,
    start_token_id,
    uniform_bits_per_char,
)

WORDS = [f"w{i}" for i in range(20)]


def _tokenizer(*, adds_bos: bool = False, endoftext: bool = False):
    """A word-level tokenizer: <unk> <s> </s> [<|endoftext|>] w0..w19; optionally adds <s> like Mistral."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = ["<unk>", "<s>", "</s>"] + (["<|endoftext|>"] if endoftext else []) + WORDS
    backend = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    extra = {"additional_special_tokens": ["<|endoftext|>"]} if endoftext else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", **extra
    )


def _model(vocab_size: int, *, seed: int = 0, tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=tied,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger than the default init, so that predictions differ across positions
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


def _lines(n: int, seed: int = 1) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(1, 15, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
    return out


@torch.no_grad()
def _reference_bits(model, ids: list[int]) -> float:
    """-log2 p of ids[1:] given the prefix, one sequence, no mask, straight from log_softmax."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return -sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)) / math.log(2)


@pytest.fixture(scope="module")
def tok():
    return _tokenizer(endoftext=True)


@pytest.fixture(scope="module")
def model(tok):
    return _model(len(tok)).eval()


def test_start_token_prefers_bos_the_tokenizer_adds():
    tok = _tokenizer(adds_bos=True, endoftext=True)
    assert tok("w1")["input_ids"][0] == tok.bos_token_id
    assert start_token_id(tok) == tok.bos_token_id == 1


def test_start_token_is_endoftext_when_bos_is_not_added():
    tok = _tokenizer(endoftext=True)
    assert start_token_id(tok) == tok.convert_tokens_to_ids("<|endoftext|>") == 3


def test_start_token_falls_back_to_bos_then_eos_then_none():
    tok = _tokenizer()
    assert start_token_id(tok) == tok.bos_token_id == 1
    tok.bos_token = None
    assert start_token_id(tok) == tok.eos_token_id == 2
    tok.eos_token = None
    assert start_token_id(tok) is None


def _check_start_tokens(smol, mistral) -> None:
    assert smol.bos_token_id is not None  # <|im_start|>, not what documents are separated by
    assert smol.convert_ids_to_tokens(start_token_id(smol)) == "<|endoftext|>"
    assert start_token_id(mistral) == mistral.bos_token_id == 1


def test_start_token_on_smollm2_and_mistral_like_tokenizers(bytelevel_tokenizer, spm_tokenizer):
    from transformers import AutoTokenizer

    _check_start_tokens(
        AutoTokenizer.from_pretrained(bytelevel_tokenizer), AutoTokenizer.from_pretrained(spm_tokenizer)
    )


@pytest.mark.shared
def test_start_token_on_real_tokenizers(shared):
    from transformers import AutoTokenizer

    toks = shared / "tokenizers"
    _check_start_tokens(
        AutoTokenizer.from_pretrained(toks / "smollm2-135m"),
        AutoTokenizer.from_pretrained(toks / "mistral-7b-v0.1"),
    )


@pytest.fixture(autouse=True)
def exact_float32(monkeypatch):
    """These tests check the arithmetic, so they compute in float32 on every CPU; one test checks bf16 below."""
    monkeypatch.setenv("VIKHR_COMPUTE_DTYPE", "float32")


def test_batched_equals_one_line_at_a_time(model, tok):
    lines = _lines(13)
    per_line = [bits_per_char(model, tok, [line], batch_size=1) for line in lines]
    expected = sum(r.nll_bits for r in per_line)
    for batch_size in (1, 3, 8, 64):
        r = bits_per_char(model, tok, lines, batch_size=batch_size)
        assert r.nll_bits == pytest.approx(expected, abs=1e-4)
        assert r.bits_per_char == pytest.approx(expected / r.chars, abs=1e-6)


def test_matches_a_direct_log_softmax_reference(model, tok, monkeypatch):
    lines = _lines(5, seed=7)
    start = start_token_id(tok)
    expected = sum(
        _reference_bits(model, [start, *tok(x, add_special_tokens=False)["input_ids"]]) for x in lines
    )
    assert bits_per_char(model, tok, lines, batch_size=4).nll_bits == pytest.approx(expected, abs=1e-4)
    monkeypatch.setenv("VIKHR_COMPUTE_DTYPE", "bfloat16")  # the forward under bf16 autocast: close, not equal
    low = bits_per_char(model, tok, lines, batch_size=4).nll_bits
    assert low != expected and low == pytest.approx(expected, rel=2e-2)


def test_first_token_of_a_line_is_predicted(model, tok):
    one = bits_per_char(model, tok, ["w5"])
    assert one.tokens == 1
    assert one.nll_bits == pytest.approx(
        _reference_bits(model, [start_token_id(tok), tok.convert_tokens_to_ids("w5")])
    )
    assert one.nll_bits > 0


def test_uniform_model_gives_uniform_bound(tok):
    model = _model(len(tok) + 8, tied=False)  # a padded vocabulary: the bound uses the logit width
    with torch.no_grad():
        model.lm_head.weight.zero_()
    r = bits_per_char(model, tok, _lines(9), batch_size=4)
    assert r.bits_per_char == pytest.approx(uniform_bits_per_char(len(tok) + 8, r.tokens, r.chars), rel=1e-6)
    assert r.nll_bits == pytest.approx(r.tokens * math.log2(len(tok) + 8), rel=1e-6)


def test_uniform_bits_per_char_formula():
    assert uniform_bits_per_char(256, tokens=10, chars=40) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        uniform_bits_per_char(256, tokens=10, chars=0)


def test_counts_and_blank_lines_skipped(model, tok):
    r = bits_per_char(model, tok, ["w1 w2 w3", "", "   ", "w10 w11"])
    assert (r.lines, r.tokens, r.chars) == (2, 5, 8 + 7)
    assert r.tokens_per_char == pytest.approx(5 / 15)
    assert r.as_dict()["chars"] == 15
    assert set(r.as_dict()) == {
        "bits_per_char", "nll_bits", "chars", "tokens", "lines", "tokens_per_char", "bytes", "bits_per_byte",
        "perplexity",
    }  # fmt: skip
    assert r.bytes == 15 and r.bits_per_byte == pytest.approx(r.nll_bits / 15)  # ASCII: one byte per char
    assert r.perplexity == pytest.approx(2 ** (r.nll_bits / r.tokens))


def test_only_blank_lines_is_an_error(model, tok):
    with pytest.raises(ValueError, match="no non-empty lines"):
        bits_per_char(model, tok, ["", "  "])


def test_truncation_scores_the_kept_prefix(model, tok, caplog):
    line = "w1 w2 w3 w4 w5"
    with caplog.at_level("WARNING", logger="vikhr"):
        r = bits_per_char(model, tok, [line, "w6"], max_tokens=3)
    assert "truncated" in caplog.text
    assert (r.tokens, r.chars) == (2 + 1, len("w1 w2") + 2)
    short = bits_per_char(model, tok, ["w1 w2", "w6"])
    assert r.nll_bits == pytest.approx(short.nll_bits, abs=1e-5)


def test_restores_training_mode(model, tok):
    model.train()
    bits_per_char(model, tok, ["w1 w2"])
    assert model.training
    model.eval()


@torch.no_grad()
def test_greedy_continuations_are_the_argmax_path(model, tok):
    prompts = ["w1 w2", "w3"]
    got = greedy_continuations(model, tok, prompts, max_new_tokens=6)
    assert got == greedy_continuations(model, tok, prompts, max_new_tokens=6)
    assert all(isinstance(s, str) for s in got)
    for prompt, text in zip(prompts, got, strict=True):
        ids = [start_token_id(tok), *tok(prompt, add_special_tokens=False)["input_ids"]]
        new = []
        for _ in range(6):
            nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == tok.eos_token_id:
                break
        assert text == tok.decode(new, skip_special_tokens=True)


def test_greedy_continuations_without_generation_config(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "m"
    _model(len(tok), seed=3).save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    expected = greedy_continuations(loaded, tok, ["w4 w5"], max_new_tokens=4)
    loaded.generation_config = None
    assert greedy_continuations(loaded, tok, ["w4 w5"], max_new_tokens=4) == expected
    assert loaded.generation_config is None


def test_embedding_norm_stats_on_known_rows():
    weight = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [6.0, 8.0], [0.0, 2.0]])
    stats = embedding_norm_stats(weight, {"a": [0, 3], "b": torch.tensor([1, 2, 4]), "empty": []})
    assert stats["a"] == {"count": 2, "mean": 7.5, "std": 2.5, "min": 5.0, "max": 10.0}
    assert stats["b"] == {"count": 3, "mean": 1.0, "std": round(math.sqrt(2 / 3), 4), "min": 0.0, "max": 2.0}
    assert stats["empty"] == {"count": 0}


def test_output_mass_is_a_probability(model, tok):
    lines = _lines(6, seed=5)
    vocab = model.config.vocab_size
    assert output_mass(model, tok, lines, list(range(vocab))) == pytest.approx(1.0, abs=1e-6)
    low, high = list(range(vocab // 2)), torch.arange(vocab // 2, vocab)
    a, b = output_mass(model, tok, lines, low), output_mass(model, tok, lines, high)
    assert 0.0 < a < 1.0 and 0.0 < b < 1.0
    assert a + b == pytest.approx(1.0, abs=1e-6)


def test_output_mass_of_uniform_model_is_the_row_share(tok):
    model = _model(len(tok), tied=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    assert output_mass(model, tok, _lines(4), [0, 5, 6, 7, 7]) == pytest.approx(4 / len(tok), abs=1e-6)


def test_output_mass_uses_only_max_lines(model, tok):
    lines = _lines(10, seed=2)
    assert output_mass(model, tok, lines, [4, 5], max_lines=3) == pytest.approx(
        output_mass(model, tok, lines[:3], [4, 5])
    )
    assert output_mass(model, tok, lines, [4, 5], max_lines=3) != pytest.approx(
        output_mass(model, tok, lines, [4, 5], max_lines=10)
    )
