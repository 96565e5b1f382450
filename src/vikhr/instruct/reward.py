"""The reward model that filters instruction data (Vikhr: multilingual-e5-large trained Bradley–Terry on preference
pairs): train it on pairs, score (prompt, reply) items, keep the ones above a threshold or a quantile.

What the model reads (`reward_text`): the conversation with the reply as the last assistant turn, through the
tokenizer's chat template when it has one, else a plain transcript ("System: ...", "User: ...", "Assistant: ...",
turns separated by a blank line). It is tokenized here, once per text, with the tokenizer's own special tokens
(an encoder gets its CLS/SEP, Llama its bos; a special token the template already wrote is not added twice) — not
by TRL, which appends an eos string of its own and drops pairs longer than `max_length`.

Truncation (`tokenize_pairs`, `score_texts`): a text longer than `max_length` tokens keeps the *end of the prompt*
and the *start of the reply* — the reply is what is judged, the last turns are the context that matters. When
both are long, the prompt keeps at least `PROMPT_RESERVE` of the room (its last tokens) and the reply the rest (its
first tokens); a short reply is kept whole and the prompt fills the room left. Every truncated sequence is
counted in `TruncStats`; nothing is filtered out.

Held-out split: by pair id (`vikhr.train.packing.split_documents` on the ids: a seeded hash, stable when pairs
are added). The report sets the held-out pairwise accuracy (ties count half) against the length-only baseline on
the same pairs: the longer (or the shorter) reply, in characters, wins — the direction picked on the training
pairs — and plain "the longer wins". A reward model that does not beat it has learned length.

Training internals (Bradley–Terry loss, batching, the scalar read at a decoder's last real token) live in
`vikhr.train.reward`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vikhr.instruct.formats import Messages, Pair
from vikhr.log import get_logger, progress

log = get_logger(__name__)

PROMPT_RESERVE = 0.25
"""Share of the room a long prompt keeps (its end) when the reply is long too; the reply gets the rest."""
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
"""Speaker names of the plain transcript (tokenizers without a chat template)."""
REPORT_JSON, REPORT_MD = "reward_report.json", "reward_report.md"
PAPER_MODEL = "intfloat/multilingual-e5-large"
"""The paper's reward-model encoder (a hub id; offline, use a local folder or the `all-minilm-l6-v2` alias)."""

Item = tuple[Messages, str]
"""(prompt messages, reply) as the reward model scores it."""


# ----------------------------------------------------------------------------------------------- the text read


def _render(tokenizer: Any, prompt: Messages, reply: str) -> tuple[str, int]:
    """The text the reward model reads and the character offset where the reply starts in it."""
    if not getattr(tokenizer, "chat_template", None):
        parts = []
        for m in prompt:
            if m.get("role") not in ROLE_NAMES:
                raise ValueError(
                    f"unknown role {m.get('role')!r} in a prompt (expected {', '.join(ROLE_NAMES)})"
                )
            parts.append(f"{ROLE_NAMES[m['role']]}: {m['content']}")
        head = "\n\n".join([*parts, "Assistant: "])
        return head + reply, len(head)
    text = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": reply}], tokenize=False)
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) if prompt else ""
    start = text.find(reply, len(head)) if head and text.startswith(head) else -1
    if start < 0:
        start = text.rfind(reply) if reply else -1
    if start < 0:  # the template rewrote the reply (e.g. stripped it): it starts where the prompt's text ends
        start = len(head) if text.startswith(head) else 0
    return text, start


def reward_text(tokenizer: Any, prompt: Messages, reply: str) -> str:
    """The text the reward model reads for `reply` to `prompt`: the chat template when the tokenizer has one, else
    a plain "System: ...\\n\\nUser: ...\\n\\nAssistant: ..." transcript ending with the reply."""
    return _render(tokenizer, prompt, reply)[0]


# ------------------------------------------------------------------------------------------------ tokenization


