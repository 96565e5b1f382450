"""The run report: read what every stage left in a run directory, draw the plots, write Markdown and a summary.

`collect(cfg, rundir)` reads the manifest and each finished stage's report files into one dict (a stage that did
not run, was left out by the config, or is not configured gets its status and nothing else; an unreadable file is
noted, not fatal: a report about a broken run is still a report). `write_plots` draws the figures from that dict,
`markdown` writes the page that references them (`plots/<name>.png`), `summary` keeps the key numbers for machines
(`summary.json`). `vikhr.report.html` turns the page into one self-contained HTML file.

The training curves are re-drawn from each stage's `log_history.json` (`vikhr.train.report.loss_plot`), so a run made
before the plot fix still gets readable curves; the tokenizer chart is re-drawn from `report.json` with tokenizers
that measure identically (the same tokenizer under two names) shown once.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vikhr.config import Config
from vikhr.log import get_logger
from vikhr.rundir import RunDir

log = get_logger(__name__)

PIPELINE = ("corpus", "tokenizer", "transplant", "pretrain", "reward", "instruct", "sft", "evaluate")
"""The stages the report reads, in pipeline order."""
MODEL_STAGES = ("sft", "pretrain", "transplant")
"""Stages that leave a model (`<stage>/model`), the last in the pipeline first: the final model is the first found."""
MODEL_LABELS = {
    "source": "source model",
    "transplant": "transplanted",
    "pretrain": "pre-trained",
    "sft": "tuned (SFT)",
}
"""How the evaluation's model names read in the report."""
SBS_PROMPTS = 4
"""Prompts of the side-by-side answers shown in the report (all of them are in the evaluate stage's sbs.html)."""
SBS_CHARS = 320
"""Characters of each answer shown in the report."""


# ------------------------------------------------------------------------------------------------ reading


