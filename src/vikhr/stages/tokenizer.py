"""Vocabulary stage: train a SentencePiece tokenizer on the target language, replace or extend the base, report.

Output folder `tokenizer/`:
  hf/                   the Hugging Face tokenizer to use from here on (AutoTokenizer.from_pretrained)
  sentencepiece.model   the trained SentencePiece model (not for `extend` of a byte-level base)
  equivalence.json      fast tokenizer vs SentencePiece on the report text (differing lines must be 0)
  report/               efficiency report: report.json, report.md, efficiency.png
  sweep/                one tokenizer per `tokenizer.vocab_sizes` entry and sweep.md/json
  stats.json            pieces new / shared / dropped, training text, skipped inputs
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from vikhr.config import Config, resolve_path
from vikhr.corpus.readers import ReadReport, iter_documents, paragraphs, sample_paragraphs
from vikhr.log import get_logger, progress
from vikhr.manifest import StageRecord
from vikhr.rundir import RunDir
from vikhr.stages.common import (
    held_out_texts,
    source_model_fingerprint,
    source_model_path,
    spec_fingerprints,
    target_specs,
)
from vikhr.tokenizer import build, spm
from vikhr.tokenizer.report import dedupe_tokenizers, default_tokenizers, efficiency_report, write_report

log = get_logger(__name__)

NAME = "tokenizer"
VERSION = 2  # bump when the stage's output format or algorithm changes
DEPENDS: tuple[str, ...] = ("corpus",)  # trains on the corpus stage's output when it ran
"""Stages whose output this one reads: it reruns when one of them does."""
SOFT: tuple[str, ...] = ("corpus",)
"""Of those, the ones read only when they finished (else `data.*` / the base tokenizer)."""


def _read_paragraphs(
    cfg: Config, specs: list[str], what: str, text_field: str | None = None
) -> tuple[list[str], ReadReport]:
    report = ReadReport()
    paras: list[str] = []
    docs = iter_documents(
        specs,
        base=resolve_path(cfg, "."),
        text_field=text_field or cfg.data.text_field,
        on_decode_error=cfg.data.on_decode_error,
        report=report,
    )
    for doc in progress(docs, desc=f"reading {what} text", unit="doc"):
        paras.extend(paragraphs(doc.text))
    if not paras:
        raise spm.TokenizerTrainingError(f"no {what} text in {', '.join(map(str, specs))}")
    log.info("%s text: %d files, %d paragraphs, %d characters", what, report.files, len(paras), report.chars)
    return paras, report


def training_text(cfg: Config, rundir: RunDir | None = None) -> tuple[list[str], list[str], dict]:
    """Target paragraphs (sampled to `sample_chars`) and second-language paragraphs at `extra_share`.

    The target text is the corpus stage's output (filtered and deduplicated) when it exists, else `data.target`.
    """
    t = cfg.tokenizer
    specs, source, field = target_specs(cfg, rundir)
    target, rep_t = _read_paragraphs(cfg, specs, f"target-language ({source})", field)
    target = sample_paragraphs(target, t.sample_chars, t.seed)
    n_target = sum(map(len, target))
    extra: list[str] = []
    rep_e = ReadReport()
    if t.extra_share > 0 and cfg.data.extra:
        pool, rep_e = _read_paragraphs(cfg, cfg.data.extra, "second-language")
        budget = int(n_target * t.extra_share / (1 - t.extra_share))
        extra = sample_paragraphs(pool, budget, t.seed + 1)
    info = {
        "target_source": specs[0] if source == "corpus stage" else specs,
        "target_paragraphs": len(target),
        "target_chars": n_target,
        "extra_paragraphs": len(extra),
        "extra_chars": sum(map(len, extra)),
        "skipped_inputs": rep_t.skipped + rep_e.skipped,
    }
    return target, extra, info


def _spm_options(cfg: Config, vocab_size: int, specials: build.SpecialTokens) -> spm.SpmOptions:
    t = cfg.tokenizer
    common = dict(
        vocab_size=vocab_size,
        model_type=t.model_type,
        character_coverage=t.character_coverage,
        seed=t.seed,
        num_threads=t.num_threads or spm.SpmOptions().num_threads,
    )
    return spm.SpmOptions(
        **common,
        special_tokens=tuple(specials.ordered()),
        unk_token=specials.unk or "<unk>",
        bos_token=None,
        eos_token=None,
    )


def _report_inputs(cfg: Config) -> tuple[dict[str, list[str]], dict[str, object]]:
    t = cfg.tokenizer
    texts = held_out_texts(cfg, t.report_texts, "tokenizer.report_texts", t.report_lines)
    others: dict[str, object] = {}
    for spec in t.report_tokenizers:
        if spec == "shared":
            others.update(default_tokenizers())
            continue
        path = resolve_path(cfg, spec)
        if path.exists():
            others[path.name] = path
        elif spec.startswith((".", "/", "~")) or spec.count("/") != 1:
            raise FileNotFoundError(f"tokenizer.report_tokenizers: no tokenizer folder {path} (nor a hub id)")
        else:
            others[spec] = spec  # a hub id, for users who have a hub
    return texts, others


def _load_base(cfg: Config):
    from transformers import AutoTokenizer

    if not cfg.source_model:
        return None, None
    where = source_model_path(cfg)
    return Path(where), AutoTokenizer.from_pretrained(where)


def _equivalence(model: Path, fast, texts: dict[str, list[str]]) -> dict:
    sp = spm.processor(model)
    out = {}
    for lang, lines in texts.items():
        r = spm.check_equivalence(sp, fast, lines)
        out[lang] = {"lines": r.lines, "differing": r.differing, "examples": r.examples}
    return out


def _changed_lines(base_tok, new_tok, lines: list[str]) -> int:
    a = base_tok(lines, add_special_tokens=False)["input_ids"]
    b = new_tok(lines, add_special_tokens=False)["input_ids"]
    return sum(x != y for x, y in zip(a, b, strict=True))


def _sweep(cfg: Config, lines: list[str], texts: dict, out: Path, specials) -> dict:
    rows = {}
    for size in cfg.tokenizer.vocab_sizes:
        d = out / str(size)
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        model = spm.train_sentencepiece(lines, d / "spm", _spm_options(cfg, size, specials))
        tok = build.build_standalone(model, d / "hf", specials, None)
        rows[f"vocab-{size}"] = tok
        log.info("sweep: %d pieces trained in %.1fs", size, time.perf_counter() - t0)
    rep = efficiency_report(rows, texts)
    write_report(rep, out, title="Vocabulary-size sweep")
    return {name: {lang: rep["languages"][lang][name]["chars_per_token"] for lang in texts} for name in rows}


def run(cfg: Config, rundir: RunDir) -> StageRecord:
    """Train, build the HF tokenizer for `tokenizer.mode`, check it, and write the efficiency report."""
    t = cfg.tokenizer
    record = StageRecord(name=NAME, started=time.time())
    timings: dict[str, float] = {}
    base_dir, base_tok = _load_base(cfg)
    if t.mode == "extend" and base_tok is None:
        raise ValueError("tokenizer.mode=extend needs source_model (the tokenizer to extend)")
    target, extra, info = training_text(cfg, rundir)
    texts, others = _report_inputs(cfg)
    use_base = base_tok is not None and t.mode == "replace"
    specials = build.special_tokens_of(base_tok) if use_base else build.DEFAULT_SPECIALS

    kind = build.base_kind(base_dir, base_tok) if t.mode == "extend" else None
    with rundir.staging(NAME) as out:
        model = None
        if kind != "bytelevel":  # a byte-level base is extended with learned merges, not SentencePiece pieces
            t0 = time.perf_counter()
            spm.train_sentencepiece(target + extra, out / "spm", _spm_options(cfg, t.vocab_size, specials))
            timings["sentencepiece_s"] = time.perf_counter() - t0
            (out / "spm.model").rename(out / build.SP_MODEL_NAME)
            (out / "spm.vocab").unlink(missing_ok=True)
            model = out / build.SP_MODEL_NAME

        t0 = time.perf_counter()
        hf_dir = out / "hf"
        if t.mode == "replace":
            chat = base_tok.chat_template if base_tok is not None else None
            tok = build.build_standalone(model, hf_dir, specials, chat)
            pieces = {"new_vocab": len(tok)}
            if base_tok is not None:
                from vikhr.tokenizer.surface import vocabulary_overlap

                pieces.update(vocabulary_overlap(tok, base_tok))
        else:
            keep = t.new_token_filter == "cyrillic"
            if kind == "sentencepiece":
                tok, pieces = build.extend_sentencepiece(
                    base_dir,
                    base_tok,
                    model,
                    hf_dir,
                    max_new=t.max_new_tokens or None,
                    keep_cyrillic_only=keep,
                )
            else:
                tok, pieces = build.extend_bytelevel(
                    base_dir, base_tok, target, hf_dir, num_new=t.max_new_tokens or t.vocab_size,
                    keep_cyrillic_only=keep,
                )  # fmt: skip
        timings["build_s"] = time.perf_counter() - t0
        build.write_origin(hf_dir, t.mode, cfg.source_model, base_tok)

        checks = {}
        if t.mode == "replace" or pieces.get("base_kind") == "sentencepiece":
            checks["fast_vs_sentencepiece"] = _equivalence(hf_dir / build.SP_MODEL_NAME, tok, texts)
        if t.mode == "extend":
            checks["lines_changed_vs_base"] = {
                lang: _changed_lines(base_tok, tok, ls) for lang, ls in texts.items()
            }
        (out / "equivalence.json").write_text(
            json.dumps(checks, indent=2, ensure_ascii=False), encoding="utf-8"
        )

        t0 = time.perf_counter()
        compare: dict[str, object] = {}
        base_name = f"base: {Path(cfg.source_model).name or cfg.source_model}"
        if base_tok is not None:
            compare[base_name] = base_tok
        compare[f"vikhr-{t.mode}"] = tok
        for name, spec in others.items():  # a shared folder named like the run's own keeps the run's label
            compare.setdefault(name, spec)
        # the same tokenizer under two names (the base and a shared copy of it) is measured and drawn once
        compare, same = dedupe_tokenizers(compare, protected=(base_name, f"vikhr-{t.mode}"))
        report = efficiency_report(compare, texts)
        if same:
            report["duplicates"] = same
        write_report(report, out / "report", title=f"Tokenizer efficiency ({t.mode}, {len(tok)} tokens)")
        timings["report_s"] = time.perf_counter() - t0

        sweep = {}
        if t.vocab_sizes:
            t0 = time.perf_counter()
            sweep = _sweep(cfg, target + extra, texts, out / "sweep", specials)
            timings["sweep_s"] = time.perf_counter() - t0

        stats = {"mode": t.mode, "vocab_size": len(tok), "pieces": pieces, "training_text": info}
        (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8")

    mine = report["languages"]
    record.metrics = {
        "vocab_size": len(tok),
        "pieces": pieces,
        "chars_per_token": {
            lang: round(mine[lang][f"vikhr-{t.mode}"]["chars_per_token"], 3) for lang in mine
        },
        "differing_lines": {
            k: ({lang: v["differing"] for lang, v in c.items()} if k == "fast_vs_sentencepiece" else c)
            for k, c in checks.items()
        },
        "skipped_inputs": len(info["skipped_inputs"]),
        "training_chars": info["target_chars"] + info["extra_chars"],
        **({"sweep_chars_per_token": sweep} if sweep else {}),
    }
    if base_tok is not None:
        record.metrics["base_chars_per_token"] = {
            lang: round(mine[lang][base_name]["chars_per_token"], 3) for lang in mine
        }
    record.outputs = {"tokenizer": "tokenizer/hf", "report": "tokenizer/report/report.md"}
    record.metrics["timings"] = {k: round(v, 2) for k, v in timings.items()}
    return record


def inputs(cfg: Config) -> dict:
    """What the stage's output depends on besides its config: input files, base model, report tokenizers."""
    from vikhr.manifest import path_fingerprint

    files = spec_fingerprints(cfg, cfg.data.target + cfg.data.extra)
    texts, others = {}, {}
    for lang, p in cfg.tokenizer.report_texts.items():
        texts[lang] = path_fingerprint(resolve_path(cfg, p))
    for spec in cfg.tokenizer.report_tokenizers:
        if spec == "shared":
            others.update({k: path_fingerprint(v) for k, v in default_tokenizers().items()})
        elif resolve_path(cfg, spec).exists():
            others[spec] = path_fingerprint(resolve_path(cfg, spec))
        else:
            others[spec] = spec  # a hub id
    model = source_model_fingerprint(cfg)
    return {"data": files, "report_texts": texts, "report_tokenizers": others, "source_model": model}


def config_section(cfg: Config) -> dict:
    from vikhr.config import to_dict

    return {"tokenizer": to_dict(cfg.tokenizer), "data": to_dict(cfg.data), "source_model": cfg.source_model}
