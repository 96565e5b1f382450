"""Token alignment between the adapted model's tokenizer and the base model's own one (the `base` KL reference).

The same text is tokenized twice. Position t of a tokenization (its logits predict token t+1) has a *boundary*:
the character index where token t+1 starts, i.e. the prefix the prediction is conditioned on. A new position and
a base position are aligned when their boundaries are the same character index and the token each tokenization
has next is in both vocabularies; at such a pair both models predict a next token from the same characters, and
`aligned_kl` compares them over the shared vocabulary, each side renormalised over it.

Boundaries are read from the character offsets of Hugging Face fast tokenizers (`return_offsets_mapping=True`):
- byte-level pieces of one multi-byte character all carry that character's offsets, so they overlap; a position
  whose next token overlaps a neighbour is not aligned (its prefix or its next token is part of a character);
- a leading space may be inside a token's offsets (byte-level ``Ġ``, SentencePiece ``▁``) or trimmed out of them;
  whitespace between one token's end and the next token's start belongs to the next token, so both conventions
  give the same boundary; other characters in such a gap (dropped by a normaliser) make the position unaligned;
- zero-width tokens (bos, eos) never are the next token of an aligned position.
Tokens are compared by raw bytes (`vikhr.tokenizer.surface`), special and added tokens by content.
"""

from __future__ import annotations

from collections.abc import Container, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vikhr.tokenizer.surface import token_surfaces
from vikhr.train.kl import Direction, kl_from_logits

Token = tuple[Hashable, int, int]
"""(key, start, end): a token's key (raw bytes, or content for special tokens) and its character offsets."""


def token_keys(tokenizer) -> dict[int, bytes | str]:
    """id -> the token's raw bytes, or its content string for special and added tokens."""
    surfaces = token_surfaces(tokenizer)
    return {
        tid: (tok if surfaces.get(tid) is None else surfaces[tid])
        for tok, tid in tokenizer.get_vocab().items()
    }


def shared_vocab_map(new_tok, base_tok) -> tuple[Tensor, Tensor]:
    """(new_ids, base_ids): tokens both vocabularies have, as paired id tensors in increasing new-id order.

    A key held by several ids on one side (e.g. a ``<0x41>`` byte piece and ``A``) is paired once, by its
    lowest id, so no probability is counted twice.
    """
    base_by_key: dict[Hashable, int] = {}
    for tid, key in sorted(token_keys(base_tok).items()):
        base_by_key.setdefault(key, tid)
    new_ids, base_ids, seen = [], [], set()
    for tid, key in sorted(token_keys(new_tok).items()):
        if key in base_by_key and key not in seen:
            seen.add(key)
            new_ids.append(tid)
            base_ids.append(base_by_key[key])
    return torch.tensor(new_ids, dtype=torch.long), torch.tensor(base_ids, dtype=torch.long)


def shared_keys(new_tok, base_tok) -> set[Hashable]:
    """Keys (bytes / special-token content) present in both vocabularies."""
    return set(token_keys(new_tok).values()) & set(token_keys(base_tok).values())


def encode_tokens(
    tokenizer, text: str, keys: dict[int, bytes | str], *, add_special_tokens: bool = False
) -> tuple[list[int], list[Token]]:
    """Token ids of `text` and their (key, start, end) triples, from a fast tokenizer's offset mapping."""
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    return ids, [(keys[i], int(s), int(e)) for i, (s, e) in zip(ids, enc["offset_mapping"], strict=True)]


def prediction_boundaries(text: str, tokens: Sequence[Token]) -> list[int | None]:
    """For each position t < len(tokens) - 1: the character index where the predicted token t+1 starts, or None.

    None when token t+1 is empty, overlaps the prefix or the token after it (a piece of a multi-byte character),
    or is separated from the prefix by characters other than whitespace.
    """
    n = len(tokens)
    starts_after = [len(text) + 1] * (n + 1)  # start of the next non-empty token after i
    for i in range(n - 1, -1, -1):
        _, s, e = tokens[i]
        starts_after[i] = s if e > s else starts_after[i + 1]
    out: list[int | None] = []
    prefix_end = 0
    for t in range(n - 1):
        prefix_end = max(prefix_end, tokens[t][2])
        _, s, e = tokens[t + 1]
        gap = text[prefix_end:s]
        if e <= s or s < prefix_end or e > starts_after[t + 2] or (gap and not gap.isspace()):
            out.append(None)
        else:
            out.append(prefix_end)
    return out


