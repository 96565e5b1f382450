"""The reward model: Bradley–Terry training on tiny models built here, truncation, special tokens, the scalar read,
scoring order, selection, the length baseline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from vikhr.instruct.formats import Pair
from vikhr.instruct.reward import (
    PROMPT_RESERVE,
    length_baseline,
    load_reward_model,
    reward_text,
    score_texts,
    select,
    tokenize_pairs,
    tokenize_replies,
    train_reward,
)
from vikhr.train.reward import PairCollator, RewardTrainer, sequence_rewards

FILLER = [f"w{i}" for i in range(24)]
REPLY_WORDS = FILLER[:6]
WORDS = ["User", "Assistant", "System", ":", "good", *FILLER]


def _word_tokenizer(specials: list[str], post: str | None = None, **named):
    """A word-level fast tokenizer over WORDS; `post`: the post-processor, "bert" (CLS/SEP) or a template such as
    "<s> $A </s>"."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    backend = Tokenizer(tk_models.WordLevel(vocab, unk_token=named["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if post == "bert":
        backend.post_processor = processors.BertProcessing(
            ("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"])
        )
    elif post:
        toks = [t for t in post.split() if t != "$A"]
        backend.post_processor = processors.TemplateProcessing(
            single=post, special_tokens=[(t, vocab[t]) for t in toks]
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=512, **named)


def bert_tokenizer():
    """CLS/SEP around every text, a pad token, no eos."""
    return _word_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "bert", unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]",
    )  # fmt: skip


def llama_tokenizer(post: str | None = "<s> $A"):
    """bos (and eos with post="<s> $A </s>"), no pad token."""
    return _word_tokenizer(
        ["<unk>", "<s>", "</s>"], post, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def save_tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    tok = bert_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_llama(folder: Path, post: str | None = "<s> $A") -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = llama_tokenizer(post)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "model")


def words(rng: random.Random, lo: int, hi: int, vocab: list[str] = FILLER) -> list[str]:
    return [rng.choice(vocab) for _ in range(rng.randint(lo, hi))]


