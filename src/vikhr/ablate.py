"""`vikhr ablate -c FILE --grid KEY=V1,V2,...`: one run directory per variant, stages shared across variants.

Each `--grid` is one study: the config with `KEY=V` for every value V. Variants are run one after another with
`pipeline.run(..., reuse=...)`: a stage whose fingerprint equals one already finished — in the config's own run
directory or in an earlier variant — is linked from there, not recomputed (a vocabulary sweep trains one corpus; a
KL on/off study shares corpus, tokenizer and transplant). Every variant is validated before anything runs: a key
that does not exist is an error naming it.

Presets reproduce the paper's studies (Vikhr, Nikolich et al. 2024): `vocab` (Table 7: vocabulary size vs
perplexity and an NLI score), `filter` (Table 8: corpus filtering on/off), `kl` (Table 9: the KL term on/off),
`instruct` (Table 10: instruction sets). Per study: `table.md`, `table.json` and `plot.png` in its folder.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vikhr.config import Config, ConfigError, load_config, resolve_path
from vikhr.log import get_logger, setup_logging
from vikhr.manifest import Manifest, write_json_atomic

log = get_logger(__name__)


@dataclass
class Preset:
    """A paper study: the grid, the stages it needs, settings that go with it, and the table's columns."""

    table: str
    key: str
    values: list[str]
    stages: list[str]
    overrides: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    """Patterns over the flattened manifest metrics (`stage.key.sub`, fnmatch); empty: every metric."""


PRESETS: dict[str, Preset] = {
    "vocab": Preset(
        "Table 7 (vocabulary size)", "tokenizer.vocab_size", ["33000", "40000", "60000", "80000"],
        ["corpus", "tokenizer", "transplant", "pretrain", "evaluate"], ["evaluate.models=[pretrain]"],
        ["tokenizer.chars_per_token.*", "pretrain.bits_per_char.trained.*", "evaluate.pretrain.bpc/*",
         "evaluate.pretrain.rcb/*", "evaluate.pretrain.xnli*", "evaluate.pretrain.lidirus/*"],
    ),
    "filter": Preset(
        "Table 8 (corpus filtering)", "corpus.filtering", ["true", "false"],
        ["corpus", "tokenizer", "transplant", "pretrain", "evaluate"], ["evaluate.models=[pretrain]"],
        ["corpus.kept_*", "corpus.dropped_*", "pretrain.bits_per_char.trained.*", "evaluate.pretrain.*"],
    ),
    "kl": Preset(
        "Table 9 (KL term)", "pretrain.kl_weight", ["0", "1"],
        ["corpus", "tokenizer", "transplant", "pretrain", "evaluate"], ["evaluate.models=[pretrain]"],
        ["pretrain.bits_per_char.trained.*", "pretrain.train_loss", "evaluate.pretrain.*"],
    ),
    "instruct": Preset(
        "Table 10 (instruction sets)", "instruct.use", [],  # values: each source alone, then all of them
        ["corpus", "tokenizer", "transplant", "pretrain", "reward", "instruct", "sft", "evaluate"],
        ["evaluate.models=[sft]"],
        ["instruct.examples", "sft.train_loss", "sft.eval_*", "evaluate.sft.*"],
    ),
}  # fmt: skip


def split_values(spec: str) -> tuple[str, list[str]]:
    """`KEY=V1,V2` -> (KEY, [V1, V2]); commas inside brackets stay (`instruct.use=[a],[a,b]`)."""
    key, sep, rest = spec.partition("=")
    if not sep or not key.strip() or not rest.strip():
        raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,... (e.g. tokenizer.vocab_size=16000,32000)")
    values, depth, cur = [], 0, ""
    for ch in rest:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(cur.strip())
            cur = ""
        else:
            cur += ch
    values.append(cur.strip())
    if any(v == "" for v in values) or len(values) < 2:
        raise ConfigError(f"--grid {spec!r}: give at least two non-empty values")
    return key.strip(), values


def slug(text: str) -> str:
    """A folder name for a key or value."""
    return re.sub(r"[^\w.=+-]+", "_", text).strip("_") or "empty"


@dataclass
class Variant:
    key: str
    value: str
    cfg: Config
    run_dir: Path


@dataclass
class Study:
    name: str
    key: str
    folder: Path
    variants: list[Variant]
    columns: list[str]
    title: str


