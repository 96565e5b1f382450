"""Pretrain stage: continued pre-training of all weights of the transplanted model, loss = CE + λ·KL (paper §3.2).

Reads `transplant/model` and the training text (the corpus stage's shards, or `pretrain.data`, or `data.target`),
holds out `eval_share` of the documents, packs the rest into `seq_len` rows (plus `replay_share` of English text),
trains with `vikhr.train.trainer.KLTrainer` and writes `pretrain/`:
  model/               plain HF folder (unwrapped weights, tokenizer, use_cache back on)
  pretrain_report.json/.md   data and packing counts, settings, held-out bits per char before/after, timings
  log_history.json, loss.png  the Trainer's logs (loss, ce, kl, eval) and their curves

Checkpoints live in `<run_dir>/pretrain.work/` (outside the staged output, so a crash keeps them); a rerun with
the same settings resumes from the last one. Under `accelerate launch` every rank trains; rank 0 writes the output.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch

from vikhr.config import Config, PretrainConfig, resolve_path, to_dict
from vikhr.log import get_logger
from vikhr.manifest import StageRecord, digest, path_fingerprint
from vikhr.rundir import RunDir
from vikhr.stages.common import held_out_texts
from vikhr.stages.tokenizer import corpus_output
from vikhr.train.launch import is_main_process

log = get_logger(__name__)

NAME = "pretrain"
VERSION = 1
WORK = "pretrain.work"


def _read(cfg: Config, specs: list[str]) -> list[str]:
    from vikhr.corpus.readers import iter_documents

    docs = iter_documents(
        specs,
        base=resolve_path(cfg, "."),
        text_field=cfg.data.text_field,
        on_decode_error=cfg.data.on_decode_error,
    )
    return [d.text for d in docs if d.text.strip()]


def training_documents(cfg: Config, rundir: RunDir) -> tuple[list[str], str]:
    """Target-language documents and where they came from (pretrain.data, the corpus stage, or data.target)."""
    p = cfg.pretrain
    if p.data:
        specs, source = p.data, "pretrain.data"
    elif (shards := corpus_output(rundir)) is not None:
        specs, source = [str(shards)], "corpus stage"
    else:
        specs, source = cfg.data.target, "data.target"
    docs = _read(cfg, specs)
    if 0 < p.max_documents < len(docs):
        keep = sorted(random.Random(p.seed).sample(range(len(docs)), p.max_documents))
        docs = [docs[i] for i in keep]
    if not docs:
        raise ValueError(f"pretrain: no text in {source} ({', '.join(map(str, specs))})")
    return docs, source


def replay_documents(cfg: Config, target_chars: int) -> list[str]:
    """English documents making up `replay_share` of the training characters (whole documents, seeded order)."""
    p = cfg.pretrain
    if p.replay_share <= 0:
        return []
    if not 0 < p.replay_share < 1:
        raise ValueError(f"pretrain.replay_share must be in [0, 1), got {p.replay_share}")
    docs = _read(cfg, p.replay or cfg.data.extra)
    random.Random(p.seed).shuffle(docs)
    budget = target_chars * p.replay_share / (1 - p.replay_share)
    out, chars = [], 0
    for d in docs:
        if chars >= budget:
            break
        take = d[: int(budget - chars) + 1]
        out.append(take)
        chars += len(take)
    if chars < 0.5 * budget:
        log.warning("replay: only %d of the %d characters asked for are available", chars, int(budget))
    return out


def check_vocab(model, tok, where: Path) -> None:
    """A tokenizer whose ids do not fit the model's embedding matrix is an error, not an index crash later."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        raise ValueError(
            f"{where}: the tokenizer has {len(tok)} tokens but the model's embedding has {rows} rows; "
            "they do not belong together (rerun the transplant stage)"
        )


