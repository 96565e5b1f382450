"""One client for any OpenAI-compatible endpoint (OpenAI, vLLM, `vikhr serve`), used by every stage that asks an LLM.

`LLMClient.chat` / `complete` send one request; `chat_many` / `complete_many` send many with bounded concurrency,
keeping input order. Every request is retried on throttling, server errors, timeouts and dropped connections
(exponential backoff with jitter, `Retry-After` honoured), successful responses are cached on disk (see
`vikhr.llm.cache`), and `client.stats` counts requests, cache hits, retries, failures and tokens.
"""

from __future__ import annotations

import dataclasses
import email.utils
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vikhr.config import Config, ConfigError, LLMConfig, resolve_path
from vikhr.llm.cache import ResponseCache, cache_key
from vikhr.log import get_logger, progress
from vikhr.paths import cache_dir
from vikhr.train.dist import is_main_process

log = get_logger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
BASE_URL_ENVS = ("VIKHR_LLM_BASE_URL", "OPENAI_BASE_URL")
MODEL_ENV = "VIKHR_LLM_MODEL"
FALLBACK_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth another try; every other 4xx/5xx fails at once."""
CONNECT_TIMEOUT_S = 10.0
"""Longest wait for a TCP connection (the read timeout is `timeout_s`)."""
_FIX_URL = "set VIKHR_LLM_BASE_URL (or llm.base_url in the config)"


class LLMError(RuntimeError):
    """An LLM request failed for good: carries the HTTP status and the OpenAI error fields when there were any.

    `partial` is set when a batch call stops on this error: the results finished so far, in input order.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: Any = None,
        param: Any = None,
        url: str = "",
        body: Any = None,
        server_message: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.url = url
        self.body = body
        self.server_message = server_message
        """The error message as the server wrote it (`message` adds the request and a hint)."""
        self.partial: list | None = None


class LLMUnreachableError(LLMError):
    """The endpoint could not be connected to (refused, unknown host, connect timeout) even after retries."""


class LLMAuthError(LLMError):
    """The endpoint answered 401: the API key is missing or wrong; the message names the variable used."""


@dataclass
class ChatResult:
    """One response: the first choice's text and finish reason, token usage, whether it came from the cache."""

    text: str
    finish_reason: str | None
    usage: dict[str, int]
    cached: bool
    raw: dict = field(repr=False)
    """The response JSON as the server sent it (all choices, ids, extensions)."""

    @property
    def texts(self) -> list[str]:
        """The text of every choice (requests with `n` > 1)."""
        return [_choice_text(c) for c in self.raw.get("choices", [])]


@dataclass
class LLMStats:
    """What a client has done so far; `client.stats` is a snapshot."""

    calls: int = 0
    """chat/complete calls, cache hits included."""
    requests: int = 0
    """HTTP requests sent: every try, model listing included."""
    cache_hits: int = 0
    """Calls answered from the disk cache without contacting the server."""
    retries: int = 0
    """Tries after the first one (throttling, server errors, timeouts, dropped connections)."""
    failures: int = 0
    """Calls that ended in an error."""
    prompt_tokens: int = 0
    """Prompt tokens of responses received from the server (cache hits not counted)."""
    completion_tokens: int = 0
    """Completion tokens of responses received from the server (cache hits not counted)."""
    cached_tokens: int = 0
    """Total tokens of responses served from the cache (what the cache saved)."""
    wall_s: float = 0.0
    """Wall-clock seconds with at least one call in flight."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for logs and reports."""
        return (
            f"{self.calls} calls, {self.requests} requests, {self.cache_hits} cache hits, {self.retries} retries, "
            f"{self.failures} failures, {self.prompt_tokens}+{self.completion_tokens} tokens "
            f"(+{self.cached_tokens} cached), {self.wall_s:.1f}s"
        )


