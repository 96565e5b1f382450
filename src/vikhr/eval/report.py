"""The evaluation report: every model × every task in one JSON, one Markdown page and one PNG chart.

Accuracy is shown with its Wilson 95 % interval and the chance level of the task (the mean of 1 / choices), so a
small model's near-chance numbers read as what they are.
"""

from __future__ import annotations

from pathlib import Path

from vikhr.manifest import write_json_atomic


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _acc_cell(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "–"
    if "ci95" not in m:
        return _fmt(m["value"], 2)
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _task_names(report: dict) -> list[str]:
    names: list[str] = []
    for m in report["models"].values():
        for t in m.get("tasks", {}):
            if t not in names:
                names.append(t)
    return names


def markdown(report: dict) -> str:
    models = list(report["models"])
    head = "| " + " | ".join(models) + " |"
    sep = "|" + "---|" * len(models)
    lines = [
        "# Evaluation",
        "",
        f"{len(models)} models, dtype {report.get('dtype')}, device {report.get('device')}. Accuracy with its Wilson "
        "95 % interval; *chance* is the mean of 1 / number of choices, *majority* the score of always answering the "
        "most frequent gold label.",
        "",
    ]
    tasks = _task_names(report)
    if tasks:
        lines += [
            "## Tasks",
            "",
            "| task | metric | items | chance | majority " + head,
            "|---|---|---|---|---" + sep,
        ]
        for t in tasks:
            first = next(m["tasks"][t] for m in report["models"].values() if t in m.get("tasks", {}))
            metric_names: list[str] = []
            for m in report["models"].values():
                for k in m.get("tasks", {}).get(t, {}).get("metrics", {}):
                    if k not in metric_names:
                        metric_names.append(k)
            for metric in metric_names:
                cells = [_acc_cell(m.get("tasks", {}).get(t, {}).get("metrics", {}).get(metric)) for m in
                         report["models"].values()]  # fmt: skip
                lines.append(
                    f"| {t} | {metric} | {first.get('items', 0)} | {_fmt(first.get('chance'))} | "
                    f"{_fmt(first.get('majority'))} | "
                    + " | ".join(cells) + " |"
                )  # fmt: skip
        notes = []
        for name, m in report["models"].items():
            for t, r in m.get("tasks", {}).items():
                if r.get("skipped"):
                    notes.append(f"- {name} / {t}: {r['skipped']} items skipped ({r.get('skip_reasons')})")
                if r.get("truncated"):
                    notes.append(
                        f"- {name} / {t}: {r['truncated']} items truncated from the left to fit the context"
                    )
        if notes:
            lines += ["", *notes]
        lines.append("")
    langs: list[str] = []
    for m in report["models"].values():
        langs += [lang for lang in m.get("text", {}) if lang not in langs]
    if langs:
        lines += ["## Text", "", "| language | measure " + head, "|---|---" + sep]
        for lang in langs:
            for key in ("bits_per_char", "bits_per_byte", "perplexity", "tokens_per_char"):
                cells = [_fmt(m.get("text", {}).get(lang, {}).get(key)) for m in report["models"].values()]
                lines.append(f"| {lang} | {key} | " + " | ".join(cells) + " |")
        lines += ["", "Perplexity is per token: compare it only between models with the same tokenizer.", ""]
    rows = []
    for key, label, getter in (
        ("latin_share", "Latin words (share)", lambda m: (m.get("generation") or {}).get("purity", {})),
        (
            "mixed_share",
            "mixed-script words (share)",
            lambda m: (m.get("generation") or {}).get("purity", {}),
        ),
        ("mean_chars", "answer length (chars)", lambda m: m.get("generation") or {}),
        ("chars_per_s", "answer chars/s (batched)", lambda m: m.get("generation") or {}),
        ("chars_per_s", "forced decoding chars/s", lambda m: m.get("speed") or {}),
        ("tokens_per_s", "forced decoding tokens/s", lambda m: m.get("speed") or {}),
    ):
        values = [getter(m).get(key) for m in report["models"].values()]
        if any(v is not None for v in values):
            rows.append(f"| {label} | " + " | ".join(_fmt(v) for v in values) + " |")
    if rows:
        lines += ["## Generation", "", "| measure " + head, "|---" + sep, *rows, ""]
    if report.get("side_by_side"):
        lines += [f"Side-by-side answers: {report['side_by_side'].get('markdown', '')}", ""]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    """Grouped bars: the first metric of every task per model (with 95 % intervals and chance), and bits per char."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    tasks = _task_names(report)
    langs = sorted({lang for m in report["models"].values() for lang in m.get("text", {})})
    panels = [p for p in (("tasks", tasks), ("text", langs)) if p[1]]
    if not panels or not models:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    width = 0.8 / len(models)
    for ax, (kind, names) in zip(axes[0], panels, strict=True):
        for i, name in enumerate(models):
            m = report["models"][name]
            xs, ys, lo, hi = [], [], [], []
            for j, key in enumerate(names):
                if kind == "tasks":
                    metrics = m.get("tasks", {}).get(key, {}).get("metrics", {})
                    first = next(iter(metrics.values()), None) if metrics else None
                    if not first or first.get("value") is None:
                        continue
                    v = first["value"]
                    ci = first.get("ci95", [v, v])
                    lo.append(max(0.0, v - ci[0]))  # float rounding at p = 0 or 1
                    hi.append(max(0.0, ci[1] - v))
                else:
                    v = m.get("text", {}).get(key, {}).get("bits_per_char")
                    if v is None:
                        continue
                    lo.append(0)
                    hi.append(0)
                xs.append(j + (i - (len(models) - 1) / 2) * width)
                ys.append(v)
            ax.bar(xs, ys, width, yerr=[lo, hi] if kind == "tasks" else None, capsize=3, label=name)
        if kind == "tasks":
            for j, key in enumerate(names):
                chance = next(
                    (
                        m["tasks"][key].get("chance")
                        for m in report["models"].values()
                        if key in m.get("tasks", {})
                    ),
                    None,
                )
                if chance is not None:
                    ax.hlines(chance, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1)
            ax.set_ylabel("accuracy (first metric), 95 % CI; dashed: chance")
            ax.set_ylim(0, 1)
        else:
            ax.set_ylabel("bits per character (lower is better)")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """report.json, report.md and report.png (when there is something to plot) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    write_json_atomic(files["json"], report)
    files["markdown"].write_text(markdown(report), encoding="utf-8")
    png = plot(report, out_dir / "report.png")
    if png is not None:
        files["png"] = png
    return files
