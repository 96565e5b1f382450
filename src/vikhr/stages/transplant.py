"""Transplant stage: the base model on the new vocabulary, with pre-flight diagnostics.

Output folder `transplant/`:
  model/                     HF model folder (safetensors) with the new tokenizer, ids and chat template
  transplant_report.json/.md diagnostics before any training
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from vikhr.config import Config, resolve_path, to_dict
from vikhr.log import get_logger
from vikhr.manifest import StageRecord, path_fingerprint
from vikhr.rundir import RunDir
from vikhr.stages.common import (
    held_out_texts,
    source_model_fingerprint,
    source_model_path,
    spec_fingerprints,
    target_specs,
)
from vikhr.tokenizer.build import ORIGIN_FILE, vocab_digest
from vikhr.transplant import diagnostics as diag
from vikhr.transplant.apply import build_matrices, install, is_tied
from vikhr.transplant.calibrate import CalibrationOptions, calibrate
from vikhr.transplant.mapping import build_token_map

log = get_logger(__name__)

NAME = "transplant"
VERSION = 2  # 2: calibration reads the corpus output; compute dtype from vikhr.precision
DEPENDS: tuple[str, ...] = ("tokenizer", "corpus")  # the new vocabulary; calibration text from the corpus
"""Stages whose output this one reads: it reruns when one of them does."""
SOFT: tuple[str, ...] = ("corpus",)
"""Of those, the ones read only when they finished (else `data.*` / the base tokenizer)."""


def _tokenizer_dir(rundir: RunDir) -> Path:
    d = rundir.stage_dir("tokenizer") / "hf"
    if not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer at {d}: run the tokenizer stage first (vikhr run --to tokenizer)"
        )
    return d


def check_same_base(tok_dir: Path, base_tok, source_model: str) -> None:
    """Refuse a tokenizer that was built for another base model (ids would not line up)."""
    origin_file = tok_dir / ORIGIN_FILE
    if not origin_file.is_file():
        log.warning("%s has no %s; cannot check which base it was made for", tok_dir, ORIGIN_FILE)
        return
    origin = json.loads(origin_file.read_text(encoding="utf-8"))
    if origin.get("base_vocab_digest") and origin["base_vocab_digest"] != vocab_digest(base_tok):
        raise ValueError(
            f"the tokenizer in {tok_dir} was built for base {origin.get('source_model')!r} "
            f"({origin.get('base_vocab_size')} tokens), but source_model {source_model!r} has a different "
            f"vocabulary ({len(base_tok)} tokens); rerun the tokenizer stage for this model"
        )


def _calibration_stream(cfg: Config, rundir: RunDir, tok, start_id: int) -> list[int]:
    """Target-language text under the new tokenizer, paragraphs joined by the start token. The text is the one the
    tokenizer was trained on: the corpus stage's output when it exists, else `data.target`."""
    from vikhr.corpus.readers import iter_documents, paragraphs, sample_paragraphs

    specs, _, field = target_specs(cfg, rundir)
    paras: list[str] = []
    for doc in iter_documents(
        specs, base=resolve_path(cfg, "."), text_field=field, on_decode_error=cfg.data.on_decode_error
    ):
        paras.extend(paragraphs(doc.text))
    budget_chars = cfg.transplant.calibration_tokens * 8  # generous: ~4 chars per token, twice over
    stream: list[int] = []
    for p in sample_paragraphs(paras, budget_chars, cfg.transplant.seed):
        stream += [start_id, *tok(p, add_special_tokens=False)["input_ids"]]
        if len(stream) >= cfg.transplant.calibration_tokens:
            break
    return stream


def _set_special_ids(model, tok, base_tok) -> None:
    """bos/eos/pad ids of the config and generation config in the new vocabulary (eos lists mapped by content)."""
    for cfg_obj in (model.config, model.generation_config):
        if cfg_obj is None:
            continue
        for role in ("bos", "pad"):
            setattr(cfg_obj, f"{role}_token_id", getattr(tok, f"{role}_token_id"))
        old = getattr(cfg_obj, "eos_token_id", None)
        old = old if isinstance(old, list) else [old] if old is not None else []
        new = [tok.convert_tokens_to_ids(base_tok.convert_ids_to_tokens(i)) for i in old]
        new = [i for i in new if i is not None and i != tok.unk_token_id] or [tok.eos_token_id]
        cfg_obj.eos_token_id = new[0] if len(new) == 1 else new


