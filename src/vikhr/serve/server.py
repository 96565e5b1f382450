"""`vikhr serve`: an OpenAI-compatible HTTP server in front of the batching engine.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream: true` as server-sent events),
GET /v1/models, GET /v1/models/{id}, GET /health. The HTTP layer is Starlette (which FastAPI is built on) on
uvicorn with h11, as under vLLM's OpenAI server: one asyncio loop holds every connection, so slow or idle clients
cost a socket, not a thread.
The engine's thread batches all running requests on the model; its events reach the loop through
`call_soon_threadsafe`.

Hostile clients: the API key and the declared body size are checked from the headers alone, before a byte of
the body is read (401 / 413, then the connection is closed); uvicorn's h11 parser answers a malformed, negative or
conflicting Content-Length with 400; a chunked body is counted as it arrives (413 past the limit); a request's
headers, then its body, must each arrive within `read_timeout_s` (uvicorn itself has no header deadline, so the
protocol class below adds one) and idle keep-alive connections close after `timeout_keep_alive`. A 500 tells the
client nothing about the failure; the log has the traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from vikhr.log import get_logger
from vikhr.serve import engine, protocol
from vikhr.serve.engine import Delta, Engine, EngineBusy, EngineClosed, Failed, Finished
from vikhr.serve.protocol import APIError, Limits, Parsed

log = get_logger(__name__)

INTERNAL_ERROR = "internal server error; the server's log has the details"


@dataclass
class App:
    """What every request handler needs: the engine, the served name, the key, the limits."""

    engine: Engine
    model_name: str
    api_key: str | None = None
    limits: Limits = Limits()
    created: int = 0
    read_timeout_s: float = 30.0  # a request's headers, then its body, must arrive within this

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

    def check_key(self, headers: Headers) -> None:
        """401 unless the request carries `Authorization: Bearer KEY` (when a key is set)."""
        if not self.api_key:
            return
        given = headers.get("authorization", "")
        token = given[7:].strip() if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise APIError(
                401,
                "Incorrect API key provided."
                if token
                else "Missing API key: send 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )


# ---- errors --------------------------------------------------------------------------------------------------------


def _body_pending(headers: Headers) -> bool:
    """True when the request declares a body (which a response sent before reading it leaves on the socket)."""
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def error_response(e: APIError, *, close: bool = False, where: str = "") -> JSONResponse:
    """The OpenAI-format answer for `e`; `close` ends the connection (a body left unread, a framing error)."""
    headers = {"Retry-After": "1"} if e.status in (429, 503) else {}
    if close:
        headers["Connection"] = "close"
    if e.status >= 500 or e.status == 429:
        log.warning("%s -> %d %s", where, e.status, e.message)
    return JSONResponse(e.body(), e.status, headers)


def _failure(ev: Failed) -> APIError:
    """An engine failure as the client may see it: a 500's text (an exception's) stays in the log."""
    return APIError(ev.status, INTERNAL_ERROR if ev.status == 500 else ev.message)


class Gate:
    """ASGI middleware run on the headers alone: path normalisation, the API key, the declared body size."""

    def __init__(self, inner: ASGIApp, app: App) -> None:
        self.inner, self.app = inner, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        scope["path"] = scope["path"].rstrip("/") or "/"
        headers = Headers(scope=scope)
        try:
            self.app.check_key(headers)
            try:
                length = int(headers.get("content-length", "0"))  # h11 lets through digits only, copies equal
            except ValueError as e:
                raise APIError(400, "Content-Length is not a number") from e
            if length > self.app.limits.max_body_bytes:
                raise APIError(
                    413, f"the request body is {length} bytes; this server takes at most "
                    f"{self.app.limits.max_body_bytes}",
                )  # fmt: skip
        except APIError as e:
            where = f"{scope['method']} {scope['path']}"
            await error_response(e, close=_body_pending(headers), where=where)(scope, receive, send)
            return
        await self.inner(scope, receive, send)


# ---- the h11 protocol with a header deadline -----------------------------------------------------------------------


def protocol_class(read_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, plus: a connection must deliver a request's headers within `read_timeout_s`.

    uvicorn only times out idle keep-alive connections, and any byte received cancels that timer, so a client
    sending one byte every few seconds would hold its connection forever. The deadline runs from the connection's
    start (or the end of the previous response) until a request is being served; the body's own deadline is the
    handler's (`read_body`).
    """

    class Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request is being served

        def on_response_complete(self) -> None:
            self._arm()  # before the next pipelined request, which disarms it
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(read_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            log.info("closing %s: no complete request within %g s", self.client, read_timeout_s)
            if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
                # headers were begun: say why the connection ends (written past h11, which still waits for them)
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            self.transport.close()

    return Protocol


# ---- engine events on the loop -------------------------------------------------------------------------------------


class _Gone:
    """Put on an event queue when the client disconnects."""


class LoopEvents:
    """An engine event sink (`put` from the engine's thread) read as an asyncio.Queue on the server's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, ev: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the loop is closed: nobody waits for this request any more
            pass

    async def watch(self, receive: Receive) -> None:
        """Put `_Gone` on the queue when the client disconnects (run as a task once the body is read)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.queue.put_nowait(_Gone())

    async def until_done(self, choices: int) -> AsyncIterator[Delta | Finished | Failed]:
        """Events until `choices` choices finished or one failed; raises ClientDisconnect when the client left."""
        left = choices
        while left:
            ev = await self.queue.get()
            if isinstance(ev, _Gone):
                raise ClientDisconnect()
            yield ev
            if isinstance(ev, Failed):
                return
            if isinstance(ev, Finished):
                left -= 1


def _cancel(requests: list[engine.Request]) -> None:
    for r in requests:
        r.cancel()


# ---- handlers ------------------------------------------------------------------------------------------------------


async def read_body(request: Request, app: App) -> object:
    """The JSON body, read within the deadline and the size limit (a chunked body is counted as it arrives)."""
    limit = app.limits.max_body_bytes
    parts, size = [], 0
    try:
        async with asyncio.timeout(app.read_timeout_s):
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise APIError(413, f"the request body is over {limit} bytes, the most this server takes")
                parts.append(part)
    except TimeoutError as e:
        raise APIError(408, f"the request body did not arrive within {app.read_timeout_s:g} s") from e
    request.state.body_read = True
    try:
        return json.loads(b"".join(parts))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from e


def _handler(
    fn: Callable[[Request, App], Awaitable[Answer]], app: App
) -> Callable[[Request], Awaitable[Answer]]:
    """Wrap a route: APIError -> its OpenAI-format answer; anything else -> a logged traceback and a bare 500."""

    async def run(request: Request) -> Answer:
        where = f"{request.method} {request.url.path}"
        try:
            return await fn(request, app)
        except ClientDisconnect:
            log.info("%s: the client went away while sending its request", where)
            return Response(status_code=400)  # goes nowhere: uvicorn drops writes to a closed connection
        except APIError as e:
            close = _body_pending(request.headers) and not getattr(request.state, "body_read", False)
            return error_response(e, close=close, where=where)
        except Exception:
            log.exception("%s failed", where)
            return error_response(APIError(500, INTERNAL_ERROR), close=True, where=where)

    return run


def _model_card(app: App) -> dict:
    return {"id": app.model_name, "object": "model", "created": app.created, "owned_by": "vikhr",
            "max_model_len": app.engine.context_length}  # fmt: skip


async def health(request: Request, app: App) -> Response:
    return JSONResponse({"status": "ok", **app.engine.load_info()})


async def models(request: Request, app: App) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(app)]})


