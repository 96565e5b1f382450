"""`vikhr serve`: an OpenAI-compatible HTTP server in front of the batching engine.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream: true` as server-sent events),
GET /v1/models, GET /v1/models/{id}, GET /health. One thread per connection reads and checks the request,
hands it to the engine and writes the answer; the engine batches all running requests on the model. The standard
library's HTTP server is enough for this role (loopback or a trusted network); for production serving, the exported
model folder loads in vLLM unchanged.
"""

from __future__ import annotations

import hmac
import json
import queue
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vikhr.log import get_logger
from vikhr.serve import protocol
from vikhr.serve.engine import Delta, Engine, EngineBusy, EngineClosed, Failed, Finished, stream_events
from vikhr.serve.protocol import APIError, Limits, Parsed

log = get_logger(__name__)


@dataclass
class App:
    """What every request handler needs: the engine, the served name, the key, the limits."""

    engine: Engine
    model_name: str
    api_key: str | None = None
    limits: Limits = Limits()
    created: int = 0

    def render_chat(self, messages: list[dict]) -> list[int]:
        if not self.engine.tokenizer.chat_template:
            raise APIError(400, f"model {self.model_name} has no chat template; use /v1/completions")
        try:
            return self.engine.chat_ids(messages)
        except Exception as e:  # a template may refuse e.g. two system messages
            raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from e

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        tok = self.engine.tokenizer
        if isinstance(prompt, list):
            bad = [t for t in prompt if not 0 <= t < len(tok)]
            if bad:
                raise APIError(
                    400, f"token id {bad[0]} is outside the vocabulary (0..{len(tok) - 1})", param="prompt"
                )
            return prompt
        ids = tok(prompt)["input_ids"]
        if not ids:
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            if start is None:
                raise APIError(400, "the prompt is empty", param="prompt")
            ids = [start]
        return ids


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: many clients may connect at once

    def __init__(self, address: tuple[str, int], app: App) -> None:
        super().__init__(address, Handler)
        self.app = app


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vikhr"
    server: Server

    # ---- plumbing ----------------------------------------------------------------------------------------------

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: APIError) -> None:
        headers = {"Retry-After": "1"} if e.status in (429, 503) else {}
        if e.status >= 500 or e.status == 429:
            log.warning("%s %s -> %d %s", self.command, self.path, e.status, e.message)
        self._send_json(e.status, e.body(), headers)

    def _body(self) -> object:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise APIError(411, "send the request body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError as e:
            self.close_connection = True
            raise APIError(400, "Content-Length is not a number") from e
        if length > self.server.app.limits.max_body_bytes:
            self.close_connection = (
                True  # the body stays unread: this connection cannot carry another request
            )
            raise APIError(
                413, f"the request body is {length} bytes; this server takes at most "
                f"{self.server.app.limits.max_body_bytes}",
            )  # fmt: skip
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from e

    def _authorised(self) -> None:
        key = self.server.app.api_key
        if not key:
            return
        given = self.headers.get("Authorization", "")
        token = given[7:].strip() if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise APIError(
                401,
                "Incorrect API key provided."
                if token
                else "Missing API key: send 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )

    def _client_gone(self) -> bool:
        """True when the client closed its end (checked while a non-streamed answer is being generated)."""
        try:
            ready, _, _ = select.select([self.connection], [], [], 0)
            return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # ---- routes ------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        try:
            self._authorised()
            app = self.server.app
            path = self.path.split("?")[0].rstrip("/")
            if path == "/health":
                self._send_json(200, {"status": "ok", **app.engine.load_info()})
            elif path == "/v1/models":
                self._send_json(200, {"object": "list", "data": [self._model_card()]})
            elif path.startswith("/v1/models/"):
                name = path[len("/v1/models/") :]
                if name != app.model_name:
                    raise APIError(
                        404, f"The model `{name}` does not exist.", param="model", code="model_not_found"
                    )
                self._send_json(200, self._model_card())
            else:
                raise APIError(
                    404, f"no route GET {path}; see /v1/models, /v1/chat/completions, /v1/completions"
                )
        except APIError as e:
            self._error(e)

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        try:
            body = self._body()
            self._authorised()
            limits = self.server.app.limits
            if path == "/v1/chat/completions":
                self._generate("chat", protocol.parse_chat(body, limits))
            elif path == "/v1/completions":
                self._generate("completion", protocol.parse_completion(body, limits))
            else:
                raise APIError(404, f"no route POST {path}; see /v1/chat/completions and /v1/completions")
        except APIError as e:
            self._error(e)
        except Exception as e:
            log.exception("%s %s failed", self.command, path)
            self._error(APIError(500, f"internal error: {type(e).__name__}: {e}"))

    def _model_card(self) -> dict:
        app = self.server.app
        return {"id": app.model_name, "object": "model", "created": app.created, "owned_by": "vikhr",
                "max_model_len": app.engine.context_length}  # fmt: skip

    # ---- generation --------------------------------------------------------------------------------------------

    def _generate(self, kind: str, parsed: Parsed) -> None:
        app = self.server.app
        if parsed.model != app.model_name:
            raise APIError(
                404, f"The model `{parsed.model}` does not exist. This server serves `{app.model_name}`.",
                param="model", code="model_not_found",
            )  # fmt: skip
        if kind == "chat":
            prompts = [app.render_chat(parsed.messages)]
            param = "messages"
        else:
            prompts = [app.encode_prompt(p) for p in parsed.prompts]
            param = "prompt"
        events: queue.Queue = queue.Queue()
        requests = []
        try:
            for i, ids in enumerate(prompts):
                params = protocol.fit_to_context(parsed, len(ids), app.engine.context_length, param)
                requests.append(
                    app.engine.submit(ids, params, parsed.n, events=events, first_index=i * parsed.n)
                )
        except EngineBusy as e:
            _cancel(requests)
            raise APIError(429, f"the server is busy: {e}", code="rate_limit_exceeded") from e
        except EngineClosed as e:
            _cancel(requests)
            raise APIError(503, str(e)) from e
        prompt_tokens = sum(len(p) for p in prompts)
        choices = len(prompts) * parsed.n
        rid = protocol.new_id(kind)
        if parsed.stream:
            self._stream(kind, rid, parsed, events, choices, prompt_tokens, requests)
            return
        done: dict[int, Finished] = {}
        for ev in stream_events(events, choices, gone=self._client_gone):
            if isinstance(ev, Failed):
                raise APIError(ev.status, ev.message)
            if isinstance(ev, Finished):
                done[ev.index] = ev
        if len(done) < choices:  # the client went away
            _cancel(requests)
            log.info("client went away; request %s cancelled", rid)
            self.close_connection = True
            return
        use = protocol.usage(prompt_tokens, sum(f.tokens for f in done.values()))
        out = [(i, done[i].text, done[i].reason) for i in sorted(done)]
        self._send_json(200, protocol.completion_response(kind, rid, app.model_name, out, use))

    def _stream(self, kind, rid, parsed: Parsed, events, choices: int, prompt_tokens: int, requests) -> None:
        """Server-sent events over chunked transfer encoding; a vanished client cancels its request."""
        name = self.server.app.model_name
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        tokens = 0
        try:
            if kind == "chat":
                for i in range(choices):
                    self._event(protocol.chunk(kind, rid, name, i, None, None, role=True))
            for ev in stream_events(events, choices):
                if isinstance(ev, Delta):
                    self._event(protocol.chunk(kind, rid, name, ev.index, ev.text, None))
                elif isinstance(ev, Finished):
                    tokens += ev.tokens
                    self._event(protocol.chunk(kind, rid, name, ev.index, None, ev.reason))
                elif isinstance(ev, Failed):
                    self._event(APIError(ev.status, ev.message).body())
                    break
            else:
                if parsed.include_usage:
                    self._event(protocol.usage_chunk(kind, rid, name, protocol.usage(prompt_tokens, tokens)))
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            _cancel(requests)
            self.close_connection = True
            log.info("client disconnected mid-stream; request %s cancelled", rid)

    def _event(self, obj: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _cancel(requests) -> None:
    for r in requests:
        r.cancel()


def serve(
    app: App, host: str = "127.0.0.1", port: int = 8000, *, drain_s: float = 10.0, on_ready=None
) -> None:
    """Run until SIGINT or SIGTERM, then stop taking requests, let running ones finish (up to `drain_s`), exit."""
    server = Server((host, port), app)
    app.created = int(time.time())
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name="vikhr-http", daemon=True)
    app.engine.start()
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    if on_ready is not None:
        on_ready(f"http://{bound_host}:{bound_port}/v1")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        log.info("shutting down: no new requests, finishing running ones (up to %.0f s)", drain_s)
        app.engine.stop(drain_s)
        server.shutdown()
        server.server_close()
        thread.join(5)
        for s, h in old.items():
            signal.signal(s, h)
        log.info("stopped")
