"""Rank helpers: which process this is under `accelerate launch` / `torchrun`. The one definition every module uses
(logging, progress bars, the pipeline's bookkeeping, the training stages)."""

from __future__ import annotations

import os


def rank() -> int:
    """Global rank: `RANK` (set by torchrun and accelerate), else `LOCAL_RANK`, else 0 (not distributed)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def world_size() -> int:
    """Number of processes in the run (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, or not distributed at all: files shared by all ranks are written only here, logs shown only here."""
    return rank() == 0


def under_launcher() -> bool:
    """True inside a process started by `accelerate launch` / `torchrun`."""
    return "LOCAL_RANK" in os.environ or "ACCELERATE_DYNAMO_BACKEND" in os.environ
