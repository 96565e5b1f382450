"""Pretrain stage: continued pre-training of all weights of the transplanted model, loss = CE + λ·KL (paper §3.2).

Reads `transplant/model` and the training text (the corpus stage's shards, or `pretrain.data`, or `data.target`),
holds out `eval_share` of the documents, packs the rest into `seq_len` rows (plus `replay_share` of English text),
trains with `vikhr.train.trainer.KLTrainer` and writes `pretrain/`:
  model/               plain HF folder (unwrapped weights, tokenizer, use_cache back on)
  pretrain_report.json/.md   data and packing counts, settings, held-out bits per char before/after, timings
  log_history.json, loss.png  the Trainer's logs (loss, ce, kl, eval) and their curves

Checkpoints live in `<run_dir>/pretrain.work/` (outside the staged output, so a crash keeps them). A rerun resumes
from the last one only when the stage's full fingerprint is unchanged (`resume_key`: settings, the transplanted model
by content and by its manifest record, the training text, replay, reference model, code and package versions, world
size); anything else, or `--force pretrain`, starts at step 0. Under `accelerate launch` every rank trains; rank 0
writes the output.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

import vikhr
from vikhr.config import Config, resolve_path, to_dict
from vikhr.log import get_logger
from vikhr.manifest import StageRecord, package_versions, path_fingerprint
from vikhr.rundir import RunDir
from vikhr.stages.common import (
    held_out_texts,
    plan_steps,
    source_model_fingerprint,
    source_model_path,
    spec_fingerprints,
    target_specs,
    train_arguments,
)
from vikhr.train.dist import is_main_process, rank, world_size
from vikhr.train.run import resume_point, train_and_save

log = get_logger(__name__)

NAME = "pretrain"
VERSION = 2  # 2: resume keyed on the full fingerprint; mixed precision from vikhr.precision
DEPENDS: tuple[str, ...] = ("transplant", "corpus")
"""Stages whose output this one reads: it reruns when one of them does."""
SOFT: tuple[str, ...] = ("corpus",)
"""Of those, the ones read only when they finished (else `data.*` / the base tokenizer)."""
WORK = "pretrain.work"


def _read(cfg: Config, specs: list[str], text_field: str | None = None) -> list[str]:
    from vikhr.corpus.readers import iter_documents

    docs = iter_documents(
        specs,
        base=resolve_path(cfg, "."),
        text_field=text_field or cfg.data.text_field,
        on_decode_error=cfg.data.on_decode_error,
    )
    return [d.text for d in docs if d.text.strip()]


def training_specs(cfg: Config, rundir: RunDir) -> tuple[list[str], str, str]:
    """(specs, where they come from, text field): `pretrain.data`, else the corpus stage's output, else data.target."""
    if cfg.pretrain.data:
        return list(cfg.pretrain.data), "pretrain.data", cfg.data.text_field
    return target_specs(cfg, rundir)


def training_documents(cfg: Config, rundir: RunDir) -> tuple[list[str], str]:
    """Target-language documents and where they came from (pretrain.data, the corpus stage, or data.target)."""
    p = cfg.pretrain
    specs, source, field = training_specs(cfg, rundir)
    docs = _read(cfg, specs, field)
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


COSMETIC = ("resume", "report_to", "logging_steps", "save_total_limit", "launcher", "num_processes")
"""Pretrain settings that do not change the trained weights (a run may resume across a change of these)."""


def resume_key(cfg: Config, rundir: RunDir, model_dir: Path) -> dict:
    """Everything the trained weights depend on: a checkpoint is resumed only when all of it is unchanged."""
    p = cfg.pretrain
    specs, source, _ = training_specs(cfg, rundir)
    replay = list(p.replay or cfg.data.extra) if p.replay_share > 0 else []
    return {
        "code": {"vikhr": vikhr.__version__, "stage": VERSION, "packages": package_versions()},
        "settings": {k: v for k, v in to_dict(p).items() if k not in COSMETIC},
        "data_settings": to_dict(cfg.data),
        "model": path_fingerprint(model_dir),
        "transplant": (rundir.manifest.get("transplant") or {}).get("fingerprint", ""),
        "text": {"source": source, "files": spec_fingerprints(cfg, specs)},
        "replay": spec_fingerprints(cfg, replay),
        "reference": source_model_fingerprint(cfg) if p.reference == "base" else p.reference,
        "world_size": world_size(),
    }


def _base_reference(cfg: Config, dtype: torch.dtype):
    """The source model and its tokenizer, for `reference: base`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = source_model_path(cfg)
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

    world = world_size()
    steps = plan_steps(p, len(train_ds), world)
    work = rundir.work_dir(NAME)
    last = resume_point(work, resume_key(cfg, rundir, model_dir), p.resume and NAME not in rundir.forced)
    args = train_arguments(p, work, steps)
    trainer = KLTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_sets, data_collator=PackingCollator(),
        reference=p.reference, kl_weight=p.kl_weight, kl_chunk=p.kl_chunk, kl_direction=p.kl_direction,
        base_model=base_model, shared_ids=shared_vocab_map(tok, base_tok) if base_tok is not None else None,
        freeze_steps=(p.freeze_steps or max(steps // 10, 1)) if p.freeze == "body" else 0,
    )  # fmt: skip
    t0 = time.perf_counter()
    result, final = train_and_save(trainer, work, last)
    timings["train_s"] = time.perf_counter() - t0
    data = {
        "source": source, "documents": len(docs), "train_documents": len(train_docs),
        "eval_documents": len(eval_docs), "replay_documents": len(replay), "world_size": world,
        "packing": train_ds.stats.as_dict(), "aligned_positions": train_ds.aligned, "steps": steps,
        "tokens_per_step": p.seq_len * p.batch_size * p.grad_accum * world, "resumed_from": last,
    }  # fmt: skip
    if not is_main_process():
        record.metrics = {"rank": rank()}
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
        write_outputs(out, final, model_dir, report, trainer.state.log_history)
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
    p = cfg.pretrain
    specs = list(p.data) + (list(p.replay or cfg.data.extra) if p.replay_share > 0 else [])
    if not p.data:
        specs += cfg.data.target  # used when the corpus stage has not run; fingerprinted either way
    return spec_fingerprints(cfg, specs)


def config_section(cfg: Config) -> dict:
    train = {k: v for k, v in to_dict(cfg.pretrain).items() if k not in ("launcher", "num_processes")}
    out = {"pretrain": train, "data": to_dict(cfg.data)}
    if cfg.pretrain.reference == "base":
        out["source_model"] = cfg.source_model
    return out
