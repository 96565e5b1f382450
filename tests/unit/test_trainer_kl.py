"""KLTrainer: KL = 0 before the first step, CE matches the model's own loss, loss falls, the KL penalty holds the
model near its start, gradient accumulation is normalised by tokens, and a resumed run equals a straight one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from vikhr.paths import BUNDLED_DATA
from vikhr.train.packing import PackedDataset, PackingCollator
from vikhr.train.trainer import KLTrainer


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
    trainer_kw = {k: kw.pop(k) for k in ("reference", "kl_weight", "kl_chunk", "kl_direction") if k in kw}
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


def test_reference_base_is_not_implemented(tiny_smollm, dataset, tmp_path):
    with pytest.raises(NotImplementedError, match="base"):
        _trainer(tiny_smollm, tmp_path, dataset, reference="base")


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
