"""Bits per character and greedy continuations of a causal LM, plus cheap diagnostics of its embedding rows.

Bits per character compares models whose tokenizers differ: the total negative log-likelihood of a text (in
bits) divided by its length in characters. Every line is conditioned on one start token (`start_token_id`), so
the first token of a line is predicted too and every character counts. Used by the transplant stage's
pre-flight checks (a transplanted model should land far below `uniform_bits_per_char`) and by evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

from vikhr.log import get_logger, progress
from vikhr.precision import autocast

logger = get_logger(__name__)

DOCUMENT_SEPARATOR = "<|endoftext|>"


def start_token_id(tokenizer) -> int | None:
    """The token every line is conditioned on, so that the first token of a line is predicted too.

    The bos id if the tokenizer adds bos by itself (Mistral, Llama-2); else `<|endoftext|>` if the vocabulary has
    it (SmolLM2, Qwen: their document separator); else bos, else eos; None when none of these exists.
    """
    bos = tokenizer.bos_token_id
    if bos is not None and _adds_bos(tokenizer, bos):
        return bos
    sep = tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR)
    if sep is not None and tokenizer.convert_ids_to_tokens(sep) == DOCUMENT_SEPARATOR:
        return sep
    if bos is not None:
        return bos
    return tokenizer.eos_token_id


def _adds_bos(tokenizer, bos: int) -> bool:
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(with_special) and with_special[0] == bos and (not without or without[0] != bos)


@dataclass
class BpcResult:
    """Bits per character of a set of lines, with the counts it comes from."""

    bits_per_char: float
    """Total negative log-likelihood in bits divided by `chars`."""
    nll_bits: float
    """Sum over predicted tokens of -log2 p(token | prefix)."""
    chars: int
    """Characters scored (len of each line, or of the kept prefix of a truncated line)."""
    tokens: int
    """Tokens predicted (the start token is given, not predicted)."""
    lines: int
    """Non-empty lines scored."""
    tokens_per_char: float
    """`tokens / chars`: how finely the tokenizer splits this text."""
    bytes: int = 0
    """UTF-8 bytes of the characters scored."""
    bits_per_byte: float = 0.0
    """`nll_bits / bytes`: vocabulary-invariant like bits per character, comparable across scripts' encodings."""
    perplexity: float = 0.0
    """Token-level perplexity `exp(nats / tokens)`: depends on the tokenizer, so compare it only between models
    that share one; bits per character / byte are the fair comparison across vocabularies."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Encoded:
    ids: list[int]  # start token first
    chars: int
    nbytes: int


def _encode_lines(tokenizer, lines: Sequence[str], max_tokens: int) -> list[_Encoded]:
    """[start] + the line's tokens for each non-blank line, cut to `max_tokens` ids in all."""
    if max_tokens < 2:
        raise ValueError(
            f"max_tokens must be at least 2 (the start token and one predicted), got {max_tokens}"
        )
    start = start_token_id(tokenizer)
    if start is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no bos, eos or {DOCUMENT_SEPARATOR} token to condition lines on; "
            "without one the first token of each line cannot be scored"
        )
    kept = [line for line in lines if line.strip()]
    if not kept:
        return []
    out, truncated = [], 0
    for line, ids in zip(kept, tokenizer(kept, add_special_tokens=False)["input_ids"], strict=True):
        if not ids:
            continue
        chars = len(line)
        if len(ids) > max_tokens - 1:
            truncated += 1
            ids = ids[: max_tokens - 1]
            chars = _chars_covered(tokenizer, line, ids)
        out.append(_Encoded([start, *ids], chars, len(line[:chars].encode("utf-8"))))
    if truncated:
        logger.warning(
            "%d of %d lines are longer than max_tokens=%d and were truncated; only their kept prefix is scored",
            truncated, len(kept), max_tokens,
        )  # fmt: skip
    return out


