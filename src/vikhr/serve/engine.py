"""A generation engine that batches concurrent requests on one model (continuous batching with a KV cache).

One background thread owns the model. Requests wait in a queue; at every step the thread admits waiting
requests while the batch has room (their prompts are prefilled together and their KV caches joined to the
running batch, left-padded), then decodes one token for every running sequence in a single forward pass, and
drops the sequences that finished. A request never waits for another one to finish, only for a free row.

Callers (the HTTP server, the chat REPL, benchmarks) submit token ids with sampling parameters and read
`Delta` / `Finished` / `Failed` events from the returned `Request`.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vikhr.log import get_logger
from vikhr.serve.sampling import find_stop, held_back, sample_next

log = get_logger(__name__)


class EngineBusy(RuntimeError):
    """The queue of waiting requests is full (the server answers 429)."""


class EngineClosed(RuntimeError):
    """The engine is shutting down and takes no new requests (the server answers 503)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to generate one completion."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Never stop at the end-of-sequence token (it is masked out): benchmarks use it for fixed-length output.
    ignore_eos: bool = False


@dataclass
class Delta:
    index: int
    text: str


@dataclass
class Finished:
    index: int
    reason: str  # "stop" (end of sequence or a stop string) or "length" (max_tokens or the context is full)
    text: str  # the whole completion of this choice
    tokens: int  # tokens generated for this choice


@dataclass
class Failed:
    message: str
    status: int = 500


