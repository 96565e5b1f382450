"""Stage `instruct`: the instruction-tuning mix, as the Vikhr paper builds it (§3.3, Table 4).

Reads every source of `instruct.sources` (Alpaca, ShareGPT, OpenAI messages, preference or seed-task records from
.jsonl / .json / .parquet files or `datasets` folders; `vikhr.instruct.formats`), normalises them to messages,
removes exact and near-duplicate prompts across sources with the corpus stage's dedup chain (earlier sources win),
optionally drops low-reward examples (`instruct.reward_model`: this run's `reward` stage or a trained reward model;
a threshold or a quantile), then applies per-source caps and weights. Writes `instruct/`:
  data/train.jsonl   the SFT mix: {"messages", "id", "source"} per line (OpenAI messages form)
  dropped.jsonl      every record or example left out, with its reason (and duplicate_of / reward score)
  stats.json / stats.md   per source: language, examples in / kept / dropped by reason, prompt and answer tokens
                     under the run's tokenizer; `in = kept + dropped` checked per source
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from vikhr.config import Config, ConfigError, InstructSource, resolve_path, to_dict
from vikhr.log import get_logger
from vikhr.manifest import StageRecord, path_fingerprint, write_json_atomic
from vikhr.rundir import RunDir
from vikhr.scripts import LANGUAGE_SCRIPTS, LATIN
from vikhr.stages.common import spec_fingerprints

log = get_logger(__name__)

NAME = "instruct"
VERSION = 1
DEPENDS: tuple[str, ...] = ("reward", "tokenizer")  # reward filter; token counts
"""Stages whose output this one reads: it reruns when one of them does."""
SOFT: tuple[str, ...] = ("tokenizer",)
"""Of those, the ones read only when they finished (else `data.*` / the base tokenizer)."""


def depends(cfg: Config) -> tuple[str, ...]:
    """This run's reward model when `instruct.reward_model: reward`; the run's tokenizer for the token counts."""
    return (("reward",) if cfg.instruct.reward_model == "reward" else ()) + ("tokenizer",)


BUNDLED_SEEDS = "bundled:instruct/ru_seed_tasks.jsonl"
"""The rulm Russian seed tasks shipped with the package (Apache-2.0): the default source."""


def instruct_sources(cfg: Config) -> dict[str, InstructSource]:
    """`instruct.sources` (those `instruct.use` names, when it names any), or the bundled Russian seed tasks when
    none are configured."""
    srcs = dict(cfg.instruct.sources) or {
        "ru_seed_tasks": InstructSource(path=[BUNDLED_SEEDS], format="seed", language="ru")
    }
    unknown = [u for u in cfg.instruct.use if u not in srcs]
    if unknown:
        raise ConfigError(
            f"instruct.use names {', '.join(map(repr, unknown))}, not among instruct.sources ({', '.join(srcs)})"
        )
    return {k: v for k, v in srcs.items() if not cfg.instruct.use or k in cfg.instruct.use}


def read_sources(cfg: Config) -> tuple[list, list]:
    """Examples of every source in order, and the records that gave none (with reasons)."""
    from vikhr.corpus.readers import InputError, resolve_spec
    from vikhr.instruct.formats import read_examples

    base = resolve_path(cfg, ".")
    examples, rejected = [], []
    for name, src in instruct_sources(cfg).items():
        if not src.path:
            raise ValueError(f"instruct.sources.{name}.path is empty: give one or more files or folders")
        for spec in src.path:
            path = resolve_spec(spec, base)
            if not path.exists():
                raise InputError(f"instruct.sources.{name}: {path} does not exist")
            ex, rej = read_examples(path, source=name, fmt=src.format)
            if len(src.path) > 1:  # ids stay unique across the files of one source
                for e in ex:
                    e.id = f"{e.id}@{path.name}"
                for r in rej:
                    r.id = f"{r.id}@{path.name}"
            examples += ex
            rejected += rej
    return examples, rejected


def language_of(texts: list[str], target: str) -> str:
    """`target` when its script's letters outnumber Latin letters in `texts`, else `en`."""
    import re

    script = LANGUAGE_SCRIPTS.get(target, LATIN)
    if script == LATIN:
        return target
    joined = "\n".join(texts)
    mine, latin = len(re.findall(f"[{script}]", joined)), len(re.findall(f"[{LATIN}]", joined))
    return target if mine >= latin else "en"


