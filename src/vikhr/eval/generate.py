"""Generative answers through the batching engine, and lm-eval's answer extraction and exact-match scoring.

`generate_answers` puts every prompt through one `vikhr.serve.engine.Engine` (continuous batching with a KV
cache), either under the model's chat template or as a plain continuation after the start token that bits per
character uses (`vikhr.eval.bpc.start_token_id`). `extract_answer` and `exact_match` follow lm-evaluation-harness
0.4 (`RegexFilter`, `exact_match_hf_evaluate`), so scores computed here compare with the harness's.
"""

from __future__ import annotations

import queue
import re
import string
import time
from dataclasses import asdict, dataclass

from vikhr.eval.bpc import start_token_id
from vikhr.log import get_logger
from vikhr.serve.engine import Engine, Failed, Finished, SamplingParams, stream_events

logger = get_logger(__name__)

INVALID = "[invalid]"
"""lm-eval's fallback when the answer regex does not match."""


@dataclass
class Answer:
    """One generated answer."""

    prompt: str
    """The prompt (for a list of messages, the content of its last message)."""
    text: str
    """The completion, special tokens dropped, cut before a stop string."""
    tokens: int
    """Tokens generated (an end-of-sequence token that ended the answer included)."""
    finish_reason: str
    """"stop" (end of sequence or a stop string) or "length" (`max_new_tokens` or the context is full)."""
    seconds: float
    """Wall time from submitting this prompt to its last token. Prompts share batches, so this is latency under
    load, not the compute this prompt alone needed."""

    def as_dict(self) -> dict:
        return asdict(self)


def _model_name(model) -> str:
    return (
        getattr(model, "name_or_path", None)
        or getattr(model.config, "_name_or_path", "")
        or type(model).__name__
    )


def _messages(prompt: str | list[dict], system: str | None) -> list[dict]:
    """A chat: a string becomes one user message; `system` opens it unless it already has a system message."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _prompt_ids(engine: Engine, prompt: str | list[dict], chat: bool, system: str | None) -> list[int]:
    if chat:
        return engine.chat_ids(_messages(prompt, system))
    if not isinstance(prompt, str):
        raise ValueError("a list of messages needs chat=True (and a model with a chat template)")
    if system is not None:
        raise ValueError("a system message needs chat=True; put it into the prompt for a plain continuation")
    start = start_token_id(engine.tokenizer)
    ids = ([start] if start is not None else []) + engine.tokenizer(prompt, add_special_tokens=False)[
        "input_ids"
    ]
    if not ids:
        raise ValueError(f"prompt {prompt!r} has no tokens and the tokenizer no start token")
    return ids


def generate_answers(
    model,
    tokenizer,
    prompts: list[str] | list[list[dict]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int | None = 0,
    chat: bool = True,
    system: str | None = None,
    stop: list[str] | None = None,
    max_batch: int = 8,
) -> list[Answer]:
    """Answers of `model` to `prompts`, in prompt order, generated in batches of up to `max_batch`.

    `chat=True` renders each prompt (a string is one user message, after `system` if given) with the tokenizer's
    chat template; `chat=False` continues the prompt text after `start_token_id`. Temperature 0 is greedy; above
    it, prompt `i` samples from a generator seeded with `seed + i`, so a run is reproducible (`seed=None`: torch's
    global generator, not reproducible). The model is left in the train/eval mode it came in.
    """
    if chat and not tokenizer.chat_template:
        raise ValueError(
            f"{_model_name(model)} has no chat template: use chat=False for a plain continuation of the prompt"
        )
    if max_new_tokens < 1 or max_batch < 1:
        raise ValueError(f"max_new_tokens and max_batch must be >= 1, got {max_new_tokens}, {max_batch}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not prompts:
        return []
    was_training = model.training
    engine = Engine(model, tokenizer, max_batch=max_batch, max_pending=len(prompts))
    done: dict[int, tuple[Finished, float]] = {}
    requests = []
    try:
        ids = [_prompt_ids(engine, p, chat, system) for p in prompts]
        events: queue.Queue = queue.Queue()
        engine.start()
        for i, prompt_ids in enumerate(ids):
            params = SamplingParams(
                max_tokens=max_new_tokens,
                temperature=temperature,
                stop=tuple(stop or ()),
                seed=None if temperature == 0 or seed is None else seed + i,
            )
            requests.append(engine.submit(prompt_ids, params, events=events, first_index=i))
        for ev in stream_events(events, len(prompts)):
            if isinstance(ev, Failed):
                raise RuntimeError(f"generation with {_model_name(model)} failed: {ev.message}")
            if isinstance(ev, Finished):
                done[ev.index] = (ev, time.perf_counter())
    finally:
        for r in requests:
            r.cancel()
        engine.stop(0)
        model.train(was_training)
    answers = []
    for i, prompt in enumerate(prompts):
        fin, at = done[i]
        answers.append(
            Answer(_prompt_text(prompt), fin.text, fin.tokens, fin.reason, at - requests[i].submitted)
        )
    return answers


def _prompt_text(prompt: str | list[dict]) -> str:
    if isinstance(prompt, str):
        return prompt
    return str(prompt[-1].get("content", "")) if prompt else ""


def extract_answer(text: str, regex: str | None, *, group_select: int = 0, fallback: str = INVALID) -> str:
    """The answer in `text` as lm-eval's `RegexFilter` extracts it; `regex=None` gives the stripped text.

    All matches are found (`re.findall`) and the one at `group_select` kept (negative counts from the end; out of
    range raises IndexError, as in the harness). With several capture groups the first non-empty group is the
    answer (`fallback` if all are empty). The answer is stripped; no match gives `fallback` ("[invalid]").
    """
    if regex is None:
        return text.strip()
    matches = re.findall(regex, text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), fallback)
    return match.strip()


def exact_match(
    prediction: str,
    gold: str,
    *,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
    regexes_to_ignore: list[str] | None = None,
) -> bool:
    """lm-eval's `exact_match` for one pair: remove `regexes_to_ignore`, then optionally lowercase, drop ASCII
    punctuation (`string.punctuation`: "«»—" stay) and digits, then compare exactly (whitespace counts)."""
    for r in regexes_to_ignore or ():
        prediction, gold = re.sub(r, "", prediction), re.sub(r, "", gold)
    if ignore_case:
        prediction, gold = prediction.lower(), gold.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        prediction, gold = prediction.translate(table), gold.translate(table)
    if ignore_numbers:
        table = str.maketrans("", "", string.digits)
        prediction, gold = prediction.translate(table), gold.translate(table)
    # numpy string arrays (what the harness compares) drop trailing NUL characters
    return prediction.rstrip("\x00") == gold.rstrip("\x00")
