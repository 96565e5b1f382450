"""A real `vikhr serve` process on loopback, driven by the official `openai` client and by raw HTTP."""

import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from vikhr.serve.launch import start_server

CHAT = [{"role": "user", "content": "Привет! Как дела?"}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0)


def health(srv) -> dict:
    return httpx.get(srv.base_url.removesuffix("/v1") + "/health").json()


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")


def test_chat_completion(client):
    r = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=7, temperature=0, extra_body={"ignore_eos": True}
    )
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content and c.finish_reason == "length"
    assert r.usage.completion_tokens == 7 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7 and r.id.startswith("chatcmpl-")


def test_chat_stream_matches_non_stream(client):
    kw = dict(model="tiny", messages=CHAT, max_tokens=15, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 15


def test_completions_prompts_n_seed_and_stop(client):
    r = client.completions.create(model="tiny", prompt=["Однажды", "Once upon"], n=2, max_tokens=6, seed=3,
                                  temperature=1.0, extra_body={"ignore_eos": True})  # fmt: skip
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3] and r.usage.completion_tokens == 24
    again = client.completions.create(model="tiny", prompt=["Однажды", "Once upon"], n=2, max_tokens=6, seed=3,
                                      temperature=1.0, extra_body={"ignore_eos": True})  # fmt: skip
    assert [c.text for c in r.choices] == [c.text for c in again.choices]  # the same seed, the same draws
    greedy = client.completions.create(model="tiny", prompt="Once", max_tokens=20, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text  # fmt: skip
    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 2]
    cut = client.completions.create(model="tiny", prompt="Once", max_tokens=20, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]  # fmt: skip
    assert cut.finish_reason == "stop" and cut.text == greedy[: greedy.find(stop)]
    streamed = client.completions.create(model="tiny", prompt="Once", max_tokens=20, temperature=0, stop=[stop],
                                         stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    assert (
        "".join(ch.choices[0].text for ch in streamed) == cut.text
    )  # a stop string never leaks into a stream


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        (dict(model="gpt-4"), openai.NotFoundError, "does not exist"),
        (dict(max_tokens=-5), openai.BadRequestError, "max_tokens"),
        (dict(max_tokens=10**7), openai.BadRequestError, "max_tokens"),
        (dict(temperature=-1), openai.BadRequestError, "temperature"),
        (
            dict(messages=[{"role": "user", "content": "слово " * 3000}]),
            openai.BadRequestError,
            "maximum context length",
        ),
    ],
)
def test_bad_requests(client, kwargs, error, needle):
    with pytest.raises(error) as e:
        client.chat.completions.create(**{"model": "tiny", "messages": CHAT, "max_tokens": 5, **kwargs})
    assert needle in e.value.message


def test_raw_http_errors(tiny_server):
    base = tiny_server.base_url
    r = httpx.post(
        base + "/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(base + "/embeddings", json={"model": "tiny", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(base + "/completions", json={"model": "tiny", "prompt": [10**9]})
    assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]


def test_concurrent_requests_are_batched(tiny_server, client):
    before = health(tiny_server)
    results, errors = [], []

    def one(i):
        try:
            r = client.completions.create(model="tiny", prompt=f"Request {i}", max_tokens=200, temperature=0.7,
                                          extra_body={"ignore_eos": True})  # fmt: skip
            results.append(r.usage.completion_tokens)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = health(tiny_server)
    assert not errors and results == [200] * 8
    steps = after["steps"] - before["steps"]
    rows = after["rows_decoded"] - before["rows_decoded"]
    assert rows == 8 * 199  # every token after the first comes from a decode step
    assert rows / steps > 2  # several requests shared each forward pass


def test_client_disconnect_mid_stream(tiny_server, client):
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 1900, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", tiny_server.base_url + "/completions", json=body) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 5:
                break
    deadline = time.monotonic() + 10
    while health(tiny_server)["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health(tiny_server)["running"] == 0
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).choices[0].text is not None
    assert any("disconnected" in line for line in tiny_server.lines)


def test_api_key_body_limit_busy_and_clean_shutdown(tiny_smollm):
    with start_server(tiny_smollm, "--api-key", "sk-right", "--served-model-name", "tiny", "--max-body-mb", "0.01",
                      "--max-batch", "1", "--max-pending", "1", "--drain", "30") as srv:  # fmt: skip
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url, api_key="sk-wrong", max_retries=0).models.list()
        r = httpx.get(srv.base_url + "/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = openai.OpenAI(base_url=srv.base_url, api_key="sk-right", max_retries=0)
        assert ok.models.list().data[0].id == "tiny"
        auth = {"Authorization": "Bearer sk-right"}
        r = httpx.post(
            srv.base_url + "/completions", headers=auth, json={"model": "tiny", "prompt": "x" * 20000}
        )
        assert r.status_code == 413

        # one row, one waiting place: of several simultaneous long requests some are told to come back later
        codes = []

        def long_request():
            body = {"model": "tiny", "prompt": "x", "max_tokens": 150, "ignore_eos": True}
            codes.append(
                httpx.post(srv.base_url + "/completions", headers=auth, json=body, timeout=120).status_code
            )

        threads = [threading.Thread(target=long_request) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}

        # Ctrl-C while a stream runs: the stream still finishes, then the process exits 0
        body = {"model": "tiny", "prompt": "x", "max_tokens": 300, "ignore_eos": True, "stream": True}
        events = []
        with httpx.stream("POST", srv.base_url + "/completions", headers=auth, json=body, timeout=60) as r:
            lines = r.iter_lines()
            events.append(next(lines))
            srv.proc.send_signal(signal.SIGINT)
            events.extend(line for line in lines if line)
        assert events[-1] == "data: [DONE]"
        text = "".join(
            json.loads(e[6:])["choices"][0]["text"] for e in events[:-1] if e.startswith("data: {")
        )
        assert text
        assert srv.proc.wait(30) == 0
        assert any("shutting down" in line for line in srv.lines)


def test_chat_command_reads_a_pipe(tiny_smollm):
    out = subprocess.run(
        [sys.executable, "-m", "vikhr", "chat", str(tiny_smollm), "--max-tokens", "4", "--temperature", "0",
         "--system", "Отвечай кратко."],
        input="Привет\n/reset\nЕщё раз\n/quit\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "vikhr chat" in out.stdout and "[conversation cleared]" in out.stdout


@pytest.mark.slow
def test_real_smollm2_answers_through_the_openai_client():
    with start_server("smollm2-135m-instruct", "--served-model-name", "smollm2") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        r = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=20, temperature=0,
        )  # fmt: skip
        assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"


def test_auto_dtype_comes_from_the_precision_helper(tiny_smollm, monkeypatch):
    import torch

    from vikhr.precision import compute_dtype
    from vikhr.serve.engine import Engine

    def loaded_dtype() -> torch.dtype:
        return next(Engine.load(str(tiny_smollm), device="cpu").model.parameters()).dtype

    assert loaded_dtype() == compute_dtype("cpu")  # float32 on an AVX2-only CPU, not a hard-coded rule
    monkeypatch.setenv("VIKHR_COMPUTE_DTYPE", "bfloat16")
    assert loaded_dtype() == torch.bfloat16