def marker_pairs(n: int, seed: int = 0) -> list[Pair]:
    """Chosen replies contain the word "good", rejected ones do not; lengths drawn alike, replies from few words
    (so that memorising word combinations does not separate them)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        chosen = words(rng, 2, 5, REPLY_WORDS)
        chosen.insert(rng.randint(0, len(chosen)), "good")
        rejected = words(rng, 3, 6, REPLY_WORDS)
        prompt = [{"role": "user", "content": " ".join(words(rng, 2, 6))}]
        out.append(
            Pair(prompt, " ".join(chosen), " ".join(rejected), "toy", f"toy:{i}", f"toy.jsonl:{i + 1}")
        )
    return out


# ---------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_training_learns_a_separable_preference(kind, tiny_bert, tiny_llama, tmp_path):
    model = tiny_bert if kind == "encoder" else tiny_llama
    pairs = marker_pairs(64)
    report = train_reward(
        pairs, str(model), tmp_path / "out", epochs=6, lr=2e-2, batch_size=8, max_length=64, eval_share=0.25,
        seed=0, logging_steps=4, save_steps=1000, evaluate_during_training=False,
    )  # fmt: skip
    d = report["data"]
    assert (d["pairs_in"], d["train_pairs"] + d["held_out_pairs"], d["held_out_pairs"]) == (64, 64, 16)
    losses = [
        h["loss"] for h in json.loads((tmp_path / "out" / "log_history.json").read_text()) if "loss" in h
    ]
    assert losses[-1] < 0.5 * losses[0], losses
    # 1.0 here; allow one wrong pair in 16 for other platforms' arithmetic
    assert report["held_out"]["reward_model"]["value"] >= 0.9
    assert report["held_out"]["margin"]["positive_share"] >= 0.9
    assert report["reward_read_at"] == ("its pooled head" if kind == "encoder" else "the last real token")
    for name in ("reward_report.json", "reward_report.md", "held_out_scores.jsonl", "model/config.json"):
        assert (tmp_path / "out" / name).is_file()
    # The saved folder is a plain HF reward model that scores the held-out pairs the same way.
    held = [json.loads(x) for x in (tmp_path / "out" / "held_out_scores.jsonl").read_text().splitlines()]
    by_id = {p.id: p for p in pairs}
    p = by_id[held[0]["id"]]
    again = score_texts(
        tmp_path / "out" / "model", [(p.prompt, p.chosen), (p.prompt, p.rejected)], max_length=64
    )
    assert again == pytest.approx([held[0]["chosen"], held[0]["rejected"]], abs=1e-4)
    cfg = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert len(cfg["id2label"]) == 1
    assert cfg["pad_token_id"] is not None


def test_gradient_accumulation_takes_the_mean_over_all_pairs_of_a_step(tiny_bert, tmp_path):
    """6 pairs in one micro-batch or as micro-batches of 4 + 2 give the same SGD step (a per-micro-batch mean
    divided by the accumulation steps would weigh the last two pairs double)."""
    from vikhr.train.run import training_arguments

    model0, tok = load_reward_model(str(tiny_bert))
    seqs, _ = tokenize_pairs(tok, marker_pairs(6), 64)
    data = [{"chosen": c, "rejected": r} for c, r in seqs]
    after = []
    for batch, accum in ((8, 1), (4, 2)):
        model, _ = load_reward_model(str(tiny_bert))
        model.load_state_dict(model0.state_dict())
        args = training_arguments(
            tmp_path / f"w{batch}", batch_size=batch, grad_accum=accum, lr=1.0, max_steps=1, max_grad_norm=1e9,
            evaluate=False, save_steps=100, lr_scheduler="constant",
        )  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=PairCollator(0),
            optimizers=(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)),
        )
        trainer.train()
        after.append(model.classifier.weight.detach().clone())
    moved = (after[0] - model0.classifier.weight).abs().max()
    assert moved > 1e-4
    torch.testing.assert_close(after[0], after[1], atol=1e-6, rtol=1e-5)


def test_pair_collator_pads_chosen_then_rejected():
    batch = PairCollator(pad_id=9)(
        [{"chosen": [1, 2, 3], "rejected": [4]}, {"chosen": [5], "rejected": [6, 7]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [5, 9, 9], [4, 9, 9], [6, 7, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 1]
    with pytest.raises(ValueError):
        PairCollator(0)([])


# ------------------------------------------------------------------------------------------ text and tokens


def test_plain_transcript_and_chat_template():
    prompt = [{"role": "system", "content": "w1"}, {"role": "user", "content": "w2"}]
    assert reward_text(bert_tokenizer(), prompt, "w3") == "System: w1\n\nUser: w2\n\nAssistant: w3"
    tok = llama_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    assert reward_text(tok, prompt, "w3") == "system : w1 user : w2 assistant : w3 "


def test_truncation_keeps_the_end_of_the_prompt_and_the_start_of_the_reply():
    tok = bert_tokenizer()
    prompt = [{"role": "user", "content": " ".join(FILLER[:20])}]
    short_reply, long_reply = "good w0", " ".join(["good", *FILLER[:20]])
    ok = Pair([{"role": "user", "content": "w1"}], "good", "w2", "t", "t:0", "-")
    pairs = [
        Pair(prompt, short_reply, "w23", "t", "t:1", "-"),
        Pair(prompt, long_reply, "w23", "t", "t:2", "-"),
        ok,
    ]
    seqs, stats = tokenize_pairs(tok, pairs, max_length=16)
    assert all(len(c) <= 16 and len(r) <= 16 for c, r in seqs)
    assert (stats.sequences, stats.truncated, stats.pairs, stats.pairs_truncated) == (6, 4, 3, 2)
    assert stats.reply_truncated == 1 and stats.longest > 16
    text = [tok.convert_ids_to_tokens(c) for c, _ in seqs]
    # A short reply survives whole after the prompt's last tokens; CLS and SEP stay in place.
    assert text[0] == ["[CLS]", *FILLER[10:20], "Assistant", ":", "good", "w0", "[SEP]"]
    # A long reply keeps its start; the prompt keeps its end within its reserved share of the room.
    room = 16 - 2
    keep_prompt = int(room * PROMPT_RESERVE)
    assert text[1][0] == "[CLS]" and text[1][-1] == "[SEP]"
    assert text[1][1 : 1 + keep_prompt] == ["w19", "Assistant", ":"][-keep_prompt:]
    assert text[1][1 + keep_prompt : -1] == ["good", *FILLER[: room - keep_prompt - 1]]
    assert text[2] == ["[CLS]", "User", ":", "w1", "Assistant", ":", "good", "[SEP]"]
    cut_prompt = stats.prompt_tokens_cut
    assert cut_prompt > 0 and stats.reply_tokens_cut == 21 - (room - keep_prompt)


def test_special_tokens_are_never_doubled():
    prompt = [{"role": "user", "content": "w1"}]
    # bos + eos added by the tokenizer and written by the template too: one of each.
    tok = llama_tokenizer("<s> $A </s>")
    tok.chat_template = "<s>{% for m in messages %}{{ m['content'] }} {% endfor %}</s>"
    (ids,), _ = tokenize_replies(tok, [(prompt, "w2")], 32)
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "w1", "w2", "</s>"]
    # No template: the tokenizer's own bos/eos around the transcript.
    tok = llama_tokenizer("<s> $A </s>")
    (ids,), _ = tokenize_replies(tok, [(prompt, "w2")], 32)
    assert (
        ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id and ids.count(tok.bos_token_id) == 1
    )
    # An encoder without eos: exactly its CLS ... SEP.
    tok = bert_tokenizer()
    (ids,), _ = tokenize_replies(tok, [(prompt, "w2")], 32)
    assert tok.eos_token is None
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "User", ":", "w1", "Assistant", ":", "w2", "[SEP]"]


def test_decoder_reward_is_read_at_the_last_real_token(tmp_path):
    """pad = eos (the tokenizer has no pad) and texts end with eos: the reward is the score head at that final eos,
    whatever the padding; transformers' own rule would read the token before it."""
    folder = save_tiny_llama(tmp_path / "llama-eos", post="<s> $A </s>")
    model, tok = load_reward_model(str(folder))
    assert tok.pad_token_id == tok.eos_token_id == model.config.pad_token_id
    model.eval()
    seqs, _ = tokenize_replies(tok, [([], "w1 w2 w3 w4"), ([], "w5")], 32)
    assert all(s[-1] == tok.eos_token_id for s in seqs)
    batch = PairCollator(tok.pad_token_id)([{"chosen": seqs[0], "rejected": seqs[1]}])
    with torch.no_grad():
        got = sequence_rewards(model, batch["input_ids"], batch["attention_mask"], model.score)
        want = [model.score(model.model(torch.tensor([s])).last_hidden_state[0, -1]).item() for s in seqs]
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert not torch.allclose(own, got)  # the model's pad-token rule reads before the final eos


