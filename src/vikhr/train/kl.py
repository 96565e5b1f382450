"""KL penalties for continued pre-training (Vikhr eq. 1: loss = CE + λ·KL(P_model ‖ P_ref)), as pure functions.

Direction. The paper writes KL(P_model ‖ P_ref) = Σ_v p_model(v) (log p_model(v) − log p_ref(v)), the *reverse*
KL relative to the usual distillation loss; it is mode-seeking (the model is penalised for putting mass where the
reference has little). `direction="forward"` gives KL(P_ref ‖ P_model) = Σ_v p_ref(v) (log p_ref(v) −
log p_model(v)), the distillation direction (mass-covering; its gradient in the logits is simply p_model − p_ref).

References. `init`: the transplanted model before training has the same vocabulary, so the KL is exact over the full
vocabulary (pass its final hidden states and LM-head weight as `ref_hidden` / `ref_weight`; it is exactly 0 at
step 0). `base`: the original model with its own tokenizer, compared only at aligned positions over the shared
vocabulary (`vikhr.train.align`); gathering the shared rows of both LM heads turns that into the same call.

Memory. `chunked_kl` and `ce_and_kl` take final hidden states and the LM-head weight instead of logits and
compute the logits a chunk of rows at a time, so no [tokens × vocab] tensor exists. The gradients with respect
to the hidden states and the weight are computed in the same pass from closed forms (Liger-kernel style), so the
backward keeps only gradient buffers the size of `hidden` and `weight`, never a chunk's logits. The reference
side never gets a gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vikhr.train import IGNORE_INDEX

Direction = Literal["reverse", "forward"]
"""`reverse`: KL(P_model ‖ P_ref), the paper's eq. 1. `forward`: KL(P_ref ‖ P_model), as in distillation."""


