"""Stage `reward`: a Bradley–Terry reward model fitted on preference pairs (paper §3.3), for the `instruct` stage's
filter (`instruct.reward_model: reward`).

Reads `reward.pairs` (chosen/rejected with or without a prompt, HH-RLHF transcripts, OpenAI messages;
`vikhr.instruct.formats.read_pairs`), trains `reward.model` with `vikhr.instruct.reward.train_reward` and writes
`reward/`: model/ (a plain HF sequence-classification folder), reward_report.json / .md (held-out pairwise
accuracy next to a length-only baseline, truncation counts), held_out_scores.jsonl, rejected.jsonl. With no
`reward.pairs` the stage records that it is not configured and writes an empty folder.
"""

from __future__ import annotations

import json
import time

from vikhr.config import Config, resolve_path, to_dict
from vikhr.log import get_logger
from vikhr.manifest import StageRecord, path_fingerprint
from vikhr.rundir import RunDir
from vikhr.stages.common import spec_fingerprints

log = get_logger(__name__)

NAME = "reward"
VERSION = 1
DEPENDS: tuple[str, ...] = ()
"""Stages whose output this one reads: it reruns when one of them does."""


def run(cfg: Config, rundir: RunDir) -> StageRecord:
    from vikhr.corpus.readers import resolve_spec
    from vikhr.instruct.reward import read_pair_files, train_reward
    from vikhr.models import resolve_model

    r = cfg.reward
    record = StageRecord(name=NAME, started=time.time())
    if not r.pairs:
        log.info("reward: no reward.pairs configured; nothing to train")
        with rundir.staging(NAME):
            pass
        record.metrics = {"configured": False}
        return record
    base = resolve_path(cfg, ".")
    files = [str(resolve_spec(p, base)) for p in r.pairs]
    pairs, rejected, reading = read_pair_files(files, limit=r.max_pairs)
    local = resolve_path(cfg, r.model)
    model = resolve_model(str(local) if local.is_dir() else r.model)
    with rundir.staging(NAME) as out:
        report = train_reward(
            pairs, model, out, epochs=r.epochs, lr=r.lr, batch_size=r.batch_size, grad_accum=r.grad_accum,
            max_length=r.max_length, eval_share=r.eval_share, seed=r.seed, resume=False, inputs=reading,
        )  # fmt: skip
        with (out / "rejected.jsonl").open("w", encoding="utf-8") as f:
            for rej in rejected:
                f.write(json.dumps(rej.as_dict(), ensure_ascii=False) + "\n")
    held = report["held_out"]
    record.metrics = {"configured": True, "pairs": len(pairs), "rejected": len(rejected),
                      "accuracy": held["reward_model"]["value"],
                      "length_baseline": held["length_baseline"]["accuracy"]["value"]}  # fmt: skip
    record.outputs = {"model": "reward/model", "report": "reward/reward_report.md"}
    return record


def inputs(cfg: Config) -> dict:
    r = cfg.reward
    out: dict = {"pairs": spec_fingerprints(cfg, list(r.pairs))}
    if r.pairs:
        local = resolve_path(cfg, r.model)
        out["model"] = path_fingerprint(local) if local.is_dir() else r.model
    return out


def config_section(cfg: Config) -> dict:
    return {"reward": to_dict(cfg.reward)}
