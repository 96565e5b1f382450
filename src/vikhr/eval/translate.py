"""Translated multiple-choice benchmarks, the way the Vikhr paper built Ru-MMLU and Ru-MMLU-pro.

`read_mc_items` reads an English multiple-choice set (MMLU or MMLU-Pro form, jsonl / json / parquet);
`translate_mc` asks any OpenAI-compatible endpoint (through the shared `LLMClient`: bounded concurrency, retries,
disk cache, token accounting) to translate each item as one JSON object, checks every answer and writes a folder
that lm-evaluation-harness runs as a task:

    <name>.jsonl    kept items: question, options, answer (letter), answer_index, id, category, English originals
    <name>.yaml     the lm-eval task (`dataset_path: json`, multiple choice, acc / acc_norm / acc_bytes)
    rejected.jsonl  every item that failed a check, with its reason, detail and the raw answer
    stats.json      counts by reason, kept / rejected / total, token and USD cost, model and endpoint

The script checks, the batched requests, the cost accounting and the output-folder rules are shared with
`vikhr instruct translate` (`vikhr.llm.translation`).

The answer key is kept by position (the translator is told to keep the options in order), so a translation never
needs the answer. Every response is cached by the client: a rerun against the same model sends only what is
missing (items whose request failed), and gives the same files.

lm-eval 0.4.13 hands `data_files` to `datasets.load_dataset` unchanged, which reads a relative path from the
current folder: run `lm_eval --include_path . --tasks <name>` from the output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vikhr.corpus.readers import InputError
from vikhr.fsutil import staged_dir
from vikhr.llm.client import ChatResult, LLMClient, LLMError
from vikhr.llm.translation import (
    LANGUAGE_NAMES,
    REJECTED_FILE,
    STATS_FILE,
    add_endpoint_arguments,
    ask,
    check_arguments,
    check_out_dir,
    client_from_args,
    completion_limit,
    cost_line,
    counts_line,
    default_name,
    in_target_language,
    require_some_answer,
    run_cost,
    script_name,
    script_share,
    tally,
    target_script,
    write_jsonl,
)
from vikhr.log import get_logger, setup_logging
from vikhr.manifest import write_json_atomic
from vikhr.scripts import LANGUAGE_SCRIPTS

log = get_logger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Answer letters by option index (MMLU-Pro has up to ten options)."""
PROMPT_WORDS = {
    "ru": ("Вопрос", "Ответ"), "uk": ("Питання", "Відповідь"), "be": ("Пытанне", "Адказ"),
    "bg": ("Въпрос", "Отговор"), "kk": ("Сұрақ", "Жауап"), "sr": ("Питање", "Одговор"),
    "en": ("Question", "Answer"), "de": ("Frage", "Antwort"), "fr": ("Question", "Réponse"),
    "es": ("Pregunta", "Respuesta"), "it": ("Domanda", "Risposta"), "pt": ("Pergunta", "Resposta"),
}  # fmt: skip
"""Language code -> the words of the task's prompt `<Question>: ...\\n<Answer>:`."""

SYSTEM_PROMPT = (
    "You are a professional translator of exam questions from English into {language}. You receive one "
    "multiple-choice question as a JSON object with a question and a list of options. Translate the question "
    "and every option into natural, accurate {language}, as a native-speaking exam author would write them. Keep "
    "numbers, formulas, mathematical and chemical notation, code, units and symbols exactly as they are; keep "
    "proper names in their usual {language} form, or unchanged where they are not normally translated. Return "
    "exactly as many options as you received, in the same order: do not answer the question, and do not add, "
    "merge, drop, reorder or mark options. Reply with only the JSON object "
    '{{"question": "...", "options": ["...", ...]}} and no other text.'
)

# -- reading the English set ---------------------------------------------------------------------------------


