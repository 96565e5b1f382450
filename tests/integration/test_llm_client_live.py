"""The LLM client against a real `vikhr serve` process on loopback (a tiny random model served as `tiny`).

Faults (throttling, server errors, dropped connections, timeouts) come from a small proxy in the test that
answers the first requests itself and forwards the rest to the real server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from vikhr.config import LLMConfig
from vikhr.llm import ChatResult, LLMAuthError, LLMClient, LLMError, LLMUnreachableError
from vikhr.serve.launch import start_server

pytestmark = pytest.mark.slow

ENV = ("VIKHR_LLM_BASE_URL", "OPENAI_BASE_URL", "VIKHR_LLM_MODEL", "VIKHR_LLM_API_KEY", "OPENAI_API_KEY")
HELLO = [{"role": "user", "content": "Привет! Как дела?"}]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIKHR_CACHE", str(tmp_path / "vikhr-cache"))
    return monkeypatch


def client_for(base_url: str, tmp_path, **kw) -> LLMClient:
    kw = {"max_tokens": 8, "backoff_s": 0.01, "max_backoff_s": 0.1, **kw}
    return LLMClient(LLMConfig(base_url=base_url, **kw), cache_dir=tmp_path / "llm-cache")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultProxy:
    """A loopback proxy in a thread: the first requests get `faults`, the rest go to the real server.

    Faults: "429" (with Retry-After: 0), "503", "reset" (connection closed without an answer), "sleep:S" (no
    answer for S seconds, then 503).
    """

    def __init__(self, upstream_v1: str, faults: list[str] | None = None) -> None:
        self.upstream = upstream_v1.removesuffix("/v1")
        self.faults = list(faults or [])
        self.seen: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.http = httpx.Client(timeout=120, trust_env=False)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

            def do_POST(self) -> None:
                proxy.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self.lock:
            fault = self.faults.pop(0) if self.faults else "forward"
            self.seen.append(fault)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if fault == "429":
                err = {"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit"}}
                self.send(h, 429, json.dumps(err).encode(), {"Retry-After": "0"})
            elif fault == "503":
                self.send(h, 503, b'{"error": {"message": "overloaded", "type": "server_error"}}')
            elif fault == "reset":
                h.close_connection = True
            elif fault.startswith("sleep:"):
                time.sleep(float(fault.split(":")[1]))
                self.send(h, 503, b'{"error": {"message": "too late"}}')
            else:
                headers = {k: h.headers[k] for k in ("Authorization", "Content-Type") if h.headers.get(k)}
                r = self.http.request(h.command, self.upstream + h.path, content=body, headers=headers)
                self.send(h, r.status_code, r.content, {"Content-Type": r.headers.get("content-type", "")})
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


@pytest.fixture
def proxy(tiny_server):
    p = FaultProxy(tiny_server.base_url)
    yield p
    p.close()


def test_chat_and_complete_with_usage_accounted(tiny_server, tmp_path):
    with client_for(tiny_server.base_url, tmp_path) as client:
        assert client.list_models() == ["tiny"]
        assert client.model == "tiny"  # discovered from GET /models
        chat = client.chat(HELLO, seed=3, stop=["\n\n"])
        comp = client.complete("Столица России —", max_tokens=4)
        for r in (chat, comp):
            assert isinstance(r, ChatResult) and isinstance(r.text, str) and not r.cached
            assert r.finish_reason in ("stop", "length")
            assert r.usage["prompt_tokens"] > 0 and r.raw["choices"]
        assert comp.usage["completion_tokens"] <= 4 and chat.usage["completion_tokens"] <= 8
        s = client.stats
        assert s.calls == 2 and s.requests == 4  # two GET /models (listing, discovery) and two POSTs
        assert s.cache_hits == 0 and s.retries == 0 and s.failures == 0
        assert s.prompt_tokens == chat.usage["prompt_tokens"] + comp.usage["prompt_tokens"]
        assert s.completion_tokens == chat.usage["completion_tokens"] + comp.usage["completion_tokens"]
        assert s.wall_s > 0 and "2 calls" in client.summary()
        several = client.chat(HELLO, n=2, temperature=0.9, top_p=0.9, seed=1, max_tokens=4)
        assert len(several.texts) == 2


def test_cache_survives_server_stop_and_moved_base_url(tiny_smollm, tmp_path):
    prompts = [[{"role": "user", "content": f"Вопрос номер {i}"}] for i in range(3)]
    with start_server(tiny_smollm, "--served-model-name", "tiny") as srv:
        with client_for(srv.base_url, tmp_path, model="tiny", max_retries=1) as client:
            first = client.chat(HELLO)
            batch = client.chat_many(prompts, show_progress=False)
            assert client.stats.requests == 4
            again = client.chat(HELLO)
            assert again.cached and not first.cached
            assert again.text == first.text and again.raw == first.raw
            s = client.stats
            assert s.requests == 4 and s.cache_hits == 1 and s.calls == 5
            assert s.cached_tokens == first.usage["total_tokens"]
            srv.stop()
            assert srv.proc.poll() is not None
            assert client.chat(HELLO).text == first.text  # the server is gone: the cache answers
            assert client.stats.requests == 4
            with pytest.raises(LLMUnreachableError):  # bypassing the cache does contact the (dead) server
                client.chat(HELLO, cache=False)
            with pytest.raises(LLMUnreachableError):  # so does a request not seen before
                client.chat(HELLO, max_tokens=3)
    # A new job pointed at another (closed) address resumes from the cache: the base URL is not in the key.
    moved = f"http://127.0.0.1:{closed_port()}/v1"
    with client_for(moved, tmp_path, model="tiny", max_retries=0) as client:
        resumed = client.chat_many(prompts, show_progress=False)
        assert [r.raw for r in resumed] == [r.raw for r in batch]
        assert all(r.cached for r in resumed)
        assert client.stats.requests == 0 and client.stats.cache_hits == 3


def test_chat_many_keeps_order_with_bounded_concurrency(proxy, tmp_path):
    convs = [[{"role": "user", "content": "слово " * (i + 1)}] for i in range(16)]
    with client_for(proxy.base_url, tmp_path, model="tiny", max_concurrency=4) as client:
        results = client.chat_many(convs, max_tokens=2)
        assert len(results) == 16 and all(isinstance(r, ChatResult) for r in results)
        lengths = [r.usage["prompt_tokens"] for r in results]
        assert lengths == sorted(lengths) and len(set(lengths)) == 16  # longer prompt, later place
        for conv, r in zip(convs, results, strict=True):  # each result is the one cached for its conversation
            hit = client.chat(conv, max_tokens=2)
            assert hit.cached and hit.raw == r.raw
        s = client.stats
        assert s.requests == 16 and s.cache_hits == 16 and s.failures == 0
    assert proxy.seen == ["forward"] * 16
    assert 2 <= proxy.max_in_flight <= 4


def test_wrong_or_missing_api_key_names_the_variable(tiny_smollm, tmp_path, clean_env):
    with start_server(tiny_smollm, "--served-model-name", "tiny", "--api-key", "right-key") as srv:
        clean_env.setenv("VIKHR_LLM_API_KEY", "wrong-key")
        with client_for(srv.base_url, tmp_path, model="tiny") as client:
            with pytest.raises(LLMAuthError, match=r"\$VIKHR_LLM_API_KEY") as e:
                client.chat(HELLO)
            assert e.value.status == 401 and client.stats.retries == 0
            assert "wrong-key" not in str(e.value)
        clean_env.delenv("VIKHR_LLM_API_KEY")
        with client_for(srv.base_url, tmp_path, model="tiny") as client:
            with pytest.raises(LLMAuthError, match="No API key was sent"):
                client.chat(HELLO)
        clean_env.setenv("OPENAI_API_KEY", "wrong-too")
        with client_for(srv.base_url, tmp_path, model="tiny", api_key_env="MY_LLM_KEY") as client:
            with pytest.raises(LLMAuthError, match=r"\$OPENAI_API_KEY"):
                client.chat(HELLO)
        clean_env.setenv("MY_LLM_KEY", "right-key")
        with client_for(srv.base_url, tmp_path, model="tiny", api_key_env="MY_LLM_KEY") as client:
            assert isinstance(client.chat(HELLO).text, str)


def test_unknown_model_and_bad_params_fail_at_once_with_the_servers_message(tiny_server, tmp_path):
    with client_for(tiny_server.base_url, tmp_path, model="no-such-model") as client:
        with pytest.raises(LLMError) as e:
            client.chat(HELLO)
        err = e.value
        assert err.status == 404 and not isinstance(err, LLMUnreachableError | LLMAuthError)
        assert err.body["error"]["message"] in str(err)
        assert client.stats.retries == 0 and client.stats.failures == 1
    with client_for(tiny_server.base_url, tmp_path, model="tiny") as client:
        with pytest.raises(LLMError) as e:
            client.chat(HELLO, max_tokens=-1)
        assert e.value.status == 400 and e.value.body["error"]["message"] in str(e.value)
        assert client.stats.retries == 0
        assert client.cache is not None and len(client.cache) == 0  # failures are never cached


def test_unreachable_endpoint_fails_quickly_and_says_how_to_fix_it(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with client_for(url, tmp_path, model="tiny", max_retries=2) as client:
        t0 = time.monotonic()
        with pytest.raises(LLMUnreachableError) as e:
            client.chat(HELLO)
        assert time.monotonic() - t0 < 5
        msg = str(e.value)
        assert url in msg and "vikhr serve" in msg and "VIKHR_LLM_BASE_URL" in msg and "llm.base_url" in msg
        s = client.stats
        assert s.requests == 3 and s.retries == 2 and s.failures == 1
        # A batch stops on the first unreachable error instead of trying every item.
        with pytest.raises(LLMUnreachableError) as e:
            client.chat_many([HELLO] * 50, show_progress=False)
        assert e.value.partial is not None and len(e.value.partial) == 50
        assert client.stats.failures < 1 + 50
    with client_for(url, tmp_path, max_retries=0) as client:  # model discovery needs the server too
        with pytest.raises(LLMUnreachableError):
            client.chat(HELLO)


def test_retries_on_throttling_server_errors_and_dropped_connections(proxy, tiny_server, tmp_path):
    with client_for(tiny_server.base_url, tmp_path, model="tiny", cache=False) as direct:
        expected = direct.chat(HELLO)  # greedy: the real server's answer
    proxy.faults = ["429", "503", "reset"]
    with client_for(proxy.base_url, tmp_path, model="tiny", cache=False) as client:
        got = client.chat(HELLO)
        assert got.text == expected.text and got.usage == expected.usage
        assert proxy.seen == ["429", "503", "reset", "forward"]
        s = client.stats
        assert s.retries == 3 and s.requests == 4 and s.failures == 0 and s.calls == 1


def test_retry_after_a_timeout(proxy, tmp_path):
    proxy.faults = ["sleep:3"]
    with client_for(proxy.base_url, tmp_path, model="tiny", timeout_s=1.0) as client:
        t0 = time.monotonic()
        got = client.chat(HELLO)
        assert 1.0 <= time.monotonic() - t0 < 30
        assert isinstance(got, ChatResult) and got.usage["prompt_tokens"] > 0
        assert client.stats.retries == 1 and proxy.seen == ["sleep:3", "forward"]


def test_giving_up_after_retries_caches_nothing_and_batches_keep_the_rest(proxy, tmp_path):
    proxy.faults = ["503"] * 3
    with client_for(proxy.base_url, tmp_path, model="tiny", max_retries=2) as client:
        with pytest.raises(LLMError, match="gave up after 3 tries") as e:
            client.chat(HELLO)
        assert e.value.status == 503 and e.value.type == "server_error"
        assert client.stats.retries == 2 and client.stats.failures == 1
        assert not client.chat(HELLO).cached  # the failure was not cached; now the server answers
    # In a batch, one request that fails for good leaves its error in place and the others finish.
    convs = [[{"role": "user", "content": f"текст {i}"}] for i in range(6)]
    proxy.faults = ["503"] * 2
    with client_for(proxy.base_url, tmp_path, model="tiny", max_retries=1, max_concurrency=1) as client:
        results = client.chat_many(convs, show_progress=False)
        assert isinstance(results[0], LLMError) and results[0].status == 503
        assert all(isinstance(r, ChatResult) for r in results[1:])
        assert client.stats.failures == 1 and client.stats.calls == 6
        again = client.chat_many(convs, show_progress=False)  # a rerun sends only what is missing
        assert all(isinstance(r, ChatResult) for r in again)
        assert [r.cached for r in again] == [False] + [True] * 5
        proxy.faults = ["503"] * 2
        with pytest.raises(LLMError) as e:
            client.chat_many([HELLO, *convs], raise_on_error=True, show_progress=False, cache=False)
        assert e.value.status == 503 and e.value.partial is not None and len(e.value.partial) == 7
        assert e.value.partial[0] is e.value


def test_the_real_servers_429_when_its_queue_is_full_is_retried(tiny_smollm, tmp_path):
    args = ("--served-model-name", "tiny", "--max-batch", "1", "--max-pending", "1")
    convs = [[{"role": "user", "content": f"запрос {i}"}] for i in range(12)]
    with start_server(tiny_smollm, *args) as srv:
        with client_for(srv.base_url, tmp_path, model="tiny", max_concurrency=12, max_retries=50) as client:
            results = client.chat_many(convs, max_tokens=16, show_progress=False)
            assert all(isinstance(r, ChatResult) for r in results)
            s = client.stats
            assert s.retries > 0 and s.failures == 0 and s.requests == 12 + s.retries
