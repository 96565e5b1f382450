"""Exact assistant-only loss masks for SFT, computed from the chat template itself (not by TRL).

TRL's `assistant_only_loss` needs `{% generation %}` markers and refuses templates it does not know (SmolLM2's
ChatML, Mistral's), and tokenizing turns separately changes SentencePiece tokens at the seams. So a conversation is
rendered once with its chat template and tokenized once with character offsets; each assistant reply, located in
the rendered text, plus the end-of-turn token that closes it (`<|im_end|>` in ChatML, `</s>` in Mistral's template)
form the trainable spans.

The rule for a token: it is in the loss iff its character span lies inside an assistant span. A token can only
straddle a span's start (the end-of-turn text that ends every span is a single special token, which the tokenizer
splits out before anything else): a byte-level `\\n\\n` made of the generation prompt's newline and a reply's
leading newline, or SentencePiece's `]))` made of `[/INST]`'s bracket and a reply starting with `))`. Such a token
is left out of the loss, so every trained token is reply text and never template text; they are counted
(`Encoded.straddling`, `MaskStats.straddling`) so a template/tokenizer pair that makes many is visible.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vikhr.instruct.formats import Messages
from vikhr.log import get_logger
from vikhr.train import IGNORE_INDEX

log = get_logger(__name__)

SAMPLE: Messages = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi! How can I help?"},
]
"""The conversation a chat template must render (`check_chat_template`)."""

_SENTINEL = "0451962837105628"
"""A reply text that templates leave as it is (digits only: nothing to trim, upper- or lower-case) and that real
conversations do not contain."""

_MARKER = re.compile(r"(?P<pre>\s*)\{%(?P<l>[-+]?)\s*(?:end)?generation\s*(?P<r>[-+]?)%\}(?P<post>\s*)")


class ChatTemplateError(ValueError):
    """A chat template that is missing, does not render, or whose assistant turns cannot be located."""


def _render(tokenizer: Any, messages: Messages, template: str, *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _tokenizer_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is the chat template
        template = template.get("default")
    return template or None


def check_chat_template(tokenizer: Any, chat_template: str | None = None, where: str = "") -> str:
    """The chat template to use: `chat_template` when given, else the tokenizer's; it must render a
    user/assistant conversation (a template that refuses system messages, as Mistral's does, is accepted with a
    warning). `where` (the model folder) goes into the error messages."""
    template = chat_template or _tokenizer_template(tokenizer)
    name = where or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not template:
        raise ChatTemplateError(
            f"{name}: the tokenizer has no chat template and none is configured; set sft.chat_template to a "
            "Jinja template, e.g. ChatML, or use a tokenizer that has one"
        )
    try:
        _render(tokenizer, SAMPLE[1:], template)
    except Exception as e:
        raise ChatTemplateError(
            f"{name}: the chat template does not render a user/assistant conversation: {type(e).__name__}: {e}"
        ) from e
    try:
        _render(tokenizer, SAMPLE, template)
    except Exception as e:
        log.warning(
            "%s: the chat template refuses a system message (%s); conversations with one will fail", name, e
        )
    return template


def strip_generation_markers(template: str) -> str:
    """`template` without TRL's `{% generation %}` / `{% endgeneration %}` markers, rendering the same text, so it
    can be saved into a model folder (llama.cpp and other Jinja runtimes fail on the unknown tag).

    Whitespace around a removed marker is treated as Jinja would under transformers' environment
    (`trim_blocks`, `lstrip_blocks`): `{%-` / `-%}` strip all adjacent whitespace, a plain `%}` eats one newline
    after it, and a marker alone on its line takes that line's indentation with it (`{%+` keeps it)."""

    def replace(m: re.Match[str]) -> str:
        pre, post = m["pre"], m["post"]
        if m["l"] == "-":
            pre = ""
        elif m["l"] != "+":
            head, newline, tail = pre.rpartition("\n")
            if newline or m.start() == 0:  # the marker opens its line: lstrip_blocks drops the indentation
                pre = head + newline + tail.lstrip(" \t")
        if m["r"] == "-":
            post = ""
        elif m["r"] != "+" and post.startswith("\n"):  # trim_blocks
            post = post[1:]
        return pre + post

    return _MARKER.sub(replace, template)


