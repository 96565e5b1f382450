"""The LLM client's pure parts: cache keys, the backoff schedule, config resolution from the environment."""

from __future__ import annotations

import email.utils
import random
import threading
import time

import httpx
import pytest

from vikhr.config import ConfigError, LLMConfig, load_config
from vikhr.llm import (
    LLMClient,
    LLMStats,
    ResponseCache,
    backoff_delay,
    cache_key,
    canonical_json,
    parse_retry_after,
    resolve_api_key,
    resolve_base_url,
    resolve_cache_dir,
)
from vikhr.llm.client import DEFAULT_BASE_URL

ENV = (
    "VIKHR_LLM_BASE_URL",
    "OPENAI_BASE_URL",
    "VIKHR_LLM_MODEL",
    "VIKHR_LLM_API_KEY",
    "OPENAI_API_KEY",
    "MY_KEY",
)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIKHR_CACHE", str(tmp_path / "cache"))
    return monkeypatch


BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "Привет"}],
    "temperature": 0.0,
    "max_tokens": 16,
    "stop": ["\n"],
    "seed": 1,
}


def test_cache_key_ignores_dict_order_and_integral_float_spelling():
    shuffled = {k: BODY[k] for k in reversed(list(BODY))}
    shuffled["messages"] = [{"content": "Привет", "role": "user"}]
    assert cache_key("/chat/completions", "m", BODY) == cache_key("/chat/completions", "m", shuffled)
    assert cache_key("/chat/completions", "m", BODY) == cache_key("chat/completions/", "m", BODY)
    assert cache_key("/chat/completions", "m", {**BODY, "temperature": 0}) == cache_key(
        "/chat/completions", "m", BODY
    )
    assert canonical_json({"b": 1.0, "a": [0.5, "ё"]}) == '{"a":[0.5,"ё"],"b":1}'


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.7},
        {"max_tokens": 17},
        {"stop": ["\n\n"]},
        {"seed": 2},
        {"top_p": 0.9},
        {"n": 2},
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "Привет!"}]},
        {"messages": [{"role": "system", "content": "Привет"}]},
        {"repetition_penalty": 1.1},  # a vLLM extension passed through
    ],
)
def test_cache_key_depends_on_every_param(change):
    assert cache_key("/chat/completions", "m", {**BODY, **change}) != cache_key(
        "/chat/completions", "m", BODY
    )


def test_cache_key_depends_on_path_and_model_but_not_base_url(clean_env, tmp_path):
    k = cache_key("/chat/completions", "m", BODY)
    assert cache_key("/completions", "m", BODY) != k
    assert cache_key("/chat/completions", "other", {**BODY, "model": "other"}) != k
    assert cache_key("/chat/completions", "other", BODY) != k  # the model is keyed even outside the body
    # The same request built by clients pointed at two different servers: one key.
    bodies = []
    for url in ("http://127.0.0.1:1/v1", "https://example.invalid:8443/v1/"):
        with LLMClient(LLMConfig(base_url=url, model="m", cache_dir=str(tmp_path / "c"))) as client:
            bodies.append(client._body({"messages": BODY["messages"]}, {"max_tokens": 16}))
    assert bodies[0] == bodies[1]


def test_response_cache_round_trip_and_threads(tmp_path):
    cache = ResponseCache(tmp_path / "c")
    assert cache.get("x") is None

    def put(i: int) -> None:
        for j in range(20):
            cache.put(f"{i}-{j}", "/completions", "m", {"choices": [{"text": f"{i}{j}"}]})

    threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 80
    assert cache.get("3-7") == {"choices": [{"text": "37"}]}
    cache.close()
    again = ResponseCache(tmp_path / "c")  # survives a restart
    assert again.get("0-0") == {"choices": [{"text": "00"}]}
    again.close()


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    rng = random.Random(0)
    for attempt in range(8):
        nominal = min(30.0, 1.0 * 2**attempt)
        delays = [backoff_delay(attempt, 1.0, 30.0, rng=rng) for _ in range(50)]
        assert all(nominal * 0.5 <= d <= nominal for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff_delay(20, 1.0, 30.0, rng=rng) <= 30.0
    assert backoff_delay(0, 0.0, 30.0) == 0.0


def test_retry_after_wins_and_is_capped():
    assert backoff_delay(3, 1.0, 30.0, retry_after=0.0) == 0.0
    assert backoff_delay(0, 1.0, 30.0, retry_after=2.5) == 2.5
    assert backoff_delay(0, 1.0, 30.0, retry_after=3600) == 30.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "0"})) == 0.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "7"})) == 7.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "Retry-After": "7"})) == 0.25
    assert parse_retry_after(httpx.Headers({})) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    date = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 15 <= parse_retry_after(httpx.Headers({"Retry-After": date})) <= 21
    past = email.utils.formatdate(time.time() - 20, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past})) == 0.0