def build_studies(
    config: str, grids: list[str], presets: list[str], overrides: list[str], out: str | None
) -> tuple[Config, list[Study]]:
    """Every variant's config, loaded and validated before anything runs."""
    base = load_config(config, overrides)
    root = Path(out).resolve() if out else resolve_path(base, base.run_dir.rstrip("/") + "-ablate")
    specs: list[tuple[str, str, list[str], list[str], list[str], str]] = []
    for name in presets:
        if name not in PRESETS:
            raise ConfigError(f"--preset {name!r}: unknown (presets: {', '.join(PRESETS)})")
        p = PRESETS[name]
        values = p.values
        if name == "instruct":
            from vikhr.stages.instruct import instruct_sources

            names = list(instruct_sources(base))
            values = [f"[{n}]" for n in names] + ([f"[{','.join(names)}]"] if len(names) > 1 else [])
            if len(values) < 2:
                raise ConfigError(
                    f"--preset instruct compares instruction sets, but {config} has one ({names[0]}): add "
                    "sources under instruct.sources"
                )
        extra = list(p.overrides)
        if not base.stages:
            extra.append(f"stages=[{','.join(p.stages)}]")
        specs.append((name, p.key, values, extra, p.columns, p.table))
    for g in grids:
        key, values = split_values(g)
        specs.append((slug(key), key, values, [], [], f"{key} sweep"))
    if not specs:
        raise ConfigError("nothing to ablate: give --grid KEY=V1,V2,... or --preset NAME")
    studies = []
    for name, key, values, extra, columns, title in specs:
        folder = root / name
        variants = []
        for v in values:
            run_dir = folder / slug(f"{key}={v}")
            try:
                cfg = load_config(config, [*overrides, *extra, f"{key}={v}", f"run_dir={run_dir}"])
            except ConfigError as e:
                raise ConfigError(f"ablation {key}={v}: {e}") from None
            variants.append(Variant(key, v, cfg, run_dir))
        studies.append(Study(name, key, folder, variants, columns, title))
    return base, studies


def flatten(metrics: Any, prefix: str) -> dict[str, Any]:
    """Nested metrics -> {"stage.key.sub": value} (timings left out)."""
    if isinstance(metrics, dict):
        out: dict[str, Any] = {}
        for k, v in metrics.items():
            if k in ("timings", "rank"):
                continue
            out.update(flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: metrics} if isinstance(metrics, int | float | str | bool) else {}


def variant_metrics(run_dir: Path) -> dict[str, Any]:
    """Every stage's metrics in a variant's manifest, flattened, plus the stage seconds."""
    man = Manifest(run_dir / "manifest.json")
    out: dict[str, Any] = {}
    for name, rec in man.stages.items():
        out.update(flatten(rec.get("metrics", {}), name))
    return out


def pick_columns(rows: list[dict], patterns: list[str]) -> list[str]:
    """The metric names matching the study's patterns (in pattern order), or every metric that varies."""
    names: list[str] = []
    for r in rows:
        names += [k for k in r if k not in names]
    if patterns:
        return [n for p in patterns for n in names if fnmatch.fnmatchcase(n, p)]
    return [n for n in names if len({json.dumps(r.get(n)) for r in rows}) > 1]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def write_table(study: Study, rows: list[dict], shared: list[dict]) -> dict[str, Path]:
    """`table.md`, `table.json` and `plot.png` of one study."""
    cols = pick_columns([r["metrics"] for r in rows], study.columns)
    study.folder.mkdir(parents=True, exist_ok=True)
    head = f"| {study.key} | " + " | ".join(cols) + " | stages computed | run dir |"
    lines = [f"# {study.title}", "", head, "|" + "---|" * (len(cols) + 3)]
    for r in rows:
        cells = [_fmt(r["metrics"].get(c)) for c in cols]
        lines.append(f"| {r['value']} | " + " | ".join(cells) + f" | {', '.join(r['computed']) or '–'} | "
                     f"{r['run_dir']} |")  # fmt: skip
    lines += ["", "Stages shared across variants (computed once, linked into the others):", ""]
    lines += [f"- {s['stage']}: {s['computed_in']} -> {', '.join(s['linked_into'])}" for s in shared] or [
        "- none"
    ]
    md = study.folder / "table.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    js = study.folder / "table.json"
    write_json_atomic(
        js, {"key": study.key, "title": study.title, "columns": cols, "rows": rows, "shared": shared}
    )
    out = {"markdown": md, "json": js}
    png = _plot(study, rows, cols, study.folder / "plot.png")
    if png:
        out["plot"] = png
    return out


