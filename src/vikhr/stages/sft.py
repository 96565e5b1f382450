"""Stage `sft`: instruction tuning of all weights (LoRA as an option) on the instruction mix (paper §3.3, Table 5).

Model: `sft.model` (empty: this run's pre-trained model; `source`: the source model; or a folder / alias). Data:
`sft.data`, else the instruct stage's `instruct/data/train.jsonl`. Each conversation is rendered once with the chat
template (`sft.chat_template` or the tokenizer's), tokenized once with offsets, and only the assistant replies and
their end-of-turn tokens are in the loss (`vikhr.instruct.masks`); conversations are packed into `seq_len` rows
without attention across them (`vikhr.train.packing`) and trained with the shared training layer (`KLTrainer` with
CE only, the same launchers, resume semantics and plain-HF output as pre-training). Writes `sft/`:
  model/               plain HF folder; its chat template is the plain one (no `{% generation %}` markers) and its
                       generation config stops at the end-of-turn token
  sft_report.json/.md  data and mask counts, held-out assistant-token loss before/after, answers to Russian
                       prompts before/after: share that stop by themselves, language purity, length
  answers.md           the answers side by side; dropped.jsonl: records and examples left out, with reasons
  log_history.json, loss.png
Checkpoints live in `<run_dir>/sft.work/`, resumed only for exactly the same inputs (`resume_key`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import vikhr
from vikhr.config import Config, resolve_path, to_dict
from vikhr.log import get_logger
from vikhr.manifest import StageRecord, package_versions, path_fingerprint
from vikhr.rundir import RunDir
from vikhr.stages.common import (
    plan_steps,
    prompt_lines,
    source_model_path,
    spec_fingerprints,
    train_arguments,
)
from vikhr.train.dist import is_main_process, rank, world_size
from vikhr.train.run import resume_point, train_and_save

log = get_logger(__name__)

NAME = "sft"
VERSION = 1
DEPENDS: tuple[str, ...] = ("pretrain", "instruct")
"""Stages whose output this one can read (`depends(cfg)`: those it reads under a given config)."""


def depends(cfg: Config) -> tuple[str, ...]:
    """The pre-trained model unless `sft.model` names another; the instruction mix unless `sft.data` is given."""
    return (() if cfg.sft.model else ("pretrain",)) + (() if cfg.sft.data else ("instruct",))


COSMETIC = (
    "launcher",
    "num_processes",
    "resume",
    "report_to",
    "logging_steps",
    "save_total_limit",
    "prompts",
    "max_prompts",
    "max_new_tokens",
)
"""SFT settings that do not change the trained weights."""


def tuned_model(cfg: Config, rundir: RunDir | None) -> tuple[str, str]:
    """(model folder, what it is) for `sft.model`."""
    spec = cfg.sft.model
    if spec == "":
        folder = rundir.stage_dir("pretrain") / "model" if rundir is not None else None
        if folder is None or not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no pre-trained model at {folder}: run the pretrain stage first, or set sft.model "
                "(`source` for the source model, or a model folder)"
            )
        return str(folder), "pretrain stage"
    if spec == "source":
        return source_model_path(cfg), "source model"
    return source_model_path(cfg, spec), spec


def chat_template(cfg: Config) -> str | None:
    """`sft.chat_template`: a file's contents when it names an existing file, else the template text itself."""
    t = cfg.sft.chat_template
    if not t:
        return None
    if "{" not in t:
        path = resolve_path(cfg, t)
        if not path.is_file():
            raise FileNotFoundError(f"sft.chat_template: file not found: {path}")
        return path.read_text(encoding="utf-8")
    return t


def data_specs(cfg: Config, rundir: RunDir | None) -> tuple[list[str], str]:
    """(instruction files, where they come from): `sft.data`, else the instruct stage's mix."""
    if cfg.sft.data:
        return list(cfg.sft.data), "sft.data"
    mix = rundir.stage_dir("instruct") / "data" / "train.jsonl" if rundir is not None else None
    if mix is None or not rundir.is_done("instruct") or not mix.is_file():
        raise FileNotFoundError(
            f"no instruction data: run the instruct stage first ({mix}), or set sft.data to instruction files"
        )
    return [str(mix)], "instruct stage"


