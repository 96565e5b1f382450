"""The OpenAI API's request checking and response shapes, as pure functions (no model, no sockets).

Requests are checked field by field; a bad one raises `APIError` with the status, message, `param` and `code`
that OpenAI's own API would give, so official clients raise their usual exception classes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from vikhr.serve.engine import SamplingParams


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             405: "invalid_request_error", 411: "invalid_request_error", 413: "invalid_request_error",
             429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}  # fmt: skip

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of this server."""

    max_tokens: int = 4096  # the largest max_tokens a request may ask for
    default_max_tokens: int = 512  # used when a request does not say (never past the context)
    max_n: int = 8
    max_stop: int = 4
    max_body_bytes: int = 4 << 20


@dataclass
class Parsed:
    """A checked request: prompts (chat messages or texts / token ids), sampling, streaming."""

    model: str
    params: SamplingParams
    max_tokens_given: bool
    n: int
    stream: bool
    include_usage: bool
    messages: list[dict] | None = None  # chat
    prompts: list[str | list[int]] | None = None  # completions


def _get(body: dict, key: str, kinds: tuple, default=None):
    """body[key] if present and of one of `kinds` (bool is never a number here), else APIError naming it."""
    if key not in body or body[key] is None:
        return default
    v = body[key]
    if isinstance(v, bool) and bool not in kinds:
        raise APIError(
            400, f"'{key}' must be of type {' or '.join(k.__name__ for k in kinds)}, got a boolean", param=key
        )
    if not isinstance(v, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise APIError(400, f"'{key}' must be of type {names}, got {type(v).__name__}", param=key)
    return v


def _sampling(body: dict, limits: Limits) -> tuple[SamplingParams, bool, int]:
    """Sampling parameters, whether max_tokens was given, and n."""
    temperature = float(_get(body, "temperature", (int, float), 1.0))
    if not 0 <= temperature <= 2:
        raise APIError(400, f"'temperature' must be between 0 and 2, got {temperature}", param="temperature")
    top_p = float(_get(body, "top_p", (int, float), 1.0))
    if not 0 < top_p <= 1:
        raise APIError(400, f"'top_p' must be greater than 0 and at most 1, got {top_p}", param="top_p")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _get(body, key, (int,))
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
        raise APIError(
            400,
            f"'{key}' must be between 1 and {limits.max_tokens} on this server, got {max_tokens}",
            param=key,
        )
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > limits.max_stop or not all(isinstance(s, str) and s for s in stop):
        raise APIError(
            400, f"'stop' must be a non-empty string or up to {limits.max_stop} of them", param="stop"
        )
    seed = _get(body, "seed", (int,))
    n = _get(body, "n", (int,), 1)
    if not 1 <= n <= limits.max_n:
        raise APIError(400, f"'n' must be between 1 and {limits.max_n} on this server, got {n}", param="n")
    ignore_eos = _get(body, "ignore_eos", (bool,), False)
    for key, ok in (("logprobs", lambda v: v in (None, False, 0)), ("top_logprobs", lambda v: v in (None, 0)),
                    ("logit_bias", lambda v: not v), ("tools", lambda v: not v), ("functions", lambda v: not v),
                    ("echo", lambda v: not v), ("suffix", lambda v: not v),
                    ("best_of", lambda v: v in (None, 1, n)),
                    ("response_format", lambda v: v in (None, {"type": "text"}))):  # fmt: skip
        if key in body and not ok(body[key]):
            raise APIError(400, f"'{key}' is not supported by this server", param=key)
    params = SamplingParams(
        max_tokens=max_tokens or limits.default_max_tokens, temperature=temperature, top_p=top_p,
        stop=tuple(stop), seed=seed, ignore_eos=ignore_eos,
    )  # fmt: skip
    return params, max_tokens is not None, n


def _common(body: object, limits: Limits) -> tuple[str, SamplingParams, bool, int, bool, bool]:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = _get(body, "model", (str,))
    if not model:
        raise APIError(400, "you must provide a model parameter", param="model")
    params, given, n = _sampling(body, limits)
    stream = _get(body, "stream", (bool,), False)
    options = _get(body, "stream_options", (dict,), {})
    return model, params, given, n, stream, bool(options.get("include_usage"))


def parse_chat(body: object, limits: Limits) -> Parsed:
    """A /v1/chat/completions body."""
    model, params, given, n, stream, usage = _common(body, limits)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content'", param=where)
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(
                400,
                f"{where}.role must be system, developer, user or assistant, got {role!r}",
                param=f"{where}.role",
            )
        out.append(
            {"role": "system" if role == "developer" else role, "content": _text(m.get("content"), where)}
        )
    return Parsed(model, params, given, n, stream, usage, messages=out)


def _text(content: object, where: str) -> str:
    """Message content as plain text: a string or a list of {"type": "text"} parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for j, p in enumerate(content):
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise APIError(
                    400, f"{where}.content[{j}]: only text parts are supported", param=f"{where}.content[{j}]"
                )
            parts.append(p["text"])
        return "".join(parts)
    raise APIError(400, f"{where}.content must be a string or a list of text parts", param=f"{where}.content")


def parse_completion(body: object, limits: Limits) -> Parsed:
    """A /v1/completions body: prompt is a string, a list of strings, token ids, or a list of token-id lists."""
    model, params, given, n, stream, usage = _common(body, limits)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif (
        isinstance(prompt, list)
        and prompt
        and all(
            isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            for p in prompt
        )
    ):
        prompts = list(prompt)
    else:
        raise APIError(
            400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
            param="prompt",
        )  # fmt: skip
    if len(prompts) * n > limits.max_n * 4:
        raise APIError(400, f"too many prompts x n ({len(prompts)} x {n}) in one request", param="prompt")
    return Parsed(model, params, given, n, stream, usage, prompts=prompts)


def fit_to_context(parsed: Parsed, prompt_len: int, context: int, param: str) -> SamplingParams:
    """The request's sampling params with max_tokens fitted to the context, or the OpenAI context error."""
    p = parsed.params
    room = context - prompt_len
    if room <= 0 or (parsed.max_tokens_given and p.max_tokens > room):
        need = prompt_len + (p.max_tokens if parsed.max_tokens_given else 1)
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested {need} tokens "
            f"({prompt_len} in the {param}, {need - prompt_len} in the completion). Please reduce the length of "
            f"the {param} or completion.",
            param=param, code="context_length_exceeded",
        )  # fmt: skip
    if parsed.max_tokens_given:
        return p
    return SamplingParams(**{**p.__dict__, "max_tokens": min(p.max_tokens, room)})


# ---- responses ---------------------------------------------------------------------------------------------------


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(
    kind: str, rid: str, model: str, choices: list[tuple[int, str, str]], use: dict
) -> dict:
    """A whole response; `choices` are (index, text, finish_reason)."""
    created = int(time.time())
    if kind == "chat":
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": fr}
                for i, text, fr in choices
            ],
            "usage": use, "system_fingerprint": None,
        }  # fmt: skip
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": fr} for i, text, fr in choices],
        "usage": use, "system_fingerprint": None,
    }  # fmt: skip


def chunk(
    kind: str, rid: str, model: str, index: int, text: str | None, finish: str | None, *, role: bool = False
) -> dict:
    """One streamed event for one choice (chat: a delta; completions: a text piece)."""
    created = int(time.time())
    if kind == "chat":
        delta: dict = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }
    choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}


def usage_chunk(kind: str, rid: str, model: str, use: dict) -> dict:
    """The last streamed event when the client asked for stream_options.include_usage."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": use,
    }
