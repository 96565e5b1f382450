"""Extend a byte-level BPE tokenizer (GPT-2 / SmolLM2 / Llama-3 / Qwen style) with merges learned on new text.

The base tokenizer is kept intact: every base token keeps its id, every base merge keeps its rank, and the new
merges are appended after all of them (lowest priority). New merges are learned by *continuing* BPE training on
words already segmented by the base model, and each new token must contain a lead byte of the target script
(for Cyrillic, a UTF-8 lead byte 0xD0-0xD3). Text without such bytes can therefore never meet a new merge, so it
encodes exactly as before — English stays bit-identical, Russian gets longer tokens.

Too little text is not an error: when fewer pairs than requested reach `min_frequency`, the tokenizer is
extended with what was learned and a warning says how many were learned against how many were requested
(`ExtendResult.new_tokens` records it). No text at all, or nothing learned, raises `ValueError`.
"""

from __future__ import annotations

import heapq
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.fsutil import staged_dir
from vikhr.log import get_logger, progress
from vikhr.scripts import UTF8_LEAD_BYTES
from vikhr.tokenizer.surface import bytelevel_to_bytes, bytes_to_unicode, unicode_to_bytes  # noqa: F401

log = get_logger(__name__)


# `init_kwargs` of the base tokenizer that describe where it was loaded from, not what it is.
_LOAD_ONLY_KWARGS = {
    "vocab_file",
    "merges_file",
    "tokenizer_file",
    "name_or_path",
    "is_local",
    "local_files_only",
    "backend",
    "added_tokens_decoder",
    "tokenizer_class",
}


@dataclass
class ExtendResult:
    """What `extend_bytelevel_tokenizer` did."""

    base_size: int
    """len(base tokenizer), added tokens included."""
    new_tokens: int
    """Tokens (and merges) appended."""
    final_size: int
    """len(extended tokenizer) == base_size + new_tokens."""
    candidates_rejected: int
    """Most-frequent pairs skipped because the merged token fails the script filter or already exists."""


# --------------------------------------------------------------------------------------------------- byte level


def token_bytes(token: str) -> bytes | None:
    """The raw bytes a byte-level token stands for; None if it uses characters outside the byte alphabet."""
    return bytelevel_to_bytes(token)


def script_filter(script: str) -> Callable[[str], bool]:
    """`allowed(token)` for `learn_continued_merges`: True when the token's bytes contain a lead byte of `script`.

    `script="any"` accepts every byte-level token: new merges may then join pieces of any text, so text outside
    the target language is no longer guaranteed to encode as before.
    """
    if script == "any":
        return lambda token: token_bytes(token) is not None
    if script not in UTF8_LEAD_BYTES:
        raise ValueError(f"unknown script {script!r}; known: {sorted(UTF8_LEAD_BYTES)} or 'any'")
    lead = UTF8_LEAD_BYTES[script]  # a token holding one only matches text with a letter of that script

    def allowed(token: str) -> bool:
        raw = token_bytes(token)
        return raw is not None and any(b in lead for b in raw)

    return allowed


def is_bytelevel_bpe(tokenizer_json: dict) -> bool:
    """True for a `tokenizer.json` whose model is BPE and whose pre-tokenizer is (or contains) ByteLevel."""
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        return False
    stack = [tokenizer_json.get("pre_tokenizer")]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("type") == "ByteLevel":
            return True
        stack.extend(node.get("pretokenizers") or [])
    return False


# ------------------------------------------------------------------------------------------------ merge learning


def learn_continued_merges(
    word_counts: dict[tuple[str, ...], int],
    num_merges: int,
    *,
    min_frequency: int = 2,
    allowed: Callable[[str], bool] | None = None,
) -> list[tuple[str, str]]:
    """Continue BPE training on words already segmented by a base tokenizer.

    Greedily merges the most frequent adjacent pair (weighted by word count) whose merged string passes
    `allowed`; ties go to the smallest (left, right) string pair. Stops after `num_merges` merges or when the best
    pair occurs fewer than `min_frequency` times. Each learned merge makes a distinct new string: a pair whose
    result was already made by an earlier merge here is skipped like a rejected one.
    """
    return _learn_merges(word_counts, num_merges, min_frequency=min_frequency, allowed=allowed)[0]


