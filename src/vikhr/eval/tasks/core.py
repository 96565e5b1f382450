"""Evaluation tasks as lm-evaluation-harness 0.4.13 task YAML: load, build the requests, export for lm-eval.

`build_items` produces, for each doc of the evaluated split, the exact context and continuations lm-eval
0.4.13 would send (description, few-shot examples drawn with its default seed, `target_delimiter`), so that a
task file runs unchanged in both. Scoring (acc, acc_norm, acc_bytes, exact_match) is done by the caller."""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import jinja2
import yaml

from vikhr.eval.tasks.data import absolute_name, conform_docs, locate, read_jsonl
from vikhr.eval.tasks.errors import TaskError
from vikhr.eval.tasks.render import (
    FewshotSampler,
    choices_of,
    compile_template,
    description_of,
    fewshot_answer,
    target_of,
    text_of,
)
from vikhr.eval.tasks.yamlcfg import Checked, check_config, read_task_yaml
from vikhr.log import get_logger

logger = get_logger(__name__)

TASKS_DIR = Path(__file__).resolve().parent
"""The shipped task files (`*.yaml`) live here, their bundled data under `data/`."""

TEMPLATE_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice", "description")


@dataclass
class Task(Checked):
    """One task file, checked against the supported subset; data is read on first use. The checked settings
    (name, output_type, metrics, num_fewshot, delimiters, description, generation_kwargs, answer_regex, the
    exact-match options, data files and splits) are the fields of `Checked`."""

    path: Path
    """The YAML file (absolute)."""
    config: dict
    """The merged raw YAML (after include)."""
    _origins: dict[str, Path] = field(repr=False, compare=False, default_factory=dict)
    _yaml_files: list[Path] = field(repr=False, compare=False, default_factory=list)
    _splits: dict[str, list[dict]] | None = field(init=False, repr=False, compare=False, default=None)
    _features: list[str] = field(init=False, repr=False, compare=False, default_factory=list)

    def docs(self, split: str | None = None) -> list[dict]:
        """The docs of a split (default: test_split, else validation_split), read once and cached; every doc
        has every column, as `datasets` gives them."""
        self._load()
        split = split or self.eval_split
        if split not in self._splits:
            raise TaskError(
                f"{self.path}: split {split!r} is not in dataset_kwargs.data_files "
                f"(which has: {', '.join(self._splits)})"
            )
        return self._splits[split]

    def doc_to_text(self, doc: dict) -> str:
        """The doc's context text (without description and few-shot examples)."""
        return self._text(doc, "the given doc")

    def doc_to_choice(self, doc: dict) -> list[str]:
        """The doc's answer choices."""
        return self._choices(doc, "the given doc")

    def doc_to_target(self, doc: dict) -> Any:
        """The doc's target with lm-eval's semantics: an int (index into the choices), a str, or a list."""
        return self._target(doc, "the given doc")

    # ------------------------------------------------------------------------------------------- internals

    def _at(self, key: str) -> str:
        src = self._origins.get(key, self.path)
        return f"{self.path}: key '{key}'" + ("" if src == self.path else f" (set in {src})")

    def _load(self) -> None:
        if self._splits is not None:
            return
        base_dir = self._data_dir()
        raw: dict[str, list[dict]] = {}
        for split, names in self.data_files.items():
            rows: list[dict] = []
            for name in names:
                files = locate(name, base_dir)
                if not files:
                    raise TaskError(
                        f"{self._at('dataset_kwargs')}: data file {name!r} of split {split!r} not found "
                        f"(looked in {base_dir} and in the current directory {Path.cwd()})"
                    )
                for file in files:
                    rows += read_jsonl(file)
            if not rows:
                raise TaskError(
                    f"{self._at('dataset_kwargs')}: split {split!r} ({', '.join(names)}) has no items"
                )
            raw[split] = rows
        self._splits, self._features = conform_docs(raw)
        logger.debug("%s: read %s", self.name, {s: len(d) for s, d in self._splits.items()})

    def _data_dir(self) -> Path:
        """Where relative data files are looked for first: beside the YAML file that sets `dataset_kwargs`."""
        return self._origins.get("dataset_kwargs", self.path).parent

    def _features_list(self) -> list[str]:
        self._load()
        return self._features

    def _apply(self, key: str, fn, where: str) -> Any:
        try:
            return fn()
        except TaskError:
            raise
        except Exception as e:  # a template or literal that fails on this doc
            raise TaskError(f"{self._at(key)}: failed on {where}: {type(e).__name__}: {e}") from None

    def _text(self, doc: dict, where: str) -> str:
        spec, has_choice = self.config["doc_to_text"], self.config.get("doc_to_choice") is not None
        text = self._apply(
            "doc_to_text", lambda: text_of(spec, doc, self._features_list(), has_choice), where
        )
        if not isinstance(text, str):
            raise TaskError(
                f"{self._at('doc_to_text')}: gave {text!r} on {where}, not a string (multiple-input "
                "tasks, whose doc_to_text gives a choice index, are outside the supported subset)"
            )
        return text

    def _choices(self, doc: dict, where: str) -> list[str]:
        spec = self.config.get("doc_to_choice")
        if spec is None:
            raise TaskError(f"{self._at('doc_to_choice')}: not set")
        choices = self._apply("doc_to_choice", lambda: choices_of(spec, doc, self._features_list()), where)
        if isinstance(choices, tuple):
            choices = list(choices)
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise TaskError(
                f"{self._at('doc_to_choice')}: gave {choices!r} on {where}; expected a non-empty "
                "list of strings"
            )
        return choices

    def _target(self, doc: dict, where: str) -> Any:
        spec, has_choice = self.config["doc_to_target"], self.config.get("doc_to_choice") is not None
        return self._apply(
            "doc_to_target", lambda: target_of(spec, doc, self._features_list(), has_choice), where
        )

    def _description(self, doc: dict, where: str) -> str:
        text = self._apply("description", lambda: description_of(self.description, doc), where)
        if not isinstance(text, str):
            raise TaskError(f"{self._at('description')}: gave {text!r} on {where}, not a string")
        return text


