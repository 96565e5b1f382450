"""Reading lm-evaluation-harness 0.4.13 task YAML: `include` merging, `!function` detection, and the checks
that keep a file inside the supported subset (multiple choice, loglikelihood and simple generation tasks on
local JSON Lines)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vikhr.eval.tasks.errors import TaskError
from vikhr.log import get_logger

logger = get_logger(__name__)

OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "generate_until")

METRICS = {
    "multiple_choice": ("acc", "acc_norm", "acc_bytes"),
    "loglikelihood": ("acc", "perplexity"),
    "generate_until": ("exact_match",),
}
"""The metrics each output type may list (the scorer computes them from the choices and the gold)."""

DEFAULT_METRICS = {
    "multiple_choice": ["acc", "acc_norm"],
    "loglikelihood": ["perplexity", "acc"],
    "generate_until": ["exact_match"],
}
"""lm-eval's metrics for a task without `metric_list`."""

AGGREGATION = {"perplexity": "perplexity"}
"""Each metric's only accepted aggregation (mean for the others): the scorer aggregates the lm-eval way."""

EXACT_MATCH_OPTIONS = ("ignore_case", "ignore_punctuation")
DEFAULT_REGEX = r"#### (\-?[0-9\.\,]+)"
"""lm-eval's `regex` filter pattern when `regex_pattern` is not given."""
DEFAULT_MAX_GEN_TOKS = 256
SAMPLERS = ("default", "first_n")
SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")

SUPPORTED_KEYS = frozenset(
    {
        "task",
        "task_alias",
        "tag",
        "group",
        "dataset_path",
        "dataset_name",
        "dataset_kwargs",
        *SPLIT_KEYS,
        "num_fewshot",
        "fewshot_config",
        "output_type",
        "doc_to_text",
        "doc_to_choice",
        "doc_to_target",
        "target_delimiter",
        "fewshot_delimiter",
        "description",
        "metric_list",
        "generation_kwargs",
        "filter_list",
        "should_decontaminate",
        "doc_to_decontamination_query",
        "metadata",
    }
)
PYTHON_HOOKS = frozenset({"process_docs", "process_results", "custom_dataset", "class"})


class FunctionTag(str):
    """The value of a `!function` tag, kept as a marker so that the error can name the key that uses it."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML loading that turns `!function x.y` into a `FunctionTag` instead of importing Python code."""


_Loader.add_constructor("!function", lambda loader, node: FunctionTag(loader.construct_scalar(node)))


def read_task_yaml(path: Path) -> tuple[dict[str, Any], dict[str, Path], list[Path]]:
    """The merged config of a task file (`include`s first, in order, then the file's own keys, like lm-eval),
    the file each key comes from, and every file read (the task file first)."""
    files: list[Path] = []
    cfg, origins = _read(Path(path).expanduser().resolve(), (), files)
    return cfg, origins, files


def _read(path: Path, stack: tuple[Path, ...], files: list[Path]) -> tuple[dict[str, Any], dict[str, Path]]:
    parent = f"{stack[-1]}: key 'include': " if stack else ""
    if path in stack:
        raise TaskError(f"{parent}include cycle through {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"{parent}{path}: no such task file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"{parent}{path}: cannot read the task file: {e}") from None
    try:
        cfg = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader with one extra tag
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML (or an unsupported tag): {e}") from None
    if not isinstance(cfg, dict) or not all(isinstance(k, str) for k in cfg):
        raise TaskError(f"{path}: expected a mapping of task keys, got {type(cfg).__name__}")
    files.append(path)
    origins = dict.fromkeys(cfg, path)
    if "include" not in cfg:
        return cfg, origins
    includes = cfg.pop("include")
    origins.pop("include")
    merged: dict[str, Any] = {}
    merged_origins: dict[str, Path] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str) or isinstance(inc, FunctionTag):
            raise TaskError(f"{path}: key 'include': expected a file name or a list of them, got {inc!r}")
        inc_path = Path(inc).expanduser()
        inc_path = (inc_path if inc_path.is_absolute() else path.parent / inc_path).resolve()
        inc_cfg, inc_origins = _read(inc_path, (*stack, path), files)
        inc_cfg.pop("task_list", None)  # as lm-eval: a task list belongs to the included file only
        merged.update(inc_cfg)
        merged_origins.update(inc_origins)
    merged.update(cfg)
    merged_origins.update(origins)
    return merged, merged_origins