def plan_steps(p: PretrainConfig, rows: int, world: int) -> int:
    """Optimizer steps the run will take."""
    if p.max_steps:
        return p.max_steps
    per_epoch = max(math.ceil(rows / (p.batch_size * world)) // p.grad_accum, 1)
    return max(math.ceil(per_epoch * p.epochs), 1)


def training_arguments(p: PretrainConfig, work: Path, steps: int):
    """`TrainingArguments` for the run (bf16 on a capable GPU, CPU otherwise)."""
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    bf16 = p.bf16 == "true" or (p.bf16 == "auto" and cuda and torch.cuda.is_bf16_supported())
    every = max(steps // 5, 1)
    return TrainingArguments(
        output_dir=str(work), per_device_train_batch_size=p.batch_size, per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.grad_accum, num_train_epochs=p.epochs, max_steps=p.max_steps or -1,
        learning_rate=p.lr, lr_scheduler_type=p.lr_scheduler, warmup_steps=p.warmup_steps,
        weight_decay=p.weight_decay, adam_beta1=p.adam_beta1, adam_beta2=p.adam_beta2, adam_epsilon=p.adam_eps,
        max_grad_norm=p.max_grad_norm, bf16=bf16, use_cpu=not cuda, activation_checkpointing=p.gradient_checkpointing,
        logging_steps=p.logging_steps, eval_strategy="steps", eval_steps=p.eval_steps or every,
        save_strategy="steps", save_steps=p.save_steps or every, save_total_limit=p.save_total_limit,
        report_to=p.report_to, seed=p.seed, data_seed=p.seed, disable_tqdm=not is_main_process(),
        remove_unused_columns=False, ddp_find_unused_parameters=False,
    )  # fmt: skip


def _resume_point(work: Path, settings: str, resume: bool) -> str | None:
    """The last checkpoint of an earlier run with the same settings; otherwise a clean work folder."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = work / "settings.txt"
    same = stamp.is_file() and stamp.read_text() == settings
    last = get_last_checkpoint(str(work)) if work.is_dir() and same and resume else None
    if last is None and is_main_process():
        if work.is_dir():
            log.info("pretrain: starting fresh (%s)", "settings changed" if not same else "resume is off")
            shutil.rmtree(work)
        work.mkdir(parents=True)
        stamp.write_text(settings)
    if last:
        log.info("pretrain: resuming from %s", last)
    return last


def _base_reference(cfg: Config, dtype: torch.dtype):
    """The source model and its tokenizer, for `reference: base`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vikhr.models import resolve_model

    local = resolve_path(cfg, cfg.source_model)
    path = resolve_model(str(local) if local.is_dir() else cfg.source_model)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)


def run(cfg: Config, rundir: RunDir) -> StageRecord:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vikhr.train.align import shared_vocab_map
    from vikhr.train.packing import PackedDataset, PackingCollator, split_documents
    from vikhr.train.report import bpc_table, write_outputs
    from vikhr.train.trainer import KLTrainer

    p = cfg.pretrain
    record = StageRecord(name=NAME, started=time.time())
    timings: dict[str, float] = {}
    model_dir = rundir.stage_dir("transplant") / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"no model at {model_dir}: run the transplant stage first (vikhr run --to transplant)"
        )
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=p.attn_implementation
    )
    check_vocab(model, tok, model_dir)

    t0 = time.perf_counter()
    docs, source = training_documents(cfg, rundir)
    train_docs, eval_docs = split_documents(docs, p.eval_share, p.seed)
    replay = replay_documents(cfg, sum(map(len, train_docs)))
    replay_train, replay_eval = (
        split_documents(replay, p.eval_share, p.seed) if len(replay) > 1 else (replay, [])
    )
    base_model = base_tok = None
    if p.reference == "base":
        base_model, base_tok = _base_reference(cfg, torch.float32)
    pack = dict(tokenizer=tok, seq_len=p.seq_len, base_tokenizer=base_tok)
    train_ds = PackedDataset(train_docs + replay_train, **pack)
    if len(train_ds) == 0:
        raise ValueError(
            f"pretrain: the training text ({source}: {len(train_docs)} documents, {train_ds.stats.tokens} tokens) "
            f"is too short for one sequence of seq_len={p.seq_len} tokens; add text or lower pretrain.seq_len"
        )
    eval_sets = {"target": PackedDataset(eval_docs, **pack, last="pad")}
    if replay_eval:
        eval_sets["replay"] = PackedDataset(replay_eval, **pack, last="pad")
    if p.eval_max_rows:
        for ds in eval_sets.values():
            del ds.rows[p.eval_max_rows :]
    timings["data_s"] = time.perf_counter() - t0

    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = plan_steps(p, len(train_ds), world)
    cosmetic = ("resume", "report_to", "logging_steps", "save_total_limit")
    same = {k: v for k, v in to_dict(p).items() if k not in cosmetic}
    settings = digest(
        {"pretrain": same, "model": path_fingerprint(model_dir / "config.json"), "world": world}
    )
    work = rundir.path / WORK
    last = _resume_point(work, settings, p.resume)
    args = training_arguments(p, work, steps)
    trainer = KLTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_sets, data_collator=PackingCollator(),
        reference=p.reference, kl_weight=p.kl_weight, kl_chunk=p.kl_chunk, kl_direction=p.kl_direction,
        base_model=base_model, shared_ids=shared_vocab_map(tok, base_tok) if base_tok is not None else None,
        freeze_steps=(p.freeze_steps or max(steps // 10, 1)) if p.freeze == "body" else 0,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    timings["train_s"] = time.perf_counter() - t0
    trainer.save_model(str(work / "final"))  # every rank: FSDP / ZeRO-3 gather the full weights collectively
    data = {
        "source": source, "documents": len(docs), "train_documents": len(train_docs),
        "eval_documents": len(eval_docs), "replay_documents": len(replay), "world_size": world,
        "packing": train_ds.stats.as_dict(), "aligned_positions": train_ds.aligned, "steps": steps,
        "tokens_per_step": p.seq_len * p.batch_size * p.grad_accum * world, "resumed_from": last,
    }  # fmt: skip
    if not is_main_process():
        record.metrics = {"rank": int(os.environ.get("RANK", "0"))}
        return record

    t0 = time.perf_counter()
    texts = held_out_texts(cfg, cfg.transplant.eval_texts, "transplant.eval_texts", cfg.transplant.eval_lines)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    before = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    bpc = bpc_table({"transplanted": (before, tok), "trained": (trained, tok)}, texts)
    timings["eval_s"] = time.perf_counter() - t0
    report = {
        "data": data, "settings": to_dict(p), "train": result.metrics, "bits_per_char": bpc,
        "base_bits_per_char": _base_bpc(cfg, rundir), "timings": {k: round(v, 1) for k, v in timings.items()},
    }  # fmt: skip
    with rundir.staging(NAME) as out:
        write_outputs(out, work / "final", model_dir, report, trainer.state.log_history)
    record.metrics = {
        "steps": trainer.state.global_step, "train_loss": round(result.training_loss, 4),
        "bits_per_char": bpc, "timings": report["timings"],
    }  # fmt: skip
    record.outputs = {"model": "pretrain/model", "report": "pretrain/pretrain_report.md"}
    return record


def _base_bpc(cfg: Config, rundir: RunDir) -> dict:
    """The source model's held-out bits per char from the transplant report, when it scored the same lines."""
    path = rundir.stage_dir("transplant") / "transplant_report.json"
    rec = (rundir.manifest.get("transplant") or {}).get("config", {}).get("transplant", {})
    same = {k: rec.get(k) for k in ("eval_lines", "eval_texts")} == {
        "eval_lines": cfg.transplant.eval_lines, "eval_texts": cfg.transplant.eval_texts,
    }  # fmt: skip
    if not path.is_file() or not same:
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("base", {}).get("bits_per_char", {})


def inputs(cfg: Config) -> dict:
    from vikhr.corpus.readers import resolve_spec

    p = cfg.pretrain
    base = resolve_path(cfg, ".")
    specs = list(p.data) + (list(p.replay or cfg.data.extra) if p.replay_share > 0 else [])
    if not p.data:
        specs += cfg.data.target  # used when the corpus stage has not run; fingerprinted either way
    return {str(s): path_fingerprint(resolve_spec(s, base)) for s in specs}


def config_section(cfg: Config) -> dict:
    out = {"pretrain": to_dict(cfg.pretrain), "data": to_dict(cfg.data)}
    if cfg.pretrain.reference == "base":
        out["source_model"] = cfg.source_model
    return out