def test_load_reward_model_encoder(tiny_bert):
    model, tok = load_reward_model(str(tiny_bert))
    assert model.config.num_labels == 1 and type(model).__name__ == "BertForSequenceClassification"
    assert model.config.pad_token_id == tok.pad_token_id


# -------------------------------------------------------------------------------------------------- scoring


def test_score_texts_returns_the_input_order(tiny_llama, tmp_path):
    model, tok = load_reward_model(
        str(tiny_llama)
    )  # a fresh score head: save it so every load is the same model
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    tiny_llama = tmp_path / "rm"
    rng = random.Random(1)
    items = [
        ([{"role": "user", "content": " ".join(words(rng, 1, 4))}], " ".join(words(rng, 1, 12)))
        for _ in range(9)
    ]
    batched = score_texts(tiny_llama, items, batch_size=4, max_length=64)
    one_by_one = [score_texts(tiny_llama, [it], batch_size=1, max_length=64)[0] for it in items[:4]]
    assert batched[:4] == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(batched)) == len(batched)
    assert score_texts(tiny_llama, items[::-1], batch_size=3, max_length=64) == pytest.approx(
        batched[::-1], abs=1e-5
    )


def test_select_threshold_and_quantile():
    scores = [0.5, -1.0, 2.0, 0.5, 0.0]
    assert select(scores, threshold=0.5) == [True, False, True, True, False]
    assert select(scores, quantile=0.0) == [True] * 5
    assert select(scores, quantile=0.4) == [True, False, True, True, False]  # drops the lowest 2
    # floor(0.6 * 5) = 3 dropped; the tie at 0.5 keeps the earlier item.
    assert select(scores, quantile=0.6) == [True, False, True, False, False]
    assert select(scores, quantile=1.0) == [False] * 5
    assert select([], quantile=0.5) == []
    for kwargs in ({}, {"threshold": 0.0, "quantile": 0.5}, {"quantile": 1.5}, {"quantile": -0.1},
                   {"threshold": float("nan")}):  # fmt: skip
        with pytest.raises(ValueError):
            select(scores, **kwargs)
    with pytest.raises(ValueError):
        select([0.0, float("nan")], threshold=0.0)


