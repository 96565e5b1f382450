"""Log-likelihoods of continuations, the way lm-evaluation-harness 0.4.13 (HF backend) defines them, computed faster.

Tokenization follows lm-eval exactly (`LMTokenizer`): trailing spaces of the context move into the continuation,
context + continuation are encoded together and split at the length of the context's own encoding; an empty context
is replaced by the prefix token (bos, else eos); a pair longer than `max_length + 1` tokens loses tokens from the
left. What differs is the arithmetic: lm-eval runs one forward pass per (item, choice) over the whole prompt, so a
question shared by ten options is processed ten times. Here every item becomes one packed row — the context once,
then each continuation as a branch that sees the context and itself but not the other branches (a 4-D attention
mask and position ids that restart after the context) — and the LM head runs only at the positions that predict a
continuation token. The log-likelihoods are the same numbers up to float rounding (different matmul shapes).

Models whose attention does not take a 4-D mask fall back to one row per choice (`packed=False`), still with the
LM head only where it is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vikhr.log import get_logger, progress

logger = get_logger(__name__)


@dataclass
class Scored:
    """The log-likelihood of each continuation of one request, lm-eval's `(logprob, is_greedy)` per choice."""

    loglikelihoods: list[float]
    greedy: list[bool]
    """Whether greedy decoding from the context would produce exactly this continuation's tokens."""
    context_tokens: int
    continuation_tokens: list[int]
    truncated: bool = False
    """Context + some continuation was longer than `max_length + 1`: tokens were cut from the left (as lm-eval)."""


class LMTokenizer:
    """lm-eval 0.4.13's HF tokenization rules for log-likelihood requests, around a Hugging Face tokenizer."""

    def __init__(self, tokenizer, *, add_bos_token: bool | None = None, prefix_token_id: int | None = None):
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token
        if prefix_token_id is None:
            prefix_token_id = (
                tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            )
        if prefix_token_id is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has neither a bos nor an eos token: an empty context cannot be scored"
            )
        self.prefix_token_id = int(prefix_token_id)
        self._prefix_str = tokenizer.decode([self.prefix_token_id])

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """lm-eval's `tok_encode`: the tokenizer's own special-token default unless told, and none when the text
        already starts with the prefix token's string."""
        kwargs = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kwargs["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and self._prefix_str and text.startswith(self._prefix_str):
            kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(text, **kwargs))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of one request, by lm-eval's rule."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if not cont:
                raise ValueError(f"the continuation {continuation!r} encodes to no tokens")
            if cont[0] != self.prefix_token_id:
                return [self.prefix_token_id], cont
            return cont[:1], cont[1:]
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx) :]


@dataclass
class _Group:
    """A context and the continuations scored after it, inside one packed row."""

    ctx: list[int]
    conts: list[list[int]]
    choices: list[int]  # the choice index of each continuation


@dataclass
class _Row:
    """One forward-pass row: a request's context and the continuations scored after it."""

    request: int
    group: _Group

    def __len__(self) -> int:
        return len(self.group.ctx) + sum(len(c) - 1 for c in self.group.conts)


SHARE_MIN = 0.25
"""Pack a context with its continuations only when that saves at least this share of the continuations' tokens;
an empty or one-token context (lm-eval's `xnli_ru` form) would only lengthen the attention span."""


def _worth_sharing(group: _Group) -> list[_Group]:
    """The group itself when sharing its context pays, else one group per continuation."""
    saved = len(group.ctx) * (len(group.conts) - 1)
    if len(group.conts) == 1 or saved >= SHARE_MIN * sum(len(c) for c in group.conts):
        return [group]
    return [_Group(group.ctx, [c], [i]) for c, i in zip(group.conts, group.choices, strict=True)]


def _plan_rows(
    pairs: list[list[tuple[list[int], list[int]]]], max_length: int, packed: bool
) -> tuple[list[_Row], list[bool]]:
    """One row per shared context (packed: a request's choices with the same context ids, when sharing pays) or
    per choice; a truncated choice has a context of its own."""
    rows, truncated = [], []
    for r, choice_pairs in enumerate(pairs):
        groups: list[_Group] = []
        cut = False
        for i, (ctx, cont) in enumerate(choice_pairs):
            if not cont:
                raise ValueError(f"request {r}, choice {i}: the continuation encodes to no tokens")
            if len(cont) > max_length:
                raise ValueError(
                    f"request {r}, choice {i}: the continuation alone has {len(cont)} tokens, more than the "
                    f"model's maximum length {max_length}"
                )
            if len(ctx) + len(cont) > max_length + 1:  # lm-eval: (ctx + cont)[-(max_length + 1):][:-1]
                ctx = (ctx + cont)[-(max_length + 1) : -len(cont)]
                cut = True
            same = next((g for g in groups if g.ctx == ctx), None) if packed else None
            if same is None:
                groups.append(_Group(list(ctx), [list(cont)], [i]))
            else:
                same.conts.append(list(cont))
                same.choices.append(i)
        truncated.append(cut)
        if packed:  # nothing worth sharing: one row per choice rather than longer attention spans
            groups = [part for g in groups for part in _worth_sharing(g)]
        rows.extend(_Row(r, g) for g in groups)
    return rows, truncated


