"""Generation speed of causal LMs on Russian text: tokens per second and, what matters, characters per second.

A Russian vocabulary makes generation faster in characters per second because each token carries more
characters, while the cost of one decoding step barely depends on the vocabulary size. Two measurements:

- `forced_decode_speed` (the primary one): the model is fed a fixed Russian continuation one token per forward
  pass with the KV cache, exactly as autoregressive decoding runs, so every model "generates" the same
  characters and the chars/s ratio between models is honest.
- `free_generation_speed` (secondary): real sampling from a prompt until a number of new characters exists,
  with the share of Cyrillic letters in what came out (a base model may drift into English).

`compare` loads one model at a time and measures both on the same texts (`flores_texts`), median of repeats.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vikhr.eval.bpc import start_token_id
from vikhr.log import get_logger
from vikhr.paths import BUNDLED_DATA, shared_data_dir
from vikhr.scripts import CYRILLIC_RE

logger = get_logger(__name__)

FLORES_RU = "parallel/flores200.devtest.rus_Cyrl"
HELDOUT_RU = BUNDLED_DATA / "heldout" / "ru.txt"
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass
class SpeedResult:
    """One timed generation: what was produced and how long the prefill and the decoding loop took."""

    n_chars: int
    """Characters generated (forced: the continuation's length; free: the decoded new text's length)."""
    n_tokens: int
    """Tokens generated, one forward pass each."""
    prefill_s: float
    """Seconds for the single forward pass over the prompt."""
    decode_s: float
    """Seconds for the decoding loop alone (forward + argmax or sampling per token)."""
    tokens_per_s: float
    chars_per_s: float
    chars_per_token: float
    prompt_tokens: int = 0
    """Tokens of the prompt, start token included."""
    cyrillic_share: float | None = None
    """Free generation only: Cyrillic letters / all letters of the generated text (0 without letters)."""
    text: str | None = None
    """Free generation only: the generated text."""

    def as_dict(self) -> dict:
        return asdict(self)


def _result(n_chars: int, n_tokens: int, prefill_s: float, decode_s: float, prompt_tokens: int, **extra):
    return SpeedResult(
        n_chars=n_chars,
        n_tokens=n_tokens,
        prefill_s=prefill_s,
        decode_s=decode_s,
        tokens_per_s=n_tokens / decode_s if decode_s > 0 else float("inf"),
        chars_per_s=n_chars / decode_s if decode_s > 0 else float("inf"),
        chars_per_token=n_chars / n_tokens if n_tokens else 0.0,
        prompt_tokens=prompt_tokens,
        **extra,
    )


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock timings mean something on an accelerator."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _with_start(tokenizer, ids: list[int]) -> list[int]:
    """[start token] + `ids`, the way `bits_per_char` conditions a line."""
    start = start_token_id(tokenizer)
    ids = ([start] if start is not None else []) + list(ids)
    if not ids:
        raise ValueError("the prompt has no tokens and the tokenizer no start token")
    return ids


def split_continuation(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of `prompt` and of `continuation` as the text following it (start token not included).

    `prompt + continuation` is encoded once and split where the prompt's characters end, so the continuation
    is tokenized in context, as a model would produce it. Every model is fed exactly the characters of
    `continuation`; let it start with a space (or another separator) so that no token can straddle the
    boundary, which is a ValueError. Tokenizers without offsets encode the two texts separately.
    """
    if not continuation:
        raise ValueError("continuation is empty")
    text = prompt + continuation
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        enc = None
    if enc is None or "offset_mapping" not in enc:
        ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        return tokenizer(prompt, add_special_tokens=False)["input_ids"], ids
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    cut = next((i for i, (start, _) in enumerate(offsets) if start >= len(prompt)), len(ids))
    if cut > 0 and offsets[cut - 1][1] > len(prompt):
        raise ValueError(
            f"a token spans the end of the prompt ({text[offsets[cut - 1][0] : offsets[cut - 1][1]]!r}); "
            "start the continuation with a space so both texts split cleanly"
        )
    if cut == len(ids):
        raise ValueError(f"continuation {continuation!r} has no tokens")
    return ids[:cut], ids[cut:]