def read_data(cfg: Config, specs: list[str]) -> tuple[list, list]:
    """Examples of every instruction file and the records that gave none."""
    from vikhr.corpus.readers import resolve_spec
    from vikhr.instruct.formats import read_examples

    examples, rejected = [], []
    for spec in specs:
        ex, rej = read_examples(resolve_spec(spec, resolve_path(cfg, ".")))
        examples += ex
        rejected += rej
    return examples, rejected


def split_examples(examples: list, share: float, seed: int) -> tuple[list, list]:
    """Deterministic train / held-out split by example id (`packing.split_documents`); repeats of one example
    (weights) stay on one side."""
    from vikhr.train.packing import split_documents

    ids = list(dict.fromkeys(e.id for e in examples))
    _, held = split_documents(ids, share, seed) if len(ids) > 1 else (ids, [])
    held_set = set(held)
    return [e for e in examples if e.id not in held_set], [e for e in examples if e.id in held_set]


def packed_rows(encoded: list, seq_len: int, pad_id: int, last: str = "drop"):
    """Conversations (ids + loss mask) packed into rows; none split across rows."""
    from vikhr.train.packing import PackStats, pack

    stats = PackStats()
    rows = list(pack((e.input_ids for e in encoded), seq_len, bos_id=None, eos_id=None, split_long=False,
                     last=last, pad_id=pad_id, stats=stats, loss_masks=(e.loss_mask for e in encoded)))  # fmt: skip
    return rows, stats


def resume_key(cfg: Config, model_dir: str, specs: list[str]) -> dict:
    s = cfg.sft
    return {
        "code": {"vikhr": vikhr.__version__, "stage": VERSION, "packages": package_versions()},
        "settings": {k: v for k, v in to_dict(s).items() if k not in COSMETIC},
        "model": path_fingerprint(Path(model_dir)),
        "data": spec_fingerprints(cfg, specs),
        "world_size": world_size(),
    }


