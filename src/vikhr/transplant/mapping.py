"""Which base rows each token of the new vocabulary comes from.

A new token is `copied` when the base has a token with the same bytes (SentencePiece ``▁`` pieces, byte-level
``Ġ`` pieces and ``<0xNN>`` byte pieces are compared as raw bytes), `special` when it is a special token matched by
content or by role (bos, eos, pad, unk), and otherwise made of `pieces`: the base tokens its bytes split into under
the base tokenizer's own model (no normaliser or pre-tokeniser in between, so ``мир`` and ``▁мир`` stay apart).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vikhr.tokenizer.surface import bytes_to_unicode, is_bytelevel, token_surfaces

ROLES = ("bos", "eos", "pad", "unk")


class TokenMappingError(ValueError):
    """The new tokenizer cannot be mapped onto the base (e.g. a special token with no counterpart)."""


@dataclass
class TokenMap:
    """For each new id: its kind and the base ids it is built from."""

    kinds: list[str] = field(default_factory=list)
    sources: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kinds)

    def counts(self) -> dict[str, int]:
        c = Counter(self.kinds)
        return {k: c.get(k, 0) for k in ("copied", "special", "pieces", "fallback")}

    def ids(self, *kinds: str) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k in kinds]


def _base_piece_ids(base_tok, data: bytes) -> list[int]:
    """The base tokens that the bytes `data` split into under the base's own BPE/unigram model."""
    backend = base_tok.backend_tokenizer
    if is_bytelevel(base_tok):
        table = bytes_to_unicode()
        word = "".join(table[b] for b in data)
    else:
        try:
            word = data.decode("utf-8").replace(" ", "▁")
        except UnicodeDecodeError:
            return []
    return [t.id for t in backend.model.tokenize(word)]


def _special_source(content: str, role: str | None, base_tok) -> int | None:
    vocab = base_tok.get_vocab()
    if content in vocab:
        return vocab[content]
    if role is not None:
        tid = getattr(base_tok, f"{role}_token_id", None)
        if tid is not None:
            return tid
    return None


def build_token_map(new_tok, base_tok) -> TokenMap:
    """Map every id of `new_tok` onto rows of the base model behind `base_tok`."""
    new_surf = token_surfaces(new_tok)
    base_surf = token_surfaces(base_tok)
    by_bytes: dict[bytes, int] = {}
    for tid in sorted(base_surf):
        b = base_surf[tid]
        if b is not None and b not in by_bytes:
            by_bytes[b] = tid
    roles = {}
    for r in ROLES:
        tok = getattr(new_tok, f"{r}_token", None)
        if tok is not None:
            roles.setdefault(tok, r)
    size = len(new_tok)
    tmap = TokenMap(kinds=[""] * size, sources=[[] for _ in range(size)])
    unmapped = []
    id_to_token = {i: t for t, i in new_tok.get_vocab().items()}
    for tid in range(size):
        data = new_surf.get(tid)
        if data is None:  # special or added token
            content = id_to_token.get(tid, "")
            src = _special_source(content, roles.get(content), base_tok)
            if src is None:
                unmapped.append(content)
                continue
            tmap.kinds[tid], tmap.sources[tid] = "special", [src]
        elif data in by_bytes:
            tmap.kinds[tid], tmap.sources[tid] = "copied", [by_bytes[data]]
        else:
            pieces = _base_piece_ids(base_tok, data) if data else []
            tmap.kinds[tid], tmap.sources[tid] = ("pieces", pieces) if pieces else ("fallback", [])
    if unmapped:
        raise TokenMappingError(
            f"special token(s) {', '.join(map(repr, unmapped))} of the new tokenizer have no counterpart in the base "
            f"tokenizer (by content or by role {', '.join(ROLES)}); train the tokenizer with this base "
            "(tokenizer.mode=replace carries its special tokens over)"
        )
    return tmap
