"""The pipeline's stages, in order. Each module has `NAME`, `VERSION`, `run(cfg, rundir) -> StageRecord`,
`inputs(cfg) -> dict` (fingerprints of what it reads besides the run directory) and `config_section(cfg)`.

A later stage plugs in by adding its module to `STAGES`; the runner needs no change.
"""

from __future__ import annotations

from types import ModuleType

from vikhr.stages import corpus, evaluate, instruct, pretrain, report, reward, sft, tokenizer, transplant

STAGES: list[ModuleType] = [corpus, tokenizer, transplant, pretrain, reward, instruct, sft, evaluate, report]


def stage_names() -> list[str]:
    return [s.NAME for s in STAGES]


def get_stage(name: str) -> ModuleType:
    for s in STAGES:
        if s.NAME == name:
            return s
    raise ValueError(f"unknown stage {name!r} (stages: {', '.join(stage_names())})")
