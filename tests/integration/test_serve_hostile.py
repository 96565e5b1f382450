"""`vikhr serve` against hostile or broken clients, spoken to with raw sockets on 127.0.0.1.

Framing errors, a key checked before the body, slow clients cut off by the read deadline, and 500s that tell the
client nothing. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from vikhr.serve.engine import Failed
from vikhr.serve.launch import ServerProcess, start_server
from vikhr.serve.protocol import Limits
from vikhr.serve.server import INTERNAL_ERROR, App, bind, make_server

KEY = "sk-hostile-test-key"
READ_TIMEOUT = 3.0  # --timeout-read of the server below
LIMIT = int(0.01 * (1 << 20))  # --max-body-mb 0.01


@pytest.fixture(scope="module")
def srv(tiny_smollm) -> ServerProcess:
    """The real server, its key from the environment, a small body limit and a short read deadline."""
    with start_server(tiny_smollm, "--served-model-name", "tiny", "--max-body-mb", "0.01",
                      "--timeout-read", str(READ_TIMEOUT), "--timeout-keep-alive", "2",
                      env={"VIKHR_SERVE_API_KEY": KEY}) as s:  # fmt: skip
        yield s


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_response(sock: socket.socket, within: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body): read until its Content-Length is met or the server closes."""
    deadline = time.monotonic() + within
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            if "content-length" in headers and len(body) >= int(headers["content-length"]):
                return int(lines[0].split()[1]), headers, body
        left = deadline - time.monotonic()
        assert left > 0, f"no complete answer within {within} s: {data[:300]!r}"
        sock.settimeout(left)
        try:
            more = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            more = b""
        if not more:
            assert sep, f"the server closed without an answer: {data[:300]!r}"
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            return int(lines[0].split()[1]), headers, body
        data += more