def _learn_merges(
    word_counts: dict[tuple[str, ...], int],
    num_merges: int,
    *,
    min_frequency: int = 2,
    allowed: Callable[[str], bool] | None = None,
    show_progress: bool = False,
) -> tuple[list[tuple[str, str]], int]:
    """`learn_continued_merges` plus the number of rejected candidates.

    Incremental: pair counts and a pair -> words index are updated only for words that contain the merged pair.
    The heap is lazy: a merge can only lower the counts of existing pairs (new pairs all contain the new symbol),
    so a popped entry whose stored count is stale is pushed back with its current count.
    """
    if num_merges <= 0:
        return [], 0
    symbols: list[str] = []
    symbol_id: dict[str, int] = {}

    def intern(s: str) -> int:
        if s not in symbol_id:
            symbol_id[s] = len(symbols)
            symbols.append(s)
        return symbol_id[s]

    words: list[list[int]] = []
    freqs: list[int] = []
    for word, count in word_counts.items():
        if len(word) > 1 and count > 0:
            words.append([intern(s) for s in word])
            freqs.append(count)

    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for wi, (w, c) in enumerate(zip(words, freqs, strict=True)):
        for p in zip(w, w[1:], strict=False):
            pair_counts[p] = pair_counts.get(p, 0) + c
            where.setdefault(p, set()).add(wi)

    heap = [(-c, symbols[a], symbols[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    made: set[str] = set(symbols)
    merges: list[tuple[str, str]] = []
    rejected = 0
    quiet = {} if show_progress else {"disable": True}
    bar = progress(total=num_merges, desc="learning merges", unit="merge", **quiet)
    while heap and len(merges) < num_merges:
        neg, sa, sb, a, b = heapq.heappop(heap)
        current = pair_counts.get((a, b), 0)
        if current != -neg:
            if current > 0:
                heapq.heappush(heap, (-current, sa, sb, a, b))
            continue
        if current < min_frequency:
            break  # every other entry's true count is <= its stored count <= this one
        merged = sa + sb
        if merged in made or (allowed is not None and not allowed(merged)):
            rejected += 1  # never pushed again: a pair of existing symbols can only lose occurrences
            continue
        new = intern(merged)
        made.add(merged)
        merges.append((sa, sb))
        bar.update(1)
        for p, c in _apply_merge(words, freqs, where, pair_counts, (a, b), new).items():
            heapq.heappush(heap, (-c, symbols[p[0]], symbols[p[1]], p[0], p[1]))
    bar.close()
    return merges, rejected


def _apply_merge(
    words: list[list[int]],
    freqs: list[int],
    where: dict[tuple[int, int], set[int]],
    pair_counts: dict[tuple[int, int], int],
    pair: tuple[int, int],
    new: int,
) -> dict[tuple[int, int], int]:
    """Merge `pair` into symbol `new` in every word holding it; update counts and index; return the new pairs."""
    a, b = pair
    born: dict[tuple[int, int], int] = {}
    for wi in where.pop(pair, ()):
        w = words[wi]
        merged: list[int] = []
        i = 0
        while i < len(w):
            if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                merged.append(new)
                i += 2
            else:
                merged.append(w[i])
                i += 1
        old_pairs = Counter(zip(w, w[1:], strict=False))
        new_pairs = Counter(zip(merged, merged[1:], strict=False))
        c = freqs[wi]
        for p in old_pairs.keys() | new_pairs.keys():
            delta = (new_pairs.get(p, 0) - old_pairs.get(p, 0)) * c
            if delta == 0:
                continue
            pair_counts[p] = pair_counts.get(p, 0) + delta
            if p not in new_pairs:
                if p != pair:
                    where[p].discard(wi)
            elif p not in old_pairs:
                where.setdefault(p, set()).add(wi)
                born[p] = pair_counts[p]
        words[wi] = merged
    pair_counts.pop(pair, None)
    return {p: pair_counts[p] for p in born}


# ------------------------------------------------------------------------------------------------- corpus side


def count_pretokens(backend: Any, texts: Iterable[str]) -> Counter[str]:
    """Count the pre-tokens of `texts` as the base sees them (its normalizer, then its pre-tokenizer)."""
    counts: Counter[str] = Counter()
    for text in progress(texts, desc="pre-tokenizing", unit="text"):
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        counts.update(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text))
    return counts


def segment_words(model: Any, counts: Counter[str]) -> dict[tuple[str, ...], int]:
    """Segment each distinct pre-token with the base BPE model: {tuple of base tokens: count}."""
    segmented: dict[tuple[str, ...], int] = {}
    for word, count in counts.items():
        key = tuple(t.value for t in model.tokenize(word))
        segmented[key] = segmented.get(key, 0) + count
    return segmented


# ----------------------------------------------------------------------------------------------- tokenizer json


def append_merges(tokenizer_json: dict, merges: list[tuple[str, str]]) -> tuple[dict, int]:
    """A copy of `tokenizer_json` with `merges` after the base merges and their tokens after every used id.

    Returns the new JSON and the first new id. Merges are written in the base's own form ("a b" or [a, b]).
    Added tokens missing from the model vocabulary are written into it at their own ids: `tokenizers` gives an
    added token that the model does not know the id `len(model vocab) + k` on load, which would move every one
    of them once the model vocabulary grows.
    """
    out = dict(tokenizer_json)  # copies of the parts that change; the rest is shared, not mutated
    model = out["model"] = dict(tokenizer_json["model"])
    vocab: dict[str, int] = dict(model["vocab"])
    model["vocab"] = vocab
    by_id = {i: t for t, i in vocab.items()}
    for added in out.get("added_tokens", []):
        token, i = added["content"], added["id"]
        if vocab.get(token, i) != i or by_id.get(i, token) != token:
            raise ValueError(f"added token {token!r} (id {i}) clashes with the model vocabulary")
        vocab[token] = i
    first_id = max(vocab.values()) + 1 if vocab else 0
    existing = list(model.get("merges") or [])
    as_strings = bool(existing) and isinstance(existing[0], str)
    for k, (a, b) in enumerate(merges):
        token = a + b
        if token in vocab:
            raise ValueError(f"new merge {a!r} + {b!r} makes {token!r}, already in the base vocabulary")
        vocab[token] = first_id + k
        existing.append(f"{a} {b}" if as_strings else [a, b])
    model["merges"] = existing
    return out, first_id


def _save_tokenizer(base: Any, tokenizer_json: dict, out_dir: Path) -> None:
    """Write a HF tokenizer folder: the new backend plus the base's special tokens, settings and chat template."""
    from transformers import PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_file = out_dir / "tokenizer.json"
    tokenizer_file.write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    kwargs = {k: v for k, v in base.init_kwargs.items() if k not in _LOAD_ONLY_KWARGS}
    if base.chat_template is not None:
        kwargs["chat_template"] = base.chat_template
    PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **kwargs).save_pretrained(out_dir)


def _check_saved(base: Any, out_dir: Path, expected_size: int) -> int:
    """Reload the saved folder; raise unless its size, special tokens and chat template match. Returns its size."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    if len(tok) != expected_size:
        raise RuntimeError(f"extended tokenizer in {out_dir} has {len(tok)} tokens, expected {expected_size}")
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(tok, attr) != getattr(base, attr):
            raise RuntimeError(f"{attr} changed on save: {getattr(base, attr)!r} -> {getattr(tok, attr)!r}")
    if tok.chat_template != base.chat_template:
        raise RuntimeError(f"chat template changed on save in {out_dir}")
    return len(tok)


# ------------------------------------------------------------------------------------------------------- driver


def extend_bytelevel_tokenizer(
    base_dir: Path,
    texts: Iterable[str],
    num_new: int,
    out_dir: Path,
    *,
    min_frequency: int = 2,
    script: str = "cyrillic",
    overwrite: bool = False,
) -> ExtendResult:
    """Append up to `num_new` merges learned on `texts` to the byte-level BPE tokenizer in `base_dir`.

    Base ids, merges and settings stay as they are; each new token contains a `script` lead byte, so text with no
    character of that script encodes exactly as with the base (`script="any"` drops both the filter and that
    guarantee). The result is written to `out_dir` (staged beside it, then renamed into place) as a folder
    `AutoTokenizer.from_pretrained` opens. Returns fewer tokens than asked, with a warning, when the text supports
    fewer merges of `min_frequency`; raises `ValueError` for a base that is not byte-level BPE, no text, nothing
    learned or an unknown script, `FileExistsError` for a non-empty `out_dir` without `overwrite`.
    """
    from transformers import AutoTokenizer

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string")
    allowed_script = script_filter(script)
    if num_new <= 0:
        raise ValueError(f"num_new must be positive, got {num_new}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")

    base = AutoTokenizer.from_pretrained(base_dir)
    backend = base.backend_tokenizer
    tokenizer_json = json.loads(backend.to_str())
    if not is_bytelevel_bpe(tokenizer_json):
        kind = (tokenizer_json.get("model") or {}).get("type")
        raise ValueError(
            f"{base_dir} is not a byte-level BPE tokenizer (model {kind}, no ByteLevel pre-tokenizer)"
        )
    model = tokenizer_json["model"]
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ValueError(f"{base_dir}: BPE with a subword prefix or word suffix is not supported")
    base_size = len(base)

    counts = count_pretokens(backend, texts)
    if not counts:
        raise ValueError("no text to learn merges from (texts are empty)")
    word_counts = segment_words(backend.model, counts)
    log.info("%d pre-tokens, %d distinct, from the texts", sum(counts.values()), len(counts))

    taken = set(model["vocab"]) | {t["content"] for t in tokenizer_json.get("added_tokens", [])}

    def allowed(token: str) -> bool:
        return token not in taken and allowed_script(token)

    start = time.perf_counter()
    merges, rejected = _learn_merges(
        word_counts, num_new, min_frequency=min_frequency, allowed=allowed, show_progress=True
    )
    log.info(
        "learned %d merges in %.1f s (%d candidates rejected)",
        len(merges),
        time.perf_counter() - start,
        rejected,
    )
    if not merges:
        raise ValueError(
            f"learned 0 of {num_new} merges: no {script} pair occurs {min_frequency}+ times in the texts"
        )
    if len(merges) < num_new:
        log.warning(
            "learned %d of %d requested merges (min_frequency=%d): the texts are too small",
            len(merges),
            num_new,
            min_frequency,
        )

    new_json, first_id = append_merges(tokenizer_json, merges)
    if first_id != base_size:
        log.warning(
            "new ids start at %d but the base has %d tokens (gaps in the base ids)", first_id, base_size
        )
    with staged_dir(out_dir) as staging:
        _save_tokenizer(base, new_json, staging)
        final_size = _check_saved(base, staging, base_size + len(merges))
    log.info("extended %s: %d + %d = %d tokens -> %s", base_dir, base_size, len(merges), final_size, out_dir)
    return ExtendResult(base_size, len(merges), final_size, rejected)
