"""lm-eval 0.4.13's prompt rules, re-implemented: field names, Jinja templates, literals, few-shot sampling.

A string in `doc_to_text` / `doc_to_target` / `doc_to_choice` is a field name when the data has a column of
that name, else a Jinja template rendered with the doc's fields (StrictUndefined, trailing newlines kept, plus
the `regex_replace` filter). With `doc_to_choice` set, a rendered text or target made of digits becomes an
int; a rendered target that looks like `[...]` is read as a Python literal when it parses; a rendered
`doc_to_choice` is always read as a Python literal (templates such as `{{[a, b]}}` render a list's repr)."""

from __future__ import annotations

import ast
import functools
import random
import re
from collections.abc import Sequence
from typing import Any

import jinja2

FEWSHOT_SEED = 1234
"""lm-eval's default `fewshot_random_seed` (the fourth value of `--seed 0,1234,1234,1234`)."""


def regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    """The `regex_replace` Jinja filter: `re.sub(pattern, repl, string, count=count)`."""
    return re.sub(pattern, repl, string, count=count)


_ENV = jinja2.Environment(
    loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)
_ENV.filters["regex_replace"] = regex_replace


@functools.lru_cache(maxsize=1024)
def compile_template(source: str) -> jinja2.Template:
    """A compiled template (cached); raises jinja2.TemplateSyntaxError."""
    return _ENV.from_string(source)


def apply_template(source: str, doc: dict[str, Any]) -> str:
    """Render `source` with the doc's fields as variables."""
    return compile_template(source).render(**doc)


def text_of(spec: str | int, doc: dict[str, Any], features: Sequence[str], has_choice: bool) -> Any:
    """lm-eval's `doc_to_text`: an int as is; a field's value; else the rendered template (an int when it is
    all digits and the task has `doc_to_choice`)."""
    if isinstance(spec, int):
        return spec
    if spec in features:
        return doc[spec]
    text = apply_template(spec, doc)
    return ast.literal_eval(text) if text.isdigit() and has_choice else text


def target_of(spec: str | int | list, doc: dict[str, Any], features: Sequence[str], has_choice: bool) -> Any:
    """lm-eval's `doc_to_target`: an int or list as is; a field's value; else the rendered template, read as
    an int when all digits (with `doc_to_choice`), or as a literal when it looks like `[...]` and parses."""
    if isinstance(spec, int | list):
        return spec
    if spec in features:
        return doc[spec]
    target = apply_template(spec, doc)
    if target.isdigit() and has_choice:
        return ast.literal_eval(target)
    if len(target) >= 2 and target[0] == "[" and target[-1] == "]":
        try:
            return ast.literal_eval(target)
        except (SyntaxError, ValueError):
            return target
    return target


def choices_of(spec: str | list | dict, doc: dict[str, Any], features: Sequence[str]) -> Any:
    """lm-eval's `doc_to_choice`: a list as is, a mapping's values, a field's value, else the rendered
    template read as a Python literal."""
    if isinstance(spec, list):
        return spec
    if isinstance(spec, dict):
        return list(spec.values())
    if spec in features:
        return doc[spec]
    return ast.literal_eval(apply_template(spec, doc))


def description_of(spec: str, doc: dict[str, Any]) -> Any:
    """lm-eval's description of one doc: a field's value when the doc has that key, else the rendered
    template."""
    if not spec:
        return ""
    return doc[spec] if spec in doc else apply_template(spec, doc)


def fewshot_answer(choices: list | None, target: Any) -> Any:
    """The text lm-eval writes after a few-shot example: the choice a target index points to, the first of a
    list of targets, else the target itself."""
    if choices and isinstance(target, int):
        return choices[target]
    if isinstance(target, list):
        return target[0]
    return target


class FewshotSampler:
    """lm-eval 0.4.13's few-shot samplers over one pool of docs, with one RNG for the whole run.

    `default` draws `n` docs with `random.Random(seed).sample`; when the evaluated doc may be in the pool it
    draws `n + 1`, drops every copy of the doc and keeps the first `n` (drawing again from the pool without
    the doc if fewer are left). `first_n` takes the first `n` docs of the pool (without the evaluated doc).
    Docs must be sampled in evaluation order for the prompts to match lm-eval's."""

    def __init__(self, pool: list[dict[str, Any]], kind: str = "default", seed: int = FEWSHOT_SEED) -> None:
        self.pool, self.kind, self.rnd = pool, kind, random.Random(seed)

    def sample(self, n: int, eval_doc: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """`n` examples for `eval_doc` (None when the pool cannot hold it); ValueError if the pool is too
        small."""
        if n == 0:
            return []
        if self.kind == "first_n":
            pool = self.pool if eval_doc is None else [x for x in self.pool if x != eval_doc]
            if n > len(pool):
                raise ValueError(f"{n} examples requested, the pool has {len(pool)}")
            return pool[:n]
        if not eval_doc:
            res = self.rnd.sample(self.pool, n)
        else:
            res = [x for x in self.rnd.sample(self.pool, n + 1) if x != eval_doc][:n]
        if len(res) < n:
            res = self.rnd.sample([x for x in self.pool if x != eval_doc], n)
        return res