class Reader:
    """Reads a run's files; a missing file is None, an unreadable one is None plus a note naming the file."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def json(self, path: Path) -> Any:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            self.note(f"{path}: unreadable ({e})")
            return None

    def text(self, path: Path) -> str | None:
        if not path.is_file():
            return None
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.note(f"{path}: unreadable ({e})")
            return None

    def note(self, message: str) -> None:
        log.warning("report: %s", message)
        self.problems.append(message)


def stage_status(cfg: Config, rundir: RunDir, name: str) -> dict:
    """A stage's state for the report: done / not configured / left out by the config / not run, its seconds and
    manifest metrics (only for a finished stage: a record without its folder is not a result)."""
    rec = rundir.manifest.get(name) or {}
    if rundir.is_done(name):
        metrics = rec.get("metrics") or {}
        status = "not configured" if metrics.get("configured") is False else "done"
        return {"status": status, "seconds": rec.get("seconds"), "started": rec.get("started"),
                "reused_from": rec.get("reused_from"), "metrics": metrics}  # fmt: skip
    status = "left out by the config" if cfg.stages and name not in cfg.stages else "not run"
    return {"status": status, "seconds": None, "started": None, "reused_from": None, "metrics": {}}


def final_model(rundir: RunDir) -> tuple[str, Path] | None:
    """(stage, model folder) of the run's final model: the last of sft/model, pretrain/model, transplant/model that
    holds a model (config.json)."""
    for stage in MODEL_STAGES:
        folder = rundir.stage_dir(stage) / "model"
        if (folder / "config.json").is_file():
            return stage, folder
    return None


def chat_command(folder: Path | str) -> str:
    """The command that starts a terminal chat with a model folder (`vikhr chat MODEL`, vikhr.serve.commands)."""
    return f"vikhr chat {shlex.quote(str(folder))}"


def collect(cfg: Config, rundir: RunDir) -> dict:
    """Everything the report shows, read from the run directory: per stage its status and its report files."""
    r = Reader()
    d = rundir.stage_dir
    stages = {name: stage_status(cfg, rundir, name) for name in PIPELINE}
    data: dict[str, Any] = {
        "run_dir": str(rundir.path), "language": cfg.language, "source_model": cfg.source_model,
        "generated": time.strftime("%Y-%m-%d %H:%M"), "stages": stages,
    }  # fmt: skip

    def done(name: str) -> bool:
        return stages[name]["status"] == "done"

    if done("corpus"):
        data["corpus"] = {
            "stats": r.json(d("corpus") / "stats.json"),
            "table": r.text(d("corpus") / "table.md"),
        }
    if done("tokenizer"):
        data["tokenizer"] = {"report": r.json(d("tokenizer") / "report" / "report.json"),
                             "stats": r.json(d("tokenizer") / "stats.json"),
                             "png": _existing(d("tokenizer") / "report" / "efficiency.png")}  # fmt: skip
    if done("transplant"):
        data["transplant"] = r.json(d("transplant") / "transplant_report.json")
    for name in ("pretrain", "sft"):
        if done(name):
            data[name] = {"report": r.json(d(name) / f"{name}_report.json"),
                          "log_history": r.json(d(name) / "log_history.json"),
                          "png": _existing(d(name) / "loss.png")}  # fmt: skip
    if done("reward"):
        data["reward"] = r.json(d("reward") / "reward_report.json")
    if done("instruct"):
        data["instruct"] = {
            "stats": r.json(d("instruct") / "stats.json"),
            "md": r.text(d("instruct") / "stats.md"),
        }
    if done("evaluate"):
        ev = r.json(d("evaluate") / "report.json")
        sbs = None
        if ev and (ev.get("side_by_side") or {}).get("json"):
            sbs = r.json(d("evaluate") / ev["side_by_side"]["json"])
        data["evaluate"] = {
            "report": ev,
            "sbs": sbs,
            "sbs_html": (ev or {}).get("side_by_side", {}).get("html"),
        }
    final = final_model(rundir)
    data["final_model"] = {"stage": final[0], "path": str(final[1])} if final else None
    data["chat_command"] = chat_command(final[1]) if final else None
    data["models"] = model_rows(data)
    data["problems"] = r.problems
    return data


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _first_metric(task: dict) -> tuple[str | None, dict | None]:
    """The task's first metric (the evaluate stage's headline) and its value record."""
    metrics = task.get("metrics") or {}
    for name, value in metrics.items():
        if isinstance(value, dict) and value.get("value") is not None:
            return name, value
    return None, None


def model_rows(data: dict) -> dict[str, dict]:
    """Per evaluated model: bits per char per language, task scores (first metric, interval, chance), speed, purity."""
    ev = (data.get("evaluate") or {}).get("report") or {}
    rows: dict[str, dict] = {}
    for name, m in (ev.get("models") or {}).items():
        tasks = {}
        for task, t in (m.get("tasks") or {}).items():
            metric, v = _first_metric(t)
            if v is not None:
                tasks[task] = {"metric": metric, "value": v["value"], "ci95": v.get("ci95"), "n": v.get("n"),
                               "chance": t.get("chance")}  # fmt: skip
        gen = m.get("generation") or {}
        rows[name] = {
            "path": m.get("path"),
            "bpc": {lang: t.get("bits_per_char") for lang, t in (m.get("text") or {}).items()},
            "tasks": tasks,
            "chars_per_s": (m.get("speed") or {}).get("chars_per_s"),
            "tokens_per_s": (m.get("speed") or {}).get("tokens_per_s"),
            "answer_chars_per_s": gen.get("chars_per_s"),
            "latin_share": (gen.get("purity") or {}).get("latin_share"),
            "mean_answer_chars": gen.get("mean_chars"),
        }
    return rows


# ------------------------------------------------------------------------------------------------ summary


def summary(data: dict) -> dict:
    """The key numbers for machines (`summary.json`): per-model bits per char, chars/s and task scores, stage
    seconds and statuses, the final model and the command that chats with it."""
    stages = data["stages"]
    seconds = {n: s["seconds"] for n, s in stages.items() if s["seconds"] is not None}
    tok = ((data.get("tokenizer") or {}).get("stats")) or {}
    models = {
        name: {"path": m["path"], "bits_per_char": m["bpc"], "chars_per_s": m["chars_per_s"],
               "tasks": {t: {k: v[k] for k in ("metric", "value", "ci95", "n")} for t, v in m["tasks"].items()},
               "latin_share": m["latin_share"]}
        for name, m in data["models"].items()
    }  # fmt: skip
    return {
        "run_dir": data["run_dir"], "language": data["language"], "source_model": data["source_model"],
        "stages": {n: s["status"] for n, s in stages.items()}, "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 2), "models": models,
        "tokenizer": {"mode": tok.get("mode"), "vocab_size": tok.get("vocab_size"),
                      "chars_per_token": stages["tokenizer"]["metrics"].get("chars_per_token"),
                      "base_chars_per_token": stages["tokenizer"]["metrics"].get("base_chars_per_token")},
        "final_model": (data.get("final_model") or {}).get("path"),
        "final_stage": (data.get("final_model") or {}).get("stage"),
        "chat_command": data.get("chat_command"), "problems": data.get("problems", []),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ plots


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _label(name: str) -> str:
    return MODEL_LABELS.get(name, name)


def bar_chart(
    path: Path, groups: list[str], series: dict[str, list[float | None]], *, title: str, ylabel: str,
    fmt: str = "{:.2f}", note: str = "",
) -> Path | None:  # fmt: skip
    """Grouped bars with their values written on them: one group per entry of `groups` (models), one colour per
    series (languages); a missing value leaves a gap labelled "n/a". None when there is no value at all."""
    if not groups or not any(v is not None for vals in series.values() for v in vals):
        return None
    fig = _figure(max(6.0, 1.4 * len(groups) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=name, color=f"C{k}")
        ax.bar_label(bars, labels=[fmt.format(v) if v is not None else "n/a" for v in values], fontsize=8,
                     padding=2)  # fmt: skip
    ax.set_xticks(range(len(groups)), groups, rotation=15 if len(groups) > 3 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if len(series) > 1 or note:
        ax.legend(title=note or None, fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def tasks_chart(path: Path, models: dict[str, dict]) -> Path | None:
    """Each task's first metric per model with its 95 % interval, the task's chance level dashed."""
    tasks = list(dict.fromkeys(t for m in models.values() for t in m["tasks"]))
    if not tasks:
        return None
    names = list(models)
    fig = _figure(max(6.0, 1.6 * len(tasks) * max(1, len(names) / 3) + 2), 4.4)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for j, task in enumerate(tasks):
            t = models[name]["tasks"].get(task)
            if t is None:
                continue
            v = t["value"]
            ci = t.get("ci95") or [v, v]
            xs.append(j + (i - (len(names) - 1) / 2) * width)
            ys.append(v)
            lo.append(max(0.0, v - ci[0]))
            hi.append(max(0.0, ci[1] - v))
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=_label(name), color=f"C{i}")
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in ys], fontsize=8, label_type="center", color="white")
    for j, task in enumerate(tasks):
        chance = next((m["tasks"][task].get("chance") for m in models.values() if task in m["tasks"]), None)
        if chance is not None:
            ax.hlines(chance, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1,
                      label="chance" if j == 0 else None)  # fmt: skip
    metrics = sorted({t["metric"] for m in models.values() for t in m["tasks"].values()})
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel(f"{'/'.join(metrics)} with 95 % interval")
    ax.set_ylim(0, 1.05)
    ax.set_title("Task scores per model (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120)
    return path


def stages_chart(path: Path, stages: dict[str, dict]) -> Path | None:
    """Seconds per finished stage as horizontal bars, the total in the title."""
    rows = [(n, s["seconds"]) for n, s in stages.items() if s["seconds"] is not None]
    if not rows:
        return None
    fig = _figure(7.5, 0.45 * len(rows) + 1.4)
    ax = fig.add_subplot()
    names = [n for n, _ in rows][::-1]
    values = [v for _, v in rows][::-1]
    bars = ax.barh(names, values, color="C0")
    ax.bar_label(bars, labels=[_duration(v) for v in values], fontsize=8, padding=3)
    ax.set_xlabel("seconds")
    ax.set_title(f"Time per stage (total {_duration(sum(values))})")
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.savefig(path, dpi=120)
    return path


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def distinct_tokenizers(report: dict) -> tuple[dict, dict[str, str]]:
    """The tokenizer report without rows that measure exactly like an earlier one (same vocabulary size and the
    same token count on every language: the same tokenizer under two names, as a run made before the stage's own
    deduplication may hold), and {left-out name: the name kept}."""
    langs = report.get("languages") or {}
    seen: dict[tuple, str] = {}
    same: dict[str, str] = {}
    for name, size in (report.get("vocab_sizes") or {}).items():
        key = (size, *((lang, rows.get(name, {}).get("tokens")) for lang, rows in sorted(langs.items())))
        if key in seen:
            same[name] = seen[key]
        else:
            seen[key] = name
    if not same:
        return report, {}
    keep = lambda d: {k: v for k, v in d.items() if k not in same}  # noqa: E731
    out = dict(
        report, vocab_sizes=keep(report["vocab_sizes"]), languages={k: keep(v) for k, v in langs.items()}
    )
    return out, same


def write_plots(data: dict, out: Path) -> dict[str, str]:
    """Draw every figure the data allows into `out` (PNG); {figure: file name}. A figure that fails is noted in the
    data's problems and left out, so one bad input does not cost the whole report."""
    from vikhr.train.report import loss_plot

    out.mkdir(parents=True, exist_ok=True)
    models = data["models"]
    target = data["language"]
    names = list(models)
    jobs: dict[str, Callable[[Path], Path | None]] = {}

    tok = data.get("tokenizer") or {}
    if tok.get("report"):

        def tokenizer_plot(path: Path) -> Path:
            from vikhr.tokenizer.report import plot_efficiency

            report, _ = distinct_tokenizers(tok["report"])
            return plot_efficiency(report, path, "Tokenizer efficiency (characters per token)")

        jobs["tokenizer"] = tokenizer_plot
    elif tok.get("png"):
        jobs["tokenizer"] = lambda path: Path(shutil.copyfile(tok["png"], path))
    for stage in ("pretrain", "sft"):
        part = data.get(stage) or {}
        if part.get("log_history"):
            steps = ((part.get("report") or {}).get("settings") or {}).get("logging_steps")
            jobs[f"{stage}_loss"] = lambda path, h=part["log_history"], s=steps, n=stage: loss_plot(
                h, path, title=f"{n}: loss", logging_steps=s
            )
        elif part.get("png"):
            jobs[f"{stage}_loss"] = lambda path, p=part["png"]: Path(shutil.copyfile(p, path))
    langs = list(dict.fromkeys([target, *(lang for m in models.values() for lang in m["bpc"])]))
    jobs["bpc"] = lambda path: bar_chart(
        path, [_label(n) for n in names],
        {lang: [models[n]["bpc"].get(lang) for n in names] for lang in langs if any(lang in m["bpc"] for m in models.values())},
        title="Held-out bits per character (lower is better)", ylabel="bits per character", note="language",
    )  # fmt: skip
    forced = all(m["chars_per_s"] is not None for m in models.values())  # else the answers' speed, for all
    speed = {n: m["chars_per_s"] if forced else m["answer_chars_per_s"] for n, m in models.items()}
    jobs["speed"] = lambda path: bar_chart(
        path, [_label(n) for n in names], {"chars/s": [speed[n] for n in names]},
        title="Generation speed (higher is better)", fmt="{:.0f}",
        ylabel="characters per second" + (" (forced decoding)" if forced else " (answers, batched)"),
    )  # fmt: skip
    jobs["tasks"] = lambda path: tasks_chart(path, models)
    jobs["stages"] = lambda path: stages_chart(path, data["stages"])

    files: dict[str, str] = {}
    for name, job in jobs.items():
        path = out / f"{name}.png"
        try:
            made = job(path)
        except Exception as e:  # a figure is not worth the report: note it, go on
            data.setdefault("problems", []).append(f"plot {name}: {type(e).__name__}: {e}")
            log.warning("report: plot %s failed: %s", name, e)
            continue
        if made is not None and path.is_file():
            files[name] = path.name
    return files


