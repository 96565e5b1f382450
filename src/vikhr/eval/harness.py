"""Evaluate model folders on tasks, text and prompts, the same way for every model: `run_evaluation`.

For each model (loaded once, in one dtype): every task (`vikhr.eval.tasks`: multiple choice and log-likelihood
tasks scored by `vikhr.eval.loglik` with lm-eval's rules, generative tasks through the serving engine), bits per
character / byte and perplexity on text (`vikhr.eval.bpc`). Across models: answers to the same prompts side by side
with their language purity (`vikhr.eval.sbs`) and forced-decoding speed in characters per second
(`vikhr.eval.speed`). Writes `samples/<model>/<task>.jsonl` (one line per item: prompt, choices, log-likelihoods,
predictions, gold, or why it was skipped) and the report (`vikhr.eval.report`).
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vikhr.log import get_logger

logger = get_logger(__name__)

Z95 = 1.959963984540054


@dataclass
class EvalSettings:
    """What to evaluate and how; the same for every model of one evaluation."""

    tasks: list[str] = field(default_factory=list)
    """Shipped task names or lm-eval task YAML files."""
    limit: int = 0
    """First N items of each task's test split (0: all), like lm-eval's --limit."""
    batch_size: int = 8
    """Items per forward pass (log-likelihood tasks), lines per pass (bits per char)."""
    dtype: str = "auto"
    """Weights and compute dtype: auto (vikhr.precision's choice for the device), float32, bfloat16, float16."""
    device: str = ""
    """cpu, cuda, ... (empty: cuda when available)."""
    max_length: int = 0
    """Context length for log-likelihood requests (0: the model's, lm-eval's rule); longer items lose tokens from the
    left and are counted in the report."""
    chat: bool | None = None
    """Generative tasks and prompts: through the chat template (None: when the model has one)."""
    text: dict[str, list[str]] = field(default_factory=dict)
    """Lines per language for bits per character (empty: skipped)."""
    prompts: list[str] = field(default_factory=list)
    """Prompts answered by every model: side-by-side table and language purity (empty: skipped)."""
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    language: str = "ru"
    """Target language of the prompts, for language purity."""
    speed: bool = True
    """Measure forced-decoding speed (chars/s) on Russian text."""
    speed_prompts: int = 2
    speed_chars: int = 200


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    from vikhr.precision import compute_dtype

    if dtype == "auto":
        return compute_dtype(device)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return getattr(torch, dtype)


def default_device(device: str = "") -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_causal_lm(path: str | Path, dtype: torch.dtype, device: str):
    """(model, tokenizer) of a causal LM folder or alias; a clear error for anything else."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vikhr.models import resolve_model

    resolved = resolve_model(str(path))
    try:
        config = AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a model folder transformers can read ({e})") from e
    archs = list(getattr(config, "architectures", None) or [])
    what = ", ".join(archs or [config.model_type])
    if getattr(config, "is_encoder_decoder", False) or (archs and not set(archs) & _causal_lm_classes()):
        raise ValueError(f"{path}: not a causal language model ({what}); evaluation needs one")
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"{path}: not a causal language model ({what}); evaluation needs one") from e
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    return model.to(device).eval(), tokenizer


def _causal_lm_classes() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(v if isinstance(v, list | tuple) else [v])
    return names


def accuracy(correct: list[float]) -> dict:
    """Mean with a Wilson 95 % interval and lm-eval's sample standard error."""
    n = len(correct)
    if n == 0:
        return {"value": None, "n": 0}
    p = sum(correct) / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    stderr = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0
    return {
        "value": p, "n": n, "ci95": [max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))],
        "stderr": stderr,
    }  # fmt: skip


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _skip_summary(skipped: list) -> dict:
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    return {"skipped": len(skipped), "skip_reasons": reasons}


