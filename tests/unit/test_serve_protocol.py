"""The pure parts of serving: request checking, context fitting, sampling, stop strings."""

import pytest
import torch

from vikhr.serve.protocol import APIError, Limits, fit_to_context, parse_chat, parse_completion
from vikhr.serve.sampling import find_stop, held_back, sample_next

L = Limits(max_tokens=100, default_max_tokens=50, max_n=4)


def chat(**kw):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


def err(fn, body) -> APIError:
    with pytest.raises(APIError) as e:
        fn(body, L)
    return e.value


def test_chat_defaults_and_parts():
    p = parse_chat(chat(messages=[{"role": "developer", "content": "be brief"},
                                  {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]), L)  # fmt: skip
    assert p.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}]
    assert (p.params.temperature, p.params.top_p, p.params.max_tokens, p.n, p.stream) == (
        1.0,
        1.0,
        50,
        1,
        False,
    )
    assert not p.max_tokens_given


@pytest.mark.parametrize(
    "body, param",
    [
        (chat(max_tokens=-1), "max_tokens"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_tokens=10**9), "max_tokens"),
        (chat(max_completion_tokens=101), "max_completion_tokens"),
        (chat(max_tokens="5"), "max_tokens"),
        (chat(max_tokens=True), "max_tokens"),
        (chat(temperature=2.5), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(n=5), "n"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(stop=[""]), "stop"),
        (chat(seed=1.5), "seed"),
        (chat(logprobs=True), "logprobs"),
        (chat(tools=[{"type": "function"}]), "tools"),
        (chat(response_format={"type": "json_schema"}), "response_format"),
        (chat(messages=[]), "messages"),
        (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
        (chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_chat_rejects_with_param(body, param):
    e = err(parse_chat, body)
    assert e.status == 400 and e.param == param and e.body()["error"]["type"] == "invalid_request_error"


def test_body_must_be_object():
    assert err(parse_chat, [1, 2]).status == 400


def test_completion_prompt_forms():
    base = {"model": "m"}
    assert parse_completion({**base, "prompt": "x"}, L).prompts == ["x"]
    assert parse_completion({**base, "prompt": ["x", "y"]}, L).prompts == ["x", "y"]
    assert parse_completion({**base, "prompt": [1, 2]}, L).prompts == [[1, 2]]
    assert parse_completion({**base, "prompt": [[1], [2, 3]]}, L).prompts == [[1], [2, 3]]
    for bad in (None, [], [True], [1, "x"], {"a": 1}, [[]]):
        assert err(parse_completion, {**base, "prompt": bad}).param == "prompt"


def test_fit_to_context():
    p = parse_chat(chat(), L)
    assert fit_to_context(p, 10, 30, "messages").max_tokens == 20  # default 50 shrunk to the room left
    e = pytest.raises(APIError, fit_to_context, p, 30, 30, "messages").value
    assert e.code == "context_length_exceeded" and "maximum context length is 30" in e.message
    given = parse_chat(chat(max_tokens=25), L)
    assert pytest.raises(APIError, fit_to_context, given, 10, 30, "messages").value.status == 400
    assert fit_to_context(given, 5, 30, "messages").max_tokens == 25


def test_sample_next_greedy_top_p_and_seed():
    torch.manual_seed(0)
    logits = torch.randn(4, 1000)
    t = torch.tensor([0.0, 1.0, 1.0, 1.0])
    top_p = torch.tensor([1.0, 1e-6, 1.0, 1.0])
    g1 = [None, None, torch.Generator().manual_seed(3), None]
    out = sample_next(logits, t, top_p, g1)
    assert out[0] == logits[0].argmax() and out[1] == logits[1].argmax()  # greedy; nucleus of one token
    again = sample_next(logits, t, top_p, [None, None, torch.Generator().manual_seed(3), None])
    assert again[2] == out[2]
    # a high temperature spreads the draws; top-p 0.5 keeps them inside the nucleus
    many = [
        sample_next(logits[3:], torch.tensor([1.0]), torch.tensor([0.5]), [None]).item() for _ in range(200)
    ]
    probs = torch.softmax(logits[3], -1)
    sp, order = probs.sort(descending=True)
    nucleus = set(order[: int((sp.cumsum(0) < 0.5).sum()) + 1].tolist())
    assert set(many) <= nucleus and len(set(many)) > 1


def test_stop_strings_and_hold_back():
    assert find_stop("hello world", ["wor", "lo"]) == 3
    assert find_stop("hello", ["x"]) == -1
    assert find_stop("abcabc", ["abc"], start=4) == 3  # the first stop that ends past `start`
    assert held_back("hello wo", ["world"]) == 2
    assert held_back("hello", ["world"]) == 0
    assert held_back("abc\ufffd", []) == 1
