"""Weight-space merges of two models that share an architecture and a vocabulary: SLERP and linear.

The Vikhr paper guards against forgetting with a KL penalty during continued pre-training; merging the trained
model back toward its starting point (SLERP) is the weight-space alternative, an ablatable knob on its own:
`vikhr merge --method slerp --t 0.3 runs/x/pretrain/model runs/x/transplant/model merged/`.

`t` is the weight of MODEL_B: t=0 gives MODEL_A exactly, t=1 gives MODEL_B. The output is a plain Hugging Face
folder with MODEL_A's config, tokenizer and generation config, plus `merge.json` describing the merge.

torch and transformers are imported inside the functions, so registering the command costs nothing at start-up.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vikhr.fsutil import staged_dir
from vikhr.log import get_logger, progress, setup_logging

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

METHODS = ("slerp", "linear")
DOT_THRESHOLD = 0.9995
"""Above this |cosine| the two tensors count as colinear and SLERP falls back to lerp (as in mergekit)."""

MERGE_RECORD = "merge.json"
# Copied verbatim from MODEL_A when present: everything AutoTokenizer reads, plus the generation config.
SIDE_FILES = (
    "tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "generation_config.json",
)  # fmt: skip
_VOCAB_HINT = (
    "the models must share a vocabulary and architecture: merge a trained model with the model it started "
    "from (e.g. with its run's `transplant/model`), not with the original base model"
)


# --- pure math on tensors ------------------------------------------------------------------------------------


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Linear interpolation (1 - t) * a + t * b, computed in float32 and returned in a's dtype."""
    return ((1.0 - t) * a.float() + t * b.float()).to(a.dtype)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> float:
    """The dot product SLERP uses: of both tensors flattened, each divided by its norm unless that is <= eps.

    Same value as mergekit's `np.sum(normalize(v0) * normalize(v1))`, computed as one float32 dot product
    divided by the norms so no normalised copies of a large embedding are made.
    """
    a32, b32 = a.detach().reshape(-1).float(), b.detach().reshape(-1).float()
    norm_a, norm_b = float(a32.norm()), float(b32.norm())
    scale = (norm_a if norm_a > eps else 1.0) * (norm_b if norm_b > eps else 1.0)
    return float(a32 @ b32) / scale


