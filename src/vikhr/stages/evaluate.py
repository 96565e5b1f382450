"""Stage `evaluate`: the run's models — source, transplanted, pre-trained — evaluated the same way, in one report.

Tasks are lm-eval task YAML (`evaluate.tasks`), text is the held-out text of the run (bits per character / byte),
prompts are answered by every model (side by side, language purity), speed is forced decoding on Russian text. The
report (JSON, Markdown, PNG) and per-item samples go to `<run_dir>/evaluate/`; the headline numbers go to the
manifest.
"""

from __future__ import annotations

import time
from pathlib import Path

from vikhr.config import Config, resolve_path, to_dict
from vikhr.log import get_logger
from vikhr.manifest import StageRecord, path_fingerprint
from vikhr.rundir import RunDir
from vikhr.stages.common import held_out_texts, prompt_lines, source_model_fingerprint, source_model_path

log = get_logger(__name__)

NAME = "evaluate"
VERSION = 1
DEPENDS: tuple[str, ...] = ("transplant", "pretrain", "sft")
"""Stages whose models this one can evaluate (`depends(cfg)`: those `evaluate.models` names)."""


def depends(cfg: Config) -> tuple[str, ...]:
    return tuple(m for m in cfg.evaluate.models if m != "source")


def run_models(cfg: Config, rundir: RunDir) -> dict[str, str]:
    """{name: model folder} of the models `evaluate.models` names, in pipeline order."""
    paths = {}
    for name in cfg.evaluate.models:
        if name == "source":
            paths[name] = source_model_path(cfg)
            continue
        folder = rundir.stage_dir(name) / "model"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"evaluate.models names {name!r} but there is no model at {folder}: run that stage first, or drop "
                "it from evaluate.models"
            )
        paths[name] = str(folder)
    return paths


def settings(cfg: Config):
    from vikhr.eval.harness import EvalSettings

    e = cfg.evaluate
    files = e.text or cfg.transplant.eval_texts
    text = held_out_texts(cfg, files, "evaluate.text" if e.text else "transplant.eval_texts", e.text_lines)
    return EvalSettings(
        tasks=[str(_task_spec(cfg, t)) for t in e.tasks], limit=e.limit, batch_size=e.batch_size, dtype=e.dtype,
        max_length=e.max_length, text=text, prompts=prompt_lines(cfg, e.prompts, e.max_prompts, "evaluate.prompts"), max_new_tokens=e.max_new_tokens, seed=e.seed,
        language=cfg.language, speed=e.speed,
    )  # fmt: skip


def _task_spec(cfg: Config, spec: str) -> str | Path:
    """A YAML path is taken from the config's folder; anything else is a shipped task name."""
    if spec.endswith((".yaml", ".yml")):
        return resolve_path(cfg, spec)
    return spec


def headline(report: dict) -> dict:
    """Per model: the first metric of each task, bits per char per language, purity and speed."""
    out = {}
    for name, m in report["models"].items():
        row = {}
        for task, r in m.get("tasks", {}).items():
            metric, value = next(iter(r.get("metrics", {}).items()), (None, None))
            if value and value.get("value") is not None:
                row[f"{task}/{metric}"] = round(value["value"], 4)
        for lang, t in m.get("text", {}).items():
            row[f"bpc/{lang}"] = round(t["bits_per_char"], 4)
        purity = (m.get("generation") or {}).get("purity") or {}
        if purity.get("latin_share") is not None:
            row["latin_share"] = round(purity["latin_share"], 4)
        if (m.get("speed") or {}).get("chars_per_s") is not None:
            row["chars_per_s"] = round(m["speed"]["chars_per_s"], 1)
        out[name] = row
    return out


def run(cfg: Config, rundir: RunDir) -> StageRecord:
    from vikhr.eval.harness import run_evaluation

    record = StageRecord(name=NAME, started=time.time())
    models = run_models(cfg, rundir)
    s = settings(cfg)
    with rundir.staging(NAME) as out:
        report = run_evaluation(models, s, out)
    record.metrics = headline(report)
    record.outputs = {
        "report": f"{NAME}/report.md",
        "json": f"{NAME}/report.json",
        "samples": f"{NAME}/samples",
    }
    return record


def inputs(cfg: Config) -> dict:
    from vikhr.eval.tasks import load_task, task_files

    out: dict = {"source_model": source_model_fingerprint(cfg) if "source" in cfg.evaluate.models else ""}
    for spec in cfg.evaluate.tasks:
        task = load_task(_task_spec(cfg, spec))
        out[f"task:{spec}"] = {str(p): path_fingerprint(p) for p in task_files(task)}
    for lang, p in (cfg.evaluate.text or cfg.transplant.eval_texts).items():
        out[f"text:{lang}"] = path_fingerprint(resolve_path(cfg, p))
    if cfg.evaluate.prompts and cfg.evaluate.prompts != "bundled":
        out["prompts"] = path_fingerprint(resolve_path(cfg, cfg.evaluate.prompts))
    return out


def config_section(cfg: Config) -> dict:
    return {
        "evaluate": to_dict(cfg.evaluate), "source_model": cfg.source_model, "language": cfg.language,
        "eval_texts": cfg.transplant.eval_texts, "eval_lines": cfg.transplant.eval_lines,
    }  # fmt: skip
