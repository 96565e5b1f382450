"""What a training stage leaves behind: a plain HF model folder, held-out bits per char, loss curves, a report."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

from vikhr.log import get_logger

log = get_logger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt",
                   "sentencepiece.model", "vikhr_tokenizer.json")  # fmt: skip
"""Copied beside a trained model's weights: the HF tokenizer files, and the vocabulary stage's own SentencePiece
model and its description (the GGUF export and the tokenizer checks read them: a `replace` vocabulary's model
folder without them could not be exported)."""


def bpc_table(models: dict[str, tuple], texts: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Bits per character of each (model, tokenizer) on each language's held-out lines."""
    from vikhr.eval.bpc import bits_per_char

    return {
        name: {lang: round(bits_per_char(m, tok, lines).bits_per_char, 4) for lang, lines in texts.items()}
        for name, (m, tok) in models.items()
    }


def finish_model_folder(folder: Path, tokenizer_from: Path) -> None:
    """Make a saved training model a plain inference folder: tokenizer files beside it, `use_cache` back on,
    and no wrapper prefixes (DDP `module.`, torch.compile `_orig_mod.`, FSDP) in the weight names."""
    from safetensors import safe_open

    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy(tokenizer_from / name, folder / name)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["use_cache"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            bad = [k for k in st.keys() if k.startswith(WRAPPER_PREFIXES)]
        if bad:
            raise RuntimeError(
                f"{f}: weights saved with wrapper prefixes ({bad[0]}, ...); not a plain HF model"
            )


FEW_POINTS = 3
"""A training curve with fewer logged points than this gets the run's mean loss drawn across it and a note."""


def _eval_keys(evals: list[dict]) -> list[str]:
    """Held-out curves to draw: the KL trainer's `eval_<set>_ce`, else a plain Trainer's `eval_<set>_loss`."""
    keys = sorted({k for h in evals for k in h if k.startswith("eval_") and k.endswith("_ce")})
    if keys:
        return keys
    return sorted({k for h in evals for k in h if k.startswith("eval_") and k.endswith("_loss")})


def _points(n: int) -> str:
    return f"{n} point" if n == 1 else f"{n} points"


def loss_plot(
    log_history: list[dict], path: Path, *, title: str | None = None, logging_steps: int | None = None
) -> Path | None:
    """Training loss (and CE when it differs), held-out CE, and KL or the learning rate against the optimizer step,
    as a PNG; None when the history has nothing to draw.

    Short runs log few points (12 steps logged every 10 leave one point per curve), and a line through one point
    draws nothing. So every logged point gets a marker, the x-axis spans the whole run (the last step the Trainer
    recorded, not the last logged one), a training curve with fewer than `FEW_POINTS` points gets the run's mean
    training loss (the Trainer's closing `train_loss`) drawn across the run, and the legend and a note say how many
    points each curve has. The Trainer's `log_history` is the only record of the run; a denser curve needs a lower
    `logging_steps` (given, it is named in the note)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    train = [h for h in log_history if "loss" in h and "step" in h]
    evals = [h for h in log_history if "step" in h and any(k.startswith("eval_") for k in h)]
    summary = next((h for h in reversed(log_history) if "train_loss" in h), None)
    eval_keys = _eval_keys(evals)
    if not train and not eval_keys and summary is None:
        return None
    last = max((h.get("step", 0) for h in log_history), default=0) or 1
    fig = Figure(figsize=(11, 4.2) if train else (6.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2) if train else (fig.add_subplot(), None)  # no KL/lr without training logs

    def draw(axis, pts: list[tuple[float, float]], fmt: str, label: str, color: str) -> None:
        if not pts:
            return
        xs, ys = zip(*pts, strict=True)
        every = max(len(pts) // 60, 1)  # markers stay readable on a long run
        axis.plot(
            xs, ys, fmt, color=color, markersize=5, markevery=every, label=f"{label} ({_points(len(pts))})"
        )

    steps = [h["step"] for h in train]
    draw(ax, list(zip(steps, [h["loss"] for h in train], strict=True)), "o-", "train loss", "C0")
    ce = [(h["step"], h["ce"]) for h in train if "ce" in h]
    if any(abs(c - h["loss"]) > 1e-6 for (_, c), h in zip(ce, train, strict=False)):
        draw(ax, ce, "s--", "train CE", "C1")
    for i, key in enumerate(eval_keys):
        pts = list({h["step"]: h[key] for h in evals if key in h}.items())  # one point per step: the last
        name = key.removeprefix("eval_").removesuffix("_ce").removesuffix("_loss")
        name = "" if name == "held_out" else f"{name} "
        draw(ax, pts, "D-", f"held-out {name}{'CE' if key.endswith('_ce') else 'loss'}", f"C{i + 2}")
    if len(train) < FEW_POINTS and summary is not None:
        ax.hlines(summary["train_loss"], 0, last, colors="grey", linestyles="dotted", linewidth=1.5,
                  label=f"mean train loss over {last} steps")  # fmt: skip
    ax.set_title("loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats per token")

    if ax2 is not None:  # the KL, or the learning rate when the KL is 0 throughout (SFT: CE only)
        kl = [(h["step"], h["kl"]) for h in train if "kl" in h]
        lr = [(h["step"], h["learning_rate"]) for h in train if "learning_rate" in h]
        if kl and any(v != 0 for _, v in kl):
            draw(ax2, kl, "o-", "train KL", "C3")
            ax2.set_title("KL to the reference")
            ax2.set_ylabel("KL (nats per token)")
        elif lr:
            draw(ax2, lr, "o-", "learning rate", "C4")
            ax2.set_title("learning rate" + (" (KL is 0: CE only)" if kl else ""))
            ax2.set_ylabel("learning rate")
        else:
            ax2.set_title("KL / learning rate")
            ax2.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax2.transAxes, color="grey")
    for a in (ax, ax2) if ax2 is not None else (ax,):
        a.set_xlabel("optimizer step")
        a.set_xlim(-0.02 * last, 1.02 * last)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
        if a.lines or a.collections:
            a.legend(fontsize=8)
    heading = title or "training"
    if len(train) < FEW_POINTS:
        every = f" every {logging_steps} steps" if logging_steps else ""
        note = (f"training loss logged{every}: {_points(len(train))} in {last} steps "
                "(a lower logging_steps draws a denser curve)")  # fmt: skip
        heading += "\n" + textwrap.fill(note, width=int(fig.get_figwidth() * 12))
    fig.suptitle(heading, fontsize=9.5)
    fig.savefig(path, dpi=120)
    return path


def markdown(report: dict) -> str:
    """The report as a short Markdown page."""
    d, bpc, base = report["data"], report["bits_per_char"], report.get("base_bits_per_char", {})
    langs = sorted({lang for row in bpc.values() for lang in row})
    lines = [
        "# Continued pre-training",
        "",
        f"Data: {d['train_documents']} training and {d['eval_documents']} held-out documents from {d['source']}"
        f" (+{d['replay_documents']} replay); {d['packing']['sequences']} rows, {d['packing']['tokens']:,} tokens;"
        f" {d['steps']} optimizer steps of {d['tokens_per_step']:,} tokens on {d['world_size']} process(es).",
        "",
        "Held-out bits per character (lower is better):",
        "",
        "| model | " + " | ".join(langs) + " |",
        "|---|" + "---:|" * len(langs),
    ]
    if base:
        lines.append(
            "| source model | " + " | ".join(f"{base.get(lang, float('nan')):.4f}" for lang in langs) + " |"
        )
    for name, row in bpc.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[lang]:.4f}" for lang in langs) + " |")
    s = report["settings"]
    lines += [
        "",
        f"Loss = CE + {s['kl_weight']}·KL ({s['kl_direction']}, reference `{s['reference']}`); lr {s['lr']}, "
        f"seq_len {s['seq_len']}, batch {s['batch_size']} × accumulation {s['grad_accum']}.",
        "",
        f"Timings (s): {json.dumps(report['timings'])}",
        "",
    ]
    return "\n".join(lines)


def write_outputs(
    out: Path, final: Path, model_dir: Path, report: dict, log_history: list[dict], *, name: str = "pretrain",
    render: Callable[[dict], str] = markdown,
) -> None:  # fmt: skip
    """Fill a staged stage folder: model/ (moved from `final`), `<name>_report.json` / `.md` (`render`), the logs
    and the loss curves."""
    shutil.move(str(final), str(out / "model"))
    finish_model_folder(out / "model", model_dir)
    (out / "log_history.json").write_text(json.dumps(log_history, indent=1) + "\n", encoding="utf-8")
    logging_steps = (report.get("settings") or {}).get("logging_steps")
    loss_plot(log_history, out / "loss.png", title=f"{name}: loss", logging_steps=logging_steps)
    (out / f"{name}_report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    (out / f"{name}_report.md").write_text(render(report), encoding="utf-8")