# ------------------------------------------------------------------------------------------------ markdown


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table cell: `–` for missing, thousands separators for integers."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def cell(x: Any) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, newlines as <br>."""
    text = x if isinstance(x, str) else fmt(x)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def table(head: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> list[str]:
    """A Markdown pipe table; columns in `numeric` (default: all but the first) are right-aligned."""
    numeric = set(range(1, len(head))) if numeric is None else numeric
    lines = ["| " + " | ".join(cell(h) for h in head) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(head))) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def _acc(t: dict | None) -> str:
    if not t:
        return "–"
    ci = t.get("ci95")
    return f"{t['value']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{t['value']:.3f}"


def _status_line(name: str, s: dict) -> str:
    status = s["status"]
    if status == "left out by the config":
        return f"*Not run*: the config's `stages` leaves `{name}` out."
    if status == "not configured":
        return "*Not configured*: no `reward.pairs`, so no reward model was trained (the instruct stage did not filter by one)."
    return f"*Not run*: no finished `{name}` stage in this run directory (`vikhr run --to {name}` makes it)."


def _missing(path: str) -> str:
    return f"*No report*: the stage finished but `{path}` is missing or unreadable."


def section_stages(data: dict, plots: dict[str, str]) -> list[str]:
    rows = []
    for name, s in data["stages"].items():
        note = f"reused from {s['reused_from']}" if s.get("reused_from") else ""
        rows.append([name, s["status"], fmt(s["seconds"], 1), note])
    lines = ["## Stages", "", *table(["stage", "status", "seconds", "note"], rows, {2}), ""]
    if "stages" in plots:
        lines += [f"![Time per stage](plots/{plots['stages']})", ""]
    return lines