@dataclass
class Item:
    """One evaluation request, exactly as lm-eval 0.4.13 builds it."""

    task: str
    index: int
    """Position of the doc in the evaluated split."""
    doc: dict
    context: str
    """Description + few-shot examples + doc_to_text: lm-eval's request context."""
    choices: list[str]
    """multiple_choice: doc_to_choice; loglikelihood: [target]; generate_until: []."""
    continuations: list[str]
    """lm-eval's request continuations: target_delimiter + choice (multiple_choice), the target as is
    (loglikelihood: lm-eval adds no delimiter there); [] for generate_until."""
    gold: int | list[int] | str
    """multiple_choice: index (or indices) into choices; loglikelihood: 0; generate_until: the target text."""


@dataclass
class Skipped:
    """A doc that cannot be scored: its gold is not among its choices (lm-eval counts it as wrong)."""

    task: str
    index: int
    reason: str


@functools.cache
def _shipped() -> dict[str, Path]:
    out = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        cfg, _, _ = read_task_yaml(path)
        if isinstance(cfg.get("task"), str):
            out[cfg["task"]] = path
    return out


def shipped_tasks() -> dict[str, Path]:
    """Name -> YAML path of the tasks shipped in the package."""
    return dict(_shipped())


def load_task(spec: str | Path) -> Task:
    """A shipped task by name, or a task YAML file by path (a Path, or a str ending in .yaml/.yml or holding a
    slash). Checks the whole file; the data is read when first needed."""
    text = str(spec)
    if isinstance(spec, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise TaskError(f"{path}: no such task file")
    else:
        shipped = shipped_tasks()
        if text not in shipped:
            raise TaskError(
                f"{text!r}: no shipped task of that name (shipped: {', '.join(sorted(shipped))}); "
                "pass the path of a YAML file for other tasks"
            )
        path = shipped[text]
    cfg, origins, yaml_files = read_task_yaml(path)
    checked = check_config(cfg, origins, path)
    for key in TEMPLATE_KEYS:
        if isinstance(cfg.get(key), str):
            try:
                compile_template(cfg[key])
            except jinja2.TemplateSyntaxError as e:
                src = origins.get(key, path)
                where = f"{path}: key '{key}'" + ("" if src == path else f" (set in {src})")
                raise TaskError(
                    f"{where}: not a valid Jinja template: {e.message} (template line {e.lineno})"
                ) from None
    return Task(
        **{f.name: getattr(checked, f.name) for f in fields(Checked)},
        path=path,
        config=cfg,
        _origins=origins,
        _yaml_files=yaml_files,
    )


def task_files(task: Task) -> list[Path]:
    """Every file a task depends on, to fingerprint it: its YAML file, the files it includes, its data files
    (a missing one as both places it is looked for, so that the fingerprint changes when it appears)."""
    base_dir = task._data_dir()
    out = list(task._yaml_files)
    for names in task.data_files.values():
        for name in names:
            out += locate(name, base_dir) or [base_dir / name, Path.cwd() / name]
    return list(dict.fromkeys(out))


# -------------------------------------------------------------------------------------------------- requests


def build_items(task: Task, *, limit: int | None = None) -> tuple[list[Item], list[Skipped]]:
    """The requests for the first `limit` docs of the evaluated split (all without a limit), like `lm_eval
    --limit`, plus the docs that cannot be scored. Few-shot examples are drawn in doc order from lm-eval's
    seeded sampler, so the contexts are byte-identical to lm-eval's for the same `limit`-independent prefix.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    docs = task.docs()
    sampler, pool_index = None, {}
    if task.num_fewshot > 0:
        pool = task.docs(task.fewshot_pool)
        sampler = FewshotSampler(pool, task.sampler)
        pool_index = {id(d): j for j, d in enumerate(pool)}
    items: list[Item] = []
    skipped: list[Skipped] = []
    for i, doc in enumerate(docs[:limit]):
        where = f"item {i} of split '{task.eval_split}'"
        examples = []
        if sampler is not None:
            try:
                shots = sampler.sample(task.num_fewshot, doc if task.remove_eval_doc else None)
            except ValueError as e:
                raise TaskError(
                    f"{task._at('num_fewshot')}: cannot draw {task.num_fewshot} examples for {where} "
                    f"from split '{task.fewshot_pool}' ({len(sampler.pool)} docs): {e}"
                ) from None
            examples = [
                (s, f"few-shot doc {pool_index[id(s)]} of split '{task.fewshot_pool}' (for {where})")
                for s in shots
            ]
        context = _context(task, doc, where, examples)
        result = _request(task, i, doc, context, where)
        (skipped if isinstance(result, Skipped) else items).append(result)
    if skipped:
        logger.warning(
            "%s: %d of %d items skipped (gold not among the choices), e.g. item %d: %s",
            task.name,
            len(skipped),
            len(items) + len(skipped),
            skipped[0].index,
            skipped[0].reason,
        )
    return items, skipped


def _context(task: Task, doc: dict, where: str, examples: list[tuple[dict, str]]) -> str:
    """lm-eval's plain-text context: description, then per example `text + target_delimiter + answer +
    fewshot_delimiter` (just the text when the target is empty), then the doc's text."""
    parts = [task._description(doc, where)]
    with_choices = bool(task.config.get("doc_to_choice"))
    for fs_doc, fs_where in examples:
        text = task._text(fs_doc, fs_where)
        choices = task._choices(fs_doc, fs_where) if with_choices else None
        target = task._target(fs_doc, fs_where)
        if target is None or (isinstance(target, str) and target == ""):
            parts.append(text)
            continue
        try:
            answer = fewshot_answer(choices, target)
        except IndexError:
            answer = None
        if not isinstance(answer, str):
            raise TaskError(
                f"{task._at('doc_to_target')}: target {target!r} of {fs_where} gives no answer text "
                "for a few-shot example (an index into the choices or a string is needed)"
            )
        parts.append(text + task.target_delimiter + answer + task.fewshot_delimiter)
    parts.append(task._text(doc, where))
    return "".join(parts)


def _request(task: Task, index: int, doc: dict, context: str, where: str) -> Item | Skipped:
    target = task._target(doc, where)
    if task.output_type == "multiple_choice":
        choices = task._choices(doc, where)
        gold = _choice_gold(target, choices)
        if isinstance(gold, str):
            return Skipped(task.name, index, gold)
        continuations = [task.target_delimiter + c for c in choices]
        return Item(task.name, index, doc, context, choices, continuations, gold)
    if task.output_type == "loglikelihood":
        if not isinstance(target, str):
            raise TaskError(
                f"{task._at('doc_to_target')}: gave {target!r} on {where}; a loglikelihood target "
                "must be text"
            )
        return Item(task.name, index, doc, context, [target], [target], 0)
    if isinstance(target, list):
        raise TaskError(
            f"{task._at('doc_to_target')}: gave a list on {where}; several targets for one "
            "generate_until item are outside the supported subset"
        )
    if task.config.get("doc_to_choice") is not None:
        choices = task._choices(doc, where)
        if (
            isinstance(target, bool)
            or not isinstance(target, int)
            or not -len(choices) <= target < len(choices)
        ):
            return Skipped(
                task.name,
                index,
                f"gold {target!r} is not an index into the {len(choices)} choices "
                "(lm-eval fails on this item)",
            )
        target = choices[target]
    if target is None:
        return Skipped(task.name, index, "gold is missing (null)")
    return Item(task.name, index, doc, context, [], [], str(target))


def _choice_gold(target: Any, choices: list[str]) -> int | list[int] | str:
    """The gold index (or indices) into `choices` by lm-eval's rules; a str says why there is none."""
    n = len(choices)
    wrong = "lm-eval scores this item as always wrong"

    def index(g: Any) -> int | None:
        if isinstance(g, float) and g.is_integer():
            g = int(g)
        return int(g) if isinstance(g, int) and 0 <= g < n else None

    if target is None:
        return f"gold is missing (null); {wrong}"
    if isinstance(target, str):
        if target in choices:
            return choices.index(target)
        return f"gold {_short(target)} is not among the {n} choices; {wrong}"
    if isinstance(target, list):
        golds = [index(g) for g in target]
        if target and None not in golds:
            return golds
        some = any(g is not None for g in golds)
        return f"gold {_short(target)} holds values that are not indices into the {n} choices; " + (
            "lm-eval ignores those and scores the others" if some else wrong
        )
    gold = index(target)
    return (
        gold if gold is not None else f"gold {_short(target)} is not an index into the {n} choices; {wrong}"
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------- export


def export_tasks(names_or_paths: list[str], dest: Path) -> list[Path]:
    """lm-eval-ready copies of tasks in `dest` (one `<task>.yaml` each, for `lm_eval --include_path dest`):
    the merged config (includes folded in) with `data_files` made absolute, since lm-eval resolves relative
    data files from its working directory. A data file that does not exist yet (xnli_ru, ru_mmlu) is pointed
    at the current directory, with a warning."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for spec in names_or_paths:
        task = load_task(spec)
        if task.name in written:
            raise TaskError(
                f"{task.path}: key 'task': {task.name!r} is exported twice (lm-eval needs unique names)"
            )
        cfg = copy.deepcopy(task.config)
        base_dir = task._data_dir()
        files = cfg["dataset_kwargs"]["data_files"]
        if isinstance(files, dict):
            cfg["dataset_kwargs"]["data_files"] = {s: _absolute(task, f, base_dir) for s, f in files.items()}
        else:
            cfg["dataset_kwargs"]["data_files"] = _absolute(task, files, base_dir)
        out = dest / (re.sub(r"[^\w.-]", "_", task.name) + ".yaml")
        text = yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)
        out.write_text(f"# Exported by vikhr from {task.path}\n{text}", encoding="utf-8")
        written[task.name] = out
        logger.info("exported %s to %s", task.name, out)
    return list(written.values())


class _Dumper(yaml.SafeDumper):
    """Safe YAML output that writes multi-line strings (templates) as literal blocks where YAML allows it."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def _absolute(task: Task, files: str | list[str], base_dir: Path) -> str | list[str]:
    names = [files] if isinstance(files, str) else files
    out = []
    for name in names:
        absolute = absolute_name(name, base_dir)
        if absolute is None:
            absolute = str(Path.cwd() / Path(name).expanduser())
            logger.warning(
                "%s: data file %r not found (looked in %s and in the current directory); the exported "
                "task points at %s: put the data there",
                task._at("dataset_kwargs"),
                name,
                base_dir,
                absolute,
            )
        out.append(absolute)
    return out[0] if isinstance(files, str) else out
