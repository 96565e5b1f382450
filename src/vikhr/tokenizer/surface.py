"""Token surfaces: the bytes a token stands for, comparable across tokenizer families.

SentencePiece-style vocabularies write a leading space as ``▁`` and bytes as ``<0xNN>``; byte-level BPE
vocabularies (GPT-2 style) map every byte to a printable character (space is ``Ġ``). Reducing both to raw bytes
lets the vocabulary stage count shared pieces and the transplant stage find a new token's row in the base model.
"""

from __future__ import annotations

import functools
import json
import re

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def bytelevel_to_bytes(token: str) -> bytes | None:
    """Bytes of a byte-level BPE token, or None if it uses characters outside the byte alphabet."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return None


def sentencepiece_to_bytes(token: str) -> bytes:
    """Bytes of a SentencePiece-style token (``▁`` is a space, ``<0xNN>`` one byte)."""
    m = _BYTE_PIECE.match(token)
    if m:
        return bytes([int(m.group(1), 16)])
    return token.replace("▁", " ").encode("utf-8")


def is_bytelevel(tokenizer) -> bool:
    """True for a fast tokenizer whose pre-tokenizer or decoder is (or contains) ByteLevel (GPT-2, Llama-3, Qwen)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    # Each component pickles as its tokenizer.json fragment; serialising the whole tokenizer takes seconds.
    parts = [getattr(backend, "decoder", None), getattr(backend, "pre_tokenizer", None)]
    return any(p is not None and _has_type(json.loads(p.__getstate__()), "ByteLevel") for p in parts)


def _has_type(component, kind: str) -> bool:
    """True when a tokenizer.json component, or one nested in a Sequence, has `"type": kind`."""
    if isinstance(component, dict):
        return component.get("type") == kind or any(_has_type(v, kind) for v in component.values())
    if isinstance(component, list):
        return any(_has_type(v, kind) for v in component)
    return False


def token_surfaces(tokenizer) -> dict[int, bytes | None]:
    """id -> bytes for every non-special token; special and added tokens map to None."""
    vocab = tokenizer.get_vocab()
    specials = {tid for tid in getattr(tokenizer, "all_special_ids", [])}
    added = (
        {tid for tid in tokenizer.added_tokens_decoder}
        if hasattr(tokenizer, "added_tokens_decoder")
        else set()
    )
    convert = bytelevel_to_bytes if is_bytelevel(tokenizer) else sentencepiece_to_bytes
    out: dict[int, bytes | None] = {}
    for tok, tid in vocab.items():
        out[tid] = None if tid in specials or tid in added else convert(tok)
    return out


def vocabulary_overlap(new_tok, base_tok) -> dict[str, int]:
    """Counts of new tokens whose bytes the base also has (shared), new ones, and base tokens dropped."""
    new = {b for b in token_surfaces(new_tok).values() if b is not None}
    base = {b for b in token_surfaces(base_tok).values() if b is not None}
    return {"shared": len(new & base), "new": len(new - base), "dropped": len(base - new)}