def score_multiple_choice(model, lm_tok, task, items, settings: EvalSettings) -> tuple[dict, list[dict]]:
    """Multiple-choice or log-likelihood task: metrics and per-item rows."""
    from vikhr.eval.loglik import choice_predictions, score_requests

    scored = score_requests(
        model, lm_tok, [(it.context, it.continuations) for it in items], max_length=settings.max_length or None,
        batch_size=settings.batch_size, desc=task.name,
    )  # fmt: skip
    rows, correct = [], {m: [] for m in task.metrics}
    chance = []
    for it, s in zip(items, scored, strict=True):
        row = {
            "index": it.index, "context": it.context, "choices": it.choices, "gold": it.gold,
            "loglikelihoods": s.loglikelihoods, "greedy": s.greedy, "context_tokens": s.context_tokens,
            "truncated": s.truncated,
        }  # fmt: skip
        if task.output_type == "multiple_choice":
            preds = choice_predictions(s.loglikelihoods, it.choices)
            golds = it.gold if isinstance(it.gold, list) else [it.gold]
            row["predictions"] = preds
            row["correct"] = {m: float(preds[m] in golds) for m in task.metrics}
            chance.append(len(golds) / len(it.choices))
        else:  # loglikelihood: acc = the continuation is the greedy one
            row["correct"] = {m: float(s.greedy[0]) for m in task.metrics if m == "acc"}
        for m, v in row["correct"].items():
            correct[m].append(v)
        rows.append(row)
    metrics = {m: accuracy(v) for m, v in correct.items() if m != "perplexity"}
    if "perplexity" in task.metrics and scored:
        metrics["perplexity"] = {
            "value": math.exp(-sum(s.loglikelihoods[0] for s in scored) / len(scored)), "n": len(scored),
        }  # fmt: skip
    result = {"metrics": metrics, "truncated": sum(s.truncated for s in scored)}
    if chance:
        result["chance"] = sum(chance) / len(chance)
        golds = Counter(str(it.gold) for it in items)
        result["majority"] = golds.most_common(1)[0][1] / len(
            items
        )  # always answering the most frequent gold
    return result, rows


def score_generative(model, tokenizer, task, items, settings: EvalSettings) -> tuple[dict, list[dict]]:
    """Generative task: answers through the engine, the configured regex, exact match."""
    from vikhr.eval.generate import exact_match, extract_answer, generate_answers

    gen = task.generation_kwargs
    chat = settings.chat if settings.chat is not None else bool(getattr(tokenizer, "chat_template", None))
    temperature = float(gen.get("temperature", 0.0)) if gen.get("do_sample") else 0.0
    answers = generate_answers(
        model, tokenizer, [it.context for it in items], max_new_tokens=int(gen.get("max_gen_toks", 256)),
        temperature=temperature, seed=settings.seed, chat=chat, stop=list(gen.get("until") or []) or None,
        max_batch=settings.batch_size,
    )  # fmt: skip
    rows, correct = [], []
    for it, a in zip(items, answers, strict=True):
        pred = extract_answer(a.text, task.answer_regex)
        ok = exact_match(
            pred, str(it.gold), ignore_case=task.ignore_case, ignore_punctuation=task.ignore_punctuation
        )
        correct.append(float(ok))
        rows.append(
            {"index": it.index, "context": it.context, "answer": a.text, "prediction": pred, "gold": it.gold,
             "correct": {"exact_match": float(ok)}, "tokens": a.tokens, "finish_reason": a.finish_reason}
        )  # fmt: skip
    return {"metrics": {"exact_match": accuracy(correct)}, "chat": chat}, rows


def evaluate_tasks(model, tokenizer, tasks: list, settings: EvalSettings, samples_dir: Path | None) -> dict:
    """Every task on one loaded model: {task name: result}; per-item rows under `samples_dir`."""
    from vikhr.eval.loglik import LMTokenizer
    from vikhr.eval.tasks import build_items

    lm_tok = LMTokenizer(tokenizer)
    results = {}
    for task in tasks:
        t0 = time.perf_counter()
        items, skipped = build_items(task, limit=settings.limit or None)
        if skipped:
            logger.warning("%s: %d items skipped (%s)", task.name, len(skipped), _skip_summary(skipped))
        if task.output_type == "generate_until":
            result, rows = score_generative(model, tokenizer, task, items, settings)
        elif items:
            result, rows = score_multiple_choice(model, lm_tok, task, items, settings)
        else:
            result, rows = {"metrics": {}}, []
        result.update(
            task=task.name, path=str(task.path), output_type=task.output_type, items=len(items),
            num_fewshot=task.num_fewshot, seconds=round(time.perf_counter() - t0, 2), **_skip_summary(skipped),
        )  # fmt: skip
        result["skipped_items"] = [asdict(s) for s in skipped]
        if samples_dir is not None:
            skipped_rows = [{"index": s.index, "skipped": s.reason} for s in skipped]
            _write_jsonl(samples_dir / f"{task.name}.jsonl", rows + skipped_rows)
        results[task.name] = result
        head = {m: round(v["value"], 4) for m, v in result["metrics"].items() if v.get("value") is not None}
        logger.info("%s: %s on %d items in %.1fs", task.name, head, len(items), result["seconds"])
    return results