def section_corpus(data: dict) -> list[str]:
    lines = ["## Corpus", ""]
    s = data["stages"]["corpus"]
    if s["status"] != "done":
        return lines + [_status_line("corpus", s), ""]
    c = data.get("corpus") or {}
    stats = c.get("stats")
    if not stats:
        if c.get("table"):
            return lines + [c["table"].strip(), ""]
        return lines + [_missing("corpus/stats.json"), ""]
    rows = []
    for src, st in (stats.get("sources") or {}).items():
        i, k, dropped = st.get("input", {}), st.get("kept", {}), st.get("dropped", {})
        total = i.get("paragraphs", 0) + i.get("bad_records", 0)
        why = ", ".join(f"{r} {n:,}" for r, n in sorted(dropped.items(), key=lambda x: -x[1]) if n)
        rows.append([src, i.get("documents"), i.get("paragraphs"), k.get("paragraphs"),
                     f"{100 * k.get('paragraphs', 0) / max(total, 1):.1f}", k.get("chars"), k.get("tokens"), why or "–"])  # fmt: skip
    lines += table(["source", "documents", "paragraphs", "kept paragraphs", "kept %", "kept characters",
                    "kept tokens", "dropped (paragraphs)"], rows, {1, 2, 3, 4, 5, 6})  # fmt: skip
    dd = stats.get("dedup") or {}
    lines += [
        "",
        f"Tokens counted with `{stats.get('tokenizer', '?')}`; output unit: {stats.get('output_unit', '?')}.",
    ]
    if dd:
        lines[-1] += (f" Deduplication removed {fmt(dd.get('exact_duplicate'))} exact and {fmt(dd.get('near_duplicate'))} "
                      f"near duplicates (Jaccard ≥ {dd.get('threshold', '?')}).")  # fmt: skip
    return lines + ["", "Full table (the paper's Table 2): `corpus/table.md`.", ""]


