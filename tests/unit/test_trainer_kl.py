"""KLTrainer: KL = 0 before the first step, CE matches the model's own loss, loss falls, the KL penalty holds the
model near its start, gradient accumulation is normalised by tokens, and a resumed run equals a straight one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

from vikhr.paths import BUNDLED_DATA
from vikhr.train.packing import PackedDataset, PackingCollator
from vikhr.train.trainer import KLTrainer, TrainingDiverged


@pytest.fixture(scope="module")
def dataset(tiny_smollm) -> PackedDataset:
    """A few Chekhov paragraphs, repeated, packed into 32-token rows."""
    text = (BUNDLED_DATA / "ru" / "chekhov" / "Ванька.txt").read_text(encoding="utf-8")
    paras = [p for p in text.split("\n") if p.strip()][:3]
    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    return PackedDataset(paras * 4, tok, seq_len=32)


def _model(folder):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def _trainer(folder, out, dataset, *, steps=2, model=None, **kw) -> KLTrainer:
    names = ("reference", "kl_weight", "kl_chunk", "kl_direction", "base_model", "shared_ids", "freeze_steps")
    trainer_kw = {k: kw.pop(k) for k in names if k in kw}
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=kw.pop("batch", 2), max_steps=steps,
        learning_rate=kw.pop("lr", 1e-2), report_to=[], save_strategy=kw.pop("save_strategy", "no"),
        logging_steps=1, use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, **kw,
    )  # fmt: skip
    return KLTrainer(
        model=model if model is not None else _model(folder), args=args, train_dataset=dataset,
        data_collator=PackingCollator(), **trainer_kw,
    )  # fmt: skip


def _batch(dataset, idx=(0, 1)):
    return PackingCollator()([dataset[i] for i in idx])


def test_kl_is_zero_at_step_zero_and_loss_is_ce(tiny_smollm, dataset, tmp_path):
    tr = _trainer(tiny_smollm, tmp_path, dataset, kl_weight=0.5, kl_chunk=7)
    tr.model.train()
    loss, out = tr.compute_loss(tr.model, _batch(dataset), return_outputs=True)
    assert out["kl"].abs().item() < 1e-7
    assert out["ce"].item() > 1.0
    torch.testing.assert_close(loss, out["ce"])


def test_ce_matches_model_loss(tiny_smollm, dataset, tmp_path):
    for reference in ("init", "none"):
        tr = _trainer(tiny_smollm, tmp_path, dataset, reference=reference, kl_chunk=16)
        batch = _batch(dataset, (2, 3))
        _, out = tr.compute_loss(tr.model, batch, return_outputs=True)
        with torch.no_grad():
            expected = tr.model(**batch, use_cache=False).loss
        torch.testing.assert_close(out["ce"].float(), expected, rtol=1e-5, atol=1e-6)


def _texts(n: int = 4) -> list[str]:
    text = (BUNDLED_DATA / "ru" / "chekhov" / "Ванька.txt").read_text(encoding="utf-8")
    ru = [p for p in text.split("\n") if len(p) > 80][:n]
    return [p[:150] for p in ru] + [
        "The cat sat on the mat, and the dog slept by the door.",
        "Hello world, again.",
    ]


def test_reference_base_is_the_aligned_kl_over_the_shared_vocabulary(tiny_smollm, tiny_mistral, tmp_path):
    """New side: a tiny model with Mistral's SentencePiece tokenizer; base: a tiny model with SmolLM2's
    byte-level one. The trainer's KL equals the brute-force formula: full logits of both models on each text,
    pairs from `aligned_positions`, log-softmax over the shared vocabulary on both sides."""
    from vikhr.train.align import aligned_positions, encode_tokens, shared_keys, shared_vocab_map, token_keys
    from vikhr.train.kl import kl_from_logits

    new_tok, base_tok = (
        AutoTokenizer.from_pretrained(tiny_mistral),
        AutoTokenizer.from_pretrained(tiny_smollm),
    )
    texts = _texts()
    ds = PackedDataset(texts, new_tok, seq_len=128, split_long=False, last="pad", base_tokenizer=base_tok)
    assert ds.stats.truncated == 0 and ds.aligned > 20  # whole documents, several per row
    base = _model(tiny_smollm)
    base.model.norm.weight.data *= 20  # sharper distributions than a random tiny model's near-uniform ones
    ids = shared_vocab_map(new_tok, base_tok)
    tr = _trainer(tiny_mistral, tmp_path, ds, reference="base", base_model=base, shared_ids=ids, kl_chunk=5)
    tr.model.eval()
    with torch.no_grad():
        _, out = tr.compute_loss(tr.model, _batch(ds, range(len(ds))), return_outputs=True)
        shared = shared_keys(new_tok, base_tok)
        nk, bk = token_keys(new_tok), token_keys(base_tok)
        new_rows, base_rows = [], []
        for text in texts:
            n_ids, n_toks = encode_tokens(new_tok, text, nk)
            b_ids, b_toks = encode_tokens(base_tok, text, bk)
            pairs = aligned_positions(text, n_toks, b_toks, shared)
            nl = tr.model(torch.tensor([n_ids]), use_cache=False).logits[0]
            bl = base(torch.tensor([b_ids]), use_cache=False).logits[0]
            new_rows.append(nl[[t for t, _ in pairs]])
            base_rows.append(bl[[u for _, u in pairs]])
        new_logits, base_logits = torch.cat(new_rows), torch.cat(base_rows)
    assert len(new_logits) == ds.aligned
    expected = kl_from_logits(new_logits[:, ids[0]], base_logits[:, ids[1]])
    assert expected > 0.1
    torch.testing.assert_close(out["kl"], expected, rtol=1e-4, atol=1e-6)


def test_reference_base_with_itself_is_zero_and_trains(tiny_smollm, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    ds = PackedDataset(_texts() * 2, tok, seq_len=48, base_tokenizer=tok)  # documents split across rows
    assert ds.aligned > 0.8 * len(ds) * 48
    from vikhr.train.align import shared_vocab_map

    kw = dict(reference="base", base_model=_model(tiny_smollm), shared_ids=shared_vocab_map(tok, tok))
    tr = _trainer(tiny_smollm, tmp_path, ds, steps=5, kl_weight=1.0, **kw)
    tr.model.eval()
    with torch.no_grad():
        _, out = tr.compute_loss(tr.model, _batch(ds), return_outputs=True)
    assert out["kl"].abs().item() < 1e-6
    tr.train()
    logs = [h for h in tr.state.log_history if "kl" in h]
    assert logs[0]["kl"] < 1e-6 < logs[-1]["kl"]


def test_base_reference_needs_a_base_view(tiny_smollm, dataset, tmp_path):
    with pytest.raises(ValueError, match="base_model"):
        _trainer(tiny_smollm, tmp_path, dataset, reference="base")
    from vikhr.train.align import shared_vocab_map

    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    tr = _trainer(tiny_smollm, tmp_path, dataset, reference="base", base_model=_model(tiny_smollm),
                  shared_ids=shared_vocab_map(tok, tok))  # fmt: skip
    with pytest.raises(ValueError, match="base_tokenizer"):
        tr.compute_loss(tr.model, _batch(dataset))


def test_freeze_steps_train_only_embeddings_then_everything(tiny_mistral, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_mistral)
    ds = PackedDataset(_texts() * 3, tok, seq_len=32)
    tr = _trainer(tiny_mistral, tmp_path, ds, steps=2, freeze_steps=2, kl_weight=0.0)
    start = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    tr.train()
    emb = ("model.embed_tokens.weight", "lm_head.weight")
    for k, v in tr.model.named_parameters():
        assert torch.equal(v, start[k]) != (k in emb), k
    tr = _trainer(tiny_mistral, tmp_path, ds, steps=3, freeze_steps=2, kl_weight=0.0)
    tr.train()
    assert not torch.equal(dict(tr.model.named_parameters())["model.layers.0.mlp.up_proj.weight"],
                           start["model.layers.0.mlp.up_proj.weight"])  # fmt: skip


def test_nan_loss_stops_with_the_step_and_the_last_checkpoint(tiny_smollm, dataset, tmp_path):
    model = _model(tiny_smollm)
    tr = _trainer(tiny_smollm, tmp_path, dataset, steps=4, model=model, save_strategy="steps", save_steps=2)
    state = {}

    def poison(*_a, **_k):
        if tr.state.global_step == 2 and not state:
            state["before"] = model.model.norm.weight.detach().clone()
            model.model.norm.weight.data[0] = float("nan")

    tr.add_callback(type("Poison", (TrainerCallback,), {"on_step_begin": lambda self, *a, **k: poison()}))
    with pytest.raises(TrainingDiverged, match=r"optimizer step 3.*checkpoint-2"):
        tr.train()
    # the optimizer never ran on the NaN gradients: every other weight is still finite
    finite = [torch.isfinite(v).all().item() for k, v in model.named_parameters() if k != "model.norm.weight"]
    assert all(finite)


def test_loss_falls_and_ce_kl_are_logged(tiny_smollm, dataset, tmp_path):
    tr = _trainer(tiny_smollm, tmp_path, dataset, steps=30, kl_weight=0.1)
    tr.train()
    logs = [h for h in tr.state.log_history if "ce" in h]
    assert len(logs) == 30
    assert logs[0]["kl"] < 1e-6  # the first step's KL is measured before any update
    assert logs[-1]["kl"] > 0
    assert logs[-1]["ce"] < logs[0]["ce"] - 1.0
    # the logged loss is CE + λ·KL of the same batch
    for h in logs:
        assert h["loss"] == pytest.approx(h["ce"] + 0.1 * h["kl"], rel=1e-4, abs=1e-4)


def _kl_to_init(tr, dataset) -> float:
    tr.model.eval()
    with torch.no_grad():
        _, out = tr.compute_loss(tr.model, _batch(dataset, range(len(dataset))), return_outputs=True)
    return out["kl"].item()


def test_kl_weight_keeps_model_near_reference(tiny_smollm, dataset, tmp_path):
    kls = {}
    for w in (0.0, 20.0):
        tr = _trainer(tiny_smollm, tmp_path / str(w), dataset, steps=15, kl_weight=w, lr=5e-2)
        tr.train()
        kls[w] = _kl_to_init(tr, dataset)
    assert kls[0.0] > 0.05
    assert kls[20.0] < 0.5 * kls[0.0]


def test_gradient_accumulation_is_token_normalised(tiny_smollm, dataset, tmp_path):
    """One SGD step on 4 rows equals one step of 2 × 2 rows (SGD, unlike Adam, sees the gradient's scale); one
    row has most labels masked, so a mean per micro-batch would weight its tokens more and differ."""
    rows = [dataset[i] for i in range(4)]
    rows[0] = replace(rows[0], labels=rows[0].labels.clone().fill_(-100))
    rows[0].labels[-3:] = rows[0].input_ids[-3:]
    params = []
    for batch, accum in ((4, 1), (2, 2)):
        tr = _trainer(tiny_smollm, tmp_path / f"{batch}", rows, steps=1, kl_weight=0.5, batch=batch,
                      gradient_accumulation_steps=accum, optim="sgd", lr=1.0, warmup_steps=0,
                      lr_scheduler_type="constant")  # fmt: skip
        tr.train()
        params.append({k: v.detach().clone() for k, v in tr.model.named_parameters()})
    start = dict(_model(tiny_smollm).named_parameters())
    for k in params[0]:
        assert not torch.equal(params[0][k], start[k].detach()), k
        torch.testing.assert_close(params[1][k], params[0][k], rtol=1e-5, atol=1e-6)


def test_resume_matches_straight_run(tiny_smollm, dataset, tmp_path):
    straight = _trainer(
        tiny_smollm, tmp_path / "a", dataset, steps=6, kl_weight=0.5, gradient_accumulation_steps=2
    )
    straight.train()
    first = _trainer(tiny_smollm, tmp_path / "b", dataset, steps=6, kl_weight=0.5, gradient_accumulation_steps=2,
                     save_strategy="steps", save_steps=3)  # fmt: skip
    first.train()
    resumed = _trainer(tiny_smollm, tmp_path / "b", dataset, steps=6, kl_weight=0.5, gradient_accumulation_steps=2,
                       save_strategy="steps", save_steps=3)  # fmt: skip
    calls, step = [], resumed.training_step
    resumed.training_step = lambda *a, **k: calls.append(1) or step(*a, **k)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    assert len(calls) == 3 * 2  # steps 4..6, two micro-batches each: it really resumed
    a = dict(straight.model.named_parameters())
    for k, v in resumed.model.named_parameters():
        torch.testing.assert_close(v, a[k], rtol=0, atol=1e-6)
    # the reference of the resumed trainer is still the initial model, not the checkpoint
    ref = dict(resumed.ref_model.named_parameters())
    for k, v in _model(tiny_smollm).named_parameters():
        torch.testing.assert_close(ref[k], v, rtol=0, atol=0)