@torch.inference_mode()
def forced_decode_speed(model, tokenizer, prompt: str, continuation: str) -> SpeedResult:
    """Time feeding `continuation` one token per forward pass with the KV cache, after a prefill of `prompt`.

    The prompt (after the start token) is prefilled in one forward pass and timed on its own; then each token
    of the continuation (see `split_continuation`) goes through one cached forward pass and the argmax of its
    logits is taken, so the LM head and the pick are paid as in greedy decoding. Only that loop is `decode_s`.
    """
    prompt_ids, cont_ids = split_continuation(tokenizer, prompt, continuation)
    prompt_ids = _with_start(tokenizer, prompt_ids)
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        fed = torch.tensor(cont_ids, device=device).view(-1, 1, 1)
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True, logits_to_keep=1)
        past = out.cache
        out.logits[:, -1].argmax(-1)
        _sync(device)
        t1 = time.perf_counter()
        for step in fed:
            out = model(input_ids=step, cache=past, use_cache=True)
            past = out.cache
            out.logits[:, -1].argmax(-1)
        _sync(device)
        t2 = time.perf_counter()
    finally:
        model.train(was_training)
    return _result(len(continuation), len(cont_ids), t1 - t0, t2 - t1, len(prompt_ids))


def cyrillic_share(text: str) -> float:
    """Share of the letters of `text` that are Cyrillic (0.0 when it has no letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if CYRILLIC_RE.match(c)) / len(letters)


def _banned_ids(model, tokenizer) -> torch.Tensor:
    """Ids never sampled: special tokens (EOS included) and padding rows past the tokenizer's vocabulary."""
    banned = set(tokenizer.all_special_ids)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    banned.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    rows = model.get_output_embeddings().weight.shape[0]
    banned.update(range(len(tokenizer), rows))
    return torch.tensor(sorted(i for i in banned if i is not None and 0 <= i < rows), dtype=torch.long)


@torch.inference_mode()
def free_generation_speed(
    model,
    tokenizer,
    prompt: str,
    n_chars: int,
    seed: int = 0,
    *,
    temperature: float = 0.7,
    max_new_tokens: int | None = None,
) -> SpeedResult:
    """Sample from `model` after `prompt` until at least `n_chars` new characters exist; time the decoding.

    A manual loop: one prefill gives the first token; then each new token is fed back through one cached
    forward pass and the next one is sampled (at `temperature`, generator seeded with `seed`), so n tokens
    cost the prefill and n decoding steps, as in `forced_decode_speed`. EOS and every other special token are
    never sampled, so the text always reaches `n_chars`. Decoding the text to check its length is bookkeeping
    and not timed. Stops after `max_new_tokens` (default 4 * n_chars + 16) with a warning if still short.
    """
    if n_chars <= 0:
        raise ValueError(f"n_chars must be positive, got {n_chars}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    cap = max_new_tokens or 4 * n_chars + 16
    device = _device(model)
    prompt_ids = _with_start(tokenizer, tokenizer(prompt, add_special_tokens=False)["input_ids"])
    banned = _banned_ids(model, tokenizer).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    new: list[int] = []
    text = ""
    decode_s = 0.0
    try:
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True, logits_to_keep=1)
        nxt = _sample(out.logits[:, -1], banned, temperature, gen)
        _sync(device)
        prefill_s = time.perf_counter() - t0
        past = out.cache
        while True:
            t0 = time.perf_counter()
            out = model(input_ids=nxt.view(1, 1), cache=past, use_cache=True)
            past = out.cache
            following = _sample(out.logits[:, -1], banned, temperature, gen)
            _sync(device)
            decode_s += time.perf_counter() - t0
            new.append(int(nxt))
            text = tokenizer.decode(new, skip_special_tokens=True)
            if len(text) >= n_chars or len(new) >= cap:
                break
            nxt = following
    finally:
        model.train(was_training)
    if len(text) < n_chars:
        logger.warning(
            "free generation stopped at %d tokens with %d of %d characters", len(new), len(text), n_chars
        )
    return _result(
        len(text),
        len(new),
        prefill_s,
        decode_s,
        len(prompt_ids),
        cyrillic_share=cyrillic_share(text),
        text=text,
    )


