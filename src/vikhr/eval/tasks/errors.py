"""The one error type of the task loader."""

from __future__ import annotations


class TaskError(ValueError):
    """A task file or its data is outside the supported subset or broken; the message names the YAML file and
    the key, or the item (doc index, data file line) that caused it."""