@dataclass
class TruncStats:
    """What truncation to `max_length` did; counted, never filtered."""

    max_length: int
    sequences: int = 0
    """Texts tokenized (two per pair)."""
    truncated: int = 0
    """Texts longer than max_length, cut."""
    prompt_tokens_cut: int = 0
    """Prompt tokens removed (from the prompt's start)."""
    reply_truncated: int = 0
    """Texts whose reply lost tokens too (from its end)."""
    reply_tokens_cut: int = 0
    pairs: int = 0
    pairs_truncated: int = 0
    """Pairs with at least one side truncated."""
    longest: int = 0
    """Tokens of the longest text before truncation (special tokens included)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"truncated_share": self.truncated / self.sequences if self.sequences else 0.0}


def _special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (`add_special_tokens=True`)."""
    probe = "hello world"
    core = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for k in range(len(full) - len(core) + 1):
        if full[k : k + len(core)] == core:
            return full[:k], full[k + len(core) :]
    raise ValueError(f"{type(tokenizer).__name__}: cannot tell which special tokens it adds around a text")


def _core_tokens(tokenizer: Any, rendered: list[tuple[str, int]]) -> list[tuple[list[int], int]]:
    """(ids without special tokens, index of the reply's first token) of each rendered text."""
    texts = [t for t, _ in rendered]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        out = []
        for ids, offsets, (_, start) in zip(enc["input_ids"], enc["offset_mapping"], rendered, strict=True):
            split = next((i for i, (_, end) in enumerate(offsets) if end > start), len(ids))
            out.append((list(ids), split))
        return out
    # A slow tokenizer has no offsets: the prompt's text and the reply's text are tokenized apart.
    heads = tokenizer([t[:s] for t, s in rendered], add_special_tokens=False, verbose=False)["input_ids"]
    tails = tokenizer([t[s:] for t, s in rendered], add_special_tokens=False, verbose=False)["input_ids"]
    return [(list(h) + list(r), len(h)) for h, r in zip(heads, tails, strict=True)]


def _fit(
    core: list[int], split: int, prefix: list[int], suffix: list[int], max_length: int, stats: TruncStats
) -> tuple[list[int], bool]:
    """Wrap `core` in the special tokens (not doubling one the template wrote) and truncate it to `max_length`."""
    if prefix and core[: len(prefix)] == prefix:
        core, split = core[len(prefix) :], max(split - len(prefix), 0)
    if suffix and len(core) - len(suffix) >= split and core[len(core) - len(suffix) :] == suffix:
        core = core[: len(core) - len(suffix)]
    room = max_length - len(prefix) - len(suffix)
    prompt, reply = core[:split], core[split:]
    stats.sequences += 1
    stats.longest = max(stats.longest, len(core) + len(prefix) + len(suffix))
    cut = len(core) > room
    if cut:
        reply_keep = min(len(reply), room - min(len(prompt), int(room * PROMPT_RESERVE)))
        prompt_keep = min(len(prompt), room - reply_keep)
        stats.truncated += 1
        stats.prompt_tokens_cut += len(prompt) - prompt_keep
        if reply_keep < len(reply):
            stats.reply_truncated += 1
            stats.reply_tokens_cut += len(reply) - reply_keep
        prompt, reply = prompt[len(prompt) - prompt_keep :], reply[:reply_keep]
    return [*prefix, *prompt, *reply, *suffix], cut


def _tokenize_items(
    tokenizer: Any, items: Sequence[Item], max_length: int, stats: TruncStats, batch: int = 512
) -> tuple[list[list[int]], list[bool]]:
    prefix, suffix = _special_frame(tokenizer)
    if max_length - len(prefix) - len(suffix) < 2:
        raise ValueError(
            f"max_length={max_length} leaves no room beside the {len(prefix) + len(suffix)} special tokens"
        )
    seqs: list[list[int]] = []
    cuts: list[bool] = []
    for i in range(0, len(items), batch):
        rendered = [_render(tokenizer, p, r) for p, r in items[i : i + batch]]
        for core, split in _core_tokens(tokenizer, rendered):
            ids, cut = _fit(core, split, prefix, suffix, max_length, stats)
            seqs.append(ids)
            cuts.append(cut)
    return seqs, cuts


def tokenize_replies(
    tokenizer: Any, items: Sequence[Item], max_length: int
) -> tuple[list[list[int]], TruncStats]:
    """Token ids of each (prompt, reply) as the reward model reads it, truncated as the module docstring says."""
    stats = TruncStats(max_length)
    seqs, _ = _tokenize_items(tokenizer, items, max_length, stats)
    return seqs, stats