@dataclass
class Checked:
    """What `check_config` derives from a merged task config."""

    name: str
    """The YAML `task:`."""
    output_type: str
    """multiple_choice, loglikelihood or generate_until."""
    metrics: list[str]
    """From `metric_list`, in order (lm-eval's defaults without it)."""
    num_fewshot: int
    target_delimiter: str
    """Between a context and its continuation (default " ")."""
    fewshot_delimiter: str
    """After each few-shot example (default "\\n\\n")."""
    description: str
    """Prefix of every context (a field name or template, rendered per doc; default "")."""
    generation_kwargs: dict
    """generate_until: until (list[str]), max_gen_toks, do_sample, temperature; {} otherwise."""
    answer_regex: str | None
    """generate_until: the `regex` filter's pattern (the answer is its first match), else None."""
    ignore_case: bool
    """exact_match option."""
    ignore_punctuation: bool
    """exact_match option."""
    data_files: dict[str, list[str]]
    """Split name -> file names as written (a str or list in the YAML is the split `train`, as in `datasets`).
    """
    eval_split: str
    """`test_split`, else `validation_split` (lm-eval evaluates the validation docs without a test split)."""
    fewshot_pool: str | None
    """The split few-shot examples come from: fewshot_split, else training_split, else validation_split."""
    sampler: str
    remove_eval_doc: bool
    """lm-eval removes the evaluated doc from the sampled examples iff `fewshot_split == test_split`."""


class _Where:
    """Error prefixes: the task file, the key, and the included file that set it when that is another file."""

    def __init__(self, path: Path, origins: dict[str, Path]) -> None:
        self.path, self.origins = path, origins

    def __call__(self, key: str, sub: str = "") -> str:
        top = key.split(".")[0].split("[")[0]
        src = self.origins.get(top, self.path)
        where = f"{self.path}: key '{key}{sub}'"
        return where if src == self.path else f"{where} (set in {src})"