def slerp_coefficients(dot: float, t: float) -> tuple[float, float, bool]:
    """(s0, s1, fell_back) with result = s0 * a + s1 * b for tensors whose normalised dot product is `dot`.

    |dot| > DOT_THRESHOLD (nearly colinear) falls back to lerp: (1 - t, t). Otherwise, with theta_0 = arccos(dot):
    s0 = sin(theta_0 - t * theta_0) / sin(theta_0) and s1 = sin(t * theta_0) / sin(theta_0).
    """
    if abs(dot) > DOT_THRESHOLD:
        return 1.0 - t, t, True
    theta_0 = math.acos(dot)
    sin_theta_0 = math.sin(theta_0)
    theta_t = theta_0 * t
    return math.sin(theta_0 - theta_t) / sin_theta_0, math.sin(theta_t) / sin_theta_0, False


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of two same-shaped tensors, per tensor, exactly as mergekit defines it.

    Reference: arcee-ai/mergekit, mergekit/merge_methods/slerp.py (`slerp`, after dvschultz's gist): the angle
    comes from the normalised flattened tensors, the weights s0, s1 (`slerp_coefficients`) are applied to the
    original, unnormalised tensors, and nearly colinear pairs (|cos| > 0.9995) fall back to lerp. Computed in
    float32 (mergekit's numpy path; the scalar trigonometry here is float64), returned in a's dtype.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    s0, s1, _ = slerp_coefficients(cosine(a, b, eps), t)
    return (s0 * a.float() + s1 * b.float()).to(a.dtype)


def merge_tensor(a: torch.Tensor, b: torch.Tensor, method: str, t: float) -> tuple[torch.Tensor, dict]:
    """One merged tensor and its stats ({"cosine", "lerp"}); non-float tensors must be equal and are copied."""
    if not a.is_floating_point():
        if a.dtype != b.dtype or not a.equal(b):
            raise ValueError("non-float tensors differ between the two models")
        return a.clone(), {"cosine": None, "lerp": False, "copied": True}
    dot = cosine(a, b)
    if method == "slerp":
        s0, s1, fell_back = slerp_coefficients(dot, t)
    else:
        s0, s1, fell_back = 1.0 - t, t, False
    merged = (s0 * a.float() + s1 * b.float()).to(a.dtype)
    return merged, {"cosine": dot, "lerp": fell_back}


# --- state dicts ---------------------------------------------------------------------------------------------


def _check_method(method: str, t: float) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; expected one of {', '.join(METHODS)}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1] (0 = model A, 1 = model B), got {t}")


def _aliases(sd: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{name: earlier name} for entries that are the same tensor as an earlier one (a tied LM head)."""
    first: dict[tuple, str] = {}
    out: dict[str, str] = {}
    for name, tensor in sd.items():
        if tensor.numel() == 0:
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def check_state_dicts(sd_a: Mapping[str, torch.Tensor], sd_b: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Raise ValueError unless both have the same names, shapes and tied tensors; return the ties {name: first}."""
    only_a, only_b = sorted(set(sd_a) - set(sd_b)), sorted(set(sd_b) - set(sd_a))
    if only_a or only_b:
        raise ValueError(
            f"the models have different weights: only in A: {only_a[:5] or 'none'}, only in B: "
            f"{only_b[:5] or 'none'} ({len(only_a)} and {len(only_b)} in all); {_VOCAB_HINT}"
        )
    bad = [name for name in sd_a if sd_a[name].shape != sd_b[name].shape]
    if bad:
        name = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise ValueError(
            f"tensor {name} has shape {tuple(sd_a[name].shape)} in model A but {tuple(sd_b[name].shape)} in "
            f"model B{more}; {_VOCAB_HINT}"
        )
    ties_a, ties_b = _aliases(sd_a), _aliases(sd_b)
    if ties_a != ties_b:
        name = sorted(set(ties_a.items()) ^ set(ties_b.items()))[0][0]
        tied_in, untied_in = ("A", "B") if name in ties_a else ("B", "A")
        other = ties_a.get(name) or ties_b.get(name)
        raise ValueError(
            f"{name} is tied to {other} in model {tied_in} but is a separate tensor in model {untied_in}; "
            "a tied and an untied model cannot be merged tensor by tensor"
        )
    return ties_a


# --- model folders -------------------------------------------------------------------------------------------


def _field(config, key: str):
    value = getattr(config, key, None)
    if value is None and hasattr(config, "get_text_config"):
        value = getattr(config.get_text_config(), key, None)
    return value


def check_configs(cfg_a, cfg_b) -> None:
    """Raise ValueError naming the field unless the two configs describe the same architecture and vocabulary."""
    arch_a = (getattr(cfg_a, "architectures", None) or [cfg_a.model_type])[0]
    arch_b = (getattr(cfg_b, "architectures", None) or [cfg_b.model_type])[0]
    if arch_a != arch_b:
        raise ValueError(f"model A is a {arch_a} but model B is a {arch_b}; {_VOCAB_HINT}")
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        va, vb = _field(cfg_a, key), _field(cfg_b, key)
        if va != vb:
            hint = _VOCAB_HINT if key == "vocab_size" else "both models must have the same architecture"
            raise ValueError(f"{key} is {va} in model A but {vb} in model B; {hint}")
    tie_a, tie_b = bool(_field(cfg_a, "tie_word_embeddings")), bool(_field(cfg_b, "tie_word_embeddings"))
    if tie_a != tie_b:
        raise ValueError(
            f"model A {'ties' if tie_a else 'does not tie'} its LM head to the input embedding but model B "
            f"{'does' if tie_b else 'does not'} (tie_word_embeddings); a tied and an untied model cannot be merged"
        )


def _check_out(out: Path, sources: list[str]) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; remove it or choose another")
    for source in sources:
        if Path(source).exists() and out.resolve() == Path(source).resolve():
            raise ValueError(f"the output {out} is one of the input models")


def _copy_side_files(path_a: str, dest: Path, path_b: str) -> list[str]:
    """Copy MODEL_A's tokenizer files and generation config into `dest`; warn when B's tokenizer differs."""
    src = Path(path_a)
    if not src.is_dir():  # a hub id: let transformers fetch and write the tokenizer
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(path_a).save_pretrained(dest)
        return sorted(p.name for p in dest.iterdir() if p.name in SIDE_FILES)
    copied = []
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
            copied.append(name)
    other = Path(path_b)
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json"):
        if (src / name).is_file() and (other / name).is_file():
            if (src / name).read_bytes() != (other / name).read_bytes():
                log.warning("%s differs between the models; the merged model uses model A's", name)
    return copied


def _stats_summary(stats: dict[str, dict]) -> dict[str, Any]:
    """Counts and the cosine spread between A and B over the merged tensors."""
    cosines = {name: s["cosine"] for name, s in stats.items() if s["cosine"] is not None}
    values = sorted(cosines.values())
    lowest = sorted(cosines.items(), key=lambda kv: kv[1])[:5]
    return {
        "tensors": len(stats),
        "lerp_fallback": sum(s["lerp"] for s in stats.values()),
        "copied_non_float": sum(bool(s.get("copied")) for s in stats.values()),
        "cosine": {
            "min": round(values[0], 6), "median": round(statistics.median(values), 6),
            "max": round(values[-1], 6),
        } if values else None,
        "lowest_cosine": {name: round(value, 6) for name, value in lowest},
    }  # fmt: skip


def merge_models(
    path_a: str, path_b: str, out: str | Path, method: str = "slerp", t: float = 0.5, dtype: str | None = None
) -> dict[str, Any]:
    """Merge two causal LMs (folders, aliases or hub ids) into the model folder `out`; return a summary.

    `dtype` (float32, bfloat16, float16) loads both models in it; None keeps each model's saved dtype and the
    result takes model A's. The merge is written in place into model A's weights (memory: the two models and
    one merged tensor), so a tied LM head stays tied. `out` appears only when complete (staging dir + rename).
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    from vikhr.models import resolve_model

    _check_method(method, t)
    out = Path(out)
    _check_out(out, [path_a, path_b])
    t0 = time.perf_counter()
    src_a, src_b = resolve_model(path_a), resolve_model(path_b)
    check_configs(AutoConfig.from_pretrained(src_a), AutoConfig.from_pretrained(src_b))
    load_dtype = getattr(torch, dtype) if dtype else "auto"
    log.info("loading model A %s and model B %s", src_a, src_b)
    model_a = AutoModelForCausalLM.from_pretrained(src_a, dtype=load_dtype).eval()
    model_b = AutoModelForCausalLM.from_pretrained(src_b, dtype=load_dtype).eval()
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    ties = check_state_dicts(sd_a, sd_b)

    stats: dict[str, dict] = {}
    names = [name for name in sd_a if name not in ties]
    log.info("merging %d tensors (%s, t=%g)", len(names), method, t)
    with torch.no_grad():
        for name in progress(names, desc="merge", unit="tensor"):
            try:
                merged, stats[name] = merge_tensor(sd_a[name], sd_b[name], method, t)
            except ValueError as e:
                raise ValueError(f"tensor {name}: {e}") from e
            sd_a[name].copy_(merged)
    del model_b, sd_b

    summary: dict[str, Any] = {
        "method": method,
        "t": t,
        "sources": {"a": path_a, "b": path_b, "a_resolved": src_a, "b_resolved": src_b},
        "dtype": str(next(iter(sd_a.values())).dtype).removeprefix("torch."),
        "tied": dict(ties),
        "parameters": sum(p.numel() for p in model_a.parameters()),
        **_stats_summary(stats),
    }
    with staged_dir(out) as staging:  # an empty `out` (checked above) is replaced
        model_a.save_pretrained(staging)
        summary["copied_from_a"] = _copy_side_files(src_a, staging, src_b)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        record = {
            **summary,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "per_tensor": {
                name: {"cosine": None if s["cosine"] is None else round(s["cosine"], 6), "lerp": s["lerp"]}
                for name, s in stats.items()
            },
        }
        (staging / MERGE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s (%s, t=%g) in %.1f s", out, method, t, summary["seconds"])
    return {"out": str(out), **summary}


# --- command line --------------------------------------------------------------------------------------------


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def cmd_merge(args: argparse.Namespace) -> int:
    """`vikhr merge`: merge two models and print the summary as JSON."""
    setup_logging(args.log_level)
    summary = merge_models(args.model_a, args.model_b, args.out, args.method, args.t, args.dtype)
    sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return 0


def add_merge_command(sub) -> None:
    """Register `vikhr merge` on the main parser's subparsers."""
    p = sub.add_parser(
        "merge",
        help="SLERP or linear weight merge of two models with one architecture and vocabulary",
        description="Merge MODEL_A and MODEL_B tensor by tensor; t=0 gives MODEL_A, t=1 gives MODEL_B. "
        "The output has MODEL_A's config and tokenizer. Typical use: pull a trained model back toward its "
        "start, e.g. `vikhr merge --t 0.3 runs/x/pretrain/model runs/x/transplant/model merged`.",
    )
    p.add_argument("model_a", help="model folder, alias or hub id (its tokenizer and config are kept)")
    p.add_argument("model_b", help="model folder, alias or hub id with the same architecture and vocabulary")
    p.add_argument("out", help="output model folder (must not exist, or be empty)")
    p.add_argument("--method", choices=METHODS, default="slerp", help="slerp (per tensor) or linear")
    p.add_argument("--t", type=_unit_float, default=0.5, help="weight of MODEL_B in [0, 1] (default 0.5)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="load and save in this dtype (default: A's)",
    )
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_merge)