def section_tokenizer(data: dict, plots: dict[str, str]) -> list[str]:
    lines = ["## Tokenizer", ""]
    s = data["stages"]["tokenizer"]
    if s["status"] != "done":
        return lines + [_status_line("tokenizer", s), ""]
    t = data.get("tokenizer") or {}
    st, rep = t.get("stats") or {}, t.get("report")
    if st:
        p = st.get("pieces") or {}
        text = st.get("training_text") or {}
        lines += [f"Mode `{st.get('mode')}`: {fmt(st.get('vocab_size'))} tokens"
                  + (f" ({fmt(p.get('new'))} new, {fmt(p.get('shared'))} shared with the base, {fmt(p.get('dropped'))} "
                     "of the base's dropped)" if p.get("new") is not None and "shared" in p else "")
                  + f"; trained on {fmt(text.get('target_chars'))} target-language and {fmt(text.get('extra_chars'))} "
                  "second-language characters.", ""]  # fmt: skip
    if not rep:
        return lines + [_missing("tokenizer/report/report.json"), ""]
    same = {**(rep.get("duplicates") or {}), **distinct_tokenizers(rep)[1]}
    langs = list(rep.get("languages") or {})
    rows = []
    for name, size in (rep.get("vocab_sizes") or {}).items():
        if name in same:
            continue
        rows.append(
            [name, size, *(rep["languages"][lang].get(name, {}).get("chars_per_token") for lang in langs)]
        )
    lines += [
        "Characters per token on held-out text (higher is better: shorter sequences, faster generation):",
        "",
    ]
    lines += table(["tokenizer", "vocab", *(f"{lang} chars/token" for lang in langs)], rows)
    if same:
        lines += ["", "Shown once (the same tokenizer under another name): "
                  + ", ".join(f"{a} = {b}" for a, b in same.items()) + "."]  # fmt: skip
    lines.append("")
    if "tokenizer" in plots:
        lines += [f"![Tokenizer efficiency](plots/{plots['tokenizer']})", ""]
    return lines + [
        "Details and the example sentence split by each tokenizer: `tokenizer/report/report.md`.",
        "",
    ]


def section_transplant(data: dict) -> list[str]:
    lines = ["## Transplant", ""]
    s = data["stages"]["transplant"]
    if s["status"] != "done":
        return lines + [_status_line("transplant", s), ""]
    t = data.get("transplant")
    if not t:
        return lines + [_missing("transplant/transplant_report.json"), ""]
    rows_info = ", ".join(f"{k} {fmt(v)}" for k, v in (t.get("rows") or {}).items())
    lines += [f"Init `{t.get('method')}`: vocabulary of {fmt(t.get('vocab_size'))} tokens (padded to "
              f"{fmt(t.get('padded_vocab_size'))}), LM head {'tied' if t.get('tied') else 'untied'}; rows: {rows_info}.", ""]  # fmt: skip
    base, new = t.get("base") or {}, t.get("transplanted") or {}
    rows = []
    for lang, v in (new.get("bits_per_char") or {}).items():
        rows.append(
            [
                lang,
                (base.get("bits_per_char") or {}).get(lang),
                v,
                (new.get("uniform_bits_per_char") or {}).get(lang),
            ]
        )
    lines += table(["language", "source bits/char", "transplanted bits/char", "uniform bound"], rows)
    dom = t.get("dominance") or {}
    if dom:
        warn = " — **warning: the new rows dominate the output**" if dom.get("warning") else ""
        lines += ["", f"Output mass on new rows {fmt(dom.get('mass_on_new_rows'))} (new tokens are "
                  f"{fmt(dom.get('share_of_new_tokens'))} of the actual tokens){warn}."]  # fmt: skip
    c = t.get("calibration")
    if c:
        lines += ["", f"Calibration: {fmt(c.get('tokens'))} tokens, kept epoch {c.get('best_epoch')}, held-out loss "
                  f"{c.get('heldout_losses')}."]  # fmt: skip
    return lines + ["", "Continuations and embedding norms: `transplant/transplant_report.md`.", ""]


