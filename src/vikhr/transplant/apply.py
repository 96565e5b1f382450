"""Put new embedding (and LM-head) matrices into a model: tied or untied head, vocabulary padded to a multiple.

Every row is set explicitly: copied and special rows from the base, new rows by the init method, fallback rows
to the mean of the base rows, padding rows to zero. `resize_token_embeddings` is called with
`mean_resizing=False` and its result is overwritten anyway, and the head is re-tied or written separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vikhr.transplant.init import init_rows
from vikhr.transplant.mapping import TokenMap


@dataclass
class Matrices:
    """The new input embedding and, for untied models, the new LM head (both padded)."""

    embed: torch.Tensor
    head: torch.Tensor | None
    vocab_size: int
    padded_size: int


def padded(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple` (1 or less: unchanged)."""
    return n if multiple <= 1 else int(math.ceil(n / multiple) * multiple)


def build_matrix(
    base: torch.Tensor, tmap: TokenMap, method: str, padded_size: int, seed: int = 0
) -> torch.Tensor:
    """The new (padded_size x dim) matrix for one side (input embedding or LM head)."""
    n = len(tmap)
    out = torch.zeros(padded_size, base.shape[1], dtype=base.dtype)
    direct = tmap.ids("copied", "special")
    if direct:
        out[direct] = base[[tmap.sources[i][0] for i in direct]]
    new = tmap.ids("pieces")
    if new:
        out[new] = init_rows(method, base, [tmap.sources[i] for i in new], seed=seed)
    fallback = tmap.ids("fallback")
    if fallback:
        out[fallback] = base.float().mean(0).to(base.dtype)
    assert out.shape[0] >= n  # rows n..padded_size-1 are padding and stay zero
    return out


def build_matrices(
    model, tmap: TokenMap, method: str, output_method: str, pad_to: int, seed: int
) -> Matrices:
    """New matrices for `model` (tied: one; untied: embedding and head, each from its own base rows)."""
    size = padded(len(tmap), pad_to)
    embed_base = model.get_input_embeddings().weight.detach()
    embed = build_matrix(embed_base, tmap, method, size, seed)
    head = None
    if not is_tied(model):
        head_base = model.get_output_embeddings().weight.detach()
        head = build_matrix(
            head_base, tmap, method if output_method == "same" else output_method, size, seed + 1
        )
    return Matrices(embed, head, len(tmap), size)


def is_tied(model) -> bool:
    """True when the LM head shares its weight with the input embedding."""
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def install(model, mats: Matrices) -> None:
    """Resize `model` to the padded vocabulary and write every row of the new matrices."""
    tied = is_tied(model)
    model.resize_token_embeddings(mats.padded_size, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(mats.embed)
        if tied:
            if not is_tied(model):  # resizing must not untie; if it did, tie again explicitly
                model.get_output_embeddings().weight = model.get_input_embeddings().weight
        else:
            model.get_output_embeddings().weight.copy_(mats.head)
    model.config.vocab_size = mats.padded_size
    if tied != is_tied(model):
        raise RuntimeError("transplant changed whether the LM head is tied to the embedding")
