"""datatrove executors chosen by name: `local` (processes on this machine) or `ray` (a Ray cluster).

The corpus stage is a chain of datatrove pipelines (read and filter, deduplicate, score, write); each link is built
with `make_executor`, depending on the previous one, and run before the stage reads its results. Locally the chain
runs step by step in worker processes; on Ray each link is a set of remote tasks. Everything between links goes
through files in the work folder, so memory stays bounded however large the corpus is. (Slurm is not supported:
datatrove's Slurm executor submits and returns, and the stage would read results that do not exist yet.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vikhr.log import get_logger

log = get_logger(__name__)

MAX_AUTO_TASKS = 64


@dataclass
class ExecutorOptions:
    """Where and how datatrove runs the pipelines."""

    kind: str = "local"
    """`local` or `ray`."""
    logging_root: Path = Path("logs")
    """datatrove's logging folders (completions, stats) go under this, one per pipeline."""
    workers: int = 0
    """Tasks at once for `local` (0: CPU cores)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the executor (Ray: address, cpus_per_task, mem_per_cpu_gb ...)."""


def auto_tasks(n_inputs: int, requested: int = 0) -> int:
    """Tasks for a step over `n_inputs` files: what was asked, else one per file up to MAX_AUTO_TASKS."""
    if requested > 0:
        return requested
    return max(1, min(n_inputs, MAX_AUTO_TASKS))


def make_executor(pipeline: list, *, name: str, tasks: int, opts: ExecutorOptions, depends=None):
    """A datatrove executor of kind `opts.kind` for `pipeline`, logging under `<logging_root>/<name>`."""
    logging_dir = str(Path(opts.logging_root) / name)
    if opts.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        workers = min(tasks, opts.workers or os.cpu_count() or 1)
        return LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, depends=depends,
            **opts.options,
        )  # fmt: skip
    if opts.kind == "ray":
        try:
            from datatrove.executor import RayPipelineExecutor
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("the ray executor needs ray: pip install 'ray[default]'") from e
        import ray

        options = dict(opts.options)
        address = options.pop("address", None) or os.environ.get("RAY_ADDRESS")
        if not ray.is_initialized():  # joins a running cluster at `address`, else starts a local one
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        return RayPipelineExecutor(pipeline, tasks=tasks, logging_dir=logging_dir, depends=depends, **options)
    raise ValueError(f"unknown corpus.executor {opts.kind!r} (local, ray)")