def section_pretrain(data: dict, plots: dict[str, str]) -> list[str]:
    lines = ["## Continued pre-training", ""]
    s = data["stages"]["pretrain"]
    if s["status"] != "done":
        return lines + [_status_line("pretrain", s), ""]
    rep = (data.get("pretrain") or {}).get("report")
    if not rep:
        lines += [_missing("pretrain/pretrain_report.json"), ""]
    else:
        d, st = rep.get("data") or {}, rep.get("settings") or {}
        tokens = (d.get("steps") or 0) * (d.get("tokens_per_step") or 0)
        lines += [f"{fmt(d.get('steps'))} optimizer steps of {fmt(d.get('tokens_per_step'))} tokens ({fmt(tokens)} "
                  f"tokens) on {fmt(d.get('train_documents'))} documents from {d.get('source')}"
                  f" (+{fmt(d.get('replay_documents'))} replay); loss = CE + {st.get('kl_weight')}·KL to "
                  f"`{st.get('reference')}`, lr {st.get('lr')}; mean training loss "
                  f"{fmt((rep.get('train') or {}).get('train_loss'))}.", ""]  # fmt: skip
        bpc, base = rep.get("bits_per_char") or {}, rep.get("base_bits_per_char") or {}
        langs = list(dict.fromkeys(lang for row in bpc.values() for lang in row))
        rows = [["source model", *(base.get(lang) for lang in langs)]] if base else []
        rows += [[name, *(row.get(lang) for lang in langs)] for name, row in bpc.items()]
        lines += ["Held-out bits per character (lower is better):", ""]
        lines += table(["model", *langs], rows) + [""]
    if "pretrain_loss" in plots:
        lines += [f"![Pre-training loss](plots/{plots['pretrain_loss']})", ""]
    return lines


def section_reward(data: dict) -> list[str]:
    lines = ["## Reward model", ""]
    s = data["stages"]["reward"]
    if s["status"] != "done":
        return lines + [_status_line("reward", s), ""]
    m, rep = s["metrics"], data.get("reward") or {}
    held = rep.get("held_out") or {}
    acc = (held.get("reward_model") or {}) or {"value": m.get("accuracy")}
    base = ((held.get("length_baseline") or {}).get("accuracy") or {}) or {"value": m.get("length_baseline")}
    lines += [f"`{rep.get('model', '?')}` on {fmt(m.get('pairs'))} preference pairs ({fmt(m.get('rejected'))} "
              "records rejected).", ""]  # fmt: skip
    rows = [["reward model", _acc(acc) if acc.get("value") is not None else "–"],
            ["longer/shorter reply wins (baseline)", _acc(base) if base.get("value") is not None else "–"]]  # fmt: skip
    return lines + table(["held-out pairwise accuracy", "value [95 % interval]"], rows) + [""]


def section_instruct(data: dict) -> list[str]:
    lines = ["## Instruction data", ""]
    s = data["stages"]["instruct"]
    if s["status"] != "done":
        return lines + [_status_line("instruct", s), ""]
    part = data.get("instruct") or {}
    st = part.get("stats")
    if not st:
        return lines + ([part["md"].strip().replace("# Instruction data", "").strip(), ""] if part.get("md")
                        else [_missing("instruct/stats.json"), ""])  # fmt: skip
    rows = [[r.get("source"), r.get("language"), r.get("in"), r.get("kept"), r.get("dropped"), r.get("mix"),
             r.get("prompt_tokens"), r.get("answer_tokens")] for r in st.get("sources") or []]  # fmt: skip
    lines += table(["source", "language", "in", "kept", "dropped", "in mix", "prompt tokens", "answer tokens"], rows,
                   {2, 3, 4, 5, 6, 7})  # fmt: skip
    dd, rw = st.get("dedup") or {}, st.get("reward") or {}
    lines += ["", f"{fmt(st.get('mix'))} examples in the SFT mix; tokens under the {st.get('tokenizer', 'run')}'s "
              f"tokenizer; deduplication removed {fmt(dd.get('removed', 0))} prompts."]  # fmt: skip
    if rw:
        lines[-1] += f" Reward filter: {rw.get('rule')}, {fmt(rw.get('dropped'))} dropped."
    return lines + ["", "Per-reason drops: `instruct/stats.md`.", ""]


