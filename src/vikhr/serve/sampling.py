"""Pure pieces of decoding: next-token sampling per row, incremental detokenisation, stop strings."""

from __future__ import annotations

import torch


def sample_next(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """One next token per row of `logits` [B, V], each row with its own temperature, top-p and generator.

    A temperature of 0 means greedy (argmax). Top-p keeps the smallest set of tokens whose probability reaches
    `top_p` (always at least the most likely one). Rows with a generator draw from it, so a seeded request is
    reproducible; rows without one draw from torch's global generator.
    """
    logits = logits.float()
    out = logits.argmax(dim=-1)
    sampled = (temperature > 0).nonzero().flatten().tolist()
    if not sampled:
        return out
    rows = torch.tensor(sampled)
    probs = torch.softmax(logits[rows] / temperature[rows, None], dim=-1)
    nucleus = (top_p[rows] < 1).nonzero().flatten()
    if len(nucleus):
        sub = probs[nucleus]
        sorted_p, order = sub.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= top_p[rows][nucleus, None]
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs[nucleus] = torch.zeros_like(sub).scatter(-1, order, sorted_p)
    for j, row in enumerate(sampled):
        out[row] = torch.multinomial(probs[j], 1, generator=generators[row]).item()
    return out


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` must wait: an unfinished UTF-8 character (decoded as U+FFFD)
    or the start of a stop string that the next tokens may complete."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    n = len(text) - len(text.rstrip("\ufffd"))
    return max(keep, n)


def find_stop(text: str, stops: list[str], start: int = 0) -> int:
    """Index of the earliest stop string in `text` that ends after `start`, or -1."""
    best = -1
    for s in stops:
        i = text.find(s, max(0, start - len(s) + 1))
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best