def read_mc_items(
    path: Path, *, question: str = "question", options: str = "options", answer: str = "answer"
) -> list[dict]:
    """Multiple-choice items from jsonl, a json list or parquet, normalised for `translate_mc`.

    Accepts MMLU-Pro rows (`options` list, `answer` letter and/or `answer_index`) and MMLU rows (`choices` list,
    `answer` int). With the default field names, a row without `options` uses `choices` and a row without
    `answer` uses `answer_index`; explicit names are taken as given. Each item is `{index, line, id, category,
    question, options, answer (letter), answer_index}`. A malformed row, or a gold answer that is not one of the
    options, raises `InputError` (a `ValueError`) naming the file and the line (parquet: the row).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    rows = list(_read_rows(path))
    if not rows:
        raise InputError(f"{path}: no items")
    fields = (question, options, answer)
    return [_mc_item(row, i, line, path, fields) for i, (line, row) in enumerate(rows)]


def _read_rows(path: Path) -> list[tuple[int, Any]]:
    """(line or row number, parsed row) pairs of a jsonl, json or parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from e
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise InputError(f"{path}: not a readable parquet file ({e})") from e
        return list(enumerate(table.to_pylist(), 1))
    data = path.read_bytes()
    if suffix == ".json":
        try:
            obj = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 ({e})") from e
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, list):
            raise InputError(f"{path}: expected a JSON list of items, got {type(obj).__name__}")
        return list(enumerate(obj, 1))
    if suffix != ".jsonl":
        raise InputError(f"{path}: unsupported format {suffix!r} (expected .jsonl, .json or .parquet)")
    rows = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}:{lineno}: not UTF-8 ({e})") from e
        if not text.strip():
            continue
        try:
            rows.append((lineno, json.loads(text)))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: not a JSON object ({e.msg} at char {e.pos})") from e
    return rows


def _mc_item(row: Any, index: int, line: int, path: Path, fields: tuple[str, str, str]) -> dict:
    q_field, o_field, a_field = fields
    where = f"{path}:{line}"
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if o_field == "options" and "options" not in row and "choices" in row:
        o_field = "choices"
    if a_field == "answer" and "answer" not in row and "answer_index" in row:
        a_field = "answer_index"
    for f in (q_field, o_field, a_field):
        if f not in row:
            raise InputError(f"{where}: no field {f!r} (fields: {', '.join(map(str, row))})")
    q, opts = row[q_field], row[o_field]
    if not isinstance(q, str) or not q.strip():
        raise InputError(f"{where}: {q_field!r} must be a non-empty string, got {q!r:.80}")
    if not isinstance(opts, list) or len(opts) < 2:
        raise InputError(f"{where}: {o_field!r} must be a list of at least 2 options, got {opts!r:.80}")
    if len(opts) > len(LETTERS):
        raise InputError(f"{where}: {len(opts)} options, at most {len(LETTERS)} are supported")
    options = []
    for k, o in enumerate(opts):
        if isinstance(o, bool) or not isinstance(o, str | int | float):
            raise InputError(f"{where}: option {k + 1} must be a string, got {o!r:.80}")
        options.append(str(o))
    idx = _gold_index(row[a_field], len(options), f"{where}: {a_field!r}")
    if a_field != "answer_index" and "answer_index" in row and row["answer_index"] != idx:
        raise InputError(
            f"{where}: {a_field!r} is {row[a_field]!r} but answer_index is {row['answer_index']!r}"
        )
    item_id = next((row[k] for k in ("question_id", "id") if row.get(k) is not None), index)
    category = next((row[k] for k in ("category", "subject") if row.get(k) is not None), None)
    return {
        "index": index, "line": line, "id": item_id, "category": category, "question": q,
        "options": options, "answer": LETTERS[idx], "answer_index": idx,
    }  # fmt: skip


def _gold_index(value: Any, n_options: int, where: str) -> int:
    """The option index of a gold answer given as an int index or a letter."""
    if isinstance(value, int) and not isinstance(value, bool):
        idx = value
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS:
        idx = LETTERS.index(value.strip().upper())
    else:
        raise InputError(f"{where} is {value!r}: expected an option index (int) or letter (A-Z)")
    if not 0 <= idx < n_options:
        raise InputError(f"{where} is {value!r}, not one of the {n_options} options")
    return idx


# -- parsing and checking one answer -------------------------------------------------------------------------


class UnparseableError(ValueError):
    """A translator's answer holds no usable {"question", "options"} object; the message says why."""


_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)