def closed_by_server(sock: socket.socket, within: float = 3.0) -> bool:
    """True when the server closes the connection (EOF or reset) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def post_head(path: str, extra: str, key: str | None = KEY) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}{extra}\r\n".encode()


# ---- 1. Content-Length and chunked bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths, status",
    [
        (["-1"], 400),  # the old server read until the client closed
        (["abc"], 400),
        (["2", "9000"], 400),  # duplicated and conflicting (the old server used the first one)
        (["2, 9000"], 400),
        ([str(LIMIT + 1)], 413),
        (["9" * 19], 413),
        (["9" * 30], 400),  # past h11's 20 digits: malformed
    ],
)
def test_bad_or_oversized_content_length_is_refused_at_once(srv, lengths, status):
    with connect(srv.port) as s:
        t0 = time.monotonic()
        s.sendall(post_head("/v1/completions", "".join(f"Content-Length: {n}\r\n" for n in lengths)) + b"{}")
        got, headers, _ = read_response(s)  # the socket stays open: the answer must not wait for its end
        elapsed = time.monotonic() - t0
        assert got == status and elapsed < READ_TIMEOUT, (got, elapsed)
        assert headers.get("connection") == "close" and closed_by_server(s)


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_chunked_bodies_are_counted_against_the_limit(srv):
    ok = json.dumps({"model": "tiny", "prompt": "Once", "max_tokens": 2}).encode()
    with connect(srv.port) as s:  # a chunked body under the limit is served (the old server answered 411)
        s.sendall(post_head("/v1/completions", "Transfer-Encoding: chunked\r\n") + chunked(ok, 7))
        status, _, body = read_response(s)
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] <= 2
    big = json.dumps({"model": "tiny", "prompt": "x" * (LIMIT + 2000)}).encode()
    with connect(srv.port) as s:
        s.sendall(post_head("/v1/completions", "Transfer-Encoding: chunked\r\n") + chunked(big, 4096))
        status, headers, body = read_response(s)
        assert status == 413 and "bytes" in json.loads(body)["error"]["message"]
        assert headers.get("connection") == "close"


# ---- 2. the key before the body ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_the_key_is_checked_before_the_body_is_read(srv, key):
    for length in (5000, 10**9):  # under and over the body limit: no key, no 413 either
        with connect(srv.port) as s:
            t0 = time.monotonic()
            s.sendall(
                post_head("/v1/completions", f"Content-Length: {length}\r\n", key=key)
            )  # no body follows
            status, headers, body = read_response(s)
            assert status == 401 and time.monotonic() - t0 < READ_TIMEOUT  # not a 408 after waiting for it
            assert json.loads(body)["error"]["code"] == "invalid_api_key" and KEY not in body.decode()
            assert headers.get("connection") == "close" and closed_by_server(s)


# ---- 3. slow clients -----------------------------------------------------------------------------------------------


def test_slow_clients_are_cut_off_and_do_not_block_others(srv):
    header = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
    trickle_head = [connect(srv.port) for _ in range(16)]  # headers one byte at a time
    trickle_body = [connect(srv.port) for _ in range(4)]  # whole headers, then the body one byte at a time
    for s in trickle_body:
        s.sendall(post_head("/v1/completions", "Content-Length: 100\r\n"))
    t0 = time.monotonic()
    ended: dict[int, float] = {}
    answers: dict[int, bytes] = {}
    served_in = None
    sent = 0
    deadline = t0 + READ_TIMEOUT + 6
    try:
        while time.monotonic() < deadline and len(ended) < 20:
            for i, s in enumerate(trickle_head + trickle_body):
                if i in ended:
                    continue
                try:
                    got = s.recv(65536, socket.MSG_DONTWAIT)
                    answers[i] = answers.get(i, b"") + got
                    if got == b"":
                        ended[i] = time.monotonic() - t0
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    ended[i] = time.monotonic() - t0
                    continue
                try:
                    s.send(header[sent : sent + 1] if i < 16 else b" ")
                except OSError:
                    ended[i] = time.monotonic() - t0
            sent += 1
            if served_in is None and time.monotonic() - t0 > 1:  # 20 slow clients connected: a normal request
                t1 = time.monotonic()
                r = httpx.post(srv.base_url + "/completions", headers={"Authorization": f"Bearer {KEY}"},
                               json={"model": "tiny", "prompt": "Once", "max_tokens": 2}, timeout=10)  # fmt: skip
                served_in = time.monotonic() - t1
                assert r.status_code == 200
            time.sleep(0.3)
    finally:
        for s in trickle_head + trickle_body:
            s.close()
    assert served_in is not None and served_in < 3
    assert sorted(ended) == list(range(20)), (
        f"still open after {deadline - t0:.0f} s: {set(range(20)) - set(ended)}"
    )
    assert all(READ_TIMEOUT - 0.5 < t < READ_TIMEOUT + 4 for t in ended.values()), ended
    for i in range(16, 20):  # a body that does not arrive in time: 408 in OpenAI's format
        assert answers[i].startswith(b"HTTP/1.1 408") and b"did not arrive" in answers[i]


def test_a_client_that_leaves_while_waiting_frees_its_row(srv):
    body = json.dumps({"model": "tiny", "prompt": "Once", "max_tokens": 1900, "ignore_eos": True}).encode()
    with connect(srv.port) as s:
        s.sendall(post_head("/v1/completions", f"Content-Length: {len(body)}\r\n") + body)
        health = srv.base_url.removesuffix("/v1") + "/health"
        auth = {"Authorization": f"Bearer {KEY}"}
        deadline = time.monotonic() + 10
        while httpx.get(health, headers=auth).json()["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(health, headers=auth).json()["running"] == 1
    deadline = time.monotonic() + 3  # the old server noticed only when the answer was done
    while httpx.get(health, headers=auth).json()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(health, headers=auth).json()["running"] == 0
    assert any("went away" in line for line in srv.lines)


# ---- 4. errors and secrets -----------------------------------------------------------------------------------------


def test_api_key_from_the_environment_stays_out_of_the_process_list(srv):
    assert KEY.encode() not in Path(f"/proc/{srv.proc.pid}/cmdline").read_bytes()
    assert httpx.get(srv.base_url + "/models").status_code == 401
    r = httpx.get(srv.base_url + "/models", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"
    out = subprocess.run([sys.executable, "-m", "vikhr", "serve", "--help"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0
    for needle in ("$VIKHR_SERVE_API_KEY", "--timeout-read", "--timeout-keep-alive", "compute_dtype"):
        assert needle in out.stdout


class _Tokenizer:
    chat_template = None
    bos_token_id = eos_token_id = 0

    def __len__(self) -> int:
        return 100


class _Request:
    def cancel(self) -> None:
        pass


class _BrokenEngine:
    """An engine stub whose failures carry text a client must never see."""

    tokenizer = _Tokenizer()
    context_length = 64

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def submit(self, ids, params, n=1, *, events=None, first_index=0) -> _Request:
        if self.mode == "raise":
            raise RuntimeError("secret-detail /home/someone/.cache/token=sk-live")
        events.put(Failed("generation failed: RuntimeError: secret-detail CUDA at 0x7f00", 500))
        return _Request()

    def load_info(self) -> dict:
        return {"running": 0, "waiting": 0}

    def start(self) -> _BrokenEngine:
        return self

    def stop(self, drain_s: float = 0.0) -> None:
        pass


@pytest.mark.parametrize("mode, stream", [("raise", False), ("fail", False), ("fail", True)])
def test_a_500_tells_the_client_nothing_and_the_log_everything(mode, stream):
    app = App(_BrokenEngine(mode), "broken", limits=Limits())  # type: ignore[arg-type]
    sock = bind("127.0.0.1", 0)
    server = make_server(app, sock, drain_s=0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    handler = logging.Handler()
    handler.emit = records.put  # type: ignore[method-assign]
    logger = logging.getLogger("vikhr.serve.server")
    logger.addHandler(handler)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        body = json.dumps(
            {"model": "broken", "prompt": [1, 2, 3], "max_tokens": 2, "stream": stream}
        ).encode()
        with connect(sock.getsockname()[1]) as s:
            s.sendall(post_head("/v1/completions", f"Content-Length: {len(body)}\r\n") + body)
            if stream:
                s.settimeout(5)
                raw = b""
                while b"[DONE]" not in raw:
                    more = s.recv(65536)
                    assert more, raw
                    raw += more
                assert raw.startswith(b"HTTP/1.1 200") and INTERNAL_ERROR.encode() in raw
            else:
                status, _, raw = read_response(s)
                assert status == 500 and json.loads(raw)["error"]["message"] == INTERNAL_ERROR
            assert b"secret" not in raw
        if mode == "raise":  # the traceback went to the log
            logged = []
            while not records.empty():
                logged.append(records.get())
            assert any(r.exc_info and "secret-detail" in str(r.exc_info[1]) for r in logged)
    finally:
        logger.removeHandler(handler)
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not thread.is_alive()