def resolve_base_url(cfg: LLMConfig) -> str:
    """`llm.base_url`, else $VIKHR_LLM_BASE_URL, else $OPENAI_BASE_URL, else the local default; no trailing /."""
    url = cfg.base_url or next((os.environ[e] for e in BASE_URL_ENVS if os.environ.get(e)), DEFAULT_BASE_URL)
    return url.rstrip("/")


def resolve_api_key(cfg: LLMConfig) -> tuple[str | None, str]:
    """(key, variable it came from): $`api_key_env`, else $OPENAI_API_KEY; (None, `api_key_env`) when unset."""
    for name in dict.fromkeys([cfg.api_key_env, FALLBACK_KEY_ENV]):
        if name and os.environ.get(name):
            return os.environ[name], name
    return None, cfg.api_key_env


def resolve_cache_dir(cfg: LLMConfig, base: Path | None = None) -> Path:
    """`llm.cache_dir` (relative paths taken from `base`), else `vikhr.paths.cache_dir()/llm`."""
    if not cfg.cache_dir:
        return cache_dir() / "llm"
    p = Path(cfg.cache_dir).expanduser()
    return p if p.is_absolute() or base is None else (base / p).resolve()


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds asked for by `retry-after-ms` or `Retry-After` (seconds or an HTTP date), or None."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def backoff_delay(
    attempt: int,
    base_s: float,
    cap_s: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry number `attempt` (0: the first retry).

    A server's `Retry-After` wins (cut to `cap_s`); otherwise `base_s * 2**attempt`, capped at `cap_s`, times a
    random factor in [0.5, 1) so that many clients throttled together do not come back together.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap_s)
    r = (rng or random).random()
    return min(cap_s, base_s * 2.0**attempt) * (0.5 + 0.5 * r)


def _choice_text(choice: dict) -> str:
    if isinstance(choice.get("message"), dict):
        return choice["message"].get("content") or ""
    return choice.get("text") or ""


def _to_result(data: Any, cached: bool, url: str) -> ChatResult:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMError(f"{url} answered without choices: {str(data)[:300]}", url=url, body=data)
    first = choices[0]
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return ChatResult(_choice_text(first), first.get("finish_reason"), dict(usage), cached, data)


