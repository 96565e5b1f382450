"""Pack tokenized documents into fixed-length training sequences, with no attention across documents.

Documents are concatenated greedily into rows of exactly `seq_len` tokens. Each row carries `position_ids` that
restart at 0 at every segment (a document, or the part of one that spills into the row), and `labels` equal to
`input_ids` except -100 at each segment's first token and on padding. The causal-LM loss in transformers shifts
labels inside the model (the logit at position i is scored against `labels[i + 1]`), so a -100 at a segment
start removes exactly the prediction that would cross a document boundary.

Attention isolation (transformers 5.24): `create_causal_mask` in `masking_utils` reads restarting `position_ids`
(`find_packed_sequence_indices`) and builds a block-diagonal causal mask for the sdpa, eager and flex
implementations. It does so only when no 2-D `attention_mask` is passed and no KV cache exists, so the batch
carries no `attention_mask` and the model must run with `use_cache=False` (the Trainer's default; in a plain
forward call the config's `use_cache=True` creates a cache and the documents silently see each other).
Flash-attention kernels read `position_ids` only for batch size 1; for larger batches the collator can pass
`cu_seq_lens_*` / `max_length_*` instead (`flash_varlen_kwargs=True`). `check_model_for_packing` enforces this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from vikhr.log import get_logger
from vikhr.train import IGNORE_INDEX

log = get_logger(__name__)

MASK_FROM_POSITIONS = ("sdpa", "eager", "flex_attention")
"""Attention implementations whose mask transformers builds block-diagonally from restarting position_ids."""


@dataclass(frozen=True)
class PackedSequence:
    """One training row of `seq_len` tokens made of whole or partial documents, then optional padding."""

    input_ids: torch.Tensor
    """[seq_len] token ids (int64)."""
    position_ids: torch.Tensor
    """[seq_len] positions restarting at 0 at every segment start (padding is a segment of its own)."""
    labels: torch.Tensor
    """[seq_len] = input_ids, with -100 at segment starts and on padding."""
    seq_lens: tuple[int, ...]
    """Segment lengths in order, summing to seq_len; the padding segment, if any, is the last."""
    num_pad: int = 0
    """Padding tokens at the end of the row (only the last row of a stream packed with `last="pad"`)."""
    sources: tuple[tuple[int, int, int], ...] = ()
    """(document index, start, end) of each non-padding segment: a slice of that document's tokens as packed
    (bos/eos included), in row order; filled in by `pack`."""
    base: Any = None
    """The same text under the base model's tokenizer (`vikhr.train.align.BaseRow`) for the `base` KL reference."""

    @property
    def cu_seqlens(self) -> torch.Tensor:
        """[segments + 1] int32 cumulative segment boundaries, flash-attention style."""
        return torch.tensor([0, *torch.tensor(self.seq_lens).cumsum(0).tolist()], dtype=torch.int32)


@dataclass
class PackStats:
    """What packing did with its input; `pack` fills it in as it goes."""

    documents: int = 0
    """Documents read, empty ones included."""
    empty: int = 0
    """Documents with no tokens (skipped)."""
    tokens: int = 0
    """Input tokens, bos/eos included."""
    sequences: int = 0
    """Rows produced."""
    padded: int = 0
    """Padding tokens added (the last row with `last="pad"`, or row tails with `split_long=False`)."""
    dropped: int = 0
    """Tokens of the final partial row discarded with `last="drop"`."""
    truncated: int = 0
    """Tokens cut from documents longer than seq_len with `split_long=False`."""

    @property
    def kept(self) -> int:
        """Input tokens that made it into rows."""
        return self.tokens - self.dropped - self.truncated

    def balanced(self, seq_len: int) -> bool:
        """The accounting identity: every row slot is a kept token or padding."""
        return self.sequences * seq_len == self.kept + self.padded

    def as_dict(self) -> dict[str, float]:
        """Counts plus padding / dropped shares, for logs and the manifest."""
        slots = self.kept + self.padded
        return {
            "documents": self.documents,
            "empty": self.empty,
            "tokens": self.tokens,
            "sequences": self.sequences,
            "padded": self.padded,
            "dropped": self.dropped,
            "truncated": self.truncated,
            "padding_share": self.padded / slots if slots else 0.0,
            "dropped_share": (self.dropped + self.truncated) / self.tokens if self.tokens else 0.0,
        }