async def model(request: Request, app: App) -> Response:
    name = request.path_params["name"]
    if name != app.model_name:
        raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
    return JSONResponse(_model_card(app))


async def chat_completions(request: Request, app: App) -> Answer:
    return await _generate(request, app, "chat")


async def completions(request: Request, app: App) -> Answer:
    return await _generate(request, app, "completion")


def _prepare(app: App, kind: str, body: object) -> tuple[Parsed, list[list[int]], str]:
    """Check the request and tokenize its prompts (in a worker thread: a long prompt must not stall the loop)."""
    if kind == "chat":
        parsed = protocol.parse_chat(body, app.limits)
    else:
        parsed = protocol.parse_completion(body, app.limits)
    if parsed.model != app.model_name:
        raise APIError(
            404, f"The model `{parsed.model}` does not exist. This server serves `{app.model_name}`.",
            param="model", code="model_not_found",
        )  # fmt: skip
    if kind == "chat":
        return parsed, [app.render_chat(parsed.messages)], "messages"
    return parsed, [app.encode_prompt(p) for p in parsed.prompts], "prompt"


async def _generate(request: Request, app: App, kind: str) -> Answer:
    body = await read_body(request, app)
    parsed, prompts, param = await run_in_threadpool(_prepare, app, kind, body)
    events = LoopEvents()
    requests: list[engine.Request] = []
    try:
        for i, ids in enumerate(prompts):
            params = protocol.fit_to_context(parsed, len(ids), app.engine.context_length, param)
            requests.append(app.engine.submit(ids, params, parsed.n, events=events, first_index=i * parsed.n))
    except EngineBusy as e:
        _cancel(requests)
        raise APIError(429, f"the server is busy: {e}", code="rate_limit_exceeded") from e
    except EngineClosed as e:
        _cancel(requests)
        raise APIError(503, str(e)) from e
    except BaseException:
        _cancel(requests)
        raise
    rid = protocol.new_id(kind)
    job = _Job(
        app, kind, rid, parsed, events, len(prompts) * parsed.n, sum(len(p) for p in prompts), requests
    )
    if parsed.stream:
        return EventStream(job)
    return await job.whole(request.receive)