def section_sft(data: dict, plots: dict[str, str]) -> list[str]:
    lines = ["## Instruction tuning (SFT)", ""]
    s = data["stages"]["sft"]
    if s["status"] != "done":
        return lines + [_status_line("sft", s), ""]
    rep = (data.get("sft") or {}).get("report")
    if not rep:
        lines += [_missing("sft/sft_report.json"), ""]
    else:
        d, st = rep.get("data") or {}, rep.get("settings") or {}
        loss = rep.get("held_out_answer_loss") or {}
        how = f"LoRA r={st.get('lora_r')}" if st.get("lora") else "all weights"
        lines += [f"{fmt(d.get('steps'))} optimizer steps ({how}) on {fmt(d.get('train_examples'))} examples from "
                  f"{d.get('source')} ({fmt(d.get('rows'))} packed rows of {st.get('seq_len')} tokens; "
                  f"{fmt(d.get('truncated_away'))} examples truncated away), starting from the {d.get('model_origin')}; "
                  f"lr {st.get('lr')}.", "",
                  f"Held-out assistant-token loss (nats/token): before {fmt(loss.get('before'), 4)}, after "
                  f"{fmt(loss.get('after'), 4)}.", ""]  # fmt: skip
        answers = rep.get("answers") or {}
        if answers:
            rows = [[name, a.get("prompts"), f"{100 * (a.get('stop_share') or 0):.0f}%", a.get("latin_share"),
                     fmt(a.get("mean_chars"), 0)] for name, a in answers.items()]  # fmt: skip
            lines += ["Answers to Russian prompts, greedy (before and after tuning):", ""]
            lines += table(
                ["model", "prompts", "stop by themselves", "Latin words (share)", "mean chars"], rows
            )
            lines += ["", "Side by side: `sft/answers/sbs.md`.", ""]
    if "sft_loss" in plots:
        lines += [f"![SFT loss](plots/{plots['sft_loss']})", ""]
    return lines


def section_evaluate(data: dict, plots: dict[str, str]) -> list[str]:
    lines = ["## Evaluation", ""]
    s = data["stages"]["evaluate"]
    if s["status"] != "done":
        return lines + [_status_line("evaluate", s), ""]
    ev = (data.get("evaluate") or {}).get("report")
    if not ev:
        return lines + [_missing("evaluate/report.json"), ""]
    models = data["models"]
    langs = list(dict.fromkeys(lang for m in models.values() for lang in m["bpc"]))
    tasks = list(dict.fromkeys(t for m in models.values() for t in m["tasks"]))
    st = ev.get("settings") or {}
    limit = f"the first {st['limit']} items of each task" if st.get("limit") else "all items"
    lines += [f"{len(models)} models, dtype {ev.get('dtype')}, device {ev.get('device')}; {limit}. Accuracy with its "
              "Wilson 95 % interval (small item counts give wide intervals); bits per character on held-out text "
              "(lower is better, comparable across tokenizers).", ""]  # fmt: skip
    head = ["model", *(f"{lang} bits/char" for lang in langs)]
    head += [
        f"{t} ({next(m['tasks'][t]['metric'] for m in models.values() if t in m['tasks'])})" for t in tasks
    ]
    extra = [
        (label, key)
        for label, key in (("Latin words", "latin_share"), ("chars/s", "chars_per_s"))
        if any(m[key] is not None for m in models.values())
    ]  # a column nobody measured is left out
    head += [label for label, _ in extra]
    rows = []
    for name, m in models.items():
        rows.append([_label(name), *(m["bpc"].get(lang) for lang in langs), *(_acc(m["tasks"].get(t)) for t in tasks),
                     *(fmt(m[key], 0 if key == "chars_per_s" else 3) for _, key in extra)])  # fmt: skip
    lines += table(head, rows) + [""]
    chance = {
        t: next((m["tasks"][t].get("chance") for m in models.values() if t in m["tasks"]), None)
        for t in tasks
    }
    if any(v is not None for v in chance.values()):
        lines += [
            "Chance level: "
            + ", ".join(f"{t} {fmt(v, 2)}" for t, v in chance.items() if v is not None)
            + ".",
            "",
        ]
    for key, alt in (("bpc", "Bits per character per model"), ("tasks", "Task scores per model")):
        if key in plots:
            lines += [f"![{alt}](plots/{plots[key]})", ""]
    return lines + ["Per-item samples: `evaluate/samples/`; the full table: `evaluate/report.md`.", ""]


def section_sbs(data: dict) -> list[str]:
    lines = ["## Side-by-side answers", ""]
    if data["stages"]["evaluate"]["status"] != "done":
        return lines + [_status_line("evaluate", data["stages"]["evaluate"]), ""]
    ev = data.get("evaluate") or {}
    sbs = ev.get("sbs")
    if not sbs or not sbs.get("prompts"):
        return lines + ["*No answers*: the evaluate stage had no prompts (`evaluate.prompts`).", ""]
    names = list(sbs.get("models") or {})
    prompts = sbs["prompts"][:SBS_PROMPTS]
    rows = []
    for i, prompt in enumerate(prompts):
        row = [prompt]
        for n in names:
            answers = sbs["models"][n].get("answers") or []
            text = answers[i]["text"].strip() if i < len(answers) else ""
            row.append(text[:SBS_CHARS] + ("…" if len(text) > SBS_CHARS else "") or "(empty)")
        rows.append(row)
    lines += [f"The first {len(prompts)} of {len(sbs['prompts'])} prompts, answers cut at {SBS_CHARS} characters; all "
              f"of them, with Latin and mixed-script words highlighted: `evaluate/{ev.get('sbs_html') or 'sbs/sbs.html'}`.", ""]  # fmt: skip
    return lines + table(["prompt", *(_label(n) for n in names)], rows, set()) + [""]