def make_sequence(
    ids: Sequence[int],
    seg_lens: Sequence[int],
    seq_len: int,
    pad_id: int,
    sources: Sequence[tuple[int, int, int]] = (),
    loss_mask: Sequence[bool] | None = None,
) -> PackedSequence:
    """Build one row from concatenated segment tokens, padding the tail with `pad_id` as its own segment.
    `loss_mask` (one flag per token): only flagged tokens are labels (SFT's assistant tokens); segment starts and
    padding never are."""
    if sum(seg_lens) != len(ids) or len(ids) > seq_len or any(n <= 0 for n in seg_lens):
        raise ValueError(f"segments {list(seg_lens)} do not tile {len(ids)} tokens within seq_len={seq_len}")
    num_pad = seq_len - len(ids)
    lens = (*seg_lens, num_pad) if num_pad else tuple(seg_lens)
    input_ids = torch.tensor([*ids, *[pad_id] * num_pad], dtype=torch.long)
    position_ids = torch.cat([torch.arange(n) for n in lens])
    labels = input_ids.clone()
    starts = torch.tensor([0, *torch.tensor(lens).cumsum(0)[:-1].tolist()])
    labels[starts] = IGNORE_INDEX
    if num_pad:
        labels[len(ids) :] = IGNORE_INDEX
    if loss_mask is not None:
        if len(loss_mask) != len(ids):
            raise ValueError(f"loss_mask has {len(loss_mask)} flags for {len(ids)} tokens")
        keep = torch.tensor([*loss_mask, *[False] * num_pad], dtype=torch.bool)
        labels[~keep] = IGNORE_INDEX
    return PackedSequence(input_ids, position_ids, labels, lens, num_pad, tuple(sources))


def _with_specials(doc: Sequence[int], bos_id: int | None, eos_id: int | None) -> list[int]:
    return [*([bos_id] if bos_id is not None else []), *doc, *([eos_id] if eos_id is not None else [])]