def run(cfg: Config, rundir: RunDir) -> StageRecord:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vikhr.eval.bpc import start_token_id

    t = cfg.transplant
    record = StageRecord(name=NAME, started=time.time())
    timings: dict[str, float] = {}
    tok_dir = _tokenizer_dir(rundir)
    base_path = source_model_path(cfg)
    base_tok = AutoTokenizer.from_pretrained(base_path)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    check_same_base(tok_dir, base_tok, cfg.source_model)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    texts = held_out_texts(cfg, t.eval_texts, "transplant.eval_texts", t.eval_lines)

    t0 = time.perf_counter()
    base_side = diag.model_side(model, base_tok, texts, t.prompts)
    timings["base_diagnostics_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tmap = build_token_map(tok, base_tok)
    tied = is_tied(model)
    init = "mean" if t.method == "calibrated" else t.method
    mats = build_matrices(model, tmap, init, t.output_method, t.pad_to_multiple, t.seed)
    install(model, mats)
    _set_special_ids(model, tok, base_tok)
    timings["transplant_s"] = time.perf_counter() - t0

    calib = None
    if t.method == "calibrated":
        t0 = time.perf_counter()
        opts = CalibrationOptions(
            tokens=t.calibration_tokens, seq_len=t.calibration_seq_len, epochs=t.calibration_epochs,
            lr=t.calibration_lr, seed=t.seed,
        )  # fmt: skip
        stream = _calibration_stream(cfg, rundir, tok, start_token_id(tok))
        calib = calibrate(model, stream, tmap.ids("pieces", "fallback"), tied, opts)
        timings["calibration_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    new_side = diag.model_side(model, tok, texts, t.prompts)
    groups = diag.row_groups(tmap, mats.padded_size)
    target_lang = cfg.language if cfg.language in texts else next(iter(texts))
    report = {
        "method": t.method if tied or t.output_method == "same" else f"{t.method} in / {t.output_method} out",
        "source_model": cfg.source_model,
        "vocab_size": len(tok),
        "padded_vocab_size": mats.padded_size,
        "tied": tied,
        "rows": tmap.counts() | {"padding": mats.padded_size - len(tmap)},
        "base": base_side,
        "transplanted": new_side,
        "dominance": diag.new_row_dominance(
            model, tok, texts[target_lang], groups["new"], t.dominance_warning
        ),
        "norms": diag.norm_stats(model, groups, tied),
        "calibration": calib,
    }
    timings["diagnostics_s"] = time.perf_counter() - t0
    if report["dominance"]["warning"]:
        log.warning("new rows dominate the output distribution: %s", report["dominance"])

    with rundir.staging(NAME) as out:
        t0 = time.perf_counter()
        model.save_pretrained(out / "model")
        for f in tok_dir.iterdir():
            if f.is_file():
                shutil.copy(f, out / "model" / f.name)
        reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
        if reloaded.config.vocab_size < len(AutoTokenizer.from_pretrained(out / "model")):
            raise RuntimeError(f"{out / 'model'}: model vocabulary smaller than its tokenizer")
        if not torch.equal(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight):
            raise RuntimeError(f"{out / 'model'}: saved embeddings differ from the transplanted ones")
        timings["save_s"] = time.perf_counter() - t0
        report["timings"] = {k: round(v, 1) for k, v in timings.items()}
        (out / "transplant_report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        (out / "transplant_report.md").write_text(diag.markdown(report), encoding="utf-8")

    record.metrics = diag.summary_metrics(report) | {"timings": report["timings"]}
    record.outputs = {"model": "transplant/model", "report": "transplant/transplant_report.md"}
    return record


def inputs(cfg: Config) -> dict:
    out: dict = {"source_model": source_model_fingerprint(cfg)}
    out["eval_texts"] = {
        k: path_fingerprint(resolve_path(cfg, p)) for k, p in cfg.transplant.eval_texts.items()
    }
    if cfg.transplant.method == "calibrated":
        out["data"] = spec_fingerprints(cfg, cfg.data.target)  # read when the corpus stage has not run
    return out


def config_section(cfg: Config) -> dict:
    return {"transplant": to_dict(cfg.transplant), "source_model": cfg.source_model, "language": cfg.language}