def _row_tensors(row: _Row):
    """Token ids, position ids and branch ids (-1 = context) of one row, and what to score:
    [(choice, [(position, target id), ...]), ...]."""
    group = row.group
    ids, pos, br, targets = list(group.ctx), list(range(len(group.ctx))), [-1] * len(group.ctx), []
    for b, (cont, choice) in enumerate(zip(group.conts, group.choices, strict=True)):
        first = len(ids)
        body = cont[:-1]  # the last token is predicted, never fed
        ids += body
        pos += range(len(group.ctx), len(group.ctx) + len(body))
        br += [b] * len(body)
        predicting = [len(group.ctx) - 1, *range(first, first + len(body))]
        targets.append((choice, list(zip(predicting, cont, strict=True))))
    return ids, pos, br, targets


def _attention_mask(br: torch.Tensor, valid: torch.Tensor, dtype) -> torch.Tensor:
    """[B, 1, L, L] additive mask: a token sees the earlier context tokens and the earlier tokens of its own branch."""
    n = br.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    visible_branch = (br[:, None, :] == -1) | (br[:, :, None] == br[:, None, :])
    allowed = causal & visible_branch & valid[:, None, :]
    allowed |= torch.eye(n, dtype=torch.bool)  # padding rows attend to themselves (no all-masked rows)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _head_split(model):
    """(body, head) when logits are exactly `head(body(...).last_hidden_state)` (Llama, Mistral, Qwen, SmolLM2, ...),
    so that the head can run on the predicting positions of each row only; None for anything else (a final logit
    soft-cap or scale, an unusual layout), which then takes the union of positions through `logits_to_keep`."""
    config = getattr(model.config, "text_config", None) or model.config
    if any(
        getattr(config, a, None) not in (None, 1, 1.0) for a in ("final_logit_softcapping", "logit_scale")
    ):
        return None
    body, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if body is None or body is model or head is None or type(model).__name__.endswith("LMHeadModel"):
        return None
    return body, head


def _logits_at(model, input_ids, attention_mask, position_ids, rows: torch.Tensor, cols: torch.Tensor):
    """Logits [N, V] at (rows[i], cols[i]): the LM head runs at those positions only."""
    split = _head_split(model)
    if split is not None:
        body, head = split
        hidden = body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return head(hidden[rows, cols])
    union, where = torch.unique(cols, return_inverse=True)
    try:
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            logits_to_keep=union, use_cache=False,
        ).logits  # fmt: skip
    except TypeError:  # a model without `logits_to_keep`
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        logits = out.logits[:, union]
    return logits[rows, where]


def _mask_dtype(model) -> torch.dtype:
    dtype = next(model.parameters()).dtype
    return dtype if dtype.is_floating_point else torch.float32