@dataclass
class _Job:
    """A submitted request: its engine requests, the events they send, what the answer needs."""

    app: App
    kind: str
    rid: str
    parsed: Parsed
    events: LoopEvents
    choices: int
    prompt_tokens: int
    requests: list[engine.Request]

    async def whole(self, receive: Receive) -> Response:
        """Wait for every choice and answer with one JSON body; a client that leaves cancels the request."""
        watch = asyncio.create_task(self.events.watch(receive))
        done: dict[int, Finished] = {}
        try:
            async for ev in self.events.until_done(self.choices):
                if isinstance(ev, Failed):
                    raise _failure(ev)
                if isinstance(ev, Finished):
                    done[ev.index] = ev
        except ClientDisconnect:
            _cancel(self.requests)
            log.info("client went away; request %s cancelled", self.rid)
            return Response(status_code=400)  # never reaches anyone
        except BaseException:
            _cancel(self.requests)
            raise
        finally:
            watch.cancel()
        use = protocol.usage(self.prompt_tokens, sum(f.tokens for f in done.values()))
        out = [(i, done[i].text, done[i].reason) for i in sorted(done)]
        return JSONResponse(protocol.completion_response(self.kind, self.rid, self.app.model_name, out, use))


class EventStream:
    """An ASGI response of server-sent events (chunked, no Content-Length) for a submitted request.

    A client that disconnects (noticed by a task waiting on `receive`) cancels the request, which frees its
    engine rows at the next step.
    """

    HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

    def __init__(self, job: _Job) -> None:
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job = self.job
        name, kind, rid = job.app.model_name, job.kind, job.rid

        async def event(obj: dict) -> None:
            data = b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await send({"type": "http.response.start", "status": 200, "headers": self.HEADERS})
        watch = asyncio.create_task(job.events.watch(receive))
        finished = False
        tokens = 0
        try:
            if kind == "chat":
                for i in range(job.choices):
                    await event(protocol.chunk(kind, rid, name, i, None, None, role=True))
            failed = False
            async for ev in job.events.until_done(job.choices):
                if isinstance(ev, Delta):
                    await event(protocol.chunk(kind, rid, name, ev.index, ev.text, None))
                elif isinstance(ev, Finished):
                    tokens += ev.tokens
                    await event(protocol.chunk(kind, rid, name, ev.index, None, ev.reason))
                elif isinstance(ev, Failed):
                    await event(_failure(ev).body())
                    failed = True
            if job.parsed.include_usage and not failed:
                await event(protocol.usage_chunk(kind, rid, name, protocol.usage(job.prompt_tokens, tokens)))
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            finished = True
        except ClientDisconnect:
            log.info("client disconnected mid-stream; request %s cancelled", rid)
        except Exception:
            log.exception("stream %s failed", rid)
            await event(APIError(500, INTERNAL_ERROR).body())
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        finally:
            watch.cancel()
            if not finished:
                _cancel(job.requests)


Answer = Response | EventStream  # what a route returns: an ASGI response


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 / 405 (no such route, wrong method) in OpenAI's format."""
    assert isinstance(exc, HTTPException)
    path, method = request.url.path, request.method
    if exc.status_code == 404:
        msg = f"no route {method} {path}; see /v1/models, /v1/chat/completions, /v1/completions, /health"
    elif exc.status_code == 405:
        msg = f"{path} does not take {method}"
    else:
        msg = exc.detail
    return error_response(APIError(exc.status_code, msg), close=_body_pending(request.headers))


