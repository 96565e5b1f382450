"""Multi-GPU launch: `vikhr pretrain --launcher NAME` re-executes itself under `accelerate launch`.

NAME is one of the shipped configs in `configs/accelerate/` (ddp, fsdp, zero2, zero3) or a path to an accelerate
config YAML. The child processes see `LOCAL_RANK`/`WORLD_SIZE` and run the stage on every rank.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vikhr.log import get_logger

log = get_logger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
"""The package's `vikhr/configs/accelerate` (package data: shipped in the wheel, found from any install)."""


def launcher_names() -> list[str]:
    """Names of the shipped accelerate configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []


def launcher_config(name: str) -> Path:
    """The accelerate config file for a launcher name or path; a clear error for an unknown one."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve()
    shipped = CONFIG_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(launcher_names()) or f"none found in {CONFIG_DIR}"
    raise ValueError(
        f"unknown launcher {name!r}: use one of {known}, or the path of an accelerate config YAML"
    )


def launch_command(name: str, argv: list[str], num_processes: int = 0) -> list[str]:
    """`accelerate launch --config_file CFG [--num_processes N] -m vikhr ARGV` without the launcher flags."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launcher_config(name))]
    if not num_processes:
        import torch

        num_processes = torch.cuda.device_count()  # every visible GPU; none: the config file's number
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    return [*cmd, "-m", "vikhr", *argv]


def relaunch(name: str, argv: list[str], num_processes: int = 0) -> int:
    """Run `argv` (vikhr's own arguments, launcher flags removed) under `accelerate launch`; its exit status."""
    cmd = launch_command(name, argv, num_processes)
    log.info("re-executing under accelerate: %s", " ".join(cmd))
    return subprocess.call(cmd)