@torch.no_grad()
def score_requests(
    model,
    lm_tokenizer: LMTokenizer,
    requests: Sequence[tuple[str, Sequence[str]]],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    packed: bool | None = None,
    device=None,
    desc: str = "log-likelihoods",
) -> list[Scored]:
    """Score each (context, continuations) request: one `Scored` per request, in input order.

    `max_length` defaults to the model's maximum positions (lm-eval's rule: `max_position_embeddings`, else the
    tokenizer's `model_max_length`, else 2048). `packed=None` packs when the model takes a 4-D attention mask.
    The forward runs in the model's own dtype (as lm-eval's `dtype=` model argument): load it in the dtype wanted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    max_length = max_length or model_max_length(model, lm_tokenizer.tokenizer)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if packed is None:
        packed = supports_packing(model)
    pairs = [[lm_tokenizer.encode_pair(ctx, c) for c in conts] for ctx, conts in requests]
    rows, truncated = _plan_rows(pairs, max_length, packed)
    if any(truncated):
        logger.warning(
            "%d of %d requests were longer than %d tokens and lost tokens from the left (as lm-eval does)",
            sum(truncated), len(truncated), max_length,
        )  # fmt: skip
    lls: list[list[float]] = [[math.nan] * len(conts) for _, conts in requests]
    greedy: list[list[bool]] = [[False] * len(conts) for _, conts in requests]
    was_training = model.training
    model.eval()
    mask_dtype = _mask_dtype(model)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    try:
        for b in progress(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            batch = [rows[i] for i in order[b : b + batch_size]]
            built = [_row_tensors(row) for row in batch]
            width = max(len(ids) for ids, *_ in built)
            input_ids = torch.zeros(len(batch), width, dtype=torch.long)
            position_ids = torch.zeros(len(batch), width, dtype=torch.long)
            br = torch.full((len(batch), width), -2, dtype=torch.long)  # -2: padding
            for k, (ids, pos, bb, _) in enumerate(built):
                n = len(ids)
                input_ids[k, :n] = torch.tensor(ids)
                position_ids[k, :n] = torch.tensor(pos)
                br[k, :n] = torch.tensor(bb)
            valid = br > -2
            if packed:
                attention_mask = _attention_mask(br, valid, mask_dtype).to(device)
            else:
                attention_mask = valid.long().to(device)
            rows_at, cols_at, spans = [], [], []  # every predicting position of the batch, flattened
            for k, (*_, targets) in enumerate(built):
                for choice, tp in targets:
                    spans.append((k, choice, len(rows_at), [t for _, t in tp]))
                    rows_at += [k] * len(tp)
                    cols_at += [p for p, _ in tp]
            logits = _logits_at(
                model, input_ids.to(device), attention_mask, position_ids.to(device),
                torch.tensor(rows_at, device=device), torch.tensor(cols_at, device=device),
            )  # fmt: skip
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            best = logprobs.argmax(dim=-1).cpu()
            for k, choice, start, ids in spans:
                at = torch.arange(start, start + len(ids))
                target = torch.tensor(ids)
                request = batch[k].request
                lls[request][choice] = float(logprobs[at.to(device), target.to(device)].sum())
                greedy[request][choice] = bool((best[at] == target).all())
    finally:
        model.train(was_training)
    out = []
    for r, choice_pairs in enumerate(pairs):
        out.append(
            Scored(
                loglikelihoods=lls[r],
                greedy=greedy[r],
                context_tokens=len(choice_pairs[0][0]) if choice_pairs else 0,
                continuation_tokens=[len(c) for _, c in choice_pairs],
                truncated=truncated[r],
            )
        )
    return out


def model_max_length(model, tokenizer, default: int = 2048) -> int:
    """The context length lm-eval would use: the config's positions, else the tokenizer's limit, else `default`."""
    config = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 10**9:
        return int(limit)
    return default


def supports_packing(model) -> bool:
    """Whether this model's attention accepts a custom 4-D mask (checked once per model on two tokens)."""
    cached = getattr(model, "_vikhr_packing", None)
    if cached is not None:
        return cached
    device = next(model.parameters()).device
    ids = torch.tensor([[0, 0, 0]], device=device)
    # token 2 sees only token 0: its output must equal position 1's output of a 2-token causal pass
    allowed = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool, device=device)
    dtype = _mask_dtype(model)
    mask = torch.zeros(1, 1, 3, 3, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    try:
        with torch.no_grad():
            packed = model(
                input_ids=ids, attention_mask=mask, position_ids=torch.tensor([[0, 1, 1]], device=device)
            ).logits
            plain = model(input_ids=ids[:, :2]).logits
        ok = bool(torch.allclose(packed[0, 2].float(), plain[0, 1].float(), atol=1e-3, rtol=1e-3))
    except Exception as e:  # noqa: BLE001 - any failure means: do not pack
        logger.info(
            "4-D attention masks are not supported by %s (%s): one row per choice", type(model).__name__, e
        )
        ok = False
    model._vikhr_packing = ok
    return ok


def choice_predictions(lls: Sequence[float], choices: Sequence[str]) -> dict[str, int]:
    """lm-eval's multiple-choice predictions: argmax of the log-likelihood (`acc`), of it divided by the choice's
    characters (`acc_norm`) and by its UTF-8 bytes (`acc_bytes`); numpy's argmax, so ties go to the first choice."""
    values = np.asarray(lls, dtype=np.float64)
    chars = np.array([float(len(c)) for c in choices])
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in choices])
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "acc": int(np.argmax(values)),
            "acc_norm": int(np.argmax(values / chars)),
            "acc_bytes": int(np.argmax(values / nbytes)),
        }