def _special_tokens(tokenizer: Any) -> set[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials |= {str(t) for t in decoder.values() if getattr(t, "special", False)}
    return {s for s in specials if s}


def end_of_turn(tokenizer: Any, template: str) -> str:
    """The text that closes an assistant turn in `template` (`<|im_end|>` for ChatML, `</s>` for Mistral's),
    found by rendering two turns with a sentinel reply; it must be one special token of the tokenizer."""
    msgs = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": _SENTINEL},
        {"role": "user", "content": "And again?"},
        {"role": "assistant", "content": _SENTINEL},
    ]
    try:
        text = _render(tokenizer, msgs, template)
    except Exception as e:
        raise ChatTemplateError(
            f"the chat template does not render a conversation: {type(e).__name__}: {e}"
        ) from e
    parts = text.split(_SENTINEL)
    if len(parts) != 3:
        raise ChatTemplateError(
            f"the chat template renders an assistant reply {len(parts) - 1} times instead of once per turn"
        )
    specials = sorted(_special_tokens(tokenizer), key=len, reverse=True)
    found = [next((s for s in specials if after.startswith(s)), None) for after in parts[1:]]
    if found[0] is None or found[0] != found[1]:
        follow = [after[:40] for after in parts[1:]]
        raise ChatTemplateError(
            f"no end-of-turn token found: an assistant reply is followed by {follow[0]!r} mid-conversation and "
            f"{follow[1]!r} at the end, not by the same special token of the tokenizer"
        )
    eot = found[0]
    ids = tokenizer(eot, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ChatTemplateError(f"the end-of-turn text {eot!r} is not a single token ({ids})")
    return eot


def _reply_forms(content: str) -> list[str]:
    """How a template may render a reply: as is, or trimmed (`content | trim` and its one-sided variants)."""
    return list(dict.fromkeys([content, content.strip(), content.lstrip(), content.rstrip()]))


def _try_render(tokenizer: Any, messages: Messages, template: str, **kwargs: Any) -> str | None:
    try:
        return _render(tokenizer, messages, template, **kwargs) if messages else ""
    except Exception:
        return None


def _locate(
    tokenizer: Any, messages: Messages, template: str, text: str, i: int, eot: str, after: int
) -> tuple[int, int] | None:
    """The span of assistant message i (reply as rendered + eot) in `text`, starting at or after `after`."""
    forms = [form + eot for form in _reply_forms(messages[i]["content"])]

    def at(start: int) -> tuple[int, int] | None:
        # the reply follows the generation prompt directly, or after whitespace the turn header adds to it
        for form in forms:
            idx = text.find(form, start)
            if idx >= start and not text[start:idx].strip():
                return idx, idx + len(form)
        return None

    # 1. prefix-consistent templates: the conversation so far plus the generation prompt starts the full text
    prefix = _try_render(tokenizer, messages[:i], template, add_generation_prompt=True)
    if prefix is not None and len(prefix) >= after and text.startswith(prefix) and (span := at(len(prefix))):
        return span
    # 2. the whole conversation with this reply replaced by a sentinel: the text before it is the same
    probe = [*messages[:i], {**messages[i], "content": _SENTINEL}, *messages[i + 1 :]]
    marked = _try_render(tokenizer, probe, template) or ""
    start = marked.find(_SENTINEL)
    if start >= after and text.startswith(marked[:start]) and (span := at(start)):
        return span
    # 3. the rendered reply and its end of turn, searched forward from the previous reply's end; a hit right after
    #    the assistant header (what the generation prompt adds) beats one that ends a user turn
    bare = _try_render(tokenizer, messages[:i], template)
    header = (
        prefix[len(bare) :].strip()
        if prefix is not None and bare is not None and prefix.startswith(bare)
        else ""
    )
    hits = []
    for form in forms:
        idx = text.find(form, after)
        while idx >= 0:
            hits.append((not (header and text[:idx].rstrip().endswith(header)), idx, idx + len(form)))
            idx = text.find(form, idx + 1)
    return min(hits)[1:] if hits else None


def assistant_spans(
    tokenizer: Any, messages: Messages, template: str, eot: str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation rendered once, and for every assistant message the character span [start, end) of its
    reply as the template renders it plus the end-of-turn text right after it. `eot` defaults to
    `end_of_turn(tokenizer, template)` (pass it when encoding many conversations)."""
    eot = eot if eot is not None else end_of_turn(tokenizer, template)
    try:
        text = _render(tokenizer, messages, template)
    except Exception as e:
        raise ChatTemplateError(
            f"the chat template does not render this conversation: {type(e).__name__}: {e}"
        ) from e
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        span = _locate(tokenizer, messages, template, text, i, eot, spans[-1][1] if spans else 0)
        if span is None:
            raise ChatTemplateError(
                f"assistant message {i} (of {len(messages)}) followed by {eot!r} is not found in the rendered "
                f"conversation: the template changes replies in a way this code does not know "
                f"(reply starts {message['content'][:40]!r})"
            )
        spans.append(span)
    return text, spans


@dataclass
class Encoded:
    """One tokenized conversation with its loss mask."""

    input_ids: list[int]
    loss_mask: list[bool]
    """True where the token is trained on: assistant reply tokens and their end-of-turn tokens."""
    truncated: bool
    """The conversation was longer than max_length and cut from the right."""
    answer_tokens: int
    """Tokens in the loss after truncation; 0 means the example was truncated away (the caller counts it)."""
    straddling: int = 0
    """Kept tokens that overlap an assistant span's edge without lying inside it (left out of the loss)."""

    @property
    def labels(self) -> list[int]:
        """`input_ids` with IGNORE_INDEX outside the loss (the model shifts labels itself)."""
        return [t if m else IGNORE_INDEX for t, m in zip(self.input_ids, self.loss_mask, strict=True)]


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        name = getattr(tokenizer, "name_or_path", "") or "?"
        raise ValueError(
            f"{type(tokenizer).__name__} ({name}) is not a fast tokenizer: SFT loss masks need character offsets"
        )


def _added_bos(tokenizer: Any) -> int | None:
    """The bos id the tokenizer puts in front when encoding with special tokens (`add_bos_token` or its
    post-processor), or None."""
    bos = tokenizer.bos_token_id
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if bos is not None and list(full) == [bos, *plain] else None


def _mask(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> tuple[list[bool], list[bool]]:
    """Per token: inside an assistant span (in the loss), and overlapping one without being inside (straddling)."""
    inside, straddling, k = [], [], 0
    for s, e in offsets:
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        a, b = spans[k] if k < len(spans) else (-1, -1)
        inside.append(a <= s < e <= b)
        straddling.append(not inside[-1] and s < b and e > a)
    return inside, straddling


def encode_conversation(
    tokenizer: Any,
    messages: Messages,
    template: str,
    max_length: int,
    *,
    eot: str | None = None,
    add_bos: bool | None = None,
) -> Encoded:
    """Render `messages` once, tokenize the text once (fast tokenizer, offsets, no special tokens added), mark the
    tokens inside assistant spans, and cut to `max_length` tokens from the right.

    The template writes bos where the model wants one, and the ids then equal
    `apply_chat_template(messages, tokenize=True)`. `add_bos=None` (auto) prepends the tokenizer's bos only when
    the template does not start with it but the tokenizer adds one when encoding (a ChatML template on Mistral's
    tokenizer): what pre-training always saw. `apply_chat_template` does not do that.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    _require_fast(tokenizer)
    eot = eot if eot is not None else end_of_turn(tokenizer, template)
    text, spans = assistant_spans(tokenizer, messages, template, eot)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    ends = {e: i for i, (_, e) in enumerate(offsets)}
    for _, b in spans:  # every span ends with the end-of-turn token itself
        i = ends.get(b)
        if i is None or ids[i] != eot_id or offsets[i][0] != b - len(eot):
            raise ChatTemplateError(
                f"the end-of-turn text {eot!r} at {b - len(eot)} is not tokenized as one token"
            )
    mask, straddling = _mask(offsets, spans)
    bos = _added_bos(tokenizer) if add_bos is None else (tokenizer.bos_token_id if add_bos else None)
    if bos is not None and ids[:1] != [bos]:
        ids, mask, straddling = [bos, *ids], [False, *mask], [False, *straddling]
    truncated = len(ids) > max_length
    ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(ids, mask, truncated, sum(mask), sum(straddling[:max_length]))


@dataclass
class MaskStats:
    """What encoding a set of conversations did."""

    examples: int = 0
    truncated: int = 0
    """Examples longer than max_length (cut from the right)."""
    truncated_away: int = 0
    """Examples left with no token in the loss after truncation (still returned; the caller decides)."""
    answer_tokens: int = 0
    """Tokens in the loss, after truncation."""
    prompt_tokens: int = 0
    """Tokens not in the loss (system, user, template text), after truncation."""
    straddling: int = 0
    """Tokens overlapping an assistant span's edge, left out of the loss."""

    def add(self, enc: Encoded) -> None:
        self.examples += 1
        self.truncated += enc.truncated
        self.truncated_away += enc.answer_tokens == 0
        self.answer_tokens += enc.answer_tokens
        self.prompt_tokens += len(enc.input_ids) - enc.answer_tokens
        self.straddling += enc.straddling

    def as_dict(self) -> dict[str, float]:
        """Counts plus the answer-token share, for logs and the manifest."""
        total = self.answer_tokens + self.prompt_tokens
        return asdict(self) | {"answer_share": self.answer_tokens / total if total else 0.0}


def encode_all(
    tokenizer: Any,
    conversations: Iterable[Messages],
    template: str,
    max_length: int,
    errors: list[tuple[int, str]] | None = None,
) -> tuple[list[Encoded | None], MaskStats]:
    """`encode_conversation` for each conversation, in order, none dropped; counts in the MaskStats. With `errors`
    given, a conversation the template cannot render (or whose replies cannot be located) gets None in its place
    and `(index, message)` appended to `errors` instead of raising."""
    _require_fast(tokenizer)
    eot = end_of_turn(tokenizer, template)
    add_bos = _added_bos(tokenizer) is not None
    stats = MaskStats()
    out: list[Encoded | None] = []
    for i, messages in enumerate(conversations):
        try:
            enc = encode_conversation(tokenizer, messages, template, max_length, eot=eot, add_bos=add_bos)
        except ChatTemplateError as e:
            if errors is None:
                raise
            errors.append((i, str(e)))
            out.append(None)
            continue
        stats.add(enc)
        out.append(enc)
    if stats.straddling:
        log.info(
            "%d tokens straddle the start of an assistant reply and are left out of the loss",
            stats.straddling,
        )
    return out, stats
