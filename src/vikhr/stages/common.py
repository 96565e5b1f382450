"""What every stage repeats, in one place: the source model, the target text, held-out text, input fingerprints.

- `source_model_path(cfg)`: the source model as a local folder (a relative folder is taken from the config file's
  folder; an alias or hub id goes through `vikhr.models.resolve_model`).
- `target_specs(cfg, rundir)`: the target-language text every later stage reads — the corpus stage's filtered
  shards when that stage has finished in this run directory, else `data.target` (the raw sources).
- `spec_fingerprints` / `source_model_fingerprint`: what goes into a stage's `inputs(cfg)`.
- `plan_steps` / `train_arguments`: a training section (`TrainConfig`: pretrain, sft) as optimizer steps and
  `TrainingArguments`.
- `prompt_lines`: the prompts a stage has models answer (bundled, a file, or none).
"""

from __future__ import annotations

import math
from pathlib import Path

from vikhr.config import Config, TrainConfig, resolve_path
from vikhr.manifest import path_fingerprint
from vikhr.rundir import RunDir


def source_model_path(cfg: Config, spec: str | None = None) -> str:
    """`source_model` (or `spec`) as something `from_pretrained` opens: a local folder, or a resolved alias/hub id."""
    from vikhr.models import resolve_model

    spec = spec if spec is not None else cfg.source_model
    if not spec:
        raise ValueError(
            "source_model is not set (a model folder, the alias smollm2-135m-instruct, or a hub id)"
        )
    local = resolve_path(cfg, spec)  # a relative folder is taken from the config file's folder
    return str(resolve_model(str(local) if local.is_dir() else spec))


def source_model_fingerprint(cfg: Config) -> dict | str:
    """Content fingerprint of a local source model folder; the name itself for an alias or hub id."""
    if not cfg.source_model:
        return ""
    local = resolve_path(cfg, cfg.source_model)
    return path_fingerprint(local) if local.is_dir() else cfg.source_model


def corpus_output(rundir: RunDir | None) -> Path | None:
    """The corpus stage's kept text (parquet shards) when that stage has finished in this run directory."""
    if rundir is None or not rundir.is_done("corpus"):
        return None
    data = rundir.stage_dir("corpus") / "data"
    return data if any(data.glob("*.parquet")) else None


def target_specs(cfg: Config, rundir: RunDir | None) -> tuple[list[str], str, str]:
    """(input specs, where they come from, text field) of the target-language text: the corpus stage's output when
    it exists, else `data.target`."""
    corpus = corpus_output(rundir)
    if corpus is not None:
        return [str(corpus)], "corpus stage", "text"
    return list(cfg.data.target), "data.target", cfg.data.text_field


def spec_fingerprints(cfg: Config, specs: list[str]) -> dict[str, dict]:
    """Content fingerprint of each input spec (file, folder, `bundled:` name), keyed by the spec."""
    from vikhr.corpus.readers import resolve_spec

    base = resolve_path(cfg, ".")
    return {str(s): path_fingerprint(resolve_spec(s, base)) for s in specs}


def held_out_texts(cfg: Config, files: dict[str, str], key: str, max_lines: int = 0) -> dict[str, list[str]]:
    """Evaluation lines per language: the files given under `key` (`{ru: path, ...}`), else FLORES devtest from the
    shared data folder, else the bundled held-out text; the first `max_lines` of each (0: all)."""
    from vikhr.tokenizer.report import default_texts

    if files:
        texts = {}
        for lang, p in files.items():
            path = resolve_path(cfg, p)
            if not path.is_file():
                raise FileNotFoundError(f"{key}.{lang}: file not found: {path}")
            texts[lang] = [x for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]
    else:
        texts = default_texts()
    return {k: v[:max_lines] for k, v in texts.items()} if max_lines > 0 else texts


def plan_steps(p: TrainConfig, rows: int, world: int) -> int:
    """Optimizer steps a training section will take over `rows` packed rows on `world` processes."""
    if p.max_steps:
        return p.max_steps
    per_epoch = max(math.ceil(rows / (p.batch_size * world)) // p.grad_accum, 1)
    return max(math.ceil(per_epoch * p.epochs), 1)


def train_arguments(p: TrainConfig, work: Path, steps: int):
    """A training section's settings as `TrainingArguments` (through `vikhr.train.run`)."""
    from vikhr.train.run import training_arguments

    return training_arguments(
        work, batch_size=p.batch_size, lr=p.lr, grad_accum=p.grad_accum, epochs=p.epochs, max_steps=p.max_steps,
        planned_steps=steps, lr_scheduler=p.lr_scheduler, warmup_steps=p.warmup_steps,
        weight_decay=p.weight_decay, adam_betas=(p.adam_beta1, p.adam_beta2), adam_eps=p.adam_eps,
        max_grad_norm=p.max_grad_norm, bf16=p.bf16, gradient_checkpointing=p.gradient_checkpointing,
        logging_steps=p.logging_steps, eval_steps=p.eval_steps, save_steps=p.save_steps,
        save_total_limit=p.save_total_limit, report_to=p.report_to, seed=p.seed,
    )  # fmt: skip


def prompt_lines(cfg: Config, spec: str, max_prompts: int, key: str) -> list[str]:
    """Prompts for models to answer: `bundled` (the shipped Russian everyday questions), a file with one per line
    (`key` names the setting in errors), or none for an empty spec; the first `max_prompts` (0: all)."""
    if not spec:
        return []
    from vikhr.eval.sbs import bundled_prompts, read_prompts

    if spec == "bundled":
        lines = bundled_prompts()
    else:
        path = resolve_path(cfg, spec)
        if not path.is_file():
            raise FileNotFoundError(f"{key}: file not found: {path}")
        lines = read_prompts(path)
    return lines[:max_prompts] if max_prompts else lines