def _chars_covered(tokenizer, line: str, ids: list[int]) -> int:
    """Characters of `line` covered by its first `len(ids)` tokens (offsets if the tokenizer gives them)."""
    try:
        offsets = tokenizer(line, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return int(offsets[len(ids) - 1][1])
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return len(tokenizer.decode(ids))


def _forward_batches(
    model, seqs: list[_Encoded], batch_size: int, device, desc: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (float32 logits at the predicting positions, target ids, target mask) batch by batch.

    Sequences are sorted longest first and right-padded; with a causal model the padding never reaches the real
    positions, so batching does not change the result beyond float rounding. The forward runs in the device's
    compute dtype (`vikhr.precision`); the log-softmax is taken in float32.
    """
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].ids))
    starts = range(0, len(order), batch_size)
    for b in progress(starts, desc=desc, unit="batch", leave=False):
        batch = [seqs[i].ids for i in order[b : b + batch_size]]
        width = max(len(ids) for ids in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        with autocast(device):
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        yield logits[:, :-1].float(), input_ids[:, 1:], attention_mask[:, 1:].bool()


def _model_device(model, device):
    return torch.device(device) if device is not None else next(model.parameters()).device


@torch.no_grad()
def bits_per_char(
    model, tokenizer, lines: list[str], *, batch_size: int = 8, max_tokens: int = 1024, device=None
) -> BpcResult:
    """Bits per character of `model` on `lines`, each line scored on its own after the start token.

    Blank lines are skipped; a line longer than `max_tokens` (start token included) is truncated with a warning
    and only the characters its kept tokens cover are counted.
    """
    seqs = _encode_lines(tokenizer, lines, max_tokens)
    if not seqs:
        raise ValueError("no non-empty lines to score")
    device = _model_device(model, device)
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64)
    try:
        for logits, targets, mask in _forward_batches(model, seqs, batch_size, device, "bits per char"):
            picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            nll = torch.logsumexp(logits, dim=-1) - picked
            nats += nll[mask].double().sum().cpu()
    finally:
        model.train(was_training)
    chars = sum(s.chars for s in seqs)
    nbytes = sum(s.nbytes for s in seqs)
    tokens = sum(len(s.ids) - 1 for s in seqs)
    bits = float(nats) / math.log(2)
    return BpcResult(
        bits_per_char=bits / chars,
        nll_bits=bits,
        chars=chars,
        tokens=tokens,
        lines=len(seqs),
        tokens_per_char=tokens / chars,
        bytes=nbytes,
        bits_per_byte=bits / nbytes,
        perplexity=math.exp(float(nats) / tokens),
    )


def uniform_bits_per_char(vocab_size: int, tokens: int, chars: int) -> float:
    """Bits per character of a model that knows nothing (uniform over `vocab_size`) with this tokenization."""
    if chars <= 0:
        raise ValueError(f"chars must be positive, got {chars}")
    return tokens * math.log2(vocab_size) / chars


@torch.no_grad()
def greedy_continuations(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 24) -> list[str]:
    """Greedy continuation of each prompt (after the start token), only the new text, special tokens dropped."""
    from transformers import GenerationConfig

    start = start_token_id(tokenizer)
    eos = tokenizer.eos_token_id
    pad = next(t for t in (tokenizer.pad_token_id, eos, start, 0) if t is not None)
    # An explicit config: deterministic whatever the model folder's generation_config says, or if it has none.
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos
    )
    device = _model_device(model, None)
    was_training, own_config = model.training, model.generation_config
    model.eval()
    if own_config is None:  # generate() reads the model's own config even when one is passed
        model.generation_config = config
    out = []
    try:
        for prompt in prompts:
            ids = ([start] if start is not None else []) + tokenizer(prompt, add_special_tokens=False)[
                "input_ids"
            ]
            if not ids:
                raise ValueError(f"prompt {prompt!r} has no tokens and the tokenizer no start token")
            input_ids = torch.tensor([ids], device=device)
            with autocast(device):
                generated = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
                )
            out.append(tokenizer.decode(generated[0, len(ids) :].tolist(), skip_special_tokens=True))
    finally:
        model.train(was_training)
        model.generation_config = own_config
    return out


def embedding_norm_stats(
    weight: torch.Tensor, groups: dict[str, torch.Tensor | list[int]]
) -> dict[str, dict]:
    """Count, mean, std (population), min and max of the L2 norms of each named group of rows of `weight`."""
    norms = weight.detach().float().norm(dim=-1).cpu()
    stats = {}
    for name, ids in groups.items():
        ids = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
        if ids.numel() == 0:
            stats[name] = {"count": 0}
            continue
        g = norms[ids]
        stats[name] = {
            "count": int(g.numel()),
            "mean": round(float(g.mean()), 4),
            "std": round(float(g.std(correction=0)), 4),
            "min": round(float(g.min()), 4),
            "max": round(float(g.max()), 4),
        }
    return stats


@torch.no_grad()
def output_mass(
    model, tokenizer, lines: list[str], row_ids: list[int] | torch.Tensor, *, max_lines: int = 32
) -> float:
    """Average probability the next-token distribution puts on `row_ids`, over the predicting positions of lines.

    A transplanted model whose new rows take most of this mass would babble new tokens; the caller warns on it.
    """
    seqs = _encode_lines(tokenizer, [line for line in lines if line.strip()][:max_lines], max_tokens=1024)
    if not seqs:
        raise ValueError("no non-empty lines to measure output mass on")
    device = _model_device(model, None)
    rows = torch.as_tensor(row_ids, dtype=torch.long).flatten().unique().to(device)
    was_training = model.training
    model.eval()
    mass, positions = 0.0, 0
    try:
        for logits, _, mask in _forward_batches(model, seqs, 8, device, "output mass"):
            log_mass = torch.logsumexp(logits[..., rows], dim=-1) - torch.logsumexp(logits, dim=-1)
            mass += float(log_mass[mask].double().exp().sum())
            positions += int(mask.sum())
    finally:
        model.train(was_training)
    return mass / positions