@dataclass
class Request:
    """A submitted prompt with `n` choices; events arrive on `events` until every choice is finished."""

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    n: int = 1
    first_index: int = 0
    events: queue.Queue = field(default_factory=queue.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating for this request (a client went away); its rows leave the batch at the next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def stream(self, timeout: float | None = None) -> Iterator[Delta | Finished | Failed]:
        """Events in order, ending after the last `Finished` or a `Failed` (queue.Empty after `timeout`)."""
        left = self.n
        while left:
            ev = self.events.get(timeout=timeout)
            yield ev
            if isinstance(ev, Failed):
                return
            if isinstance(ev, Finished):
                left -= 1

    def result(self, timeout: float | None = None) -> list[Finished]:
        """Block until done; the finished choices ordered by index. Raises RuntimeError on failure."""
        done = []
        for ev in self.stream(timeout):
            if isinstance(ev, Failed):
                raise RuntimeError(ev.message)
            if isinstance(ev, Finished):
                done.append(ev)
        return sorted(done, key=lambda f: f.index)


def stream_events(
    events: queue.Queue, choices: int, poll_s: float = 0.5, gone=None
) -> Iterator[Delta | Finished | Failed]:
    """Events from a queue shared by requests with `choices` choices in all, until all finish or one fails.

    `gone()` is asked every `poll_s` while nothing arrives; when it says the reader went away, iteration stops.
    """
    left = choices
    while left:
        try:
            ev = events.get(timeout=poll_s)
        except queue.Empty:
            if gone is not None and gone():
                return
            continue
        yield ev
        if isinstance(ev, Failed):
            return
        if isinstance(ev, Finished):
            left -= 1


@dataclass
class _Seq:
    req: Request
    index: int
    generator: torch.Generator | None
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters already sent as deltas
    text: str = ""  # the completion decoded so far (complete characters only until the sequence ends)
    prefix: int = 0  # incremental decoding window: ids[prefix:read] gave the last decoded piece
    read: int = 0

    def decode_more(self, tokenizer, end: int | None = None, final: bool = False) -> None:
        """Extend `text` by the new tokens (up to `end`) decoding only a short window of ids, not all of them.

        The window trick (as in vLLM/TGI): decode ids[prefix:read] and ids[prefix:end]; the difference is the new
        text, held back while it ends in an unfinished UTF-8 character; at the end (`final`) an unfinished character
        is dropped.
        """
        end = len(self.ids) if end is None else end
        if end <= self.read:
            return
        before = tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = tokenizer.decode(self.ids[self.prefix : end], skip_special_tokens=True)
        if final:  # a character the length limit cut in half (one U+FFFD at the very end) is dropped
            after = after.removesuffix("\ufffd")
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, end


@dataclass
class EngineStats:
    requests: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    steps: int = 0
    rows_decoded: int = 0  # sum of batch sizes over decode steps: rows_decoded / steps is the mean batch

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["mean_batch"] = round(self.rows_decoded / self.steps, 2) if self.steps else 0.0
        return d


class Engine:
    """Owns a causal LM and its tokenizer; generates for many requests at once."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch: int = 16,
        max_pending: int = 256,
        context_length: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_pending = max_pending
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        self.context_length = min(context_length, limit) if context_length else limit
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model, tokenizer)
        # Rows of a padded vocabulary (ids past the tokenizer) are never sampled.
        self.n_real_tokens = len(tokenizer)
        self.stats = EngineStats()
        self._ids = itertools.count(1)
        self._pending: deque[Request] = deque()
        self._active: list[_Seq] = []
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._cv = threading.Condition()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None

    @classmethod
    def load(cls, source: str, *, dtype: str = "auto", device: str | None = None, **kwargs) -> Engine:
        """Load a model folder, alias or hub id (as `vikhr.models.resolve_model` understands it)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from vikhr.models import resolve_model
        from vikhr.precision import compute_dtype, dtype_name

        path = resolve_model(source)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = dtype_name(compute_dtype(device))
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
        return cls(model, tokenizer, **kwargs)

    # ---- the caller's side -------------------------------------------------------------------------------------

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of `messages` under the model's chat template, ending with the assistant's turn opening."""
        if not self.tokenizer.chat_template:
            raise ValueError("this model has no chat template")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="vikhr-engine", daemon=True)
        self._thread.start()
        return self

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        n: int = 1,
        *,
        events: queue.Queue | None = None,
        first_index: int = 0,
    ) -> Request:
        """Queue a prompt for `n` choices numbered from `first_index`.

        Several requests may share one `events` queue (a multi-prompt completion). Raises ValueError when the
        prompt cannot fit, EngineBusy / EngineClosed when the engine refuses it.
        """
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + params.max_tokens > self.context_length:
            raise ValueError(
                f"this model's maximum context length is {self.context_length} tokens; the request needs "
                f"{len(prompt_ids) + params.max_tokens} ({len(prompt_ids)} in the prompt, {params.max_tokens} "
                "for the completion)"
            )
        req = Request(next(self._ids), list(prompt_ids), params, n, first_index=first_index)
        if events is not None:
            req.events = events
        with self._cv:
            if not self._accepting:
                raise EngineClosed("the server is shutting down")
            if len(self._pending) >= self.max_pending:
                raise EngineBusy(f"{len(self._pending)} requests are already waiting; retry later")
            self._pending.append(req)
            self._cv.notify()
        return req

    def load_info(self) -> dict:
        with self._cv:
            return {"running": len(self._active), "waiting": len(self._pending), **self.stats.as_dict()}

    def stop(self, drain_s: float = 10.0) -> None:
        """Take no new requests, let running ones finish for up to `drain_s`, fail the rest, stop the thread."""
        with self._cv:
            self._accepting = False
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            with self._cv:
                if not self._pending and not self._active:
                    break
            time.sleep(0.05)
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()

    # ---- the engine thread -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._stop and not self._pending and not self._active:
                        self._cv.wait()
                    if self._stop:
                        break
                    new = self._admit()
                try:
                    self._drop_cancelled()
                    if new:
                        self._prefill(new)
                    if self._active:
                        self._step()
                except Exception as e:  # one bad batch must not take the server down
                    log.exception("generation failed")
                    self._fail_all(f"generation failed: {type(e).__name__}: {e}")
        with self._cv:
            left = list(self._pending)
            self._pending.clear()
        for req in left:
            req.events.put(Failed("the server is shutting down", 503))
        self._fail_all("the server is shutting down", 503)

    def _admit(self) -> list[Request]:
        """Waiting requests that fit in the batch now (whole requests; one oversized request runs alone)."""
        new, rows = [], len(self._active)
        while self._pending:
            req = self._pending[0]
            if req.cancelled:
                self._pending.popleft()
                continue
            if rows + req.n > self.max_batch and rows > 0:
                break
            new.append(self._pending.popleft())
            rows += req.n
        return new

    def _prefill(self, requests: list[Request]) -> None:
        """Run the new prompts (left-padded together), sample their first tokens, join them to the batch."""
        from transformers import DynamicCache

        seqs = []
        for req in requests:
            self.stats.requests += 1
            self.stats.prompt_tokens += len(req.prompt_ids)
            for i in range(req.n):
                gen = None
                if req.params.seed is not None:
                    gen = torch.Generator(device=self.device).manual_seed(req.params.seed + i)
                seqs.append(_Seq(req, req.first_index + i, gen))
        width = max(len(s.req.prompt_ids) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            p = s.req.prompt_ids
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        tokens = self._sample(out.logits[:, -1], seqs)
        self._join(seqs, out.cache, mask)
        self._advance(seqs, tokens)

    def _step(self) -> None:
        """One decode step: the last token of every running sequence in one forward pass."""
        seqs = self._active
        last = torch.tensor([[s.ids[-1]] for s in seqs], device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(seqs), 1)], dim=1)
        out = self.model(
            input_ids=last,
            attention_mask=self._mask,
            position_ids=self._mask.sum(-1, keepdim=True) - 1,
            cache=self._cache,
            use_cache=True,
        )
        self._cache = out.cache
        self.stats.steps += 1
        self.stats.rows_decoded += len(seqs)
        self._advance(list(seqs), self._sample(out.logits[:, -1], seqs))

    def _sample(self, logits: torch.Tensor, seqs: list[_Seq]) -> list[int]:
        logits = logits.float()
        if logits.shape[-1] > self.n_real_tokens:
            logits[:, self.n_real_tokens :] = float("-inf")
        no_eos = [r for r, s in enumerate(seqs) if s.req.params.ignore_eos]
        if no_eos and self.eos_ids:
            logits[torch.tensor(no_eos)[:, None], torch.tensor(sorted(self.eos_ids))[None, :]] = float("-inf")
        temperature = torch.tensor([s.req.params.temperature for s in seqs], device=logits.device)
        top_p = torch.tensor([s.req.params.top_p for s in seqs], device=logits.device)
        return sample_next(logits, temperature, top_p, [s.generator for s in seqs]).tolist()

    def _advance(self, seqs: list[_Seq], tokens: list[int]) -> None:
        """Append each sequence's new token, send its text, finish the ones that are done."""
        done = set()
        for s, tok in zip(seqs, tokens, strict=True):
            s.ids.append(tok)
            self.stats.completion_tokens += 1
            p = s.req.params
            reason = "stop" if tok in self.eos_ids and not p.ignore_eos else None
            if reason is None and (len(s.ids) >= p.max_tokens or s.req.cancelled):
                reason = "length" if len(s.ids) >= p.max_tokens else "cancelled"
            s.decode_more(self.tokenizer, len(s.ids) - (reason == "stop"), final=reason is not None)
            text = s.text
            cut = find_stop(text, list(p.stop), s.sent) if p.stop else -1
            if cut >= 0:
                text, reason = text[:cut], "stop"
                s.text = text
            safe = len(text) if reason else len(text) - held_back(text, list(p.stop))
            if safe > s.sent:
                s.req.events.put(Delta(s.index, text[s.sent : safe]))
                s.sent = safe
            if reason:
                s.req.events.put(Finished(s.index, reason, text, len(s.ids)))
                done.add(id(s))
        if done:
            self._remove([r for r, s in enumerate(self._active) if id(s) not in done])

    # ---- the batch's KV cache ----------------------------------------------------------------------------------

    def _join(self, seqs: list[_Seq], cache, mask: torch.Tensor) -> None:
        """Add prefilled sequences to the running batch, left-padding whichever side is shorter."""
        if not self._active:
            self._active, self._cache, self._mask = list(seqs), cache, mask
            return
        a, b = self._mask.shape[1], mask.shape[1]
        width = max(a, b)
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width - a), _pad_left(new.keys, width - b)])
            old.values = torch.cat([_pad_left(old.values, width - a), _pad_left(new.values, width - b)])
        self._mask = torch.cat([F.pad(self._mask, (width - a, 0)), F.pad(mask, (width - b, 0))])
        self._active.extend(seqs)

    def _remove(self, keep: list[int]) -> None:
        """Keep only rows `keep` of the batch and cut cache columns that are padding in every row."""
        self._active = [self._active[r] for r in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        first = int(mask.any(0).nonzero()[0])
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self._mask = mask[:, first:]

    def _drop_cancelled(self) -> None:
        gone = [r for r, s in enumerate(self._active) if s.req.cancelled]
        if gone:
            self._remove([r for r in range(len(self._active)) if r not in set(gone)])

    def _fail_all(self, message: str, status: int = 500) -> None:
        for req in {id(s.req): s.req for s in self._active}.values():
            req.events.put(Failed(message, status))
        self._active, self._cache, self._mask = [], None, None


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad a [batch, heads, length, dim] cache tensor with `n` zero columns on the left."""
    return F.pad(t, (0, 0, n, 0)) if n else t


def _eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a completion: the generation config's eos ids and the tokenizer's eos."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    for e in eos if isinstance(eos, list) else [eos]:
        if e is not None:
            ids.add(int(e))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
