"""Initialisation of new embedding rows: pure functions from base rows to new rows.

- `mean`: the Vikhr paper's method — the mean of the base rows of the token's pieces under the base tokenizer.
- `hewitt`: Hewitt (2021) — the mean of *all* base rows plus noise drawn with their covariance (the paper cites
  Hewitt but describes `mean`).
- `random`: N(0, std of the base rows), for ablations.
- `first`: the row of the first piece (for the output side: a new token's logit then starts near the base
  model's logit for the first piece of the word).
"""

from __future__ import annotations

import torch

METHODS = ("mean", "hewitt", "random", "first")


def mean_rows(base: torch.Tensor, sources: list[list[int]]) -> torch.Tensor:
    """Row i = mean of `base[sources[i]]` (computed in float32, returned in base's dtype)."""
    n = len(sources)
    lengths = torch.tensor([len(s) for s in sources], dtype=torch.float32)
    if n == 0:
        return base.new_zeros((0, base.shape[1]))
    if (lengths == 0).any():
        raise ValueError("mean_rows: every new row needs at least one source row")
    rows = torch.repeat_interleave(torch.arange(n), lengths.long())
    flat = torch.tensor([i for s in sources for i in s], dtype=torch.long)
    out = torch.zeros(n, base.shape[1], dtype=torch.float32)
    out.index_add_(0, rows, base[flat].float())
    return (out / lengths[:, None]).to(base.dtype)


def first_rows(base: torch.Tensor, sources: list[list[int]]) -> torch.Tensor:
    """Row i = the base row of the first piece."""
    if any(len(s) == 0 for s in sources):
        raise ValueError("first_rows: every new row needs at least one source row")
    return base[torch.tensor([s[0] for s in sources], dtype=torch.long)].clone()


def hewitt_rows(base: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n rows drawn from N(mean of base rows, covariance of base rows) — Hewitt (2021)."""
    x = base.float()
    mu = x.mean(0)
    centered = x - mu
    cov = centered.T @ centered / max(1, x.shape[0] - 1)
    # Cholesky of the (possibly singular) covariance: add a tiny ridge on the diagonal.
    eye = torch.eye(cov.shape[0])
    chol = torch.linalg.cholesky(cov + 1e-6 * cov.diagonal().mean() * eye)
    z = torch.randn(n, x.shape[1], generator=generator)
    return (mu + z @ chol.T).to(base.dtype)


def random_rows(base: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n rows from N(0, std of base rows)."""
    std = base.float().std().item()
    return (torch.randn(n, base.shape[1], generator=generator) * std).to(base.dtype)


def init_rows(method: str, base: torch.Tensor, sources: list[list[int]], seed: int = 0) -> torch.Tensor:
    """New rows for tokens made of `sources` pieces by the named method."""
    g = torch.Generator().manual_seed(seed)
    if method == "mean":
        return mean_rows(base, sources)
    if method == "first":
        return first_rows(base, sources)
    if method == "hewitt":
        return hewitt_rows(base, len(sources), g)
    if method == "random":
        return random_rows(base, len(sources), g)
    raise ValueError(f"unknown init method {method!r} (known: {', '.join(METHODS)})")