def test_length_baseline_picks_its_direction_on_train():
    def pair(i: int, chosen: int, rejected: int) -> Pair:
        return Pair([], "x" * chosen, "y" * rejected, "t", f"t:{i}", "-")

    longer_train = [pair(i, 5, 3) for i in range(8)] + [pair(8, 2, 4), pair(9, 3, 3)]
    held = [pair(10, 9, 2), pair(11, 9, 2), pair(12, 1, 2), pair(13, 4, 4)]
    b = length_baseline(longer_train, held)
    assert b["direction"] == "longer" and b["train_longer_wins"] == pytest.approx(8.5 / 10)
    assert b["accuracy"]["value"] == pytest.approx(2.5 / 4) == b["longer_wins"]["value"]
    shorter_train = [pair(i, 2, 6) for i in range(5)]
    b = length_baseline(shorter_train, held)
    assert b["direction"] == "shorter"
    assert b["accuracy"]["value"] == pytest.approx(1.5 / 4) and b["longer_wins"]["value"] == pytest.approx(
        2.5 / 4
    )
    lo, hi = b["accuracy"]["ci95"]
    assert lo < 1.5 / 4 < hi


def test_duplicate_pair_ids_are_an_error(tiny_bert, tmp_path):
    pairs = marker_pairs(4)
    pairs[1].id = pairs[0].id
    with pytest.raises(ValueError, match="appears twice"):
        train_reward(pairs, str(tiny_bert), tmp_path / "out", eval_share=0.25)


def test_cli_train_then_score(tiny_bert, tmp_path):
    """`reward train` writes the rejected records and their counts; `reward score` rows follow the input order."""
    import argparse

    from vikhr.instruct.reward import add_score_arguments, add_train_arguments

    pairs = marker_pairs(24)
    lines = [
        json.dumps({"prompt": p.prompt[0]["content"], "chosen": p.chosen, "rejected": p.rejected})
        for p in pairs
    ]
    lines.insert(3, json.dumps({"prompt": "w1", "chosen": "w2", "rejected": "w2"}))  # identical_pair
    (tmp_path / "prefs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    out = tmp_path / "rm"
    args = parser.parse_args([str(tmp_path / "prefs.jsonl"), "--model", str(tiny_bert), "--out", str(out),
                              "--epochs", "1", "--max-length", "32", "--eval-share", "0.25"])  # fmt: skip
    assert args.func(args) == 0
    report = json.loads((out / "reward_report.json").read_text())
    assert report["data"]["read"]["rejected"] == 1 and report["data"]["pairs_in"] == 24
    assert report["data"]["read"]["rejected_reasons"] == {"identical_pair": 1}
    bad = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert [b["reason"] for b in bad] == ["identical_pair"] and bad[0]["where"].endswith(":4")

    examples = [{"messages": [{"role": "user", "content": "w1"}, {"role": "assistant", "content": r}]}
                for r in ("good w2", "w3", "w4 good w5 w6")]  # fmt: skip
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_score_arguments(parser)
    args = parser.parse_args([str(out / "model"), str(tmp_path / "sft.jsonl"), "--out", str(tmp_path / "s.jsonl"),
                              "--batch-size", "2", "--max-length", "32"])  # fmt: skip
    assert args.func(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["sft:0", "sft:1", "sft:2"] and {r["source"] for r in rows} == {"sft"}
    items = [([{"role": "user", "content": "w1"}], e["messages"][1]["content"]) for e in examples]
    assert [r["score"] for r in rows] == pytest.approx(
        score_texts(out / "model", items, max_length=32), abs=1e-5
    )
