"""Packing: no token lost or invented, positions and labels per segment, and no attention across documents."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from vikhr.train.packing import (
    IGNORE_INDEX,
    PackedDataset,
    PackingCollator,
    PackStats,
    block_causal_mask,
    check_model_for_packing,
    pack,
    split_documents,
)


def _docs(n: int, seed: int = 0, max_len: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 1000) for _ in range(rng.randrange(1, max_len))] for _ in range(n)]


def _real(row) -> list[int]:
    return row.input_ids[: len(row.input_ids) - row.num_pad].tolist()


def _segments(row) -> list[torch.Tensor]:
    """The row's document segments (padding left out), each as its own token tensor."""
    real = row.seq_lens[:-1] if row.num_pad else row.seq_lens
    return list(torch.split(row.input_ids[: sum(real)], list(real)))


@pytest.mark.parametrize("seq_len", [1, 7, 32, 128])
@pytest.mark.parametrize("last", ["drop", "pad"])
@pytest.mark.parametrize(("bos", "eos"), [(1, 2), (None, 2), (None, None)])
def test_every_token_once_in_order(seq_len, last, bos, eos):
    docs = _docs(50)
    stats = PackStats()
    rows = list(pack(docs, seq_len, bos_id=bos, eos_id=eos, last=last, pad_id=0, stats=stats))
    stream = [t for d in docs for t in ([bos] if bos else []) + d + ([eos] if eos else [])]
    out = [t for r in rows for t in _real(r)]
    assert all(len(r.input_ids) == seq_len and sum(r.seq_lens) == seq_len for r in rows)
    assert all(r.num_pad == 0 for r in rows[:-1])  # padding only in the declared last row
    if last == "drop":
        assert rows[-1].num_pad == 0
        assert out == stream[: len(out)] and stats.dropped == len(stream) - len(out) < seq_len
    else:
        assert out == stream and stats.dropped == 0 and stats.padded == rows[-1].num_pad < seq_len
    assert stats.tokens == len(stream) and stats.sequences == len(rows) and stats.balanced(seq_len)


def test_positions_restart_and_labels_masked_at_segment_starts():
    docs = [[10, 11, 12], [20, 21, 22, 23, 24], [30, 31]]
    rows = list(pack(docs, 6, bos_id=1, eos_id=2, last="pad", pad_id=0))
    # streams: [1 10 11 12 2][1 20 21 22 23 24 2][1 30 31 2]
    assert [r.input_ids.tolist() for r in rows] == [
        [1, 10, 11, 12, 2, 1],
        [20, 21, 22, 23, 24, 2],
        [1, 30, 31, 2, 0, 0],
    ]
    assert [r.seq_lens for r in rows] == [(5, 1), (6,), (4, 2)]
    assert [r.position_ids.tolist() for r in rows] == [
        [0, 1, 2, 3, 4, 0],
        [0, 1, 2, 3, 4, 5],
        [0, 1, 2, 3, 0, 1],
    ]
    m = IGNORE_INDEX
    assert [r.labels.tolist() for r in rows] == [
        [m, 10, 11, 12, 2, m],
        [m, 21, 22, 23, 24, 2],
        [m, 30, 31, 2, m, m],
    ]
    assert rows[0].cu_seqlens.tolist() == [0, 5, 6] and rows[-1].num_pad == 2


def test_labels_mask_exactly_segment_starts_and_padding():
    for r in pack(_docs(40, seed=3), 33, bos_id=None, eos_id=2, last="pad"):
        starts = set(r.cu_seqlens[:-1].tolist())
        pad = set(range(33 - r.num_pad, 33))
        masked = {i for i, v in enumerate(r.labels.tolist()) if v == IGNORE_INDEX}
        assert masked == starts | pad
        assert all(r.position_ids[s] == 0 for s in starts)


def test_whole_documents_mode_pads_and_truncates():
    docs = [[5] * 4, [6] * 3, [7] * 12, [8] * 2]
    stats = PackStats()
    rows = list(pack(docs, 8, bos_id=None, eos_id=2, split_long=False, last="pad", stats=stats))
    assert [r.seq_lens for r in rows] == [(5, 3), (4, 4), (8,), (3, 5)]
    assert stats.truncated == 13 - 8 and stats.padded == 3 + 4 + 5 and stats.balanced(8)