def check_config(cfg: dict[str, Any], origins: dict[str, Path], path: Path) -> Checked:
    """Check a merged config against the supported subset; raise TaskError naming the file and the key."""
    at = _Where(path, origins)
    for key, value in cfg.items():
        if key in PYTHON_HOOKS:
            raise TaskError(
                f"{at(key)}: Python hooks are outside the supported subset (write the logic as a "
                "Jinja template in doc_to_text / doc_to_target / doc_to_choice, or pre-process the data)"
            )
        tag = _find_function_tag(value)
        if tag is not None:
            raise TaskError(
                f"{at(key)}: `!function {tag}` imports Python code, which is outside the supported "
                "subset; use a field name or a Jinja template instead"
            )
        if key not in SUPPORTED_KEYS:
            raise TaskError(f"{at(key)}: unsupported key (supported: {', '.join(sorted(SUPPORTED_KEYS))})")

    name = cfg.get("task")
    if not isinstance(name, str) or not name:
        raise TaskError(f"{at('task')}: expected the task name (a non-empty string), got {name!r}")
    if cfg.get("group") is not None:
        logger.warning(
            "%s: key 'group' is ignored (lm-eval 0.4.13 reads a file with `group` as a group)", path
        )
    tag = cfg.get("tag")
    if tag is not None and not isinstance(tag, str) and not _is_str_list(tag):
        raise TaskError(f"{at('tag')}: expected a string or a list of strings, got {tag!r}")
    data_files = _check_dataset(cfg, at)

    output_type = cfg.get("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        raise TaskError(
            f"{at('output_type')}: {output_type!r} is not supported (supported: {', '.join(OUTPUT_TYPES)})"
        )

    splits = {}
    for key in SPLIT_KEYS:
        split = cfg.get(key)
        if split is not None and (not isinstance(split, str) or split not in data_files):
            raise TaskError(
                f"{at(key)}: split {split!r} is not in dataset_kwargs.data_files "
                f"(which has: {', '.join(data_files)})"
            )
        splits[key] = split
    eval_split = splits["test_split"] or splits["validation_split"]
    if eval_split is None:
        raise TaskError(f"{at('test_split')}: the task needs test_split (or validation_split) to evaluate on")

    _check_prompt_keys(cfg, output_type, at)
    target_delimiter = _str_key(cfg, "target_delimiter", " ", at)
    fewshot_delimiter = _str_key(cfg, "fewshot_delimiter", "\n\n", at)
    description = cfg.get("description")
    if description is not None and not isinstance(description, str):
        raise TaskError(f"{at('description')}: expected a string, got {description!r}")

    num_fewshot = cfg.get("num_fewshot")
    if num_fewshot is None:
        num_fewshot = 0
    if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise TaskError(f"{at('num_fewshot')}: expected a non-negative integer, got {num_fewshot!r}")
    pool = splits["fewshot_split"] or splits["training_split"] or splits["validation_split"]
    if num_fewshot > 0 and pool is None:
        raise TaskError(
            f"{at('num_fewshot')}: {num_fewshot} examples need a split to draw them from: "
            "set fewshot_split (or training_split / validation_split)"
        )
    sampler = _check_fewshot_config(cfg.get("fewshot_config"), at)

    metrics, ignore_case, ignore_punctuation = _check_metrics(cfg.get("metric_list"), output_type, at)
    generation_kwargs = _check_generation_kwargs(
        cfg.get("generation_kwargs"), output_type, fewshot_delimiter, at
    )
    answer_regex = _check_filters(cfg.get("filter_list"), output_type, at)
    if not isinstance(cfg.get("should_decontaminate", False), bool):
        raise TaskError(f"{at('should_decontaminate')}: expected true or false")
    return Checked(
        name=name,
        output_type=output_type,
        metrics=metrics,
        num_fewshot=num_fewshot,
        target_delimiter=target_delimiter,
        fewshot_delimiter=fewshot_delimiter,
        description=description or "",
        generation_kwargs=generation_kwargs,
        answer_regex=answer_regex,
        ignore_case=ignore_case,
        ignore_punctuation=ignore_punctuation,
        data_files=data_files,
        eval_split=eval_split,
        fewshot_pool=pool,
        sampler=sampler,
        remove_eval_doc=splits["fewshot_split"] == splits["test_split"],
    )


