"""Logging setup: one format for the whole toolkit, rank 0 only under a launcher."""

from __future__ import annotations

import logging
import sys

from vikhr.train.dist import is_main_process

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int = "INFO") -> None:
    """Configure the root `vikhr` logger once; later calls only change the level."""
    root = logging.getLogger("vikhr")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level if is_main_process() else "WARNING")


def get_logger(name: str) -> logging.Logger:
    """A logger under the `vikhr` namespace (`vikhr.tokenizer.train`, ...)."""
    return logging.getLogger(name if name.startswith("vikhr") else f"vikhr.{name}")


def progress(iterable=None, **kwargs):
    """A tqdm progress bar shown on rank 0 only."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not is_main_process())
    kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, **kwargs)