def parse_translation(text: str) -> tuple[str, list[str]]:
    """(question, options) from a translator's answer, or `UnparseableError`.

    Lenient about the wrapping: code fences, text before or after, the first JSON object that has `question`
    and `options` (or `choices`) wins. Strict about the content: the question is a string, the options a list
    of strings (numbers are turned into strings).
    """
    decoder = json.JSONDecoder()
    for candidate in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        for m in re.finditer(r"\{", candidate):
            try:
                obj, _ = decoder.raw_decode(candidate, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "question" in obj and ("options" in obj or "choices" in obj):
                return _translation_fields(obj)
    raise UnparseableError("no JSON object with question and options" if text.strip() else "empty answer")


def _translation_fields(obj: dict) -> tuple[str, list[str]]:
    q, opts = obj["question"], obj.get("options", obj.get("choices"))
    if not isinstance(q, str):
        raise UnparseableError(f"question is {type(q).__name__}, expected a string")
    if not isinstance(opts, list):
        raise UnparseableError(f"options is {type(opts).__name__}, expected a list")
    out = []
    for k, o in enumerate(opts):
        if isinstance(o, bool) or not isinstance(o, str | int | float):
            raise UnparseableError(f"option {k + 1} is {type(o).__name__}, expected a string")
        out.append(str(o))
    return q, out


def option_in_target(source: str, option: str, script: str, min_share: float) -> bool:
    """Whether a translated option counts as written in the target language; see `check_translation`."""
    return in_target_language(option, script, min_share, source)


def check_translation(
    source_question: str,
    source_options: list[str],
    question: str,
    options: list[str],
    script: str,
    min_share: float = 0.8,
) -> list[tuple[str, str]]:
    """Problems of one translation as (reason, detail) pairs in check order; empty when it passes.

    Rules: the question is not empty and at least `min_share` of its prose letters (see `script_share`) are in
    the target `script` (a question without prose letters passes); the options keep their number, none is empty,
    no two become equal, and each one is in the target language: it has no prose letters (numbers, formulas),
    or its target-script share is at least `min_share`, or it is identical to the source option and has no
    Latin word with 4+ lowercase letters in a row (formulas, symbols, names such as "NaCl", "DNA", "pH").
    """
    problems: list[tuple[str, str]] = []
    name = script_name(script)
    if not question.strip():
        problems.append(("empty_question", "the question came back empty"))
    else:
        share = script_share(question, script)
        if share is not None and share < min_share:
            problems.append(
                ("question_not_in_target_language", f"question {name} share {share:.2f} < {min_share:.2f}")
            )
    if len(options) != len(source_options):
        problems.append(
            ("option_count_changed", f"{len(options)} options back for {len(source_options)} sent")
        )
        return problems
    for k, (src, opt) in enumerate(zip(source_options, options, strict=True)):
        label = f"option {k + 1} ({LETTERS[k]})"
        if not opt.strip():
            problems.append(("empty_option", f"{label} is empty"))
        elif not option_in_target(src, opt, script, min_share):
            share = script_share(opt, script) or 0.0
            problems.append(
                (
                    "option_not_in_target_language",
                    f"{label} not in target language ({name} share {share:.2f}): {opt[:80]!r}",
                )
            )
    seen: dict[str, int] = {}
    for k, opt in enumerate(options):
        key = opt.strip().casefold()
        if key and key in seen and source_options[seen[key]].strip() != source_options[k].strip():
            problems.append(("duplicate_options", f"options {seen[key] + 1} and {k + 1} became {opt[:80]!r}"))
        seen.setdefault(key, k)
    return problems


# -- translating a set ---------------------------------------------------------------------------------------


@dataclass
class TranslateResult:
    """What `translate_mc` wrote: counts (total == kept + rejected) and the four files."""

    kept: int
    rejected: int
    total: int
    data: Path
    yaml: Path
    rejected_file: Path
    stats_file: Path
    cost: dict
    """This run's prompt / completion / cached tokens, requests and cache hits, USD when prices were given,
    and `all_items`: the tokens (and USD) of every item's answer, cached ones included."""
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    """Rejections by reason, most common first."""


def translation_messages(item: dict, language: str) -> list[dict[str, str]]:
    """The request for one item: the translator's instructions, then the item as JSON."""
    payload = json.dumps({"question": item["question"], "options": item["options"]}, ensure_ascii=False)
    system = SYSTEM_PROMPT.format(language=LANGUAGE_NAMES.get(language, language))
    return [{"role": "system", "content": system}, {"role": "user", "content": payload}]


def translate_mc(
    client: LLMClient,
    items: list[dict],
    out_dir: Path,
    *,
    name: str,
    target_language: str = "ru",
    limit: int | None = None,
    price_in: float = 0.0,
    price_out: float = 0.0,
    min_script_share: float = 0.8,
    source: str | Path | None = None,
) -> TranslateResult:
    """Translate `items` (from `read_mc_items`) with the model behind `client` and write the task folder.

    One request per item (temperature 0, `client.chat_many`); each answer is parsed (`parse_translation`) and
    checked (`check_translation`); a failure is a rejection with its reason, never a crash, and a request that
    failed for good (after the client's retries) rejects its item as `llm_error`. An unreachable endpoint or a
    rejected key raises, and so does a run where every request failed: nothing is written then. `out_dir` is
    the task's own folder, replaced as a whole when done (a folder holding other files is refused).
    `price_in` / `price_out` are USD per 1M prompt / completion tokens. `source` is recorded in the YAML.
    """
    check_arguments(name, target_language, limit, min_script_share, price_in, price_out)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, {f"{name}.jsonl", f"{name}.yaml", REJECTED_FILE, STATS_FILE})
    items = list(items[:limit] if limit is not None else items)
    if not items:
        raise ValueError("no items to translate")
    script = target_script(target_language)
    model = client.model  # before the batch: an unreachable endpoint fails here, once
    before = client.stats
    convs = [translation_messages(it, target_language) for it in items]
    try:
        answers = ask(client, convs, [max_tokens_for(c) for c in convs], f"translate {name}")
    except LLMError:
        log.error("translate %s stopped; the answers received so far are cached, a rerun resumes", name)
        raise
    require_some_answer(answers)
    kept_rows, rejected_rows = [], []
    for item, ans in zip(items, answers, strict=True):
        row, problems, raw = _judge(item, ans, script, min_script_share)
        if problems:
            reason, detail = problems[0]
            rejected_rows.append({
                **_source_fields(item), "reason": reason, "detail": detail,
                "problems": [f"{r}: {d}" for r, d in problems], "raw": raw,
                "question_en": item["question"], "options_en": item["options"],
            })  # fmt: skip
        else:
            kept_rows.append(row)
    total, kept, rejected = len(items), len(kept_rows), len(rejected_rows)
    reasons = tally(total, kept, rejected_rows)
    if not kept:
        log.warning("translate %s: no item passed the checks (%s); the task has no data", name, reasons)
    cost = run_cost(before, client.stats, answers, price_in, price_out)
    stats = {
        "name": name, "source": str(source) if source else None, "target_language": target_language,
        "model": model, "base_url": client.base_url, "min_script_share": min_script_share,
        "total": total, "kept": kept, "rejected": rejected, "reasons": reasons, "cost": cost,
        "llm": client.stats.as_dict(),
    }  # fmt: skip
    task = task_yaml(name, model, source, target_language)
    with staged_dir(out_dir) as tmp:
        write_jsonl(tmp / f"{name}.jsonl", kept_rows)
        write_jsonl(tmp / REJECTED_FILE, rejected_rows)
        (tmp / f"{name}.yaml").write_text(
            yaml.safe_dump(task, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
        write_json_atomic(tmp / STATS_FILE, stats)
    log.info(
        "translate %s: %d of %d kept, %s; %s", name, kept, total, reasons or "none rejected", client.summary()
    )
    return TranslateResult(
        kept=kept, rejected=rejected, total=total, data=out_dir / f"{name}.jsonl", yaml=out_dir / f"{name}.yaml",
        rejected_file=out_dir / REJECTED_FILE, stats_file=out_dir / STATS_FILE, cost=cost, reasons=reasons,
    )  # fmt: skip


def max_tokens_for(messages: list[dict[str, str]]) -> int:
    """Completion limit of one request: `completion_limit` of the item's JSON length in characters."""
    return completion_limit(len(messages[-1]["content"]))


def _source_fields(item: dict) -> dict:
    return {"id": item["id"], "index": item["index"], "category": item.get("category")}


def _judge(
    item: dict, ans: ChatResult | LLMError, script: str, min_share: float
) -> tuple[dict | None, list[tuple[str, str]], str]:
    """(kept row or None, problems, raw answer text) of one item."""
    if isinstance(ans, LLMError):
        return None, [("llm_error", f"llm_error: {ans.message}")], ""
    try:
        question, options = parse_translation(ans.text)
    except UnparseableError as e:
        reason = "truncated" if ans.finish_reason == "length" else "unparseable"
        return None, [(reason, f"{reason}: {e}")], ans.text
    problems = check_translation(item["question"], item["options"], question, options, script, min_share)
    if problems:
        return None, problems, ans.text
    row = {
        **_source_fields(item), "question": question.strip(), "options": [o.strip() for o in options],
        "answer": item["answer"], "answer_index": item["answer_index"],
        "question_en": item["question"], "options_en": item["options"],
    }  # fmt: skip
    return row, [], ans.text


def task_yaml(name: str, model: str, source: str | Path | None, language: str = "ru") -> dict[str, Any]:
    """The lm-eval task config: zero-shot multiple choice over `<name>.jsonl` beside the YAML."""
    q_word, a_word = PROMPT_WORDS.get(language, PROMPT_WORDS["en"])
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": f"{q_word}: {{{{question.strip()}}}}\n{a_word}:",
        "doc_to_choice": "options",
        "doc_to_target": "answer_index",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True}
            for m in ("acc", "acc_norm", "acc_bytes")
        ],
        "metadata": {"version": 1.0, "source": str(source) if source else None, "translated_by": model},
    }