def tokenize_pairs(
    tokenizer: Any, pairs: Sequence[Pair], max_length: int
) -> tuple[list[tuple[list[int], list[int]]], TruncStats]:
    """(chosen ids, rejected ids) of each pair, tokenized and truncated as the module docstring says; the counts
    (texts and pairs truncated, tokens cut from prompts and replies) in `TruncStats`."""
    stats = TruncStats(max_length)
    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    seqs, cuts = _tokenize_items(tokenizer, items, max_length, stats)
    n = len(pairs)
    stats.pairs = n
    stats.pairs_truncated = sum(cuts[i] or cuts[n + i] for i in range(n))
    return list(zip(seqs[:n], seqs[n:], strict=True)), stats


# ------------------------------------------------------------------------------------------------- the model


def load_reward_model(spec: str, *, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) for a reward model: `AutoModelForSequenceClassification` with `num_labels=1` from a
    local folder, an alias or a hub id (`vikhr.models.resolve_model`). An encoder reads its pooled head; a decoder
    gets a scalar `score` head (new when the folder holds a causal LM), `config.pad_token_id` from the tokenizer
    (the pad token set to eos when it has none) and is read at its last real token (`vikhr.train.reward`)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from vikhr.models import resolve_model

    path = resolve_model(spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{spec}: the tokenizer has neither a pad nor an eos token to pad batches with")
        log.info("%s: no pad token; padding with eos %r", spec, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype or torch.float32
    )
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"{spec}: the tokenizer has {len(tokenizer)} tokens but the model's embedding {rows} rows"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _score_ids(
    model: Any, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int, desc: str = "scoring"
) -> list[float]:
    """Rewards of token sequences: batched (longest first), no grad, eval mode; in the input order."""
    import torch

    from vikhr.train.reward import last_token_head, pad_rows, sequence_rewards

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()
    head = last_token_head(model)
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out = [0.0] * len(seqs)
    try:
        with torch.no_grad():
            for b in progress(range(0, len(order), batch_size), desc=desc, unit="batch"):
                idx = order[b : b + batch_size]
                ids, mask = pad_rows([seqs[i] for i in idx], pad_id)
                rewards = sequence_rewards(model, ids.to(device), mask.to(device), head)
                for i, r in zip(idx, rewards.tolist(), strict=True):
                    out[i] = float(r)
    finally:
        model.train(was_training)
    return out


def score_texts(
    model_dir: str | Path,
    prompts_and_replies: Sequence[Item],
    batch_size: int = 16,
    max_length: int = 512,
    device: str | None = None,
) -> list[float]:
    """The reward of each (prompt messages, reply), in the input order: batched, longest first, no grad, eval mode,
    on `device` (default: cuda when available). Texts are truncated like training pairs (counted in the log)."""
    import torch

    model, tokenizer = load_reward_model(str(model_dir))
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seqs, stats = tokenize_replies(tokenizer, prompts_and_replies, max_length)
    if stats.truncated:
        log.info(
            "scoring: %d of %d texts truncated to %d tokens", stats.truncated, stats.sequences, max_length
        )
    return _score_ids(model, seqs, tokenizer.pad_token_id, batch_size)


def select(
    scores: Sequence[float], threshold: float | None = None, quantile: float | None = None
) -> list[bool]:
    """Which items to keep: `threshold` keeps score >= threshold; `quantile` q drops the lowest floor(q·n) scores
    and keeps the top (1 − q) share. Exactly one of the two. Ties at the quantile's cut keep the earlier items."""
    if (threshold is None) == (quantile is None):
        raise ValueError("select: give exactly one of threshold= and quantile=")
    if any(math.isnan(s) for s in scores):
        raise ValueError("select: a score is NaN")
    if threshold is not None:
        if math.isnan(threshold):
            raise ValueError("select: threshold is NaN")
        return [s >= threshold for s in scores]
    if not 0 <= quantile <= 1:
        raise ValueError(f"select: quantile must be in [0, 1], got {quantile}")
    drop = math.floor(quantile * len(scores) + 1e-9)
    dropped = set(sorted(range(len(scores)), key=lambda i: (scores[i], -i))[:drop])
    return [i not in dropped for i in range(len(scores))]


# -------------------------------------------------------------------------------------------- held-out figures


def pair_correct(chosen: Sequence[float], rejected: Sequence[float]) -> list[float]:
    """1 where the chosen side scores higher, ½ on a tie, 0 otherwise."""
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]