def _with_lora(model, s):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                     target_modules=list(s.lora_targets), task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, cfg)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %d of %d parameters trainable (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def run(cfg: Config, rundir: RunDir) -> StageRecord:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vikhr.instruct.masks import check_chat_template, encode_all, end_of_turn
    from vikhr.stages.pretrain import check_vocab
    from vikhr.train.report import write_outputs
    from vikhr.train.trainer import KLTrainer

    s = cfg.sft
    record = StageRecord(name=NAME, started=time.time())
    timings: dict[str, float] = {}
    model_dir, origin = tuned_model(cfg, rundir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    template = check_chat_template(tok, chat_template(cfg), where=f"{model_dir} (sft.model)")
    eot = end_of_turn(tok, template)

    t0 = time.perf_counter()
    specs, source = data_specs(cfg, rundir)
    examples, rejected = read_data(cfg, specs)
    train_ex, eval_ex = split_examples(examples, s.eval_share, s.seed)
    bad_train: list[tuple[int, str]] = []
    bad_eval: list[tuple[int, str]] = []
    enc_train, mask_train = encode_all(tok, [e.messages for e in train_ex], template, s.seq_len, bad_train)
    enc_eval, mask_eval = encode_all(tok, [e.messages for e in eval_ex], template, s.seq_len, bad_eval)
    away = [(train_ex[i], "template_error", msg) for i, msg in bad_train]
    away += [(eval_ex[i], "template_error", msg) for i, msg in bad_eval]
    away += [(e, "truncated_away", f"no answer token left within seq_len={s.seq_len}")
             for e, x in zip(train_ex + eval_ex, enc_train + enc_eval, strict=True)
             if x is not None and x.answer_tokens == 0]  # fmt: skip
    enc_train = [x for x in enc_train if x is not None]
    enc_eval = [x for x in enc_eval if x is not None]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids(eot)
    train_rows, pack_stats = packed_rows([x for x in enc_train if x.answer_tokens], s.seq_len, pad_id, "pad")
    eval_rows, _ = packed_rows([x for x in enc_eval if x.answer_tokens], s.seq_len, pad_id, "pad")
    if s.eval_max_rows:
        del eval_rows[s.eval_max_rows :]
    if not train_rows:
        raise ValueError(f"sft: no trainable example in {source} ({len(examples)} examples, {len(away)} truncated "
                         f"away at seq_len={s.seq_len} or not renderable, {len(rejected)} records rejected)")  # fmt: skip
    timings["data_s"] = time.perf_counter() - t0

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation=s.attn_implementation)  # fmt: skip
    check_vocab(model, tok, Path(model_dir))
    if s.lora:
        model = _with_lora(model, s)
    world = world_size()
    steps = plan_steps(s, len(train_rows), world)
    work = rundir.work_dir(NAME)
    last = resume_point(work, resume_key(cfg, model_dir, specs), s.resume and NAME not in rundir.forced)
    from vikhr.train.packing import PackingCollator

    trainer = KLTrainer(model=model, args=train_arguments(s, work, steps), train_dataset=train_rows,
                        eval_dataset={"held_out": eval_rows} if eval_rows else None,
                        data_collator=PackingCollator(), reference="none", kl_weight=0.0)  # fmt: skip
    if not eval_rows:
        trainer.args.eval_strategy = "no"
    t0 = time.perf_counter()
    before = trainer.evaluate()["eval_held_out_ce"] if eval_rows else None
    result, final = train_and_save(trainer, work, last)
    after = trainer.evaluate()["eval_held_out_ce"] if eval_rows else None
    timings["train_s"] = time.perf_counter() - t0
    if not is_main_process():
        record.metrics = {"rank": rank()}
        return record
    if s.lora:  # a plain model folder, adapters merged in
        import shutil

        shutil.rmtree(final)
        trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(final)

    data = {"source": source, "model": model_dir, "model_origin": origin, "examples": len(examples),
            "rejected_records": len(rejected), "train_examples": len(train_ex), "eval_examples": len(eval_ex),
            "truncated_away": sum(r == "truncated_away" for _, r, _ in away),
            "template_errors": sum(r == "template_error" for _, r, _ in away), "masks": {"train": mask_train.as_dict(), "held_out": mask_eval.as_dict()},
            "packing": pack_stats.as_dict(), "rows": len(train_rows), "eval_rows": len(eval_rows),
            "steps": steps, "world_size": world, "resumed_from": last, "end_of_turn": eot}  # fmt: skip
    report = {"data": data, "settings": to_dict(s), "train": result.metrics,
              "held_out_answer_loss": {"before": before, "after": after}}  # fmt: skip
    with rundir.staging(NAME) as out:
        write_outputs(
            out, final, Path(model_dir), report, trainer.state.log_history, name=NAME, render=markdown
        )
        finish_chat_model(out / "model", template, eot)
        t0 = time.perf_counter()
        report["answers"] = answer_check(cfg, {"before": model_dir, "after": str(out / "model")}, out)
        timings["answers_s"] = time.perf_counter() - t0
        report["timings"] = {k: round(v, 1) for k, v in timings.items()}
        (out / "sft_report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        (out / "sft_report.md").write_text(markdown(report), encoding="utf-8")
        with (out / "dropped.jsonl").open("w", encoding="utf-8") as f:
            for r in rejected:
                f.write(json.dumps(r.as_dict() | {"stage": "read"}, ensure_ascii=False) + "\n")
            for e, reason, detail in away:
                f.write(json.dumps({"source": e.source, "id": e.id, "where": e.where, "reason": reason,
                                    "detail": detail, "messages": e.messages}, ensure_ascii=False) + "\n")  # fmt: skip
    record.metrics = {"steps": trainer.state.global_step, "train_loss": round(result.training_loss, 4),
                      "held_out_answer_loss": report["held_out_answer_loss"],
                      "truncated_away": data["truncated_away"], "template_errors": data["template_errors"],
                      "answers": {k: {m: v[m] for m in ("stop_share", "latin_share")}
                                  for k, v in report["answers"].items()}, "timings": report["timings"]}  # fmt: skip
    record.outputs = {"model": "sft/model", "report": "sft/sft_report.md"}
    return record


def finish_chat_model(folder: Path, template: str, eot: str) -> None:
    """The output's tokenizer carries the plain template (no `{% generation %}` markers) and its generation config
    stops at the end-of-turn token as well as at eos."""
    from transformers import AutoTokenizer, GenerationConfig

    from vikhr.instruct.masks import strip_generation_markers

    tok = AutoTokenizer.from_pretrained(folder)
    plain = strip_generation_markers(template)
    if tok.chat_template != plain:
        tok.chat_template = plain
        tok.save_pretrained(folder)
    try:
        gen = GenerationConfig.from_pretrained(folder)
    except OSError:
        gen = GenerationConfig()
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    ids = [
        i for i in dict.fromkeys([*eos, tok.eos_token_id, tok.convert_tokens_to_ids(eot)]) if i is not None
    ]
    gen.eos_token_id = ids if len(ids) > 1 else ids[0]
    gen.save_pretrained(folder)


def answer_check(cfg: Config, models: dict[str, str], out: Path) -> dict:
    """Each model answers the Russian prompts (greedy, through the serving engine): the share of answers that end
    by themselves (end-of-turn before `max_new_tokens`), language purity and length; answers.md side by side."""
    s = cfg.sft
    prompts = prompt_lines(cfg, s.prompts, s.max_prompts, "sft.prompts")
    if not prompts:
        return {}
    from vikhr.eval.sbs import side_by_side, write_side_by_side

    result = side_by_side(
        models, prompts, max_new_tokens=s.max_new_tokens, language=cfg.language, seed=s.seed
    )
    write_side_by_side(result, out / "answers")
    summary = {}
    for name, m in result["models"].items():
        answers = m["answers"]
        summary[name] = {
            "stop_share": sum(a["finish_reason"] == "stop" for a in answers) / len(answers),
            "latin_share": m["purity"].get("latin_share"), "mixed_share": m["purity"].get("mixed_share"),
            "mean_chars": m["mean_chars"], "prompts": len(answers),
        }  # fmt: skip
    return summary


def markdown(report: dict) -> str:
    d, s = report["data"], report["settings"]
    loss = report["held_out_answer_loss"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "—"  # noqa: E731
    lines = [
        "# Instruction tuning (SFT)", "",
        f"Model: {d['model']} ({d['model_origin']}); data: {d['train_examples']} training and {d['eval_examples']} "
        f"held-out examples from {d['source']} ({d['rejected_records']} records rejected, {d['truncated_away']} "
        f"truncated away at seq_len {s['seq_len']}, {d.get('template_errors', 0)} the template cannot render); {d['rows']} packed rows, {d['steps']} optimizer steps on "
        f"{d['world_size']} process(es); {'LoRA r=' + str(s['lora_r']) if s['lora'] else 'all weights'}.", "",
        f"Loss only on assistant replies and their end-of-turn token (`{d['end_of_turn']}`): "
        f"{d['masks']['train']['answer_tokens']:,} of "
        f"{d['masks']['train']['answer_tokens'] + d['masks']['train']['prompt_tokens']:,} training tokens.", "",
        f"Held-out assistant-token loss (nats/token): before {fmt(loss['before'])}, after {fmt(loss['after'])}.", "",
    ]  # fmt: skip
    answers = report.get("answers") or {}
    if answers:
        lines += ["Answers to Russian prompts (greedy):", "",
                  "| model | prompts | stop by themselves | Latin words | mixed-script words | mean chars |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, a in answers.items():
            lines.append(f"| {name} | {a['prompts']} | {a['stop_share']:.0%} | {fmt(a['latin_share'])} | "
                         f"{fmt(a['mixed_share'])} | {a['mean_chars']:.0f} |")  # fmt: skip
        lines += ["", "Side by side: answers/sbs.md."]
    lines += ["", f"lr {s['lr']}, batch {s['batch_size']} × accumulation {s['grad_accum']}, {s['epochs']} epochs, "
              f"betas {s['adam_beta1']}/{s['adam_beta2']}, warm-up {s['warmup_steps']}.", ""]  # fmt: skip
    if report.get("timings"):
        lines += [f"Timings (s): {json.dumps(report['timings'])}", ""]
    return "\n".join(lines)


def inputs(cfg: Config) -> dict:
    out: dict = {"data": spec_fingerprints(cfg, list(cfg.sft.data))}
    spec = cfg.source_model if cfg.sft.model == "source" else cfg.sft.model
    if spec:  # empty: this run's pre-trained model, covered by the upstream fingerprint
        local = resolve_path(cfg, spec)
        out["model"] = path_fingerprint(local) if local.is_dir() else spec
    if cfg.sft.chat_template:
        out["chat_template"] = chat_template(cfg)
    return out


def config_section(cfg: Config) -> dict:
    return {"sft": {k: v for k, v in to_dict(cfg.sft).items() if k not in ("launcher", "num_processes")}}