def _check_direction(direction: str) -> None:
    if direction not in ("reverse", "forward"):
        raise ValueError(f"direction must be 'reverse' or 'forward', got {direction!r}")


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` over positions where `mask` is true (all when None); 0 when nothing is selected."""
    if mask is None:
        return values.mean() if values.numel() else values.sum()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)


def kl_rows(logp: Tensor, logq: Tensor, direction: Direction = "reverse") -> Tensor:
    """Per-row KL between the log-distributions `logp` (model) and `logq` (reference) over the last dim."""
    _check_direction(direction)
    if direction == "reverse":
        return (logp.exp() * (logp - logq)).sum(-1)
    return (logq.exp() * (logq - logp)).sum(-1)


def kl_from_logits(
    logits: Tensor, ref_logits: Tensor, mask: Tensor | None = None, direction: Direction = "reverse"
) -> Tensor:
    """Brute-force KL from full logits [..., V] (softmax in at least float32), averaged over masked positions.

    The reference in tests, and fine for small vocabularies; the reference side is detached.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = F.log_softmax(logits.to(dtype), dim=-1)
    logq = F.log_softmax(ref_logits.detach().to(dtype), dim=-1)
    return masked_mean(kl_rows(logp, logq, direction), mask)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product of two [n, V] tensors without an [n, V] temporary."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).view(-1)


def _kl_and_grad_(logp: Tensor, p: Tensor, logq: Tensor, direction: Direction) -> tuple[Tensor, Tensor]:
    """Per-row KL [n] and its gradient in the model's logits [n, V]; overwrites `logq` to save memory.

    reverse: d/dz_j Σ p (log p − log q) = p_j (log p_j − log q_j − KL);  forward: d/dz_j = p_j − q_j.
    """
    if logq.shape != logp.shape:
        raise ValueError(f"reference logits {tuple(logq.shape)} do not match the model's {tuple(logp.shape)}")
    if direction == "reverse":
        diff = logq.neg_().add_(logp)
        kl = _rowdot(p, diff)
        return kl, diff.sub_(kl[:, None]).mul_(p)
    q = logq.exp()
    kl = _rowdot(q, logq.sub_(logp))
    return kl, q.neg_().add_(p)


def _add_grads(bufs: tuple[Tensor | None, Tensor | None], g: Tensor, h: Tensor, w: Tensor, s: int, e: int):
    """Chain a chunk's logit gradient `g` [c, V] into the hidden [N, H] and weight [V, H] gradient buffers."""
    grad_h, grad_w = bufs
    g = g.to(w.dtype)
    if grad_h is not None:
        grad_h[s:e] = g @ w
    if grad_w is not None:
        if grad_w.dtype == g.dtype:
            grad_w.addmm_(g.T, h)
        else:
            grad_w += g.T @ h


class _ChunkedHeadLoss(torch.autograd.Function):
    """(CE, KL) of `hidden @ weight.T`, chunk by chunk; gradients are computed in the forward and kept.

    Per chunk at most four [chunk, V] tensors live at once (log p, p, the reference logits, log q); the saved
    tensors are the gradient buffers, [N, H] and [V, H] for each of CE and KL.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, ce_scale, kl_scale, ref_fn, direction, chunk, grad_enabled):
        n = hidden.shape[0]
        mm = torch.promote_types(hidden.dtype, weight.dtype)
        acc = torch.promote_types(mm, torch.float32)
        w = weight.to(mm)
        # needs_input_grad ignores torch.no_grad(); the caller passes whether grad mode was on.
        need_h, need_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        with_ce, with_kl = labels is not None, ref_fn is not None
        grads = {
            name: (
                torch.zeros(n, hidden.shape[1], dtype=acc, device=hidden.device) if need_h else None,
                torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None,
            )
            for name, on in (("ce", with_ce), ("kl", with_kl))
            if on and (need_h or need_w)
        }
        ce = torch.zeros((), dtype=acc, device=hidden.device)
        kl = torch.zeros((), dtype=acc, device=hidden.device)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            h = hidden[s:e].to(mm)
            logp = F.log_softmax((h @ w.T).to(acc), dim=-1)
            p = logp.exp()
            if with_kl:
                logq = F.log_softmax(ref_fn(s, e).detach().to(acc), dim=-1)
                rows, g = _kl_and_grad_(logp, p, logq, direction)
                del logq
                scale = kl_scale[s:e].to(acc)
                kl = kl + (rows * scale).sum()
                if "kl" in grads:
                    _add_grads(grads["kl"], g.mul_(scale[:, None]), h, w, s, e)
                del g
            if with_ce:
                y = labels[s:e]
                valid = y != IGNORE_INDEX
                yc = y.clamp(min=0)[:, None]
                scale = ce_scale[s:e].to(acc) * valid
                ce = ce - (logp.gather(1, yc).squeeze(1) * scale).sum()
                if "ce" in grads:  # d CE / d z = p − onehot(y), built in place in p (not needed after this)
                    g = p.scatter_add_(1, yc, -valid.to(acc)[:, None]).mul_(scale[:, None])
                    _add_grads(grads["ce"], g, h, w, s, e)
                    del g
            del logp, p
        ctx.names = list(grads)
        ctx.save_for_backward(*(t for name in ctx.names for t in grads[name]))
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return ce, kl

    @staticmethod
    def backward(ctx, grad_ce, grad_kl):
        saved = ctx.saved_tensors
        grad_h = grad_w = None
        for i, name in enumerate(ctx.names):
            gh, gw = saved[2 * i], saved[2 * i + 1]
            scale = grad_ce if name == "ce" else grad_kl
            if gh is not None:
                grad_h = gh * scale if grad_h is None else grad_h + gh * scale
            if gw is not None:
                grad_w = gw * scale if grad_w is None else grad_w + gw * scale
        grad_h = grad_h.to(ctx.dtypes[0]) if grad_h is not None else None
        grad_w = grad_w.to(ctx.dtypes[1]) if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None, None, None, None


def _ref_source(
    rows: Tensor | None,
    ref_hidden: Tensor | None,
    ref_weight: Tensor | None,
    ref_logits_fn: Callable[[Tensor], Tensor] | None,
) -> Callable[[int, int], Tensor]:
    """Reference logits for selected rows [s, e): from `ref_logits_fn(row_ids)` or `ref_hidden @ ref_weight.T`."""
    if (ref_logits_fn is None) == (ref_hidden is None or ref_weight is None):
        raise ValueError("pass either ref_logits_fn or both ref_hidden and ref_weight")
    if ref_logits_fn is not None:
        return lambda s, e: ref_logits_fn(rows[s:e])
    ref_hidden = ref_hidden.detach().reshape(-1, ref_hidden.shape[-1])
    ref_h = ref_hidden if rows is None else ref_hidden.index_select(0, rows)
    ref_w = ref_weight.detach()
    mm = torch.promote_types(ref_h.dtype, ref_w.dtype)
    ref_w = ref_w.to(mm)
    return lambda s, e: ref_h[s:e].to(mm) @ ref_w.T


def _acc_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64: the dtype of the softmax and the sums."""
    return torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)


def _flat(hidden: Tensor, *per_row: Tensor | None) -> tuple[Tensor, ...]:
    h = hidden.reshape(-1, hidden.shape[-1])
    out = []
    for t in per_row:
        if t is not None and t.numel() != h.shape[0]:
            raise ValueError(f"expected {h.shape[0]} values per row, got shape {tuple(t.shape)}")
        out.append(None if t is None else t.reshape(-1))
    return (h, *out)


def chunked_kl(
    hidden: Tensor,
    weight: Tensor,
    *,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    ref_logits_fn: Callable[[Tensor], Tensor] | None = None,
    mask: Tensor | None = None,
    chunk: int = 1024,
    direction: Direction = "reverse",
) -> Tensor:
    """Mean over masked rows of KL between softmax(hidden @ weight.T) and the reference, `chunk` rows at a time.

    hidden: [N, H] (or [..., H]) final hidden states of the trained model; weight: its LM head [V, H]. The
    reference is `ref_hidden @ ref_weight.T` ([N, H'] and [V, H']) or `ref_logits_fn(row_ids) -> [len, V]`, row_ids
    indexing the flattened rows. mask: [N] bool, rows to average over (all when None); unmasked rows are never
    computed. Returns a scalar (0 when nothing is masked) with gradients for `hidden` and `weight`.
    """
    _check_direction(direction)
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    h, m = _flat(hidden, mask)
    rows = None if m is None else m.bool().nonzero().squeeze(1)
    if rows is not None:
        h = h.index_select(0, rows)
    elif ref_logits_fn is not None:
        rows = torch.arange(h.shape[0], device=h.device)
    ref_fn = _ref_source(rows, ref_hidden, ref_weight, ref_logits_fn)
    scale = torch.full((h.shape[0],), 1.0 / max(h.shape[0], 1), dtype=_acc_dtype(h, weight), device=h.device)
    _, kl = _ChunkedHeadLoss.apply(
        h, weight, None, None, scale, ref_fn, direction, chunk, torch.is_grad_enabled()
    )
    return kl


def ce_and_kl(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    mask: Tensor | None = None,
    chunk: int = 1024,
    *,
    ref_logits_fn: Callable[[Tensor], Tensor] | None = None,
    direction: Direction = "reverse",
) -> tuple[Tensor, Tensor]:
    """Cross-entropy and KL from the same chunked logits, returned separately so both can be logged.

    `labels` [N] are the already-shifted targets of each row (-100 = ignored); CE is their mean, as
    `F.cross_entropy(hidden @ weight.T, labels, ignore_index=-100)` (but 0, not NaN, when every label is ignored).
    The KL is averaged over `mask` (default: rows with a label). Reference arguments as in `chunked_kl`.
    """
    _check_direction(direction)
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    h, y, m = _flat(hidden, labels, mask)
    has_label = y != IGNORE_INDEX
    m = has_label if m is None else m.bool()
    rows = (has_label | m).nonzero().squeeze(1)
    h, y, m, has_label = h.index_select(0, rows), y[rows], m[rows], has_label[rows]
    acc = _acc_dtype(h, weight)
    ce_scale = has_label.to(acc) / max(int(has_label.sum()), 1)
    kl_scale = m.to(acc) / max(int(m.sum()), 1)
    ref_fn = _ref_source(rows, ref_hidden, ref_weight, ref_logits_fn)
    return _ChunkedHeadLoss.apply(
        h, weight, y, ce_scale, kl_scale, ref_fn, direction, chunk, torch.is_grad_enabled()
    )


def chunked_ce(hidden: Tensor, weight: Tensor, labels: Tensor, chunk: int = 1024) -> Tensor:
    """Mean CE of `hidden @ weight.T` against already-shifted `labels` (-100 ignored; 0 when none), chunked."""
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    rows = (y != IGNORE_INDEX).nonzero().squeeze(1)
    h, y = h.index_select(0, rows), y[rows]
    acc = torch.promote_types(torch.promote_types(h.dtype, weight.dtype), torch.float32)
    scale = torch.full((h.shape[0],), 1.0 / max(h.shape[0], 1), dtype=acc, device=h.device)
    ce, _ = _ChunkedHeadLoss.apply(h, weight, y, scale, None, None, "reverse", chunk, torch.is_grad_enabled())
    return ce
