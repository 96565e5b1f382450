"""Generation speed: forced decoding feeds exactly the continuation, free sampling reaches its length, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vikhr.cli import main
from vikhr.eval.speed import (
    HELDOUT_RU,
    compare,
    cyrillic_share,
    flores_texts,
    forced_decode_speed,
    free_generation_speed,
    split_continuation,
)


@pytest.fixture(scope="module")
def tiny(tiny_smollm):
    return AutoModelForCausalLM.from_pretrained(tiny_smollm).eval(), AutoTokenizer.from_pretrained(
        tiny_smollm
    )


class _Recorder:
    """Records the input ids and the cache length of every forward pass of a model."""

    def __init__(self, model):
        self.calls: list[tuple[list[int], int]] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        cache = kwargs.get("cache")
        self.calls.append(
            (kwargs["input_ids"][0].tolist(), cache.get_seq_length() if cache is not None else 0)
        )


def test_flores_texts_shape():
    pairs = flores_texts(3, 200)
    assert len(pairs) == 3
    for prompt, cont in pairs:
        assert prompt and cont.startswith(" ") and len(cont) >= 200
        assert not cont.startswith("  ")
    assert pairs[1][0] not in pairs[0][1]  # taken in order without overlap
    fallback = flores_texts(2, 300, source=HELDOUT_RU)
    assert len(fallback) == 2 and all(len(c) >= 300 for _, c in fallback)


def test_forced_decoding_feeds_exactly_the_continuation(tiny):
    model, tok = tiny
    prompt, cont = flores_texts(1, 120)[0]
    prompt_ids, cont_ids = split_continuation(tok, prompt, cont)
    assert tok.decode(cont_ids) == cont
    assert cont_ids == tok(cont, add_special_tokens=False)["input_ids"]
    assert prompt_ids + cont_ids == tok(prompt + cont, add_special_tokens=False)["input_ids"]

    rec = _Recorder(model)
    try:
        res = forced_decode_speed(model, tok, prompt, cont)
    finally:
        rec.handle.remove()
    (prefill, _), *steps = rec.calls
    assert prefill[1:] == prompt_ids and len(prefill) == res.prompt_tokens
    assert all(len(ids) == 1 for ids, _ in steps)
    fed = [ids[0] for ids, _ in steps]
    assert fed == cont_ids and tok.decode(fed) == cont
    # one token per pass on top of the cache, which grows by one each step
    assert [n for _, n in steps] == list(range(len(prefill), len(prefill) + len(fed)))

    assert res.n_tokens == len(cont_ids) and res.n_chars == len(cont)
    assert res.chars_per_token == pytest.approx(res.n_chars / res.n_tokens)
    assert res.chars_per_s == pytest.approx(res.tokens_per_s * res.chars_per_token)
    assert res.tokens_per_s == pytest.approx(res.n_tokens / res.decode_s)
    assert res.prefill_s > 0 and res.decode_s > 0


def test_split_refuses_a_token_across_the_boundary(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="spans the end of the prompt"):
        split_continuation(tok, "The hel", "lo world")


def test_free_generation_reaches_n_chars(tiny):
    model, tok = tiny
    rec = _Recorder(model)
    try:
        res = free_generation_speed(model, tok, "Однажды летом мы", 60, seed=3)
    finally:
        rec.handle.remove()
    assert res.n_chars == len(res.text) >= 60
    assert 0.0 <= res.cyrillic_share <= 1.0
    assert res.chars_per_token == pytest.approx(res.n_chars / res.n_tokens)
    assert res.tokens_per_s == pytest.approx(res.n_tokens / res.decode_s)
    # the prefill, then every generated token fed back once
    assert len(rec.calls) == 1 + res.n_tokens
    generated = [ids[0] for ids, _ in rec.calls[1:]]
    assert not set(generated) & set(tok.all_special_ids)
    assert tok.decode(generated) == res.text
    again = free_generation_speed(model, tok, "Однажды летом мы", 60, seed=3)
    assert again.text == res.text


def test_cyrillic_share():
    assert cyrillic_share("абв abc 123") == pytest.approx(0.5)
    assert cyrillic_share("Ёжик") == 1.0
    assert cyrillic_share("123 !") == 0.0


def test_cli_bench_generate(tiny_smollm, tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["bench", "generate", "--model", f"a={tiny_smollm}", "--model", f"b={tiny_smollm}"]
    argv += ["--prompts", "1", "--chars", "50", "--repeats", "1", "--threads", str(torch.get_num_threads())]
    assert main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["baseline"] == "a" and list(res["models"]) == ["a", "b"]
    a, b = res["models"]["a"], res["models"]["b"]
    assert a["forced"]["ratio_chars_per_s"] == 1.0
    assert 0.2 < b["forced"]["ratio_chars_per_s"] < 5  # the same model: same order of speed
    assert a["forced"]["n_tokens"] == b["forced"]["n_tokens"] and a["forced"]["n_chars"] >= 50
    assert 0.0 <= b["free"]["cyrillic_share"] <= 1.0 and b["free"]["n_chars"] >= 50
    assert len(a["forced"]["repeats"]) == 1 and res["machine"]["torch_threads"] >= 1
    table = capsys.readouterr().out
    assert "| model | vocab |" in table and "Cyrillic" in table


def test_compare_interleaved_pairs_the_repeats(tiny_smollm):
    texts = flores_texts(1, 40)
    res = compare(
        {"a": tiny_smollm, "b": tiny_smollm}, texts, repeats=2, warmup=0, free=False, interleave=True
    )
    assert res["settings"]["interleave"] and "free" not in res["models"]["b"]
    forced = res["models"]["b"]["forced"]
    assert len(forced["repeats"]) == 2 and len(forced["ratio_chars_per_s_by_repeat"]) == 2
    assert all(r["n_chars"] == len(texts[0][1]) for r in forced["repeats"])