def _drop(example, reason: str, detail: str = "", **extra) -> dict:
    return {"source": example.source, "id": example.id, "where": example.where, "reason": reason,
            "detail": detail, **extra, "messages": example.messages}  # fmt: skip


def deduplicate(examples: list, work: Path, cfg: Config) -> tuple[list, list[dict], dict]:
    """Prompts deduplicated across sources with the corpus chain (`vikhr.corpus.dedup.dedup_records`)."""
    from vikhr.corpus.dedup import dedup_records

    opts = cfg.instruct.dedup
    if not (opts.exact or opts.near) or not examples:
        return examples, [], {}
    removed, summary = dedup_records(
        [(e.id, e.prompt) for e in examples], work, opts=opts, workers=cfg.corpus.workers
    )
    kept = [e for e in examples if e.id not in removed]
    dropped = [_drop(e, removed[e.id][0], duplicate_of=removed[e.id][1]) for e in examples if e.id in removed]
    return (
        kept,
        dropped,
        {k: summary[k] for k in ("input", "kept", "removed", "exact_duplicate", "near_duplicate")},
    )


def reward_model_path(cfg: Config, rundir: RunDir) -> str:
    """The reward model `instruct.reward_model` names: this run's reward stage output, or a folder / alias."""
    spec = cfg.instruct.reward_model
    if spec == "reward":
        folder = rundir.stage_dir("reward") / "model"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"instruct.reward_model: reward, but there is no model at {folder}: set reward.pairs and run the "
                "reward stage first"
            )
        return str(folder)
    from vikhr.models import resolve_model

    local = resolve_path(cfg, spec)
    return resolve_model(str(local) if local.is_dir() else spec)