def aligned_positions(
    text: str,
    new_tokens: Sequence[Token],
    base_tokens: Sequence[Token],
    shared: Container[Hashable],
    *,
    same_next: bool = False,
) -> list[tuple[int, int]]:
    """(pos_new, pos_base) pairs whose logits predict the next token after the same characters of `text`.

    A pair needs the same boundary on both sides and each side's next token in `shared` (keys both vocabularies
    have). `same_next=True` also requires both sides to have the same next token (same span, same key); by
    default a merge on one side removes only the boundary inside the merged token.
    """
    base_at: dict[int, int] = {}
    for t, b in enumerate(prediction_boundaries(text, base_tokens)):
        if b is not None:
            base_at[b] = t
    pairs = []
    for t, b in enumerate(prediction_boundaries(text, new_tokens)):
        u = base_at.get(b) if b is not None else None
        if u is None:
            continue
        nxt_new, nxt_base = new_tokens[t + 1], base_tokens[u + 1]
        if nxt_new[0] not in shared or nxt_base[0] not in shared:
            continue
        if same_next and (nxt_new[0] != nxt_base[0] or nxt_new[2] != nxt_base[2]):
            continue
        pairs.append((t, u))
    return pairs


def aligned_kl(
    new_logits: Tensor,
    base_logits: Tensor,
    new_ids: Tensor,
    base_ids: Tensor,
    mask: Tensor | None = None,
    direction: Direction = "reverse",
) -> Tensor:
    """KL between the new model (the trained side) and the base at aligned positions, over the shared vocabulary.

    new_logits [P, V_new] and base_logits [P, V_base] are the logits at the aligned pairs; each side is
    renormalised over its shared ids (a log-softmax of the gathered logits). For long sequences the same number
    comes chunked from `chunked_kl(h_new, W_new[new_ids], ref_hidden=h_base, ref_weight=W_base[base_ids])`.
    """
    return kl_from_logits(new_logits[..., new_ids], base_logits[..., base_ids], mask, direction)


# ------------------------------------------------------------------------------------------- packed rows

Span = tuple[int, int]


def segment_tokens(
    doc_text: str,
    doc_ids: Sequence[int],
    doc_offsets: Sequence[Span],
    keys: dict[int, bytes | str],
    start: int,
    end: int,
    *,
    bos_id: int | None,
    eos_id: int | None,
) -> tuple[str, list[Token]]:
    """The text of one packed segment and its tokens as (key, start, end) relative to that text.

    The segment is tokens [start, end) of the document as packed: `[bos] + doc_ids + [eos]` (each only when its
    id is given). bos and eos become zero-width tokens at the segment's start and end, so they are never the
    next token of an aligned position.
    """
    lead = 1 if bos_id is not None else 0
    a, b = max(start - lead, 0), min(end - lead, len(doc_ids))
    if a < b:
        lo = min(s for s, _ in doc_offsets[a:b])
        hi = max(e for _, e in doc_offsets[a:b])
    else:
        lo = hi = 0
    text = doc_text[lo:hi]
    out: list[Token] = []
    for i in range(start, end):
        j = i - lead
        if j < 0:
            out.append((keys[bos_id], 0, 0))
        elif j >= len(doc_ids):
            out.append((keys[eos_id], len(text), len(text)))
        else:
            s, e = doc_offsets[j]
            out.append((keys[doc_ids[j]], s - lo, e - lo))
    return text, out


@dataclass(frozen=True)
class BaseRow:
    """A packed row's segments re-tokenized by the base tokenizer, and the position pairs to compare."""

    input_ids: Tensor
    """[L] base token ids, segment after segment (no special tokens)."""
    position_ids: Tensor
    """[L] positions restarting at 0 at every segment (the base model sees the same document boundaries)."""
    new_pos: Tensor
    """[P] positions in the packed row whose prediction is compared ..."""
    base_pos: Tensor
    """[P] ... with the base model's prediction at these positions of `input_ids`."""


def base_row(
    segments: Sequence[tuple[str, Sequence[Token]]],
    base_tok,
    base_keys: dict[int, bytes | str],
    shared: Container[Hashable],
) -> BaseRow:
    """Build the base view of a packed row from its segments (text, new-side tokens) in row order."""
    ids: list[int] = []
    pos: list[int] = []
    new_pos: list[int] = []
    base_pos: list[int] = []
    offset = 0
    for text, new_tokens in segments:
        b_ids, b_tokens = encode_tokens(base_tok, text, base_keys) if text else ([], [])
        for t, u in aligned_positions(text, new_tokens, b_tokens, shared):
            new_pos.append(offset + t)
            base_pos.append(len(ids) + u)
        ids += b_ids
        pos += range(len(b_ids))
        offset += len(new_tokens)
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return BaseRow(as_long(ids), as_long(pos), as_long(new_pos), as_long(base_pos))