def _sample(
    logits: torch.Tensor, banned: torch.Tensor, temperature: float, gen: torch.Generator
) -> torch.Tensor:
    logits = logits.float() / temperature
    logits[..., banned] = float("-inf")
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).view(-1)


def _sentences(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        out.extend(s.strip() for s in _SENTENCE_END.split(line) if len(s.strip()) >= 20)
    return out


def flores_texts(
    n_prompts: int = 3, n_chars: int = 600, *, source: str | Path | None = None
) -> list[tuple[str, str]]:
    """`n_prompts` (prompt, continuation) pairs of Russian text, taken in order without overlap.

    The prompt is one sentence; the continuation is " " + the following sentences joined by spaces, cut at the
    first sentence boundary at or past `n_chars` characters. Sentences come from `source` (one per line), else
    FLORES devtest RU from the shared data folder, else the bundled held-out Russian text (split into
    sentences). Sentences shorter than 20 characters (titles) are left out.
    """
    if n_prompts <= 0 or n_chars <= 0:
        raise ValueError(f"n_prompts and n_chars must be positive, got {n_prompts}, {n_chars}")
    shared = shared_data_dir()
    if source is not None:
        path = Path(source)
    elif shared is not None and (shared / FLORES_RU).is_file():
        path = shared / FLORES_RU
    else:
        path = HELDOUT_RU
        logger.info("no shared FLORES devtest; using the bundled held-out text %s", path)
    sentences = _sentences(path)
    pairs, i = [], 0
    while len(pairs) < n_prompts:
        if i + 1 >= len(sentences):
            raise ValueError(f"{path} has too few sentences for {n_prompts} prompts of {n_chars} characters")
        prompt, j, cont = sentences[i], i + 1, ""
        while len(cont) < n_chars and j < len(sentences):
            cont += " " + sentences[j]
            j += 1
        if len(cont) < n_chars:
            raise ValueError(f"{path} has too few sentences for {n_prompts} prompts of {n_chars} characters")
        pairs.append((prompt, cont))
        i = j
    return pairs


def machine_info() -> dict:
    """What the timings ran on: CPU count, torch threads and versions."""
    versions = {}
    for name in ("torch", "transformers", "tokenizers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info = {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def _aggregate(runs: list[SpeedResult]) -> dict:
    """One repeat over all texts: totals, and rates as total / total decode seconds."""
    n_chars = sum(r.n_chars for r in runs)
    n_tokens = sum(r.n_tokens for r in runs)
    decode_s = sum(r.decode_s for r in runs)
    return {
        "n_chars": n_chars,
        "n_tokens": n_tokens,
        "prefill_s": sum(r.prefill_s for r in runs),
        "decode_s": decode_s,
        "tokens_per_s": n_tokens / decode_s,
        "chars_per_s": n_chars / decode_s,
        "chars_per_token": n_chars / n_tokens,
    }


def _summary(repeats: list[list[SpeedResult]]) -> dict:
    """Medians over repeats of the per-repeat aggregates, with every repeat's raw timings."""
    aggs = [_aggregate(runs) for runs in repeats]
    out = {k: statistics.median(a[k] for a in aggs) for k in aggs[0]}
    out["n_chars"], out["n_tokens"] = aggs[0]["n_chars"], aggs[0]["n_tokens"]
    out["chars_per_token"] = aggs[0]["chars_per_token"]
    out["repeats"] = [
        {**a, "texts": [{k: v for k, v in r.as_dict().items() if k != "text"} for r in runs]}
        for a, runs in zip(aggs, repeats, strict=True)
    ]
    return out


@dataclass
class _Loaded:
    path: str
    model: object
    tokenizer: object
    forced: list[list[SpeedResult]]
    free: list[list[SpeedResult]]


def _load(path: str, dtype: torch.dtype, device: str) -> _Loaded:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return _Loaded(path, model, tokenizer, [], [])


def _warm_up(
    m: _Loaded, texts: list[tuple[str, str]], warmup: int, free: bool, seed: int, temp: float
) -> None:
    """Untimed passes over the start of the first text: thread pools and allocators settle before timing."""
    prompt, cont = texts[0]
    for _ in range(warmup):
        forced_decode_speed(m.model, m.tokenizer, prompt, cont[:100])
        if free:
            free_generation_speed(m.model, m.tokenizer, prompt, 50, seed, temperature=temp)


def _one_repeat(
    m: _Loaded, texts: list[tuple[str, str]], free: bool, free_chars, seed: int, temp: float
) -> None:
    m.forced.append([forced_decode_speed(m.model, m.tokenizer, p, c) for p, c in texts])
    if free:
        m.free.append(
            [
                free_generation_speed(
                    m.model, m.tokenizer, p, free_chars or len(c), seed + i, temperature=temp
                )
                for i, (p, c) in enumerate(texts)
            ]
        )


def _describe(m: _Loaded) -> dict:
    entry: dict = {
        "path": m.path,
        "vocab": len(m.tokenizer),
        "embedding_rows": m.model.get_input_embeddings().weight.shape[0],
        "parameters": sum(p.numel() for p in m.model.parameters()),
        "forced": _summary(m.forced),
    }
    if m.free:
        entry["free"] = _summary(m.free)
        generated = "".join(r.text or "" for r in m.free[0])
        entry["free"]["cyrillic_share"] = cyrillic_share(generated)
        entry["free"]["samples"] = [r.text for r in m.free[0]]
    return entry


def _release(m: _Loaded, device: str) -> None:
    m.model = None
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def compare(
    models: dict[str, str | Path],
    texts: list[tuple[str, str]],
    *,
    repeats: int = 3,
    warmup: int = 1,
    free: bool = True,
    free_chars: int | None = None,
    seed: int = 0,
    temperature: float = 0.7,
    dtype: str | torch.dtype = "auto",
    device: str = "cpu",
    threads: int | None = None,
    interleave: bool = False,
) -> dict:
    """Forced (and free) generation speed of each model on the same (prompt, continuation) pairs.

    Models are loaded one at a time (through `vikhr.models.resolve_model`, so aliases work) and freed after;
    with `interleave` all are loaded at once and the repeats alternate between them, so that a machine whose
    load changes while it runs slows every model alike. Each model first runs `warmup` untimed passes over the
    start of the first text, then `repeats` timed passes over all texts; rates are total tokens (characters)
    over total decode seconds per repeat, and the median over repeats is reported with the ratio of each
    model's rate to the first (baseline) model's. Free generation samples as many characters as each
    continuation has (or `free_chars`), with seed `seed + text index`, so every repeat samples the same text
    and only the timings vary.
    """
    from vikhr.models import resolve_model

    if not models:
        raise ValueError("no models to compare")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if not texts:
        raise ValueError("no texts to generate")
    if threads:
        torch.set_num_threads(threads)
    if dtype == "auto":
        from vikhr.precision import compute_dtype

        dtype = compute_dtype(device)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    result: dict = {
        "baseline": next(iter(models)),
        "settings": {
            "repeats": repeats,
            "warmup": warmup,
            "free": free,
            "free_chars": free_chars,
            "seed": seed,
            "temperature": temperature,
            "dtype": str(torch_dtype).removeprefix("torch."),
            "device": device,
            "interleave": interleave,
        },
        "machine": machine_info(),
        "texts": [
            {"prompt_chars": len(p), "continuation_chars": len(c), "prompt": p, "continuation": c}
            for p, c in texts
        ],
        "models": {},
    }
    paths = {name: resolve_model(str(spec)) for name, spec in models.items()}
    args = (texts, free, free_chars, seed, temperature)
    done: dict[str, _Loaded] = {}
    if interleave:
        loaded = {name: _load(path, torch_dtype, device) for name, path in paths.items()}
        for m in loaded.values():
            _warm_up(m, texts, warmup, free, seed, temperature)
        for r in range(repeats):
            for name, m in loaded.items():
                logger.info("repeat %d of %d: %s", r + 1, repeats, name)
                _one_repeat(m, *args)
        done = loaded
    else:
        for name, path in paths.items():
            logger.info("measuring %s (%s)", name, path)
            m = _load(path, torch_dtype, device)
            _warm_up(m, texts, warmup, free, seed, temperature)
            for _ in range(repeats):
                _one_repeat(m, *args)
            result["models"][name] = _describe(m)
            _release(m, device)
    for name, m in done.items():
        result["models"][name] = _describe(m)
        _release(m, device)
    base = result["models"][result["baseline"]]
    for name, entry in result["models"].items():
        for kind in ("forced", "free"):
            if kind not in entry:
                continue
            for rate in ("chars_per_s", "tokens_per_s"):
                entry[kind][f"ratio_{rate}"] = entry[kind][rate] / base[kind][rate]
            # each repeat against the baseline's repeat of the same round (meaningful when interleaved)
            entry[kind]["ratio_chars_per_s_by_repeat"] = [
                a["chars_per_s"] / b["chars_per_s"]
                for a, b in zip(entry[kind]["repeats"], base[kind]["repeats"], strict=True)
            ]
        f = entry["forced"]
        logger.info(
            "%s: forced %.1f tokens/s, %.1f chars/s (%.2f chars/token), %.2fx the baseline's chars/s",
            name, f["tokens_per_s"], f["chars_per_s"], f["chars_per_token"], f["ratio_chars_per_s"],
        )  # fmt: skip
    result["machine"]["load_average_after"] = machine_info()["load_average"]
    return result


def markdown_tables(result: dict) -> str:
    """The forced (and free) generation figures of a `compare` result as markdown tables."""
    s = result["settings"]
    n_chars = sum(t["continuation_chars"] for t in result["texts"])
    lines = [
        f"Forced decoding: {len(result['texts'])} texts, {n_chars} characters, median of {s['repeats']} "
        f"{'interleaved ' if s.get('interleave') else ''}repeats, {s['dtype']} on {s['device']} "
        f"({result['machine']['torch_threads']} torch threads)",
        "",
        "| model | vocab | tokens | chars/token | tokens/s | chars/s | chars/s vs base |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in result["models"].items():
        f = e["forced"]
        lines.append(
            f"| {name} | {e['vocab']} | {f['n_tokens']} | {f['chars_per_token']:.2f} | "
            f"{f['tokens_per_s']:.1f} | {f['chars_per_s']:.1f} | {f['ratio_chars_per_s']:.2f}x |"
        )
    if all("free" in e for e in result["models"].values()):
        lines += [
            "",
            f"Free generation: sampling at temperature {s['temperature']}, seed {s['seed']} + text index, "
            f"{s['free_chars'] or 'as many as the continuation'} characters per prompt, EOS suppressed",
            "",
            "| model | tokens | chars | chars/token | tokens/s | chars/s | chars/s vs base | Cyrillic |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, e in result["models"].items():
            f = e["free"]
            lines.append(
                f"| {name} | {f['n_tokens']} | {f['n_chars']} | {f['chars_per_token']:.2f} | "
                f"{f['tokens_per_s']:.1f} | {f['chars_per_s']:.1f} | {f['ratio_chars_per_s']:.2f}x | "
                f"{f['cyrillic_share']:.2f} |"
            )
    return "\n".join(lines) + "\n"