def test_empty_documents_and_bad_arguments():
    stats = PackStats()
    assert list(pack([[], [3, 4], []], 3, bos_id=None, eos_id=2, stats=stats))[0].seq_lens == (3,)
    assert (stats.documents, stats.empty, stats.tokens) == (3, 2, 3)
    with pytest.raises(ValueError, match="seq_len"):
        list(pack([[1]], 0, bos_id=None, eos_id=None))
    with pytest.raises(ValueError, match="last"):
        list(pack([[1]], 4, bos_id=None, eos_id=None, last="keep"))


def test_collator_stacks_and_builds_flash_kwargs():
    rows = list(pack([[5] * 4, [6] * 7, [7] * 2], 5, bos_id=None, eos_id=None, last="pad"))
    batch = PackingCollator(flash_varlen_kwargs=True)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (3, 5)
    assert "attention_mask" not in batch
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 5, 10, 11, 13, 15] and batch["max_length_q"] == 5
    assert batch["cu_seq_lens_q"].dtype == torch.int32


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_transformers_builds_the_block_causal_mask_from_positions(impl):
    from transformers import LlamaConfig
    from transformers.masking_utils import create_causal_mask

    cfg = LlamaConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, vocab_size=10)
    cfg._attn_implementation = impl
    row = next(pack([[3] * 3, [4] * 4, [5] * 5], 10, bos_id=None, eos_id=None))
    embeds = torch.zeros(1, 10, 8)
    mask = create_causal_mask(cfg, embeds, None, None, position_ids=row.position_ids[None])
    allowed = mask if mask.dtype == torch.bool else mask == 0  # eager: additive float mask
    assert torch.equal(allowed, block_causal_mask(row.seq_lens))
    plain = create_causal_mask(cfg, embeds, None, None, position_ids=torch.arange(10)[None])
    assert plain is None or not torch.equal(plain if plain.dtype == torch.bool else plain == 0, allowed)


def _model(folder, impl):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=impl, dtype=torch.float32)
    model.config.use_cache = False  # what Trainer sets (TrainingArguments.use_cache defaults to False)
    return model.eval()