def asgi_app(app: App) -> ASGIApp:
    """The ASGI application: Starlette's routes behind the header checks."""
    routes = [
        Route("/health", _handler(health, app), methods=["GET"]),
        Route("/v1/models", _handler(models, app), methods=["GET"]),
        Route("/v1/models/{name:path}", _handler(model, app), methods=["GET"]),
        Route("/v1/chat/completions", _handler(chat_completions, app), methods=["POST"]),
        Route("/v1/completions", _handler(completions, app), methods=["POST"]),
    ]
    inner = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    inner.router.redirect_slashes = False
    return Gate(inner, app)


# ---- the process -----------------------------------------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn's server, plus: a ready callback once listening, and the engine's drain on SIGINT / SIGTERM.

    On the first signal uvicorn stops listening and closes idle connections while a thread drains the engine
    (`Engine.stop`: no new requests, running ones get `drain_s`, the rest fail); uvicorn waits for the running
    responses. A second Ctrl-C forces the exit. The signal is not re-raised afterwards: a drained stop exits 0.
    """

    def __init__(
        self, config: uvicorn.Config, app: App, drain_s: float, on_ready: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self.app, self.drain_s, self.on_ready = app, drain_s, on_ready
        self.drainer: threading.Thread | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if (
            self.force_exit
        ):  # a second Ctrl-C: fail what still runs now, so its handlers answer before the exit
            await asyncio.to_thread(self.app.engine.stop, 0)
            deadline = time.monotonic() + 2
            while self.server_state.tasks and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
        self.start_drain()

    def start_drain(self) -> None:
        if self.drainer is None:
            self.drainer = threading.Thread(target=self._drain, name="vikhr-drain", daemon=True)
            self.drainer.start()

    def _drain(self) -> None:
        log.info("shutting down: no new requests, finishing running ones (up to %.0f s)", self.drain_s)
        self.app.engine.stop(self.drain_s)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: the OS picks one)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[4])
    sock.listen(128)  # many clients may connect at once
    return sock


def make_server(
    app: App,
    sock: socket.socket,
    *,
    drain_s: float = 10.0,
    timeout_keep_alive: float = 5.0,
    on_ready: Callable[[], None] | None = None,
) -> Server:
    """A uvicorn server for `app` on a bound socket (`Server.run(sockets=[sock])` runs it)."""
    config = uvicorn.Config(
        asgi_app(app), http=protocol_class(app.read_timeout_s), lifespan="off", log_config=None,
        access_log=False, proxy_headers=False, server_header=False, headers=[("server", "vikhr")],
        timeout_keep_alive=timeout_keep_alive,  # type: ignore[arg-type]
        timeout_graceful_shutdown=drain_s + 5,  # type: ignore[arg-type] # a stream whose client stopped reading
        backlog=128,
    )  # fmt: skip
    _uvicorn_logs_to_ours()
    return Server(config, app, drain_s, on_ready)


def _uvicorn_logs_to_ours() -> None:
    """uvicorn's warnings and errors (an invalid request, a connection problem) through vikhr's log handler."""
    ours, theirs = logging.getLogger("vikhr"), logging.getLogger("uvicorn")
    if ours.handlers and not theirs.handlers:
        for h in ours.handlers:
            theirs.addHandler(h)
        theirs.setLevel(logging.WARNING)
        theirs.propagate = False


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def serve(
    app: App,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    drain_s: float = 10.0,
    timeout_keep_alive: float = 5.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run until SIGINT or SIGTERM, then stop taking requests, let running ones finish (up to `drain_s`), exit."""
    sock = bind(host, port)
    url = url_of(sock)
    app.created = int(time.time())
    server = make_server(
        app, sock, drain_s=drain_s, timeout_keep_alive=timeout_keep_alive,
        on_ready=None if on_ready is None else lambda: on_ready(url),
    )  # fmt: skip
    app.engine.start()
    try:
        server.run(sockets=[sock])
    finally:
        server.start_drain()  # uvicorn may stop without a signal (a failed startup)
        server.drainer.join()  # type: ignore[union-attr]
        sock.close()
        log.info("stopped")