def task_text(spec: str, limit: int = 0) -> list[str]:
    """Text from task data for bits per character: each item's prompt followed by its gold answer (the first gold
    choice of a multiple-choice item, the target of a generative one)."""
    from vikhr.eval.tasks import build_items, load_task

    items, _ = build_items(load_task(spec), limit=limit or None)
    lines = []
    for it in items:
        if it.continuations:
            gold = it.gold[0] if isinstance(it.gold, list) else it.gold
            lines.append(it.context + it.continuations[gold if isinstance(gold, int) else 0])
        else:
            lines.append(f"{it.context} {it.gold}")
    return lines


def text_metrics(model, tokenizer, text: dict[str, list[str]], settings: EvalSettings) -> dict:
    """Bits per character / byte and token perplexity per language."""
    from vikhr.eval.bpc import bits_per_char

    out = {}
    for lang, lines in text.items():
        r = bits_per_char(
            model, tokenizer, lines, batch_size=settings.batch_size, max_tokens=settings.max_length or 1024
        )
        out[lang] = {k: v for k, v in r.as_dict().items() if k != "nll_bits"}
    return out


def run_evaluation(models: dict[str, str], settings: EvalSettings, out_dir: Path) -> dict:
    """Evaluate every model on everything `settings` asks for; write samples and the report into `out_dir`."""
    from vikhr.eval.report import write_report
    from vikhr.eval.tasks import load_task

    if not models:
        raise ValueError("no models to evaluate")
    tasks = [load_task(t) for t in settings.tasks]  # a bad task file fails here, before any model loads
    device = default_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    out_dir = Path(out_dir)
    report: dict = {
        "settings": asdict(settings) | {"text": {k: len(v) for k, v in settings.text.items()}},
        "dtype": str(dtype).removeprefix("torch."), "device": device, "models": {},
    }  # fmt: skip
    for name, path in models.items():
        t0 = time.perf_counter()
        logger.info("evaluating %s (%s)", name, path)
        model, tokenizer = load_causal_lm(path, dtype, device)
        entry = {"path": str(path), "vocab": len(tokenizer)}
        entry["tasks"] = evaluate_tasks(model, tokenizer, tasks, settings, out_dir / "samples" / name)
        if settings.text:
            entry["text"] = text_metrics(model, tokenizer, settings.text, settings)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        report["models"][name] = entry
        del model
        gc.collect()
    if settings.prompts:
        _side_by_side(models, settings, device, out_dir, report)
    if settings.speed:
        _speed(models, settings, device, report)
    write_report(report, out_dir)
    return report


def _side_by_side(models: dict[str, str], settings: EvalSettings, device: str, out_dir: Path, report: dict):
    from vikhr.eval.sbs import side_by_side, write_side_by_side

    sbs = side_by_side(
        models, settings.prompts, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
        seed=settings.seed, chat=settings.chat, language=settings.language, dtype=settings.dtype, device=device,
    )  # fmt: skip
    files = write_side_by_side(sbs, out_dir / "sbs")
    report["side_by_side"] = {k: str(Path(v).relative_to(out_dir)) for k, v in files.items()}
    for name, m in sbs["models"].items():
        report["models"][name]["generation"] = {k: v for k, v in m.items() if k != "answers"}


def _speed(models: dict[str, str], settings: EvalSettings, device: str, report: dict) -> None:
    from vikhr.eval.speed import compare, flores_texts

    texts = flores_texts(settings.speed_prompts, settings.speed_chars)
    result = compare(models, texts, repeats=1, warmup=1, free=False, dtype=settings.dtype, device=device)
    for name, m in result["models"].items():
        forced = m["forced"]
        report["models"][name]["speed"] = {
            "chars_per_s": forced["chars_per_s"], "tokens_per_s": forced["tokens_per_s"],
            "chars_per_token": forced["chars_per_token"],
        }  # fmt: skip