def pack(
    docs: Iterable[Sequence[int]],
    seq_len: int,
    *,
    bos_id: int | None,
    eos_id: int | None,
    split_long: bool = True,
    last: Literal["drop", "pad"] = "drop",
    pad_id: int = 0,
    stats: PackStats | None = None,
    loss_masks: Iterable[Sequence[bool]] | None = None,
) -> Iterator[PackedSequence]:
    """Greedily pack token documents (each wrapped in bos/eos when given) into rows of exactly `seq_len`.

    `split_long=True`: a document that does not fit the room left is split, its rest starting a new segment
    in the next row — no padding except possibly the last row. `split_long=False`: a document never crosses
    rows; a row whose room is too small is padded and closed, and a document longer than seq_len is truncated.
    The final partial row is dropped or padded (`last`). Counts go into `stats` when given.

    `loss_masks` (one per document, a flag per token, bos/eos not included): only flagged tokens become labels —
    SFT's assistant replies and their end-of-turn tokens; the rest of the conversation is context only.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if last not in ("drop", "pad"):
        raise ValueError(f'last must be "drop" or "pad", got {last!r}')
    stats = stats if stats is not None else PackStats()
    buf: list[int] = []
    lens: list[int] = []
    srcs: list[tuple[int, int, int]] = []
    flags: list[bool] | None = [] if loss_masks is not None else None
    masks = iter(loss_masks) if loss_masks is not None else None

    def flush() -> PackedSequence:
        row = make_sequence(buf, lens, seq_len, pad_id, srcs, flags)
        stats.sequences += 1
        stats.padded += row.num_pad
        for part in (buf, lens, srcs, flags if flags is not None else []):
            part.clear()
        return row

    for d, doc in enumerate(docs):
        stats.documents += 1
        mask = None
        if masks is not None:
            mask = list(next(masks))
            if len(mask) != len(doc):
                raise ValueError(f"document {d}: {len(mask)} loss-mask flags for {len(doc)} tokens")
            mask = [*([False] if bos_id is not None else []), *mask, *([True] if eos_id is not None else [])]
        if len(doc) == 0:
            stats.empty += 1
            continue
        toks = _with_specials(doc, bos_id, eos_id)
        stats.tokens += len(toks)
        if not split_long:
            if len(toks) > seq_len:
                stats.truncated += len(toks) - seq_len
                toks = toks[:seq_len]
            if len(buf) + len(toks) > seq_len:
                yield flush()
            buf.extend(toks)
            if flags is not None:
                flags.extend(mask[: len(toks)])
            lens.append(len(toks))
            srcs.append((d, 0, len(toks)))
            if len(buf) == seq_len:
                yield flush()
            continue
        start = 0
        while start < len(toks):
            take = min(seq_len - len(buf), len(toks) - start)
            buf.extend(toks[start : start + take])
            if flags is not None:
                flags.extend(mask[start : start + take])
            lens.append(take)
            srcs.append((d, start, start + take))
            start += take
            if len(buf) == seq_len:
                yield flush()
    if buf:
        if last == "pad":
            yield flush()
        else:
            stats.dropped += len(buf)


def block_causal_mask(seq_lens: Sequence[int]) -> torch.Tensor:
    """[1, 1, L, L] bool mask (True = may attend): causal within each segment, nothing across segments."""
    seg = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(seq_lens))
    causal = torch.ones(len(seg), len(seg), dtype=torch.bool).tril()
    return (causal & (seg[:, None] == seg[None, :]))[None, None]


@dataclass
class PackingCollator:
    """`data_collator` for `transformers.Trainer`: stacks PackedSequences into `input_ids`, `labels`,
    `position_ids` ([batch, seq_len]); no `attention_mask`, which would switch off the packed-mask detection.

    `flash_varlen_kwargs=True` adds `cu_seq_lens_q/k` (int32, over the flattened batch) and `max_length_q/k`
    for flash-attention kernels, which otherwise isolate documents only at batch size 1.

    Rows with a base view (`PackedDataset(base_tokenizer=...)`) add `base_input_ids` / `base_position_ids`
    ([batch, longest base row], zero-padded as a segment of its own) and `align_new` / `align_base`: flat indices
    into [batch × seq_len] and [batch × base length] of the position pairs to compare.
    """

    flash_varlen_kwargs: bool = False

    def __call__(self, features: Sequence[PackedSequence]) -> dict[str, Any]:
        if not features:
            raise ValueError("PackingCollator got an empty batch")
        batch: dict[str, Any] = {
            "input_ids": torch.stack([f.input_ids for f in features]),
            "labels": torch.stack([f.labels for f in features]),
            "position_ids": torch.stack([f.position_ids for f in features]),
        }
        if self.flash_varlen_kwargs:
            lens = [n for f in features for n in f.seq_lens]
            cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu
            batch["max_length_q"] = batch["max_length_k"] = max(lens)
        if features[0].base is not None:
            batch.update(_collate_base(features))
        return batch


def _collate_base(features: Sequence[PackedSequence]) -> dict[str, torch.Tensor]:
    if any(f.base is None for f in features):
        raise ValueError("PackingCollator: some rows have a base view and some do not")
    width = max(1, *(len(f.base.input_ids) for f in features))
    seq_len = features[0].input_ids.shape[0]
    ids = torch.zeros(len(features), width, dtype=torch.long)
    pos = torch.zeros(len(features), width, dtype=torch.long)
    new, base = [], []
    for i, f in enumerate(features):
        n = len(f.base.input_ids)
        ids[i, :n] = f.base.input_ids
        pos[i, :n] = f.base.position_ids
        pos[i, n:] = torch.arange(width - n)
        new.append(f.base.new_pos + i * seq_len)
        base.append(f.base.base_pos + i * width)
    return {
        "base_input_ids": ids,
        "base_position_ids": pos,
        "align_new": torch.cat(new),
        "align_base": torch.cat(base),
    }


def check_model_for_packing(model: Any, *, flash_varlen_kwargs: bool = False) -> None:
    """Raise if `model` would let packed documents attend to each other (a KV cache, or an unsupported kernel)."""
    cfg = model.config
    if getattr(cfg, "use_cache", False):
        raise ValueError(
            "packed sequences need model.config.use_cache=False: with a KV cache transformers does not build "
            "the block-diagonal mask from position_ids and documents attend to each other"
        )
    impl = cfg._attn_implementation
    if "flash" in impl:
        if not flash_varlen_kwargs:
            raise ValueError(
                f"{impl} isolates packed documents only with PackingCollator(flash_varlen_kwargs=True)"
            )
    elif impl not in MASK_FROM_POSITIONS:
        raise ValueError(f"attention implementation {impl!r} is not known to support packed sequences")


class PackedDataset(Dataset):
    """Texts tokenized (fast tokenizer, batched, no special tokens), wrapped in bos/eos and packed.

    Items are PackedSequence objects (not dicts, so the Trainer's column removal leaves them whole);
    use with `PackingCollator`. `stats` holds the packing counts.
    """

    def __init__(
        self,
        texts: Iterable[str],
        tokenizer: Any,
        seq_len: int,
        *,
        add_bos: bool = False,
        add_eos: bool = True,
        split_long: bool = True,
        last: Literal["drop", "pad"] = "drop",
        batch_size: int = 1000,
        base_tokenizer: Any = None,
    ) -> None:
        bos_id = _special_id(tokenizer, "bos") if add_bos else None
        eos_id = _special_id(tokenizer, "eos") if add_eos else None
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_id or 0)
        self.seq_len = seq_len
        self.stats = PackStats()
        self.aligned = 0
        """Positions paired with the base tokenization (`base_tokenizer` given), over all rows."""
        opts = dict(bos_id=bos_id, eos_id=eos_id, split_long=split_long, last=last, pad_id=pad_id)
        if base_tokenizer is None:
            docs = tokenize_batched(texts, tokenizer, batch_size)
            self.rows: list[PackedSequence] = list(pack(docs, seq_len, stats=self.stats, **opts))
        else:
            texts = list(texts)
            enc = tokenize_with_offsets(texts, tokenizer, batch_size)
            rows = pack((ids for ids, _ in enc), seq_len, stats=self.stats, **opts)
            self.rows = list(_with_base_views(rows, texts, enc, tokenizer, base_tokenizer, bos_id, eos_id))
            self.aligned = sum(len(r.base.new_pos) for r in self.rows)
        log.info("packed %s", self.stats.as_dict() | ({"aligned": self.aligned} if self.aligned else {}))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> PackedSequence:
        return self.rows[i]


def _special_id(tokenizer: Any, name: str) -> int:
    tid = getattr(tokenizer, f"{name}_token_id")
    if tid is None:
        raise ValueError(f"tokenizer has no {name} token; pass add_{name}=False")
    return tid


def tokenize_batched(texts: Iterable[str], tokenizer: Any, batch_size: int = 1000) -> Iterator[list[int]]:
    """Token ids of each text, without special tokens, tokenizing `batch_size` texts per call."""
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == batch_size:
            yield from tokenizer(chunk, add_special_tokens=False)["input_ids"]
            chunk = []
    if chunk:
        yield from tokenizer(chunk, add_special_tokens=False)["input_ids"]


def tokenize_with_offsets(
    texts: Sequence[str], tokenizer: Any, batch_size: int = 1000
) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, character offsets) of each text, without special tokens (needs a fast tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: no character offsets for alignment"
        )
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[i : i + batch_size]), add_special_tokens=False, return_offsets_mapping=True
        )
        out += [
            (list(ids), [tuple(o) for o in offs])
            for ids, offs in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]
    return out


def _with_base_views(rows, texts, enc, tokenizer, base_tokenizer, bos_id, eos_id) -> Iterator[PackedSequence]:
    """Attach to each row its text re-tokenized by `base_tokenizer` and the aligned position pairs."""
    from dataclasses import replace

    from vikhr.train.align import base_row, segment_tokens, token_keys

    keys, base_keys = token_keys(tokenizer), token_keys(base_tokenizer)
    shared = set(keys.values()) & set(base_keys.values())
    for row in rows:
        segments = [
            segment_tokens(texts[d], enc[d][0], enc[d][1], keys, a, b, bos_id=bos_id, eos_id=eos_id)
            for d, a, b in row.sources
        ]
        yield replace(row, base=base_row(segments, base_tokenizer, base_keys, shared))


def split_documents(texts: Sequence[str], eval_share: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out split: the `round(n * eval_share)` texts (at least one when the share is
    positive) with the smallest seeded hash go to eval; both keep the input order. A text's rank does not
    depend on the other texts, so adding documents moves few of the old ones."""
    if not 0 <= eval_share < 1:
        raise ValueError(f"eval_share must be in [0, 1), got {eval_share}")
    n = len(texts)
    k = min(max(round(n * eval_share), 1 if eval_share > 0 else 0), max(n - 1, 0))
    key = [hashlib.blake2b(f"{seed}\0{t}".encode(), digest_size=8).digest() for t in texts]
    held = set(sorted(range(n), key=lambda i: (key[i], i))[:k])
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]