def _find_function_tag(value: Any) -> str | None:
    if isinstance(value, FunctionTag):
        return str(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            if (found := _find_function_tag(v)) is not None:
                return found
    return None


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _str_key(cfg: dict, key: str, default: str, at: _Where) -> str:
    value = cfg.get(key, default)
    if not isinstance(value, str):
        raise TaskError(f"{at(key)}: expected a string, got {value!r}")
    return value


def _check_dataset(cfg: dict, at: _Where) -> dict[str, list[str]]:
    """The data files by split; only local JSON Lines (`dataset_path: json`) are supported."""
    dataset_path = cfg.get("dataset_path")
    if dataset_path != "json":
        hint = (
            "vikhr reads local JSON Lines only: export the dataset to .jsonl (for example "
            "`datasets.load_dataset(...)[split].to_json('test.jsonl', force_ascii=False)`) and set "
            "`dataset_path: json` with `dataset_kwargs: {data_files: {test: test.jsonl}}`"
        )
        what = "is missing" if dataset_path is None else f"{dataset_path!r} is a dataset hub (or loader) path"
        raise TaskError(f"{at('dataset_path')}: {what}; {hint}")
    if cfg.get("dataset_name") is not None:
        raise TaskError(f"{at('dataset_name')}: must be absent or null for `dataset_path: json`")
    kwargs = cfg.get("dataset_kwargs")
    if not isinstance(kwargs, dict) or "data_files" not in kwargs:
        raise TaskError(f"{at('dataset_kwargs')}: `dataset_path: json` needs dataset_kwargs.data_files")
    for key in kwargs:
        if key != "data_files":
            raise TaskError(f"{at('dataset_kwargs', '.' + str(key))}: unsupported (only data_files is)")
    files = kwargs["data_files"]
    if isinstance(files, str) or _is_str_list(files):
        files = {"train": files}  # what `datasets` does with a bare file or list
    if not isinstance(files, dict) or not files:
        raise TaskError(
            f"{at('dataset_kwargs', '.data_files')}: expected a file, a list of files, or a mapping "
            f"split -> file(s), got {files!r}"
        )
    out = {}
    for split, names in files.items():
        if not isinstance(split, str) or not (isinstance(names, str) or (_is_str_list(names) and names)):
            raise TaskError(
                f"{at('dataset_kwargs', f'.data_files.{split}')}: expected a file or a non-empty list "
                f"of files, got {names!r}"
            )
        out[split] = [names] if isinstance(names, str) else list(names)
    return out


def _check_prompt_keys(cfg: dict, output_type: str, at: _Where) -> None:
    text, target, choice = cfg.get("doc_to_text"), cfg.get("doc_to_target"), cfg.get("doc_to_choice")
    if text is None or not isinstance(text, str | int) or isinstance(text, bool):
        raise TaskError(
            f"{at('doc_to_text')}: expected a field name, a Jinja template or an int, got {text!r}"
        )
    if target is None or not isinstance(target, str | int | list) or isinstance(target, bool):
        raise TaskError(
            f"{at('doc_to_target')}: expected a field name, a Jinja template, an int or a list, "
            f"got {target!r}"
        )
    if output_type == "multiple_choice" and choice is None:
        raise TaskError(f"{at('doc_to_choice')}: a multiple_choice task needs doc_to_choice")
    if choice is None or isinstance(choice, str):
        return
    values = list(choice.values()) if isinstance(choice, dict) else choice
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TaskError(
            f"{at('doc_to_choice')}: expected a field name, a Jinja template, or a list (or mapping) "
            f"of strings, got {choice!r}"
        )


def _check_fewshot_config(fewshot_config: Any, at: _Where) -> str:
    if fewshot_config is None:
        return "default"
    if not isinstance(fewshot_config, dict):
        raise TaskError(f"{at('fewshot_config')}: expected a mapping, got {fewshot_config!r}")
    for key in fewshot_config:
        if key != "sampler":
            raise TaskError(f"{at('fewshot_config', '.' + str(key))}: unsupported (only sampler is)")
    sampler = fewshot_config.get("sampler", "default")
    if sampler not in SAMPLERS:
        raise TaskError(
            f"{at('fewshot_config', '.sampler')}: {sampler!r} is not supported "
            f"(supported: {', '.join(SAMPLERS)})"
        )
    return sampler


def _check_metrics(metric_list: Any, output_type: str, at: _Where) -> tuple[list[str], bool, bool]:
    if metric_list is None:
        return list(DEFAULT_METRICS[output_type]), False, False
    if not isinstance(metric_list, list) or not metric_list:
        raise TaskError(f"{at('metric_list')}: expected a non-empty list of {{metric: ...}} entries")
    metrics: list[str] = []
    options = dict.fromkeys(EXACT_MATCH_OPTIONS, False)
    for i, entry in enumerate(metric_list):
        key = f"metric_list[{i}]"
        if not isinstance(entry, dict) or "metric" not in entry:
            raise TaskError(f"{at(key)}: expected a mapping with a 'metric' key, got {entry!r}")
        name = entry["metric"]
        if name not in METRICS[output_type]:
            raise TaskError(
                f"{at(key, '.metric')}: {name!r} is not supported for {output_type} "
                f"(supported: {', '.join(METRICS[output_type])})"
            )
        if name in metrics:
            raise TaskError(f"{at(key, '.metric')}: {name!r} is listed twice")
        metrics.append(name)
        allowed = {"metric", "aggregation", "higher_is_better"} | (
            set(EXACT_MATCH_OPTIONS) if name == "exact_match" else set()
        )
        for option, value in entry.items():
            if option not in allowed:
                raise TaskError(
                    f"{at(key, '.' + str(option))}: unsupported option for {name} "
                    f"(supported: {', '.join(sorted(allowed))})"
                )
            if option in ("higher_is_better", *EXACT_MATCH_OPTIONS) and not isinstance(value, bool):
                raise TaskError(f"{at(key, '.' + option)}: expected true or false, got {value!r}")
            if option in EXACT_MATCH_OPTIONS:
                options[option] = value
        aggregation = entry.get("aggregation", AGGREGATION.get(name, "mean"))
        if aggregation != AGGREGATION.get(name, "mean"):
            raise TaskError(
                f"{at(key, '.aggregation')}: {name} aggregates by {AGGREGATION.get(name, 'mean')!r} "
                f"only, got {aggregation!r}"
            )
    return metrics, options["ignore_case"], options["ignore_punctuation"]


def _check_generation_kwargs(kwargs: Any, output_type: str, fewshot_delimiter: str, at: _Where) -> dict:
    """lm-eval's generation settings with its defaults filled in: greedy, `until` the few-shot delimiter."""
    if output_type != "generate_until":
        if kwargs is not None:
            logger.warning("%s: ignored for %s", at("generation_kwargs"), output_type)
        return {}
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise TaskError(f"{at('generation_kwargs')}: expected a mapping, got {kwargs!r}")
    allowed = ("until", "max_gen_toks", "do_sample", "temperature")
    for key in kwargs:
        if key not in allowed:
            raise TaskError(
                f"{at('generation_kwargs', '.' + str(key))}: unsupported (supported: {', '.join(allowed)})"
            )
    until = kwargs.get("until", [fewshot_delimiter])
    until = [until] if isinstance(until, str) else until
    if not _is_str_list(until):
        raise TaskError(
            f"{at('generation_kwargs', '.until')}: expected a string or a list of strings, got {until!r}"
        )
    max_gen_toks = kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
    if isinstance(max_gen_toks, bool) or not isinstance(max_gen_toks, int) or max_gen_toks < 1:
        raise TaskError(
            f"{at('generation_kwargs', '.max_gen_toks')}: expected a positive integer, got {max_gen_toks!r}"
        )
    do_sample = kwargs.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise TaskError(f"{at('generation_kwargs', '.do_sample')}: expected true or false, got {do_sample!r}")
    temperature = kwargs.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0:
        raise TaskError(
            f"{at('generation_kwargs', '.temperature')}: expected a number >= 0, got {temperature!r}"
        )
    return {
        "until": list(until),
        "max_gen_toks": max_gen_toks,
        "do_sample": do_sample,
        "temperature": float(temperature),
    }


def _check_filters(filter_list: Any, output_type: str, at: _Where) -> str | None:
    """The answer regex of a single `regex` + `take_first` filter pipeline (None without a regex)."""
    if filter_list is None:
        return None
    if output_type != "generate_until":
        raise TaskError(f"{at('filter_list')}: filters apply to generate_until tasks only")
    if not isinstance(filter_list, list) or len(filter_list) != 1 or not isinstance(filter_list[0], dict):
        raise TaskError(f"{at('filter_list')}: exactly one filter pipeline ({{name, filter}}) is supported")
    pipeline = filter_list[0]
    for key in pipeline:
        if key not in ("name", "filter"):
            raise TaskError(f"{at('filter_list', '[0].' + str(key))}: unsupported (supported: name, filter)")
    steps = pipeline.get("filter")
    if not isinstance(steps, list) or not steps:
        raise TaskError(f"{at('filter_list', '[0].filter')}: expected a list of {{function: ...}} steps")
    regex, seen = None, set()
    for j, step in enumerate(steps):
        key = f"[0].filter[{j}]"
        function = step.get("function") if isinstance(step, dict) else None
        if function not in ("regex", "take_first") or function in seen:
            raise TaskError(
                f"{at('filter_list', key)}: only one `regex` and one `take_first` step are supported, "
                f"got {step!r}"
            )
        seen.add(function)
        allowed = ("function", "regex_pattern") if function == "regex" else ("function",)
        for option in step:
            if option not in allowed:
                raise TaskError(f"{at('filter_list', f'{key}.{option}')}: unsupported option of {function}")
        if function == "regex":
            regex = step.get("regex_pattern", DEFAULT_REGEX)
            try:
                re.compile(regex)
            except (re.error, TypeError) as e:
                raise TaskError(
                    f"{at('filter_list', f'{key}.regex_pattern')}: not a valid regex: {e}"
                ) from None
    return regex