def section_speed(data: dict, plots: dict[str, str]) -> list[str]:
    lines = ["## Generation speed", ""]
    models = data["models"]
    if not models:
        return lines + [_status_line("evaluate", data["stages"]["evaluate"]), ""]
    rows = [
        [_label(n), m["chars_per_s"], m["tokens_per_s"], m["answer_chars_per_s"]] for n, m in models.items()
    ]
    if not any(v is not None for r in rows for v in r[1:]):
        return lines + ["*Not measured*: `evaluate.speed` was off and no prompts were answered.", ""]
    lines += ["Characters per second, forced decoding of Russian text (a tokenizer with more characters per token "
              "generates the same text in fewer steps), and the batched answers' throughput:", ""]  # fmt: skip
    lines += table(["model", "chars/s (forced)", "tokens/s (forced)", "answer chars/s (batched)"],
                   [[r[0], *(fmt(v, 1) if v is not None else "–" for v in r[1:])] for r in rows]) + [""]  # fmt: skip
    if "speed" in plots:
        lines += [f"![Characters per second per model](plots/{plots['speed']})", ""]
    return lines


def section_final(data: dict, card: str | None) -> list[str]:
    lines = ["## Final model", ""]
    final = data.get("final_model")
    if not final:
        return lines + [
            "*No model*: none of sft, pretrain, transplant left a model in this run directory.",
            "",
        ]
    lines += [f"The last model of the run, from the `{final['stage']}` stage:", "", "```", final["path"], "```", "",
              "Chat with it in the terminal:", "", "```", data["chat_command"], "```", ""]  # fmt: skip
    if card:
        lines += [f"Model card: `{card}` (also `report/model_card.md`).", ""]
    return lines


def markdown(data: dict, plots: dict[str, str], card: str | None = None) -> str:
    """The report page. Images are `plots/<file>` relative to the report folder."""
    name = Path(data["run_dir"]).name
    final = data.get("final_model")
    done = [n for n, s in data["stages"].items() if s["status"] == "done"]
    lines = [f"# Run report: {name}", "",
             f"Run directory `{data['run_dir']}`; source model `{data['source_model']}`; target language "
             f"`{data['language']}`; {len(done)} of {len(data['stages'])} stages finished; generated {data['generated']}.", ""]  # fmt: skip
    key = []
    if final:
        key.append(f"Final model (`{final['stage']}`): `{final['path']}`; chat: `{data['chat_command']}`")
    models = data["models"]
    target = data["language"]
    if models:
        first, last = next(iter(models)), list(models)[-1]
        b0, b1 = models[first]["bpc"].get(target), models[last]["bpc"].get(target)
        if b0 is not None and b1 is not None:
            key.append(f"{target} bits per character: {_label(first)} {b0:.3f} → {_label(last)} {b1:.3f}")
        c0, c1 = models[first]["chars_per_s"], models[last]["chars_per_s"]
        if c0 and c1:
            key.append(
                f"generation speed: {_label(first)} {c0:.0f} → {_label(last)} {c1:.0f} chars/s ({c1 / c0:.2f}×)"
            )
    tok = data["stages"]["tokenizer"]["metrics"]
    if tok.get("chars_per_token") and tok.get("base_chars_per_token"):
        a, b = tok["base_chars_per_token"].get(target), tok["chars_per_token"].get(target)
        if a and b:
            key.append(f"{target} characters per token: source {a:.2f} → new vocabulary {b:.2f}")
    if key:
        lines += ["## Summary", "", *(f"- {k}" for k in key), ""]
    lines += section_stages(data, plots)
    lines += section_corpus(data)
    lines += section_tokenizer(data, plots)
    lines += section_transplant(data)
    lines += section_pretrain(data, plots)
    lines += section_reward(data)
    lines += section_instruct(data)
    lines += section_sft(data, plots)
    lines += section_evaluate(data, plots)
    lines += section_sbs(data)
    lines += section_speed(data, plots)
    lines += section_final(data, card)
    if data.get("problems"):
        lines += ["## Problems", "", *(f"- {p}" for p in data["problems"]), ""]
    return "\n".join(lines).rstrip() + "\n"
