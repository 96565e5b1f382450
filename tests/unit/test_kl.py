"""KL losses for continued pre-training: chunked == brute force, direction, masking, CE, bounded memory."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vikhr.train.kl import ce_and_kl, chunked_kl, kl_from_logits

N, H, H_REF, V = 37, 8, 6, 50
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


def _inputs(dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, dtype=dtype, generator=g).requires_grad_()
    weight = torch.randn(V, H, dtype=dtype, generator=g).requires_grad_()
    ref_hidden = torch.randn(N, H_REF, dtype=dtype, generator=g)
    ref_weight = torch.randn(V, H_REF, dtype=dtype, generator=g)
    mask = torch.rand(N, generator=g) > 0.3
    return hidden, weight, ref_hidden, ref_weight, mask


def _grads(loss, *ts):
    return torch.autograd.grad(loss, ts)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("chunk", [1, 5, 16, N, 100])
def test_chunked_equals_brute_force(dtype, direction, chunk):
    hidden, weight, ref_hidden, ref_weight, mask = _inputs(dtype)
    got = chunked_kl(
        hidden,
        weight,
        ref_hidden=ref_hidden,
        ref_weight=ref_weight,
        mask=mask,
        chunk=chunk,
        direction=direction,
    )
    want = kl_from_logits(hidden @ weight.T, ref_hidden @ ref_weight.T, mask, direction)
    assert got.dtype == want.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])
    for a, b in zip(_grads(got, hidden, weight), _grads(want, hidden, weight), strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_ref_logits_fn_and_batched_shapes():
    hidden, weight, ref_hidden, ref_weight, mask = _inputs(torch.float64)
    ref_logits = ref_hidden @ ref_weight.T
    seen = []

    def ref_fn(rows):
        seen.append(rows.clone())
        return ref_logits[rows]

    a = chunked_kl(hidden, weight, ref_logits_fn=ref_fn, mask=mask, chunk=4)
    b = chunked_kl(hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight, mask=mask, chunk=4)
    torch.testing.assert_close(a, b)
    assert torch.equal(torch.cat(seen), mask.nonzero().squeeze(1))  # only masked rows are ever computed
    # [B, T, H] inputs are flattened
    c = chunked_kl(
        hidden[:36].reshape(4, 9, H),
        weight,
        ref_hidden=ref_hidden[:36].reshape(4, 9, H_REF),
        ref_weight=ref_weight,
        mask=mask[:36].reshape(4, 9),
    )
    torch.testing.assert_close(c, kl_from_logits(hidden[:36] @ weight.T, ref_logits[:36], mask[:36]))


def test_directions_differ_and_match_their_formulas():
    hidden, weight, ref_hidden, ref_weight, _ = _inputs(torch.float64)
    logits, ref_logits = hidden @ weight.T, ref_hidden @ ref_weight.T
    logp, logq = F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1)
    # F.kl_div(input, target) = Σ target · (log target − input): independent of the code under test
    reverse = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1).mean()  # KL(P_model ‖ P_ref)
    forward = F.kl_div(logp, logq, log_target=True, reduction="none").sum(-1).mean()  # KL(P_ref ‖ P_model)
    assert (reverse - forward).abs() > 1e-3
    for direction, want in (("reverse", reverse), ("forward", forward)):
        torch.testing.assert_close(kl_from_logits(logits, ref_logits, direction=direction), want)
        got = chunked_kl(
            hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight, chunk=7, direction=direction
        )
        torch.testing.assert_close(got, want)
    default = chunked_kl(hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight)
    assert default.item() == pytest.approx(reverse.item())  # the paper's direction is the default


def test_kl_is_exactly_zero_against_itself():
    hidden, weight, *_ = _inputs(torch.float32)
    kl = chunked_kl(hidden, weight, ref_hidden=hidden, ref_weight=weight, chunk=8)
    assert kl.item() == 0.0
    for g in _grads(kl, hidden, weight):
        assert torch.count_nonzero(g) == 0


def test_init_reference_is_zero_at_step_zero():
    """The `init` reference: a frozen copy of the transplanted model. Before a step the KL is exactly 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    model.eval()
    ids = torch.randint(0, 97, (2, 12))
    labels = ids.clone()
    labels[0, :3] = -100
    hidden = model.model(input_ids=ids).last_hidden_state
    with torch.no_grad():
        ref_hidden = ref.model(input_ids=ids).last_hidden_state
    shifted = labels[:, 1:]
    ce, kl = ce_and_kl(
        hidden[:, :-1], model.lm_head.weight, shifted, ref_hidden[:, :-1], ref.lm_head.weight, chunk=5
    )
    assert kl.item() == 0.0
    # the model's own loss shifts labels inside; ce_and_kl takes them already shifted
    torch.testing.assert_close(ce, model(input_ids=ids, labels=labels).loss)
    (ce + 0.5 * kl).backward()
    assert model.lm_head.weight.grad is not None and model.model.layers[0].mlp.up_proj.weight.grad is not None