def _parse_error(resp: httpx.Response) -> tuple[str, Any, Any, Any, Any]:
    """(message, type, code, param, body) from `{"error": {...}}`, vLLM's flat error, FastAPI's `detail`, or text."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        src = err
    elif isinstance(err, str):
        src = {"message": err}
    elif isinstance(data, dict) and "message" in data:
        src = data
    elif isinstance(data, dict) and "detail" in data:
        src = {"message": str(data["detail"])}
    else:
        src = {"message": resp.text.strip()[:500]}
    message = str(src.get("message") or resp.reason_phrase or "no message")
    return message, src.get("type"), src.get("code"), src.get("param"), data


_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


class LLMClient:
    """A shared, thread-safe client for one OpenAI-compatible endpoint; see the module docstring."""

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        api_key: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        """`api_key` and `cache_dir` override what `config` resolves to (the environment, the default cache)."""
        cfg = config or LLMConfig()
        if cfg.max_concurrency < 1:
            raise ConfigError(f"llm.max_concurrency must be at least 1, got {cfg.max_concurrency}")
        if cfg.max_retries < 0:
            raise ConfigError(f"llm.max_retries must be 0 or more, got {cfg.max_retries}")
        if cfg.timeout_s <= 0:
            raise ConfigError(f"llm.timeout_s must be positive, got {cfg.timeout_s}")
        self.config = cfg
        self.base_url = resolve_base_url(cfg)
        if api_key:
            key, self.key_source = api_key, "the api_key argument"
        else:
            key, env = resolve_api_key(cfg)
            self.key_source = f"${env}"
        self._has_key = bool(key)
        self._model = cfg.model or os.environ.get(MODEL_ENV) or None
        self._model_lock = threading.Lock()
        headers = {"Accept": "application/json", "User-Agent": "vikhr-llm-client"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s, connect=min(CONNECT_TIMEOUT_S, cfg.timeout_s)),
            limits=httpx.Limits(
                max_connections=cfg.max_concurrency + 2, max_keepalive_connections=cfg.max_concurrency
            ),
            mounts={f"all://{host}": None for host in _LOOPBACK},  # $HTTP(S)_PROXY never applies to loopback
        )
        self.cache: ResponseCache | None = None
        if cfg.cache:
            self.cache = ResponseCache(Path(cache_dir) if cache_dir else resolve_cache_dir(cfg))
        self._stats = LLMStats()
        self._stats_lock = threading.Lock()
        self._in_flight = 0
        self._busy_since = 0.0
        self._rng = random.Random()
        log.debug(
            "LLM client for %s (model %s, key %s, cache %s)",
            self.base_url,
            self._model or "from /models",
            f"from {self.key_source}" if key else "none",
            self.cache.path if self.cache else "off",
        )

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMClient:
        """A client from the environment and the defaults alone; keywords set `LLMConfig` fields."""
        known = {f.name for f in dataclasses.fields(LLMConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown llm setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(LLMConfig(**overrides))

    @classmethod
    def from_config(cls, cfg: Config) -> LLMClient:
        """A client for an experiment's `llm` section (a relative `cache_dir` is taken from the config's folder)."""
        return cls(cfg.llm, cache_dir=resolve_path(cfg, cfg.llm.cache_dir) if cfg.llm.cache_dir else None)

    # -- public calls ---------------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model id sent by default: `llm.model`, $VIKHR_LLM_MODEL, or the first id from GET /models."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    ids = self.list_models()
                    if not ids:
                        raise LLMError(
                            f"{self.base_url}/models lists no models; set llm.model or {MODEL_ENV}"
                        )
                    self._model = ids[0]
                    log.info("LLM endpoint %s: using model %s", self.base_url, self._model)
        return self._model

    def list_models(self) -> list[str]:
        """Model ids served by the endpoint (GET /models)."""
        data = self._request("GET", "/models")
        items = data.get("data") if isinstance(data, dict) else None
        return [m["id"] for m in items or [] if isinstance(m, dict) and "id" in m]

    def chat(
        self, messages: Sequence[Mapping[str, Any]], *, cache: bool | None = None, **params: Any
    ) -> ChatResult:
        """POST /chat/completions with `messages`.

        `params` are OpenAI parameters (model, temperature, top_p, max_tokens, stop, seed, n, response_format, ...)
        and anything else the server understands (vLLM/vikhr extensions); `extra_body={...}` is merged in too.
        A `None` value drops the key (e.g. `max_tokens=None` sends no limit). `cache=False` neither reads nor
        writes the disk cache for this call. Raises `LLMError` (or a subclass) when the request fails for good.
        """
        return self._call("/chat/completions", {"messages": [dict(m) for m in messages]}, cache, params)

    def complete(self, prompt: str | list[str], *, cache: bool | None = None, **params: Any) -> ChatResult:
        """POST /completions with `prompt` (raw text, no chat template); parameters as in `chat`."""
        return self._call("/completions", {"prompt": prompt}, cache, params)

    def chat_many(
        self,
        conversations: Sequence[Sequence[Mapping[str, Any]]],
        *,
        raise_on_error: bool = False,
        show_progress: bool = True,
        desc: str = "llm chat",
        cache: bool | None = None,
        **params: Any,
    ) -> list[ChatResult | LLMError]:
        """`chat` for each conversation, `max_concurrency` at a time; results in input order.

        A failed request leaves its `LLMError` in its place and the rest go on; with `raise_on_error` the first
        failure stops the batch. An unreachable endpoint or a rejected key always stops it (every other request
        would fail the same way). A stopping error carries the finished results in `error.partial`; they are
        also in the disk cache, so running the same batch again sends only what is missing.
        """
        return self._many(
            lambda m: self.chat(m, cache=cache, **params), conversations, raise_on_error, show_progress, desc
        )

    def complete_many(
        self,
        prompts: Sequence[str],
        *,
        raise_on_error: bool = False,
        show_progress: bool = True,
        desc: str = "llm complete",
        cache: bool | None = None,
        **params: Any,
    ) -> list[ChatResult | LLMError]:
        """`complete` for each prompt, as `chat_many` does for conversations."""
        return self._many(
            lambda p: self.complete(p, cache=cache, **params), prompts, raise_on_error, show_progress, desc
        )

    @property
    def stats(self) -> LLMStats:
        """A snapshot of the counters (wall time includes the call in flight, if any)."""
        with self._stats_lock:
            snap = dataclasses.replace(self._stats)
            if self._in_flight:
                snap.wall_s += time.monotonic() - self._busy_since
        return snap

    def summary(self) -> str:
        """One line: endpoint and counters."""
        return f"LLM {self.base_url}: {self.stats.summary()}"

    def close(self) -> None:
        """Close the HTTP connections and the cache."""
        self._http.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LLMClient({self.base_url!r}, model={self._model!r})"

    # -- internals ------------------------------------------------------------------------------------------

    def _count(self, **deltas: float) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                setattr(self._stats, k, getattr(self._stats, k) + v)

    def _enter(self) -> None:
        with self._stats_lock:
            if self._in_flight == 0:
                self._busy_since = time.monotonic()
            self._in_flight += 1

    def _exit(self) -> None:
        with self._stats_lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._stats.wall_s += time.monotonic() - self._busy_since

    def _body(self, inputs: dict, params: dict) -> dict:
        params = dict(params)
        extra = dict(params.pop("extra_body", None) or {})
        if params.get("stream") or extra.get("stream"):
            raise ValueError("streaming is not supported by LLMClient")
        model = params.pop("model", None) or extra.pop("model", None) or self.model
        body = {
            "model": model,
            **inputs,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        body.update(params)
        body.update(extra)
        return {k: v for k, v in body.items() if v is not None}

    def _call(self, path: str, inputs: dict, cache: bool | None, params: dict) -> ChatResult:
        self._enter()
        try:
            body = self._body(inputs, params)
            store = self.cache if cache is not False else None
            key = cache_key(path, body["model"], body) if store is not None else None
            if store is not None and key is not None:
                hit = store.get(key)
                if hit is not None:
                    res = _to_result(hit, True, self.base_url + path)
                    u = res.usage
                    tokens = u.get("total_tokens") or (
                        u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
                    )
                    self._count(calls=1, cache_hits=1, cached_tokens=int(tokens or 0))
                    return res
            data = self._request("POST", path, body)
            res = _to_result(data, False, self.base_url + path)
            if store is not None and key is not None:
                store.put(key, path, body["model"], data)
            self._count(
                calls=1,
                prompt_tokens=int(res.usage.get("prompt_tokens") or 0),
                completion_tokens=int(res.usage.get("completion_tokens") or 0),
            )
            return res
        except LLMError:
            self._count(calls=1, failures=1)
            raise
        finally:
            self._exit()

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        """One HTTP exchange with retries; the parsed JSON of a 2xx answer, else `LLMError`."""
        cfg = self.config
        url = self.base_url + path
        tries = cfg.max_retries + 1
        last: Exception | None = None
        for attempt in range(tries):
            if attempt:
                self._count(retries=1)
            self._count(requests=1)
            retry_after = None
            try:
                resp = self._http.request(method, url, json=body)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as e:
                raise LLMError(
                    f"invalid LLM base URL {self.base_url!r} ({e}); {_FIX_URL}, e.g. {DEFAULT_BASE_URL}",
                    url=url,
                ) from e
            except _TRANSIENT as e:
                last = e
                what = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code < 400:
                    try:
                        return resp.json()
                    except ValueError as e:
                        raise LLMError(
                            f"{method} {url} answered {resp.status_code} with non-JSON: {resp.text[:300]!r}",
                            status=resp.status_code,
                            url=url,
                        ) from e
                err = self._http_error(resp, method, url)
                if resp.status_code not in RETRY_STATUSES or err.code == "insufficient_quota":
                    raise err
                last = err
                what = f"{resp.status_code} {err.server_message}"
                retry_after = parse_retry_after(resp.headers)
            if attempt + 1 < tries:
                delay = backoff_delay(attempt, cfg.backoff_s, cfg.max_backoff_s, retry_after, self._rng)
                log.info(
                    "%s %s: %s; retry %d/%d in %.1fs", method, url, what, attempt + 1, cfg.max_retries, delay
                )
                time.sleep(delay)
        if isinstance(last, _UNREACHABLE):
            raise LLMUnreachableError(
                f"cannot reach the LLM endpoint {self.base_url} ({type(last).__name__}: {last}; {tries} tries). "
                f"Start a server there (`vikhr serve MODEL --port PORT`) or point the client at a running one: "
                f"{_FIX_URL}.",
                url=url,
            ) from last
        if isinstance(last, LLMError):
            last.message = f"{last.message} (gave up after {tries} tries)"
            last.args = (last.message,)
            raise last
        raise LLMError(
            f"{method} {url} failed after {tries} tries: {type(last).__name__}: {last}", url=url
        ) from last

    def _http_error(self, resp: httpx.Response, method: str, url: str) -> LLMError:
        message, etype, code, param, body = _parse_error(resp)
        status = resp.status_code
        text = f"{method} {url} answered {status}: {message}"
        if etype or code:
            text += f" (type={etype}, code={code})"
        fields = dict(
            status=status, type=etype, code=code, param=param, url=url, body=body, server_message=message
        )
        if status == 401:
            if self._has_key:
                hint = (
                    f"The API key from {self.key_source} was rejected; set it to the key the server expects"
                )
            else:
                hint = (
                    f"No API key was sent: set ${self.config.api_key_env} (or ${FALLBACK_KEY_ENV}) "
                    "to the server's key"
                )
            return LLMAuthError(f"{text}. {hint}", **fields)
        return LLMError(text, **fields)

    def _many(
        self,
        fn: Callable[[Any], ChatResult],
        items: Sequence[Any],
        raise_on_error: bool,
        show_progress: bool,
        desc: str,
    ) -> list[ChatResult | LLMError]:
        items = list(items)
        results: list[Any] = [None] * len(items)
        if not items:
            return results
        self._enter()
        pool = ThreadPoolExecutor(
            min(self.config.max_concurrency, len(items)), thread_name_prefix="vikhr-llm"
        )
        bar = progress(
            total=len(items), desc=desc, unit="req", disable=not (show_progress and is_main_process())
        )
        futures: dict[Future, int] = {}
        stop: BaseException | None = None
        failed = 0
        try:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except LLMError as e:
                    results[i] = e
                    failed += 1
                    bar.set_postfix(failed=failed, refresh=False)
                    if raise_on_error or isinstance(e, LLMUnreachableError | LLMAuthError):
                        stop = e
                        break
                except Exception as e:  # a bug or a bad parameter: stop, as for any other code
                    stop = e
                    break
                bar.update(1)
        except BaseException:  # Ctrl-C: do not wait for requests in flight; the finished ones are cached
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
            self._exit()
            raise
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        self._exit()
        if stop is None:
            return results
        for fut, i in futures.items():
            if results[i] is None and fut.done() and not fut.cancelled():
                exc = fut.exception()
                results[i] = exc if isinstance(exc, LLMError) else (fut.result() if exc is None else None)
        if isinstance(stop, LLMError):
            stop.partial = results
            done = sum(isinstance(r, ChatResult) for r in results)
            log.error("%s stopped after %d of %d results: %s", desc, done, len(items), stop)
        raise stop