def _plot(study: Study, rows: list[dict], cols: list[str], path: Path) -> Path | None:
    numeric = [
        c
        for c in cols
        if all(isinstance(r["metrics"].get(c), int | float) for r in rows)
        and len({r["metrics"][c] for r in rows}) > 1
    ][:8]  # a panel per metric that varies: a constant one says nothing at a glance (it stays in the table)
    if not numeric:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(numeric)
    ncol = min(n, 4)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    xs = list(range(len(rows)))
    labels = [r["value"] for r in rows]
    for ax, c in zip(axes.flat, numeric, strict=False):
        ys = [r["metrics"][c] for r in rows]
        ax.plot(xs, ys, marker="o", linewidth=1.5)
        for x, y in zip(xs, ys, strict=False):
            ax.annotate(
                f"{y:.3g}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=8
            )
        ax.set_xticks(xs, labels, rotation=20 if max(len(str(v)) for v in labels) > 6 else 0, fontsize=8)
        ax.set_title(c, fontsize=9)
        ax.set_xlabel(study.key, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(study.title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def share_plan(base: Config, studies: list[Study]) -> list[tuple[Study, Variant, dict[str, str]]]:
    """For each variant, each of its stages: `run`, or where the same fingerprint is computed first."""
    from vikhr import pipeline

    seen: dict[tuple[str, str], str] = {}
    base_dir = resolve_path(base, base.run_dir)
    out = []
    for study in studies:
        for v in study.variants:
            fps = pipeline.fingerprints(v.cfg)
            where = {}
            for name in pipeline.configured_stages(v.cfg):
                fp = fps[name]
                if pipeline.reusable(name, fp, [base_dir]) is not None:
                    where[name] = f"reuse {base_dir}"
                elif (name, fp) in seen:
                    where[name] = f"reuse {seen[(name, fp)]}"
                else:
                    where[name] = "run"
                    seen[(name, fp)] = str(v.run_dir)
            out.append((study, v, where))
    return out


def run_ablation(base: Config, studies: list[Study], dry_run: bool = False) -> list[dict[str, Path]]:
    """Run every variant (sharing stages), then write each study's table and plot."""
    from vikhr import pipeline

    plan = share_plan(base, studies)
    for study, v, where in plan:
        runs = [s for s, w in where.items() if w == "run"]
        log.info("%s %s=%s: computes %s; reuses %s", study.name, v.key, v.value, ", ".join(runs) or "nothing",
                 ", ".join(s for s in where if s not in runs) or "nothing")  # fmt: skip
    if dry_run:
        return []
    reuse: list[Path] = [resolve_path(base, base.run_dir)]
    results = []
    for study in studies:
        rows = []
        for v in study.variants:
            t0 = time.time()
            steps = pipeline.run(v.cfg, reuse=[r for r in reuse if r != v.run_dir])
            reuse.append(v.run_dir)
            rows.append({
                "value": v.value, "run_dir": str(v.run_dir), "seconds": round(time.time() - t0, 1),
                "computed": [p.name for p in steps if p.action == "run" and not p.reason.startswith("reused")],
                "reused": {p.name: p.reason.removeprefix("reused from ") for p in steps
                           if p.reason.startswith("reused")},
                "metrics": variant_metrics(v.run_dir),
            })  # fmt: skip
        shared = _shared(rows)
        results.append(write_table(study, rows, shared))
        log.info("%s: %s", study.name, results[-1]["markdown"])
    return results


def _shared(rows: list[dict]) -> list[dict]:
    """Stages computed in one variant (or the base run) and linked into others."""
    out: dict[str, dict] = {}
    for r in rows:
        for stage, src in r["reused"].items():
            d = out.setdefault(stage, {"stage": stage, "computed_in": src, "linked_into": []})
            d["linked_into"].append(r["run_dir"])
    return list(out.values())


def add_ablate_command(sub) -> None:
    p = sub.add_parser(
        "ablate",
        help="run config variants (--grid KEY=V1,V2 / --preset vocab|filter|kl|instruct), sharing identical stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-c", "--config", default="demo", help="experiment YAML or shipped config name (default: demo)"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every variant")
    p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeatable: one study each)")
    p.add_argument(
        "--preset",
        action="append",
        default=[],
        choices=list(PRESETS),
        help="a paper study: vocab (Table 7), filter (Table 8), kl (Table 9), instruct (Table 10)",
    )
    p.add_argument("--out", help="folder of the studies (default: <run_dir>-ablate)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate every variant and print what each computes"
    )
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args) -> int:
    base, studies = build_studies(args.config, args.grid, args.preset, args.overrides, args.out)
    setup_logging(base.log_level)
    for study, v, where in share_plan(base, studies) if args.dry_run else []:
        cells = " ".join(f"{s}:{'run' if w == 'run' else 'reuse'}" for s, w in where.items())
        sys.stdout.write(f"{study.name}\t{v.key}={v.value}\t{cells}\n")
    results = run_ablation(base, studies, dry_run=args.dry_run)
    for r in results:
        sys.stdout.write(r["markdown"].read_text(encoding="utf-8") + "\n")
        sys.stdout.write(f"table: {r['markdown']}" + (f"\nplot: {r['plot']}" if "plot" in r else "") + "\n\n")
    return 0