def test_masking():
    hidden, weight, ref_hidden, ref_weight, mask = _inputs(torch.float64)
    kl = chunked_kl(hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight, mask=mask)
    rows = mask.nonzero().squeeze(1)
    torch.testing.assert_close(kl, kl_from_logits(hidden[rows] @ weight.T, ref_hidden[rows] @ ref_weight.T))
    grad_h, _ = _grads(kl, hidden, weight)
    assert torch.count_nonzero(grad_h[~mask]) == 0 and torch.count_nonzero(grad_h[mask]) > 0
    # unmasked rows do not matter, whatever they hold
    noisy_ref = ref_hidden.clone()
    noisy_ref[~mask] += 100
    again = chunked_kl(hidden, weight, ref_hidden=noisy_ref, ref_weight=ref_weight, mask=mask)
    torch.testing.assert_close(again, kl)
    # nothing masked: 0, not NaN, and a graph that still backpropagates zeros
    none = chunked_kl(
        hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight, mask=torch.zeros(N, dtype=bool)
    )
    assert none.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in _grads(none, hidden, weight))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [3, N, 64])
def test_ce_and_kl(dtype, chunk):
    hidden, weight, ref_hidden, ref_weight, mask = _inputs(dtype)
    labels = torch.randint(0, V, (N,))
    labels[::4] = -100
    ce, kl = ce_and_kl(hidden, weight, labels, ref_hidden, ref_weight, chunk=chunk, direction="forward")
    logits = hidden @ weight.T
    want_ce = F.cross_entropy(logits, labels, ignore_index=-100)
    want_kl = kl_from_logits(logits, ref_hidden @ ref_weight.T, labels != -100, "forward")
    torch.testing.assert_close(ce, want_ce, **TOL[dtype])
    torch.testing.assert_close(kl, want_kl, **TOL[dtype])
    for a, b in zip(
        _grads(ce + 0.3 * kl, hidden, weight), _grads(want_ce + 0.3 * want_kl, hidden, weight), strict=True
    ):
        torch.testing.assert_close(a, b, **TOL[dtype])
    # an explicit KL mask is independent of the labels
    _, kl2 = ce_and_kl(hidden, weight, labels, ref_hidden, ref_weight, mask=mask, chunk=chunk)
    torch.testing.assert_close(kl2, kl_from_logits(logits, ref_hidden @ ref_weight.T, mask), **TOL[dtype])


def test_ce_and_kl_all_ignored_is_zero():
    hidden, weight, ref_hidden, ref_weight, _ = _inputs(torch.float32)
    labels = torch.full((N,), -100)
    ce, kl = ce_and_kl(hidden, weight, labels, ref_hidden, ref_weight)
    assert ce.item() == 0.0 and kl.item() == 0.0
    (ce + kl).backward()
    assert torch.count_nonzero(hidden.grad) == 0


def test_saved_tensors_are_bounded_by_inputs_not_logits():
    """The backward keeps gradient buffers the size of hidden and weight, never [rows × vocab] logits."""
    n, h, v, chunk = 256, 16, 512, 32
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    ref_hidden, ref_weight = torch.randn(n, h), torch.randn(v, h)
    labels = torch.randint(0, v, (n,))

    def saved_shapes(fn):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t
        ):
            fn()
        return shapes

    limit = max(n * h, v * h)
    for fn in (
        lambda: chunked_kl(hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight, chunk=chunk),
        lambda: ce_and_kl(hidden, weight, labels, ref_hidden, ref_weight, chunk=chunk),
    ):
        shapes = saved_shapes(fn)
        assert shapes and all(torch.Size(s).numel() <= limit for s in shapes), shapes
    # the check can fail: the brute-force path saves full [n, v] tensors
    brute = saved_shapes(lambda: kl_from_logits(hidden @ weight.T, ref_hidden @ ref_weight.T))
    assert (n, v) in brute


def test_low_precision_inputs():
    hidden, weight, ref_hidden, ref_weight, mask = _inputs(torch.float32)
    hb = hidden.detach().bfloat16().requires_grad_()
    wb = weight.detach().bfloat16().requires_grad_()
    kl = chunked_kl(hb, wb, ref_hidden=ref_hidden.bfloat16(), ref_weight=ref_weight.bfloat16(), mask=mask)
    assert kl.dtype == torch.float32  # softmax and sums in float32
    kl.backward()
    assert hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    want = kl_from_logits(
        hb.float() @ wb.float().T, ref_hidden.bfloat16().float() @ ref_weight.bfloat16().float().T, mask
    )
    torch.testing.assert_close(kl, want, rtol=2e-2, atol=1e-3)


def test_no_grad_mode():
    hidden, weight, ref_hidden, ref_weight, mask = _inputs(torch.float64)
    with torch.no_grad():
        kl = chunked_kl(hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight, mask=mask, chunk=4)
    assert kl.grad_fn is None
    torch.testing.assert_close(
        kl, kl_from_logits(hidden @ weight.T, ref_hidden @ ref_weight.T, mask).detach()
    )


def test_bad_arguments():
    hidden, weight, ref_hidden, ref_weight, _ = _inputs(torch.float32)
    with pytest.raises(ValueError, match="direction"):
        chunked_kl(hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight, direction="backward")
    with pytest.raises(ValueError, match="chunk"):
        chunked_kl(hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight, chunk=0)
    with pytest.raises(ValueError, match="either"):
        chunked_kl(hidden, weight)
    with pytest.raises(ValueError, match="either"):
        chunked_kl(hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight, ref_logits_fn=lambda r: r)
    with pytest.raises(ValueError, match="do not match"):
        chunked_kl(hidden, weight, ref_hidden=ref_hidden, ref_weight=ref_weight[:-1])
    with pytest.raises(ValueError, match="per row"):
        ce_and_kl(hidden, weight, torch.zeros(N - 1, dtype=torch.long), ref_hidden, ref_weight)