def reward_filter(examples: list, cfg: Config, rundir: RunDir) -> tuple[list, list[dict], dict]:
    """Examples scored by the reward model (on the last reply given what precedes it) and filtered by threshold or
    quantile; the dropped ones carry their score."""
    ic = cfg.instruct
    if not ic.reward_model or not examples:
        return examples, [], {}
    from vikhr.instruct.reward import score_texts, select

    path = reward_model_path(cfg, rundir)
    items = [(e.messages[:-1], e.messages[-1]["content"]) for e in examples]
    scores = score_texts(path, items, batch_size=ic.reward_batch_size, max_length=ic.reward_max_length)
    if ic.reward_threshold is not None:
        keep = select(scores, threshold=ic.reward_threshold)
    else:
        keep = select(scores, quantile=ic.reward_quantile)
    for e, s in zip(examples, scores, strict=True):
        e.meta["reward"] = round(float(s), 4)
    rule = (
        f">= {ic.reward_threshold}"
        if ic.reward_threshold is not None
        else f"top {1 - ic.reward_quantile:.0%}"
    )
    dropped = [_drop(e, "low_reward", f"score {s:.4f}, kept {rule}", score=round(float(s), 4))
               for e, s, k in zip(examples, scores, keep, strict=True) if not k]  # fmt: skip
    kept = [e for e, k in zip(examples, keep, strict=True) if k]
    ordered = sorted(scores)
    summary = {"model": path, "rule": rule, "scored": len(scores), "dropped": len(dropped),
               "median": ordered[len(ordered) // 2] if ordered else None}  # fmt: skip
    return kept, dropped, summary


def cap_and_weight(examples: list, cfg: Config) -> tuple[list, list[dict]]:
    """Per source: a seeded sample of at most `cap` examples (the rest dropped as `over_cap`), then each kept
    example `weight` times in the mix (whole repeats plus a seeded sample for the fraction)."""
    rng = random.Random(cfg.instruct.seed)
    sources = instruct_sources(cfg)
    mix, dropped = [], []
    for name, src in sources.items():
        mine = [e for e in examples if e.source == name]
        if 0 < src.cap < len(mine):
            keep = set(rng.sample(range(len(mine)), src.cap))
            dropped += [_drop(e, "over_cap", f"cap {src.cap}") for i, e in enumerate(mine) if i not in keep]
            mine = [e for i, e in enumerate(mine) if i in keep]
        whole, frac = int(src.weight), src.weight - int(src.weight)
        extra = rng.sample(mine, round(frac * len(mine))) if frac else []
        if src.weight < 1:  # a fraction of the examples only: the rest are dropped as `weight`
            chosen = {e.id for e in extra}
            dropped += [_drop(e, "weight", f"weight {src.weight}") for e in mine if e.id not in chosen]
        mix += [e for _ in range(whole) for e in mine] + extra
    return mix, dropped


def run_tokenizer(cfg: Config, rundir: RunDir):
    """The tokenizer examples are counted with: the tokenizer stage's output, else the source model's."""
    from transformers import AutoTokenizer

    folder = rundir.stage_dir("tokenizer") / "hf"
    if rundir.is_done("tokenizer") and (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(folder), "tokenizer stage"
    from vikhr.stages.common import source_model_path

    return AutoTokenizer.from_pretrained(source_model_path(cfg)), "source model"


def token_counts(examples: list, tokenizer) -> dict[str, tuple[int, int]]:
    """{example id: (prompt tokens, answer tokens)}: the non-assistant and the assistant contents."""
    prompts = ["\n".join(m["content"] for m in e.messages if m["role"] != "assistant") for e in examples]
    answers = ["\n".join(m["content"] for m in e.messages if m["role"] == "assistant") for e in examples]
    out: dict[str, tuple[int, int]] = {}
    for i in range(0, len(examples), 512):
        p = tokenizer(prompts[i : i + 512], add_special_tokens=False)["input_ids"]
        a = tokenizer(answers[i : i + 512], add_special_tokens=False)["input_ids"]
        for e, x, y in zip(examples[i : i + 512], p, a, strict=True):
            out[e.id] = (len(x), len(y))
    return out


def table(
    cfg: Config, examples: list, rejected: list, dropped: list[dict], mix: list, tokens: dict
) -> list[dict]:
    """One row per source (paper Table 4): examples in, kept, dropped by reason, mix size and tokens."""
    rows = []
    for name in instruct_sources(cfg):
        mine = [e for e in examples if e.source == name]
        reasons = Counter(r.reason for r in rejected if r.source == name)
        reasons.update(d["reason"] for d in dropped if d["source"] == name)
        in_mix = [e for e in mix if e.source == name]
        kept_ids = {e.id for e in in_mix}
        total_in = len(mine) + sum(1 for r in rejected if r.source == name)
        row = {
            "source": name,
            "language": instruct_sources(cfg)[name].language
            or language_of([m["content"] for e in mine[:500] for m in e.messages], cfg.language),
            "in": total_in, "kept": len(kept_ids), "dropped": sum(reasons.values()), "reasons": dict(reasons),
            "mix": len(in_mix), "prompt_tokens": sum(tokens[e.id][0] for e in in_mix),
            "answer_tokens": sum(tokens[e.id][1] for e in in_mix),
        }  # fmt: skip
        if row["in"] != row["kept"] + row["dropped"]:
            raise RuntimeError(f"instruct: source {name}: in {row['in']} != kept {row['kept']} + dropped "
                               f"{row['dropped']} ({dict(reasons)})")  # fmt: skip
        rows.append(row)
    return rows


def markdown(rows: list[dict], tokenizer_from: str, extra: dict) -> str:
    reasons = sorted({r for row in rows for r in row["reasons"]})
    head = ["source", "language", "in", "kept", *reasons, "in mix", "prompt tokens", "answer tokens"]
    lines = ["# Instruction data", "", f"Tokens under the run's tokenizer ({tokenizer_from}). `in = kept + dropped` "
             "per source; `in mix` counts weighted repeats.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    total = {k: 0 for k in ("in", "kept", "mix", "prompt_tokens", "answer_tokens")}
    for row in rows:
        cells = [row["source"], row["language"], row["in"], row["kept"],
                 *[row["reasons"].get(r, 0) for r in reasons], row["mix"], row["prompt_tokens"],
                 row["answer_tokens"]]  # fmt: skip
        lines.append("| " + " | ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in cells) + " |")
        for k in total:
            total[k] += row[k]
    lines += ["", f"Total: {total['in']:,} in, {total['kept']:,} kept, {total['mix']:,} in the mix, "
              f"{total['answer_tokens']:,} answer tokens."]  # fmt: skip
    for key, value in extra.items():
        if value:
            lines += ["", f"- {key}: " + ", ".join(f"{k} {v}" for k, v in value.items())]
    return "\n".join(lines) + "\n"


def _write_jsonl(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def run(cfg: Config, rundir: RunDir) -> StageRecord:
    import shutil

    record = StageRecord(name=NAME, started=time.time())
    t0 = time.perf_counter()
    examples, rejected = read_sources(cfg)
    if not examples:
        raise ValueError(f"instruct: no usable examples in {', '.join(instruct_sources(cfg))} "
                         f"({len(rejected)} records rejected: {dict(Counter(r.reason for r in rejected))})")  # fmt: skip
    work = rundir.work_dir(NAME)
    shutil.rmtree(work, ignore_errors=True)  # nothing to resume: the dedup chain starts fresh each run
    kept, dups, dedup = deduplicate(examples, work / "dedup", cfg)
    kept, low, reward = reward_filter(kept, cfg, rundir)
    mix, capped = cap_and_weight(kept, cfg)
    dropped = dups + low + capped
    tokenizer, tokenizer_from = run_tokenizer(cfg, rundir)
    tokens = token_counts(kept, tokenizer)
    rows = table(cfg, examples, rejected, dropped, mix, tokens)
    random.Random(cfg.instruct.seed).shuffle(mix)
    stats = {"sources": rows, "dedup": dedup, "reward": reward, "tokenizer": tokenizer_from,
             "examples": len(examples), "rejected": len(rejected), "mix": len(mix),
             "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    with rundir.staging(NAME) as out:
        (out / "data").mkdir()
        _write_jsonl(out / "data" / "train.jsonl",
                     ({"messages": e.messages, "id": e.id, "source": e.source, **e.meta} for e in mix))  # fmt: skip
        _write_jsonl(out / "dropped.jsonl", [r.as_dict() | {"stage": "read"} for r in rejected] + dropped)
        write_json_atomic(out / "stats.json", stats)
        extra = {"dedup": dedup, "reward filter": {k: v for k, v in reward.items() if k != "model"}}
        (out / "stats.md").write_text(markdown(rows, tokenizer_from, extra), encoding="utf-8")
    log.info("instruct: %d examples in the mix from %s", len(mix), ", ".join(
        f"{r['source']} {r['kept']}/{r['in']}" for r in rows))  # fmt: skip
    record.metrics = {"examples": len(examples), "rejected": len(rejected), "dropped": len(dropped),
                      "mix": len(mix), "sources": {r["source"]: {k: r[k] for k in ("in", "kept", "mix")}
                                                  for r in rows}}  # fmt: skip
    record.outputs = {"data": "instruct/data/train.jsonl", "report": "instruct/stats.md"}
    return record


def inputs(cfg: Config) -> dict:
    specs = [p for src in instruct_sources(cfg).values() for p in src.path]
    out: dict = {"sources": spec_fingerprints(cfg, specs)}
    spec = cfg.instruct.reward_model
    if spec and spec != "reward":
        local = resolve_path(cfg, spec)
        out["reward_model"] = path_fingerprint(local) if local.is_dir() else spec
    return out


def config_section(cfg: Config) -> dict:
    return {"instruct": to_dict(cfg.instruct), "language": cfg.language}
