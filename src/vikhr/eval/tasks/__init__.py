"""Evaluation tasks written as lm-evaluation-harness 0.4.13 task YAML (multiple choice, loglikelihood, simple
generation on local JSON Lines): the same file runs in vikhr and in lm-eval, with byte-identical prompts.

    task = load_task("parus")                 # a shipped task, or a path to a YAML file
    items, skipped = build_items(task, limit=100)
    export_tasks(["parus", "rcb"], Path("lm_eval_tasks"))   # then: lm_eval --include_path lm_eval_tasks ...

See README.md in this folder for the supported keys, the shipped tasks and their data.
"""

from vikhr.eval.tasks.core import (
    Item,
    Skipped,
    Task,
    build_items,
    export_tasks,
    load_task,
    shipped_tasks,
    task_files,
)
from vikhr.eval.tasks.errors import TaskError

__all__ = [
    "Item",
    "Skipped",
    "Task",
    "TaskError",
    "build_items",
    "export_tasks",
    "load_task",
    "shipped_tasks",
    "task_files",
]
