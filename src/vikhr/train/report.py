"""What a training stage leaves behind: a plain HF model folder, held-out bits per char, loss curves, a report."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from vikhr.log import get_logger

log = get_logger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt")  # fmt: skip


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


def loss_plot(log_history: list[dict], path: Path) -> Path | None:
    """Training loss, CE and KL, and held-out losses against the optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in log_history if "loss" in h and "step" in h]
    evals = [h for h in log_history if any(k.startswith("eval_") and k.endswith("_loss") for k in h)]
    if not train and not evals:
        return None
    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in train]
    for key, style in (("loss", "-"), ("ce", "--")):
        if train and key in train[0]:
            ax.plot(steps, [h[key] for h in train], style, label=f"train {key}")
    for key in sorted({k for h in evals for k in h if k.startswith("eval_") and k.endswith("_ce")}):
        pts = [(h["step"], h[key]) for h in evals if key in h]
        ax.plot(*zip(*pts, strict=True), "o-", label=key.replace("eval_", "held-out ").replace("_ce", " CE"))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats per token")
    if ax.lines:
        ax.legend()
    if train and "kl" in train[0]:
        ax_kl.plot(steps, [h["kl"] for h in train], label="train KL")
    ax_kl.set_xlabel("optimizer step")
    ax_kl.set_ylabel("KL (nats per token)")
    if ax_kl.lines:
        ax_kl.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
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
    loss_plot(log_history, out / "loss.png")
    (out / f"{name}_report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    (out / f"{name}_report.md").write_text(render(report), encoding="utf-8")