# -- command line --------------------------------------------------------------------------------------------


def add_translate_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `vikhr eval translate INPUT --out DIR ...`; sets `func` to `cmd_translate`."""
    p.add_argument(
        "input",
        type=Path,
        help="English multiple-choice set: .jsonl, .json list or .parquet (MMLU-Pro: options + answer letter; "
        "MMLU: choices + answer index)",
    )
    p.add_argument("--out", required=True, type=Path, help="the task's folder (created or replaced)")
    p.add_argument("--name", help="task name, also the data and YAML file names (default: INPUT's stem_LANG)")
    p.add_argument("--limit", type=int, help="translate only the first N items")
    p.add_argument("--language", default="ru", choices=sorted(LANGUAGE_SCRIPTS), help="target language")
    add_endpoint_arguments(p)
    p.add_argument(
        "--min-script-share",
        type=float,
        default=0.8,
        help="least share of target-script letters in the question and in each option (see check_translation)",
    )
    p.add_argument("--question-field", default="question", help="field of the question")
    p.add_argument(
        "--options-field",
        default="options",
        help="field of the options list (default: options, else choices)",
    )
    p.add_argument(
        "--answer-field",
        default="answer",
        help="field of the gold answer, a letter or an index (default: answer, else answer_index)",
    )
    p.set_defaults(func=cmd_translate)


def cmd_translate(args: argparse.Namespace) -> int:
    """`vikhr eval translate`: translate a multiple-choice set into an lm-eval task; prints a short summary."""
    setup_logging("INFO")
    items = read_mc_items(
        args.input, question=args.question_field, options=args.options_field, answer=args.answer_field
    )
    name = args.name or default_name(args.input, args.language)
    with client_from_args(args) as client:
        res = translate_mc(
            client, items, args.out, name=name, target_language=args.language, limit=args.limit,
            price_in=args.price_in, price_out=args.price_out, min_script_share=args.min_script_share,
            source=args.input,
        )  # fmt: skip
    lines = [
        counts_line(res.kept, res.total, res.reasons),
        cost_line(res.cost),
        f"task: {res.yaml}",
        f"run it: cd {res.yaml.parent} && lm_eval --include_path . --tasks {name} --model hf --model_args ...",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
