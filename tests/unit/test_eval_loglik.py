"""The log-likelihood scorer: lm-eval's tokenization rule, packed rows equal to one pass per choice, truncation,
lm-eval's argmax rules for acc / acc_norm / acc_bytes."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vikhr.eval.loglik import LMTokenizer, choice_predictions, score_requests, supports_packing

REQUESTS = [
    (
        "Сердце актёра отчаянно билось перед выступлением потому что",
        [" он боялся сцены.", " он помнил роль."],
    ),
    ("Question: What is two plus two?\nAnswer: ", [" four", " five apples", " 22"]),  # trailing space moves
    ("", ["Мужчину раньше судили, правильно? Да, судили", "Да"]),  # empty context: the prefix token
    ("Один", [" раз"]),
]


@pytest.fixture(scope="module", params=["tiny_smollm", "tiny_mistral"])
def lm(request):
    folder = request.getfixturevalue(request.param)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():  # random weights with some spread, so that choices differ clearly
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model, AutoTokenizer.from_pretrained(folder)


def reference(model, lm_tok: LMTokenizer, context: str, continuation: str, max_length: int = 10**6):
    """lm-eval's HF loop for one (context, continuation): one forward over (ctx + cont)[-(L+1):][:-1]."""
    ctx, cont = lm_tok.encode_pair(context, continuation)
    inp = (ctx + cont)[-(max_length + 1) :][:-1]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([inp])).logits.float(), dim=-1)[0]
    picked = logprobs[-len(cont) :]
    target = torch.tensor(cont)
    return float(picked.gather(-1, target[:, None]).sum()), bool((picked.argmax(-1) == target).all())


def test_encode_pair_follows_lm_eval(tiny_smollm):
    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    lm_tok = LMTokenizer(tok)
    ctx, cont = lm_tok.encode_pair("Ответ: ", "да")
    whole = tok.encode("Ответ: да")
    assert ctx == tok.encode("Ответ:") and ctx + cont == whole  # the space went into the continuation
    ctx, cont = lm_tok.encode_pair("", "да")
    assert ctx == [lm_tok.prefix_token_id] and cont == tok.encode("да", add_special_tokens=False)


def test_empty_context_starting_with_the_prefix_token(tiny_smollm):
    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    lm_tok = LMTokenizer(tok)
    prefix = tok.decode([lm_tok.prefix_token_id])
    ctx, cont = lm_tok.encode_pair("", prefix + "да")
    assert ctx == [lm_tok.prefix_token_id] and cont and cont[0] != lm_tok.prefix_token_id


@pytest.mark.parametrize("packed", [True, False])
def test_scores_equal_one_pass_per_choice(lm, packed):
    model, tok = lm
    lm_tok = LMTokenizer(tok)
    assert supports_packing(model)
    scored = score_requests(model, lm_tok, REQUESTS, batch_size=3, packed=packed)
    for (context, conts), s in zip(REQUESTS, scored, strict=True):
        assert not s.truncated
        for i, c in enumerate(conts):
            ll, greedy = reference(model, lm_tok, context, c)
            assert s.loglikelihoods[i] == pytest.approx(ll, abs=1e-4)
            assert s.greedy[i] == greedy


def test_batch_size_does_not_change_scores(lm):
    model, tok = lm
    lm_tok = LMTokenizer(tok)
    one = score_requests(model, lm_tok, REQUESTS, batch_size=1)
    many = score_requests(model, lm_tok, REQUESTS, batch_size=4)
    for a, b in zip(one, many, strict=True):
        assert a.loglikelihoods == pytest.approx(b.loglikelihoods, abs=1e-4)


def test_long_items_are_cut_from_the_left_like_lm_eval(lm):
    model, tok = lm
    lm_tok = LMTokenizer(tok)
    context = "Сердце актёра отчаянно билось перед выступлением, и он долго стоял за кулисами потому что"
    conts = [" он боялся сцены.", " нет"]
    max_length = 12
    (s,) = score_requests(model, lm_tok, [(context, conts)], max_length=max_length)
    assert s.truncated
    for i, c in enumerate(conts):
        ll, _ = reference(model, lm_tok, context, c, max_length)
        assert s.loglikelihoods[i] == pytest.approx(ll, abs=1e-4)


def test_continuation_longer_than_the_context_window_is_an_error(lm):
    model, tok = lm
    with pytest.raises(ValueError, match="maximum length 3"):
        score_requests(model, LMTokenizer(tok), [("a", [" длинное продолжение текста"])], max_length=3)


def test_choice_predictions_normalise_by_chars_and_bytes():
    # acc: the largest log-likelihood; per character the Latin choice wins, per byte the Cyrillic one
    lls = [-10.0, -9.0]
    choices = ["абвгд", "abc"]  # 5 chars / 10 bytes, 3 chars / 3 bytes
    assert choice_predictions(lls, choices) == {"acc": 1, "acc_norm": 0, "acc_bytes": 0}
    assert choice_predictions([-7.0, -4.0], choices) == {"acc": 1, "acc_norm": 1, "acc_bytes": 0}
    assert choice_predictions([-1.0, -1.0], ["a", "b"]) == {
        "acc": 0,
        "acc_norm": 0,
        "acc_bytes": 0,
    }  # ties: first


def test_rows_share_a_context_only_when_it_pays():
    from vikhr.eval.loglik import _plan_rows

    long_ctx = list(range(20))
    shared, _ = _plan_rows([[(long_ctx, [1, 2]), (long_ctx, [3, 4, 5])]], max_length=100, packed=True)
    assert len(shared) == 1 and len(shared[0].group.conts) == 2  # the question once, both options
    prefix_only, _ = _plan_rows(
        [[([7], list(range(30))), ([7], list(range(31)))]], max_length=100, packed=True
    )
    assert len(prefix_only) == 2  # an empty context (one prefix token): one row per choice
    plain, _ = _plan_rows([[(long_ctx, [1, 2]), (long_ctx, [3])]], max_length=100, packed=False)
    assert len(plain) == 2