def _two_docs(folder) -> tuple[list[int], list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    a = tok("Москва — столица России, крупнейший город страны.", add_special_tokens=False)["input_ids"]
    b = tok("Река Волга впадает в Каспийское море.", add_special_tokens=False)["input_ids"]
    return a + [tok.eos_token_id], b + [tok.eos_token_id]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_equal_separate_documents(tiny_smollm, impl):
    model = _model(tiny_smollm, impl)
    check_model_for_packing(model)
    a, b = _two_docs(tiny_smollm)
    rows = list(pack([a, b], len(a) + len(b), bos_id=None, eos_id=None))
    assert len(rows) == 1 and rows[0].seq_lens == (len(a), len(b))
    batch = PackingCollator()(rows)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone_a = model(input_ids=torch.tensor([a])).logits[0]
        alone_b = model(input_ids=torch.tensor([b])).logits[0]
        plain = model(input_ids=batch["input_ids"]).logits[0]  # one causal mask over both documents
        cached = model(**{k: batch[k] for k in ("input_ids", "position_ids")}, use_cache=True).logits[0]
    assert torch.allclose(packed[: len(a)], alone_a, atol=1e-5)
    assert torch.allclose(packed[len(a) :], alone_b, atol=1e-5)
    # The test can fail: without the block mask document B sees document A.
    assert torch.allclose(plain[: len(a)], alone_a, atol=1e-5)
    assert not torch.allclose(plain[len(a) :], alone_b, atol=1e-5)
    # The trap check_model_for_packing guards: with a KV cache transformers skips the packed-mask detection.
    assert not torch.allclose(cached[len(a) :], alone_b, atol=1e-5)
    model.config.use_cache = True
    with pytest.raises(ValueError, match="use_cache"):
        check_model_for_packing(model)


def test_packed_loss_equals_per_document_loss(tiny_smollm):
    model = _model(tiny_smollm, "sdpa")
    a, b = _two_docs(tiny_smollm)
    c = a[: len(a) // 2] + b
    seq_len = (len(a) + len(b) + len(c) + 1) // 2  # two rows; a document is split across them
    rows = list(pack([a, b, c], seq_len, bos_id=None, eos_id=None, last="pad", pad_id=0))
    assert len(rows) == 2 and rows[0].seq_lens[-1] + rows[1].seq_lens[0] in (len(b), len(c))
    batch = PackingCollator()(rows)
    with torch.no_grad():
        loss = model(**batch).loss
        unmasked = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["input_ids"]
        )
        total, count = 0.0, 0
        for seg in (s for r in rows for s in _segments(r) if len(s) > 1):
            total += model(input_ids=seg[None], labels=seg[None]).loss.item() * (len(seg) - 1)
            count += len(seg) - 1
    assert count == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert loss.item() == pytest.approx(total / count, abs=1e-5)
    # Without the -100 at segment starts the loss also scores predictions across document boundaries.
    assert unmasked.loss.item() != pytest.approx(total / count, abs=1e-5)


def test_packed_dataset_with_real_tokenizer(tiny_smollm, ru_sample):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    texts = ru_sample[:60]
    ds = PackedDataset(texts, tok, 64, add_eos=True, last="pad", batch_size=16)
    lengths = [len(ids) + 1 for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    s = ds.stats
    assert s.documents == 60 and s.tokens == sum(lengths) and s.balanced(64)
    assert len(ds) == s.sequences == -(-sum(lengths) // 64)
    assert s.padded < 64 and s.as_dict()["padding_share"] == s.padded / (s.sequences * 64)
    assert [t for i in range(len(ds)) for t in _real(ds[i])].count(tok.eos_token_id) == 60  # one per document
    batch = PackingCollator()([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 64)
    no_bos = SimpleNamespace(bos_token_id=None, eos_token_id=2, pad_token_id=None)
    with pytest.raises(ValueError, match="no bos token"):
        PackedDataset(texts[:2], no_bos, 64, add_bos=True)


def test_split_documents_is_deterministic_and_complete():
    texts = [f"документ {i}" for i in range(200)]
    train, held = split_documents(texts, 0.1, seed=7)
    assert (train, held) == split_documents(texts, 0.1, seed=7)
    assert len(held) == 20 and sorted(train + held) == sorted(texts) and not set(train) & set(held)
    assert train == [t for t in texts if t in set(train)]  # input order kept
    assert held != split_documents(texts, 0.1, seed=8)[1]
    assert len(set(held) - set(split_documents([*texts, "новый"], 0.1, seed=7)[1])) <= 1  # stable ranks
    assert split_documents(["a", "b"], 0.01)[1] != [] and split_documents(["a"], 0.5) == (["a"], [])
    assert split_documents(texts, 0.0) == (texts, [])
    with pytest.raises(ValueError):
        split_documents(texts, 1.0)


def test_loss_masks_label_only_flagged_tokens_and_keep_examples_whole():
    """SFT rows: only flagged tokens are labels, segment starts and padding never; no example crosses rows."""
    docs = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
    masks = [[False, False, True, True], [False, True, True], [False, False, False, True, True]]
    stats = PackStats()
    rows = list(pack(docs, 8, bos_id=None, eos_id=None, split_long=False, last="pad", pad_id=0, stats=stats,
                     loss_masks=masks))  # fmt: skip
    assert [r.seq_lens for r in rows] == [(4, 3, 1), (5, 3)]
    labelled = [t for r in rows for t in r.labels.tolist() if t != IGNORE_INDEX]
    assert labelled == [3, 4, 6, 7, 11, 12]
    assert stats.balanced(8)
    with pytest.raises(ValueError, match="loss-mask"):
        list(pack([[1, 2]], 8, bos_id=None, eos_id=None, loss_masks=[[True]]))
