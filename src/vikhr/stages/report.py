"""Stage `report`: the run report and the final model's model card, after every other stage.

Reads what the stages left in the run directory (`vikhr.report.run.collect`; a stage that did not run, was left
out by the config or is not configured gets a line saying so) and writes `report/`:
  report.md      the page: stages and their times, corpus, tokenizer, transplant, training curves, reward model,
                 instruction data, SFT, the evaluation table, side-by-side answers, speed, the final model
  report.html    the same page as one self-contained file (plots embedded as data: URIs, no external files)
  plots/*.png    the figures (re-drawn from the stages' JSON and logs, so they are readable at a glance)
  summary.json   the key numbers: per-model bits per char, chars/s and task scores, stage seconds, final model,
                 the `vikhr chat` command
  model_card.md  a copy of the card written as README.md into the final model folder (sft, else pretrain, else
                 transplant: the last that exists)

Every upstream stage is optional here (`SOFT`): the report reads each one only when it finished.
"""

from __future__ import annotations

import time

from vikhr.config import Config
from vikhr.log import get_logger
from vikhr.manifest import StageRecord, write_json_atomic
from vikhr.rundir import RunDir
from vikhr.train.dist import is_main_process

log = get_logger(__name__)

NAME = "report"
VERSION = 1
DEPENDS: tuple[str, ...] = (
    "corpus",
    "tokenizer",
    "transplant",
    "pretrain",
    "reward",
    "instruct",
    "sft",
    "evaluate",
)
"""Stages whose output this one reads: it reruns when one of them does."""
SOFT: tuple[str, ...] = DEPENDS
"""Read only when finished: a run without a reward model (or any other stage) still gets its report."""


def run(cfg: Config, rundir: RunDir) -> StageRecord:
    from vikhr.report.card import card, write_card
    from vikhr.report.html import write_html
    from vikhr.report.run import collect, markdown, summary, write_plots

    record = StageRecord(name=NAME, started=time.time())
    if not is_main_process():
        return record
    data = collect(cfg, rundir)
    final = data.get("final_model")
    card_text = card(cfg, data, rundir.stage_dir(final["stage"]) / "model") if final else None
    card_path = f"{final['stage']}/model/README.md" if final else None
    with rundir.staging(NAME) as out:
        plots = write_plots(data, out / "plots")
        md = markdown(data, plots, card=card_path)
        (out / "report.md").write_text(md, encoding="utf-8")
        write_html(md, out / "report.html", base=out, title=f"Run report: {rundir.path.name}")
        numbers = summary(data) | {
            "model_card": card_path,
            "plots": {k: f"plots/{v}" for k, v in plots.items()},
        }
        write_json_atomic(out / "summary.json", numbers)
        if card_text is not None:
            (out / "model_card.md").write_text(card_text, encoding="utf-8")
    if (
        final and card_text is not None
    ):  # after the report is in place: a failed report leaves the model as it was
        write_card(card_text, rundir.stage_dir(final["stage"]) / "model")
    record.metrics = {
        "stages": numbers["stages"], "final_model": numbers["final_model"], "chat_command": numbers["chat_command"],
        "models": {n: {"bits_per_char": m["bits_per_char"], "chars_per_s": m["chars_per_s"]}
                   for n, m in numbers["models"].items()},
        "problems": len(numbers["problems"]),
    }  # fmt: skip
    record.outputs = {"report": f"{NAME}/report.md", "html": f"{NAME}/report.html",
                      "summary": f"{NAME}/summary.json", **({"model_card": card_path} if card_path else {})}  # fmt: skip
    log.info("report: %s (final model: %s)", rundir.stage_dir(NAME) / "report.html", numbers["final_model"])
    return record


def inputs(cfg: Config) -> dict:
    """Nothing besides the upstream stages' outputs (their fingerprints cover them)."""
    return {}


def config_section(cfg: Config) -> dict:
    """What the report's content depends on besides upstream outputs: the names it prints and the stage list
    (a stage left out by the config reads differently from one not run yet)."""
    return {"language": cfg.language, "source_model": cfg.source_model, "stages": list(cfg.stages)}