def length_baseline(train: Sequence[Pair], held_out: Sequence[Pair]) -> dict[str, Any]:
    """The length-only rule on `held_out`: the longer reply (in characters) wins, or the shorter, whichever wins
    more often on `train`; also plain "the longer wins". Accuracies with Wilson 95 % intervals; ties count half."""
    from vikhr.eval.harness import accuracy

    def longer(pairs: Sequence[Pair]) -> list[float]:
        return pair_correct([len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs])

    train_longer = statistics.fmean(longer(train)) if train else 0.5
    direction = "longer" if train_longer >= 0.5 else "shorter"
    held = longer(held_out)
    rule = held if direction == "longer" else [1.0 - x for x in held]
    return {
        "direction": direction, "train_longer_wins": train_longer, "accuracy": accuracy(rule),
        "longer_wins": accuracy(held),
    }  # fmt: skip


def margin_stats(margins: Sequence[float]) -> dict[str, float]:
    """Summary of r_chosen − r_rejected over pairs."""
    if not margins:
        return {"n": 0}
    s = sorted(margins)

    def q(p: float) -> float:
        return s[min(int(p * len(s)), len(s) - 1)]

    return {
        "n": len(s), "mean": statistics.fmean(s), "std": statistics.pstdev(s), "min": s[0], "p10": q(0.1),
        "median": statistics.median(s), "p90": q(0.9), "max": s[-1],
        "positive_share": sum(m > 0 for m in s) / len(s),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- training


def _split(pairs: Sequence[Pair], eval_share: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    from vikhr.train.packing import split_documents

    seen: dict[str, str] = {}
    for p in pairs:
        if p.id in seen:
            raise ValueError(
                f"pair id {p.id!r} appears twice ({seen[p.id]} and {p.where}); the held-out split goes by id: "
                "give the sources distinct names"
            )
        seen[p.id] = p.where
    _, held_ids = split_documents([p.id for p in pairs], eval_share, seed)
    held = set(held_ids)
    return [p for p in pairs if p.id not in held], [p for p in pairs if p.id in held]


def _pairs_digest(pairs: Sequence[Pair]) -> str:
    from vikhr.manifest import digest

    return digest([[p.id, p.prompt, p.chosen, p.rejected] for p in pairs])


def _model_fingerprint(path: str) -> Any:
    from vikhr.manifest import path_fingerprint

    return path_fingerprint(Path(path)) if Path(path).is_dir() else path


def train_reward(
    pairs: Sequence[Pair],
    model_spec: str,
    out_dir: str | Path,
    *,
    epochs: float = 1.0,
    lr: float = 2e-5,
    batch_size: int = 8,
    grad_accum: int = 1,
    max_length: int = 512,
    eval_share: float = 0.1,
    seed: int = 0,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    lr_scheduler: str = "linear",
    bf16: str = "auto",
    logging_steps: int = 10,
    eval_steps: int = 0,
    save_steps: int = 0,
    evaluate_during_training: bool = True,
    group_by_length: bool = True,
    resume: bool = True,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a Bradley–Terry reward model on `pairs` and evaluate it on a held-out share (by pair id).

    Writes into `out_dir`: `model/` (a plain HF folder: weights, config with num_labels=1 and pad_token_id,
    tokenizer), `reward_report.json` / `.md`, `held_out_scores.jsonl` (per held-out pair: id, both rewards,
    margin), `log_history.json`; checkpoints (every `save_steps`, 0: five per run) go to `out_dir/work`, resumed
    only for exactly the same inputs and settings, removed when training ends. In-training evaluation on the
    held-out pairs every `eval_steps` (0: five per run) when `evaluate_during_training`. `group_by_length`:
    batches of pairs of similar length (less padding; `RewardTrainer`). `inputs`: what reading the files found
    (rejected records, ...), copied into the report. Returns the report.
    """
    import torch
    from transformers import set_seed

    import vikhr
    from vikhr.eval.harness import accuracy
    from vikhr.train.dist import is_main_process, world_size
    from vikhr.train.report import finish_model_folder
    from vikhr.train.reward import PairCollator, RewardTrainer, last_token_head
    from vikhr.train.run import resume_point, train_and_save, training_arguments

    if not pairs:
        raise ValueError("train_reward: no pairs to train on")
    if max_length < 8 or batch_size < 1 or grad_accum < 1 or epochs <= 0:
        raise ValueError(
            f"need max_length >= 8, batch_size, grad_accum >= 1, epochs > 0; got "
            f"{max_length}, {batch_size}, {grad_accum}, {epochs}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, held = _split(pairs, eval_share, seed)
    set_seed(seed)
    model, tokenizer = load_reward_model(model_spec)
    resolved = str(getattr(model.config, "_name_or_path", model_spec))
    t0 = time.perf_counter()
    train_tok, train_trunc = tokenize_pairs(tokenizer, train, max_length)
    held_tok, held_trunc = tokenize_pairs(tokenizer, held, max_length)
    tokenize_s = time.perf_counter() - t0
    log.info(
        "reward pairs: %d train, %d held-out; truncated to %d tokens: %d train and %d held-out pairs",
        len(train),
        len(held),
        max_length,
        train_trunc.pairs_truncated,
        held_trunc.pairs_truncated,
    )

    settings = {
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "grad_accum": grad_accum, "max_length": max_length,
        "eval_share": eval_share, "seed": seed, "warmup_steps": warmup_steps, "weight_decay": weight_decay,
        "lr_scheduler": lr_scheduler, "bf16": bf16, "prompt_reserve": PROMPT_RESERVE,
        "group_by_length": group_by_length,
    }  # fmt: skip
    world = world_size()
    per_epoch = max(math.ceil(math.ceil(len(train) / (batch_size * world)) / grad_accum), 1)
    steps = max(math.ceil(per_epoch * epochs), 1)
    work = out_dir / "work"
    key = {
        "code": {"vikhr": vikhr.__version__, "module": "instruct.reward/1"}, "settings": settings,
        "model": _model_fingerprint(resolved), "pairs": _pairs_digest(train), "world_size": world,
    }  # fmt: skip
    last = resume_point(work, key, resume)
    tok_dir = work / "tokenizer"
    if is_main_process():
        tokenizer.save_pretrained(tok_dir)
    evaluate = evaluate_during_training and bool(held)
    args = training_arguments(
        work, batch_size=batch_size, lr=lr, grad_accum=grad_accum, epochs=epochs, planned_steps=steps,
        lr_scheduler=lr_scheduler, warmup_steps=warmup_steps, weight_decay=weight_decay, bf16=bf16,
        logging_steps=logging_steps, eval_steps=eval_steps, save_steps=save_steps, save_total_limit=1, seed=seed,
        evaluate=evaluate,
    )  # fmt: skip
    trainer = RewardTrainer(
        model=model, args=args, data_collator=PairCollator(tokenizer.pad_token_id), processing_class=tokenizer,
        group_by_length=group_by_length,
        train_dataset=[{"chosen": c, "rejected": r} for c, r in train_tok],
        eval_dataset=[{"chosen": c, "rejected": r} for c, r in held_tok] if evaluate else None,
    )  # fmt: skip
    t0 = time.perf_counter()
    result, final = train_and_save(trainer, work, last)
    train_s = time.perf_counter() - t0
    if not is_main_process():
        return {}

    trained = trainer.accelerator.unwrap_model(trainer.model)
    read_at = "the last real token" if last_token_head(trained) is not None else "its pooled head"
    architecture = type(trained).__name__
    history, global_step = trainer.state.log_history, trainer.state.global_step
    del trainer, trained, model
    model_out = out_dir / "model"
    if model_out.exists():
        shutil.rmtree(model_out)
    shutil.move(str(final), str(model_out))
    finish_model_folder(model_out, tok_dir)

    # The saved folder is what is evaluated, loaded as `score_texts` loads it (float32, outside any autocast that
    # training wrapped around the model's forward).
    t0 = time.perf_counter()
    saved, saved_tok = load_reward_model(str(model_out))
    saved.to("cuda" if torch.cuda.is_available() else "cpu")
    flat = [s for pair in held_tok for s in pair]
    scores = _score_ids(saved, flat, saved_tok.pad_token_id, batch_size * 2, desc="held-out")
    del saved
    chosen, rejected = scores[0::2], scores[1::2]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    eval_s = time.perf_counter() - t0
    held_out = {
        "reward_model": accuracy(pair_correct(chosen, rejected)),
        "length_baseline": length_baseline(train, held),
        "margin": margin_stats(margins),
        "chosen_mean": statistics.fmean(chosen) if chosen else None,
        "rejected_mean": statistics.fmean(rejected) if rejected else None,
    }
    report = {
        "model": model_spec, "resolved": resolved, "architecture": architecture, "reward_read_at": read_at,
        "data": {
            "pairs_in": len(pairs), "train_pairs": len(train), "held_out_pairs": len(held),
            "split": f"by pair id, seeded hash (split_documents, seed {seed})", "read": inputs or {},
            "truncation": {"train": train_trunc.as_dict(), "held_out": held_trunc.as_dict()},
        },
        "settings": settings,
        "train": {"steps": global_step, "planned_steps": steps, "world_size": world,
                  "resumed_from": last, "metrics": result.metrics,
                  "last_logs": [h for h in history if "loss" in h][-1:]},
        "held_out": held_out,
        "timings": {"tokenize_s": round(tokenize_s, 1), "train_s": round(train_s, 1), "eval_s": round(eval_s, 1)},
        "outputs": {"model": str(model_out)},
    }  # fmt: skip
    rows = [
        {"id": p.id, "chosen": c, "rejected": r, "margin": c - r}
        for p, c, r in zip(held, chosen, rejected, strict=True)
    ]
    _write_jsonl(out_dir / "held_out_scores.jsonl", rows)
    (out_dir / "log_history.json").write_text(json.dumps(history, indent=1) + "\n")
    (out_dir / REPORT_JSON).write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / REPORT_MD).write_text(markdown(report), encoding="utf-8")
    for ckpt in work.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    log.info(
        "reward model: held-out accuracy %.3f (length baseline %.3f) -> %s",
        held_out["reward_model"].get("value") or 0.0,
        held_out["length_baseline"]["accuracy"].get("value") or 0.0,
        model_out,
    )
    return report


def _acc_cell(a: dict) -> str:
    if a.get("value") is None:
        return "– | –"
    lo, hi = a["ci95"]
    return f"{a['value']:.3f} | [{lo:.3f}, {hi:.3f}]"


def markdown(report: dict[str, Any]) -> str:
    """The reward report as a short Markdown page."""
    d, h, s = report["data"], report["held_out"], report["settings"]
    lb = h["length_baseline"]
    tr, ho = d["truncation"]["train"], d["truncation"]["held_out"]
    m = h["margin"]
    lines = [
        "# Reward model",
        "",
        f"Model `{report['model']}` ({report['architecture']}, reward read at {report['reward_read_at']}).",
        f"Pairs: {d['pairs_in']} in, {d['train_pairs']} train, {d['held_out_pairs']} held-out ({d['split']}).",
        f"Truncated to {s['max_length']} tokens: {tr['pairs_truncated']} train and {ho['pairs_truncated']} held-out "
        f"pairs ({tr['reply_truncated'] + ho['reply_truncated']} texts lost reply tokens).",
        "",
        "Held-out pairwise accuracy (ties count half), Wilson 95 % interval:",
        "",
        "| rule | accuracy | 95 % CI |",
        "|---|---:|---|",
        f"| reward model | {_acc_cell(h['reward_model'])} |",
        f"| length only ({lb['direction']} wins, picked on train) | {_acc_cell(lb['accuracy'])} |",
        f"| longer wins | {_acc_cell(lb['longer_wins'])} |",
        "",
    ]
    if m.get("n"):
        lines.append(
            f"Margin r_chosen − r_rejected: mean {m['mean']:.3f}, median {m['median']:.3f}, "
            f"p10 {m['p10']:.3f}, p90 {m['p90']:.3f}, positive {m['positive_share']:.3f}."
        )
    lines += [
        "",
        f"Training: {report['train']['steps']} steps, lr {s['lr']}, batch {s['batch_size']} × {s['grad_accum']}, "
        f"{s['epochs']} epoch(s). Timings (s): {json.dumps(report['timings'])}",
        "",
    ]
    return "\n".join(lines)


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


# --------------------------------------------------------------------------------------------------------- CLI


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `vikhr reward train` (and `cmd_train` as the parser's `func`)."""
    p.add_argument(
        "pairs",
        nargs="+",
        metavar="PAIRS",
        help="preference files (.jsonl/.json/.parquet or a dataset folder)",
    )
    p.add_argument("--model", default=PAPER_MODEL,
                   help=f"encoder or causal LM: folder, alias or hub id (default: the paper's {PAPER_MODEL}; "
                        "offline: all-minilm-l6-v2)")  # fmt: skip
    p.add_argument(
        "--out", required=True, help="output folder: model/, reward_report.json/.md, rejected.jsonl"
    )
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per device per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument(
        "--max-length", type=int, default=512, help="tokens per text; longer ones are truncated, counted"
    )
    p.add_argument("--eval-share", type=float, default=0.1, help="held-out share of pairs, split by pair id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="first N records of each file (0: all)")
    p.set_defaults(func=cmd_train)


def read_pair_files(paths: Sequence[str], limit: int = 0) -> tuple[list[Pair], list[Any], dict[str, Any]]:
    """Pairs from every file (`formats.read_pairs`), the rejected records, and the counts per file."""
    from vikhr.instruct.formats import read_pairs

    pairs: list[Pair] = []
    rejected: list[Any] = []
    files = []
    for path in paths:
        got, bad = read_pairs(path, limit=limit)
        pairs += got
        rejected += bad
        files.append({"path": str(path), "pairs": len(got), "rejected": len(bad)})
    counts = {
        "files": files, "records": len(pairs) + len(rejected), "pairs": len(pairs), "rejected": len(rejected),
        "rejected_reasons": dict(Counter(r.reason for r in rejected)),
    }  # fmt: skip
    return pairs, rejected, counts


def cmd_train(args: argparse.Namespace) -> int:
    """`vikhr reward train PAIRS... --model M --out DIR`: read, train, report."""
    from vikhr.log import setup_logging

    setup_logging("INFO")
    out = Path(args.out)
    pairs, rejected, counts = read_pair_files(args.pairs, args.limit)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "rejected.jsonl", [r.as_dict() for r in rejected])
    sys.stdout.write(
        f"read {counts['records']} records = {counts['pairs']} pairs + {counts['rejected']} rejected "
        f"{counts['rejected_reasons'] or ''} (rejected.jsonl)\n"
    )
    report = train_reward(
        pairs, args.model, out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_length=args.max_length, eval_share=args.eval_share, seed=args.seed,
        inputs=counts,
    )  # fmt: skip
    if report:
        sys.stdout.write(markdown(report))
        sys.stdout.write(f"report: {out / REPORT_MD}\n")
    return 0


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `vikhr reward score` (and `cmd_score` as the parser's `func`)."""
    p.add_argument("model", metavar="MODEL", help="a trained reward model folder (REWARD_OUT/model)")
    p.add_argument(
        "data", nargs="+", metavar="DATA", help="instruction files; the last assistant reply is scored"
    )
    p.add_argument("--out", default="scores.jsonl", help="one row per example: id, source, score")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    """`vikhr reward score MODEL DATA... --out scores.jsonl`: the reward of each example's last reply."""
    from vikhr.instruct.formats import read_examples
    from vikhr.log import setup_logging

    setup_logging("INFO")
    examples, rejected = [], []
    for path in args.data:
        got, bad = read_examples(path)
        examples += got
        rejected += bad
    items = []
    for ex in examples:
        if not ex.messages or ex.messages[-1].get("role") != "assistant":
            raise ValueError(f"{ex.where}: example {ex.id} does not end with an assistant reply")
        items.append((ex.messages[:-1], ex.messages[-1]["content"]))
    scores = score_texts(args.model, items, batch_size=args.batch_size, max_length=args.max_length)
    out = Path(args.out)
    _write_jsonl(
        out, [{"id": ex.id, "source": ex.source, "score": s} for ex, s in zip(examples, scores, strict=True)]
    )
    bad_path = out.with_name(f"{out.stem}.rejected.jsonl")
    _write_jsonl(bad_path, [r.as_dict() for r in rejected])
    sys.stdout.write(
        f"scored {len(examples)} examples -> {out}; {len(rejected)} records rejected -> {bad_path}\n"
    )
    return 0