def test_base_url_resolution_order(clean_env):
    assert resolve_base_url(LLMConfig()) == DEFAULT_BASE_URL == "http://127.0.0.1:8000/v1"
    clean_env.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1/")
    assert resolve_base_url(LLMConfig()) == "https://api.openai.com/v1"
    clean_env.setenv("VIKHR_LLM_BASE_URL", "http://gpu-box:9000/v1")
    assert resolve_base_url(LLMConfig()) == "http://gpu-box:9000/v1"
    assert resolve_base_url(LLMConfig(base_url="http://cfg:1/v1")) == "http://cfg:1/v1"


def test_api_key_resolution_names_the_variable(clean_env):
    assert resolve_api_key(LLMConfig()) == (None, "VIKHR_LLM_API_KEY")
    clean_env.setenv("OPENAI_API_KEY", "sk-openai")
    assert resolve_api_key(LLMConfig()) == ("sk-openai", "OPENAI_API_KEY")
    clean_env.setenv("VIKHR_LLM_API_KEY", "sk-vikhr")
    assert resolve_api_key(LLMConfig()) == ("sk-vikhr", "VIKHR_LLM_API_KEY")
    assert resolve_api_key(LLMConfig(api_key_env="MY_KEY")) == ("sk-openai", "OPENAI_API_KEY")
    clean_env.setenv("MY_KEY", "sk-mine")
    assert resolve_api_key(LLMConfig(api_key_env="MY_KEY")) == ("sk-mine", "MY_KEY")


def test_model_and_cache_dir_resolution(clean_env, tmp_path):
    assert resolve_cache_dir(LLMConfig()) == tmp_path / "cache" / "llm"
    assert resolve_cache_dir(LLMConfig(cache_dir="rel"), base=tmp_path) == (tmp_path / "rel").resolve()
    clean_env.setenv("VIKHR_LLM_MODEL", "env-model")
    with LLMClient(LLMConfig(base_url="http://127.0.0.1:1/v1")) as client:
        assert client.model == "env-model"  # no request: the port is closed
        assert client.cache is not None and client.cache.path.parent == tmp_path / "cache" / "llm"
        assert client.stats.requests == 0
    with LLMClient(LLMConfig(base_url="http://127.0.0.1:1/v1", model="cfg-model", cache=False)) as client:
        assert client.model == "cfg-model" and client.cache is None


def test_from_env_and_from_config(clean_env, tmp_path):
    clean_env.setenv("VIKHR_LLM_BASE_URL", "http://127.0.0.1:1/v1")
    with LLMClient.from_env(model="x", max_concurrency=2) as client:
        assert client.base_url == "http://127.0.0.1:1/v1" and client.config.max_concurrency == 2
    with pytest.raises(ConfigError, match="max_concurency"):
        LLMClient.from_env(max_concurency=2)
    p = tmp_path / "exp.yaml"
    p.write_text("llm:\n  model: tiny\n  cache_dir: llm-cache\n  max_retries: 1\n", encoding="utf-8")
    cfg = load_config(p)
    assert cfg.llm.max_retries == 1 and cfg.llm.temperature == 0.0 and cfg.llm.max_tokens == 512
    with LLMClient.from_config(cfg) as client:
        assert client.cache is not None and client.cache.folder == tmp_path / "llm-cache"
    with pytest.raises(ConfigError, match=r"llm\.api_key"):
        load_config(None, ["llm.api_key=sk-secret"])  # keys never live in configs
    with pytest.raises(ConfigError, match="max_concurrency"):
        LLMClient(LLMConfig(max_concurrency=0))


def test_request_body_defaults_overrides_and_passthrough(clean_env, tmp_path):
    cfg = LLMConfig(base_url="http://127.0.0.1:1/v1", model="m", temperature=0.3, max_tokens=64)
    with LLMClient(cfg, cache_dir=tmp_path) as client:
        msgs = {"messages": [{"role": "user", "content": "hi"}]}
        assert client._body(msgs, {}) == {**msgs, "model": "m", "temperature": 0.3, "max_tokens": 64}
        body = client._body(
            msgs,
            {"temperature": 0.0, "max_tokens": None, "top_k": 5, "model": "n", "extra_body": {"min_p": 0.1}},
        )
        assert body == {**msgs, "model": "n", "temperature": 0.0, "top_k": 5, "min_p": 0.1}
        with pytest.raises(ValueError, match="streaming"):
            client._body(msgs, {"stream": True})


def test_stats_summary_is_one_line():
    s = LLMStats(calls=3, requests=4, cache_hits=1, retries=2, prompt_tokens=10, completion_tokens=5)
    line = s.summary()
    assert "\n" not in line and "2 retries" in line and "10+5 tokens" in line
    assert s.as_dict()["cache_hits"] == 1
