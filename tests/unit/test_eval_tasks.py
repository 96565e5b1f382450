"""lm-eval 0.4.13 task YAML in vikhr: the shipped tasks, lm-eval's prompt rules, few-shot sampling, bad input.

Everything runs on the data bundled in the package. The cross-check against a real lm-eval install
(`.venv-lmeval`) is marked `slow` and skips without it; regenerating the bundle needs `../shared` (`shared`).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import yaml

from vikhr.eval.tasks import (
    Item,
    Skipped,
    TaskError,
    build_items,
    export_tasks,
    load_task,
    shipped_tasks,
    task_files,
)
from vikhr.eval.tasks.bundle import bundle

ROOT = Path(__file__).resolve().parents[2]
LMEVAL_PYTHON = ROOT / ".venv-lmeval" / "bin" / "python"
BUNDLED = {"rcb": 429, "lidirus": 1000, "parus": 500, "rwsd": 154, "mmlu_pro": 700, "mmlu": 560}
NOT_BUNDLED = {"xnli_ru": "data/xnli_ru/validation.jsonl", "ru_mmlu": "data/ru_mmlu/test.jsonl"}
MC_METRICS = ["acc", "acc_norm", "acc_bytes"]


def write_task(
    folder: Path, body: str, data: dict[str, list[dict]] | None = None, name: str = "t.yaml"
) -> Path:
    """A task file (and its JSON Lines data files, `data/<split>.jsonl`) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (data or {}).items():
        (folder / "data").mkdir(exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (folder / "data" / f"{split}.jsonl").write_text(text, encoding="utf-8")
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


HEAD = """task: tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/test.jsonl
    train: data/train.jsonl
test_split: test
output_type: multiple_choice
"""
PROMPT = "doc_to_text: q\ndoc_to_choice: opts\ndoc_to_target: label\n"
TEST_ROWS = [{"q": f"e{i}", "opts": ["да", "нет"], "label": i % 2, "digit": str(i % 2)} for i in range(5)]
TRAIN_ROWS = [{"q": f"t{i}", "opts": ["да", "нет"], "label": i % 2, "digit": str(i % 2)} for i in range(6)]


def tiny(tmp_path: Path, extra: str, data: dict[str, list[dict]] | None = None) -> Path:
    return write_task(tmp_path, HEAD + extra, data or {"test": TEST_ROWS, "train": TRAIN_ROWS})


# ------------------------------------------------------------------------------------------ the shipped tasks


def test_shipped_tasks_are_the_documented_ones():
    shipped = shipped_tasks()
    assert set(shipped) == set(BUNDLED) | set(NOT_BUNDLED)
    for name, path in shipped.items():
        assert path.is_file() and path.suffix == ".yaml" and load_task(path).name == name
    data = next(iter(shipped.values())).parent / "data"
    assert (data / "LICENSE.russian_superglue").is_file() and (data / "LICENSE.mmlu_pro").is_file()
    with pytest.raises(TaskError, match="no shipped task of that name .*parus"):
        load_task("no_such_task")


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_every_bundled_task_builds_one_item_per_data_line(name):
    task = load_task(name)
    assert task.output_type == "multiple_choice" and task.metrics == MC_METRICS and task.num_fewshot == 0
    (data_file,) = [p for p in task_files(task) if p.suffix == ".jsonl"]
    lines = sum(1 for line in data_file.read_bytes().split(b"\n") if line.strip())
    items, skipped = build_items(task)
    assert len(items) + len(skipped) == lines == BUNDLED[name]
    assert skipped == []
    assert [it.index for it in items] == list(range(lines))
    for it in items:
        assert isinstance(it.gold, int) and 0 <= it.gold < len(it.choices)
        assert it.continuations == [" " + c for c in it.choices]
    limited, _ = build_items(task, limit=7)
    assert limited == items[:7]


@pytest.mark.parametrize("name", sorted(NOT_BUNDLED))
def test_tasks_without_bundled_data_load_and_name_the_missing_file(name):
    task = load_task(name)
    assert task.metrics == MC_METRICS
    with pytest.raises(TaskError, match=NOT_BUNDLED[name]) as err:
        build_items(task)
    assert str(task.path) in str(err.value)


def test_parus_prompt_is_copa_form():
    items, _ = build_items(load_task("parus"), limit=2)
    cause, effect = items
    assert cause.context == "Сердце актёра отчаянно билось перед выступлением потому что"
    assert cause.continuations == [" он боялся сцены.", " он помнил свою роль."]
    assert cause.gold == 0
    assert effect.context == "Я потерялся поэтому"
    assert effect.continuations == [" я пересчитал наличные деньги.", " я развернул карту."]
    assert effect.gold == 1


def test_rcb_prompt_is_xnli_ru_form():
    task = load_task("rcb")
    (item,) = build_items(task, limit=1)[0]
    premise = "Мужчина уже был ранее судим, рассказали «Комсомольской правде-Красноярск» в полиции города."
    hypothesis = "Мужчину раньше уже судили."
    assert item.context == ""
    assert item.continuations == [f" {premise}, правильно? {w}, {hypothesis}" for w in ("Да", "Так", "Нет")]
    assert item.gold == 0  # entailment
    golds = {it.doc["crowd_majority"]: it.gold for it in build_items(task)[0]}
    assert golds == {"entailment": 0, "neutral": 1, "contradiction": 2}


def test_rwsd_lidirus_and_mmlu_prompts():
    (rwsd,) = build_items(load_task("rwsd"), limit=1)[0]
    assert rwsd.context == (
        "Текст: У Мюриэль в бальном зале есть знаменитый портрет балерины. *Она* приобрела портрет, когда ей "
        "было тридцать.\nВопрос: В тексте выше «*Она*» относится к «балерины»?\nОтвет:"
    )
    assert rwsd.continuations == [" Нет", " Да"] and rwsd.gold == 0  # crowd_majority "false"
    # a text marking letters inside a word too: only the whole-word pronoun is the span
    marked = [it for it in build_items(load_task("rwsd"))[0] if "Джекс<b>он</b>а" in it.doc["text"]]
    assert marked and all("мэр Джексона" in it.context and "«*он*»" in it.context for it in marked)
    lidirus = build_items(load_task("lidirus"), limit=1)[0][0]
    assert len(lidirus.choices) == 2 and ", правильно? Нет, " in lidirus.choices[1]
    mmlu = build_items(load_task("mmlu"), limit=1)[0][0]
    subject = mmlu.doc["src"].removeprefix("ori_mmlu-").replace("_", " ")
    question = mmlu.doc["question"].strip()
    assert (
        mmlu.context
        == f"The following are questions (with answers) about {subject}.\n\nQuestion: {question}\nAnswer:"
    )
    assert mmlu.choices == mmlu.doc["options"] and mmlu.gold == mmlu.doc["answer_index"]


# ----------------------------------------------------------------------------------------- lm-eval's rules


def test_field_name_template_and_literal_semantics(tmp_path):
    task = load_task(tiny(tmp_path, "doc_to_text: q\ndoc_to_choice: opts\ndoc_to_target: label\n"))
    doc = task.docs()[1]
    assert task.doc_to_text(doc) == "e1"  # a column name: the field's value
    assert task.doc_to_choice(doc) == ["да", "нет"]
    assert task.doc_to_target(doc) == 1

    task = load_task(
        tiny(
            tmp_path / "t",
            "doc_to_text: 'q: {{q}}'\ndoc_to_choice: '{{opts + [q]}}'\ndoc_to_target: '{{label}}'\n",
        )
    )
    doc = task.docs()[1]
    assert task.doc_to_text(doc) == "q: e1"  # not a column: a Jinja template
    assert task.doc_to_choice(doc) == ["да", "нет", "e1"]  # rendered, then read as a Python literal
    assert task.doc_to_target(doc) == 1  # digits become an int when doc_to_choice is set

    task = load_task(tiny(tmp_path / "l", "doc_to_text: q\ndoc_to_choice: ['x', 'y']\ndoc_to_target: 0\n"))
    assert task.doc_to_choice(task.docs()[0]) == ["x", "y"] and task.doc_to_target(task.docs()[3]) == 0
    task = load_task(
        tiny(tmp_path / "d", "doc_to_text: q\ndoc_to_choice: {a: x, b: y}\ndoc_to_target: '{{[label, 1]}}'\n")
    )
    assert task.doc_to_choice(task.docs()[0]) == ["x", "y"]  # a mapping gives its values
    assert task.doc_to_target(task.docs()[0]) == [0, 1]  # `[...]` is read as a literal
    items, _ = build_items(task, limit=1)
    assert items[0].gold == [0, 1]

    # without doc_to_choice, rendered digits stay text; a `[` that does not parse stays text
    task = load_task(
        tiny(tmp_path / "g", "output_type: generate_until\ndoc_to_text: q\ndoc_to_target: '{{label}}'\n")
    )
    assert task.doc_to_target(task.docs()[1]) == "1"
    task = load_task(
        tiny(tmp_path / "b", "output_type: generate_until\ndoc_to_text: q\ndoc_to_target: '[{{q}}'\n")
    )
    assert task.doc_to_target(task.docs()[0]) == "[e0"


def test_digit_strings_from_a_field_are_not_indices(tmp_path):
    """A field holding "0"/"1" is compared as text with the choices (lm-eval's rule): every item is skipped,
    with the reason, while the template `{{digit}}` gives indices."""
    items, skipped = build_items(
        load_task(tiny(tmp_path, "doc_to_text: q\ndoc_to_choice: opts\ndoc_to_target: digit\n"))
    )
    assert items == [] and [s.index for s in skipped] == [0, 1, 2, 3, 4]
    assert "'0' is not among the 2 choices" in skipped[0].reason
    items, skipped = build_items(
        load_task(tiny(tmp_path / "t", "doc_to_text: q\ndoc_to_choice: opts\ndoc_to_target: '{{digit}}'\n"))
    )
    assert skipped == [] and [it.gold for it in items] == [0, 1, 0, 1, 0]


def test_docs_get_the_columns_datasets_would_give(tmp_path):
    """As with `datasets.load_dataset("json")`: a key missing from a line is None (not an undefined variable),
    ints in a column that also holds floats are floats."""
    rows = [{"q": "a", "x": 1, "opts": ["p"], "label": 0}, {"q": "b", "x": 2.5, "extra": "e", "opts": ["p"]}]
    prompt = PROMPT.replace("doc_to_text: q", "doc_to_text: '{{q}} {{x}} {{extra}}'")
    items, skipped = build_items(load_task(tiny(tmp_path, prompt, {"test": rows, "train": rows})))
    assert [it.context for it in items] == ["a 1.0 None"]
    assert skipped == [Skipped("tiny", 1, "gold is missing (null); lm-eval scores this item as always wrong")]


def test_loglikelihood_and_generate_until_items(tmp_path):
    rows = [{"text": "один два три", "answer": "42", "label": 1, "opts": ["a", "b"]}]
    ll = load_task(
        tiny(
            tmp_path / "ll",
            "output_type: loglikelihood\ndoc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
            "doc_to_target: \"{{' ' + text.split(' ')[-1]}}\"\n",
            {"test": rows, "train": rows},
        )
    )
    assert ll.metrics == ["perplexity", "acc"] and ll.generation_kwargs == {}
    (item,) = build_items(ll)[0]
    # lm-eval sends the target as is for loglikelihood (no target_delimiter)
    assert item.context == "один два" and item.continuations == [" три"] and item.choices == [" три"]

    gen = load_task(
        tiny(
            tmp_path / "gen",
            "output_type: generate_until\ndoc_to_text: 'Q: {{text}}'\ndoc_to_target: answer\n"
            'generation_kwargs:\n  until: "\\n"\n  temperature: 0\n'
            "filter_list:\n  - name: strict\n    filter:\n      - function: regex\n"
            "        regex_pattern: '(\\d+)'\n      - function: take_first\n"
            "metric_list:\n  - metric: exact_match\n    ignore_case: true\n",
            {"test": rows, "train": rows},
        )
    )
    assert gen.generation_kwargs == {
        "until": ["\n"],
        "max_gen_toks": 256,
        "do_sample": False,
        "temperature": 0.0,
    }
    assert gen.answer_regex == r"(\d+)" and gen.ignore_case and not gen.ignore_punctuation
    assert build_items(gen)[0] == [Item("tiny", 0, gen.docs()[0], "Q: один два три", [], [], "42")]
    head = HEAD.replace("output_type: multiple_choice\n", "")  # lm-eval's default output type
    default = load_task(
        write_task(tmp_path / "dflt", head + "doc_to_text: q\ndoc_to_target: q\n", {"test": rows})
    )
    assert default.output_type == "generate_until" and default.metrics == ["exact_match"]
    assert default.generation_kwargs["until"] == ["\n\n"] and default.answer_regex is None

    with_choices = load_task(
        tiny(
            tmp_path / "gc",
            "output_type: generate_until\ndoc_to_text: q\ndoc_to_choice: opts\ndoc_to_target: label\n",
        )
    )
    assert [it.gold for it in build_items(with_choices)[0]] == ["да", "нет", "да", "нет", "да"]


# ----------------------------------------------------------------------------------------------- few-shot


FEWSHOT = 'description: "Отвечайте.\\n\\n"\n' + PROMPT.replace(
    "doc_to_text: q", 'doc_to_text: "Q: {{q}}\\nA:"'
)


def test_fewshot_from_the_training_split_matches_lm_evals_seeded_sampler(tmp_path):
    task = load_task(tiny(tmp_path, FEWSHOT + "training_split: train\nnum_fewshot: 2\n"))
    items, _ = build_items(task, limit=3)
    # lm-eval: one random.Random(1234) for the run, sample(train, 2) per doc in order: [3, 0], [0, 5], [4, 0]
    rng = random.Random(1234)
    assert [rng.sample(range(6), 2) for _ in range(3)] == [[3, 0], [0, 5], [4, 0]]
    assert items[0].context == "Отвечайте.\n\nQ: t3\nA: нет\n\nQ: t0\nA: да\n\nQ: e0\nA:"
    assert items[1].context == "Отвечайте.\n\nQ: t0\nA: да\n\nQ: t5\nA: нет\n\nQ: e1\nA:"
    assert items[2].context == "Отвечайте.\n\nQ: t4\nA: да\n\nQ: t0\nA: да\n\nQ: e2\nA:"
    assert items[0].continuations == [" да", " нет"]
    assert build_items(task)[0][:3] == items  # the same RNG sequence with or without a limit


def test_fewshot_from_the_test_split_leaves_out_the_evaluated_doc(tmp_path):
    extra = "fewshot_split: test\nnum_fewshot: 2\ntarget_delimiter: '='\nfewshot_delimiter: ' | '\n"
    task = load_task(tiny(tmp_path, FEWSHOT.replace('"Отвечайте.\\n\\n"', "''") + extra))
    items, _ = build_items(task)
    # sample(test, 3) per doc -> [3,0,4] [0,4,2] [0,4,1] [1,0,3] [0,2,3]; the doc itself is dropped, 2 kept
    shots = [[3, 4], [0, 4], [0, 4], [1, 0], [0, 2]]
    for item, (a, b) in zip(items, shots, strict=True):
        first, second = TEST_ROWS[a], TEST_ROWS[b]
        shots_text = "".join(f"Q: {d['q']}\nA:={d['opts'][d['label']]} | " for d in (first, second))
        assert item.context == shots_text + f"Q: {item.doc['q']}\nA:"
        assert item.continuations == ["=да", "=нет"]


def test_first_n_sampler(tmp_path):
    task = load_task(
        tiny(
            tmp_path, FEWSHOT + "fewshot_split: train\nfewshot_config:\n  sampler: first_n\nnum_fewshot: 3\n"
        )
    )
    for item in build_items(task)[0]:
        assert item.context.startswith("Отвечайте.\n\nQ: t0\nA: да\n\nQ: t1\nA: нет\n\nQ: t2\nA: да\n\nQ: e")


# ---------------------------------------------------------------------------------------------- bad input


BAD_CONFIGS = [
    (PROMPT + "repeats: 2\n", "repeats", "unsupported key"),
    (PROMPT.replace("q\n", "!function utils.doc_to_text\n", 1), "doc_to_text", "!function"),
    (PROMPT + "process_docs: x\n", "process_docs", "Python hooks"),
    (PROMPT, "output_type", "not supported"),  # loglikelihood_rolling
    (PROMPT + "num_fewshot: 1\n", "num_fewshot", "fewshot_split"),
    (PROMPT.replace("doc_to_choice: opts\n", ""), "doc_to_choice", "needs doc_to_choice"),
    (PROMPT.replace("doc_to_text: q", "doc_to_text: '{{ q '"), "doc_to_text", "Jinja"),
    (PROMPT + "validation_split: dev\n", "validation_split", "not in dataset_kwargs.data_files"),
    (PROMPT + "metric_list:\n  - metric: f1\n", "metric_list[0].metric", "not supported"),
    (PROMPT + "fewshot_config:\n  sampler: balanced\n", "fewshot_config.sampler", "not supported"),
    (
        PROMPT + "generation_kwargs:\n  top_p: 0.9\n",
        "generation_kwargs.top_p",
        "unsupported",
    ),  # generate_until
]


@pytest.mark.parametrize(("extra", "key", "words"), BAD_CONFIGS)
def test_config_outside_the_subset_names_file_and_key(tmp_path, extra, key, words):
    output_type = {"output_type": "loglikelihood_rolling", "generation_kwargs.top_p": "generate_until"}
    path = write_task(
        tmp_path, HEAD.replace("multiple_choice", output_type.get(key, "multiple_choice")) + extra
    )
    with pytest.raises(TaskError) as err:
        load_task(path)
    assert str(path) in str(err.value) and f"key '{key}'" in str(err.value) and words in str(err.value)


def test_hub_dataset_path_tells_how_to_export(tmp_path):
    path = write_task(
        tmp_path, HEAD.replace("dataset_path: json", "dataset_path: facebook/xnli") + "doc_to_text: q\n"
    )
    with pytest.raises(
        TaskError, match=r"key 'dataset_path'.*facebook/xnli.*JSON Lines.*dataset_path: json"
    ) as err:
        load_task(path)
    assert str(path) in str(err.value)


def test_include_is_merged_relative_to_the_including_file(tmp_path):
    write_task(
        tmp_path / "base",
        "doc_to_choice: opts\ndoc_to_target: label\ndoc_to_text: base\n",
        name="common_yaml",
    )
    path = tiny(tmp_path, "include: base/common_yaml\ndoc_to_text: 'Q {{q}}'\n")
    task = load_task(path)
    assert task.doc_to_text(task.docs()[0]) == "Q e0" and "include" not in task.config
    assert task.config["doc_to_target"] == "label"
    assert task_files(task)[:2] == [path.resolve(), (tmp_path / "base" / "common_yaml").resolve()]
    write_task(tmp_path / "bad", "include: common_yaml\ndoc_to_text: 3\n", name="common_yaml")
    with pytest.raises(TaskError, match="include cycle"):
        load_task(tmp_path / "bad" / "common_yaml")
    (tmp_path / "base" / "common_yaml").write_text("doc_to_choice: opts\nprocess_results: !function u.f\n")
    with pytest.raises(TaskError, match=r"key 'process_results' \(set in .*common_yaml\)"):
        load_task(path)


def test_bad_data_names_file_and_line(tmp_path):
    path = tiny(tmp_path, "doc_to_text: q\ndoc_to_choice: opts\ndoc_to_target: label\n")
    test_file = tmp_path / "data" / "test.jsonl"
    lines = test_file.read_text(encoding="utf-8").split("\n")
    test_file.write_text("\n".join(lines[:2] + ['{"q": "broken'] + lines[2:]), encoding="utf-8")
    with pytest.raises(TaskError, match=r"test\.jsonl: line 3: broken JSON"):
        build_items(load_task(path))
    test_file.write_bytes(b'{"q": "\xff"}\n')
    with pytest.raises(TaskError, match=r"test\.jsonl: line 1: not UTF-8"):
        build_items(load_task(path))
    test_file.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TaskError, match="split 'test' .* has no items"):
        build_items(load_task(path))
    test_file.unlink()
    with pytest.raises(TaskError, match=r"data file 'data/test.jsonl' of split 'test' not found") as err:
        build_items(load_task(path))
    assert str(path) in str(err.value)


def test_a_template_failing_on_one_item_names_it(tmp_path):
    rows = [dict(r) for r in TEST_ROWS]
    rows[2]["q"] = None
    prompt = PROMPT.replace("doc_to_text: q", "doc_to_text: '{{ q.upper() }}'")
    path = tiny(tmp_path, prompt, {"test": rows, "train": TRAIN_ROWS})
    with pytest.raises(TaskError, match=r"key 'doc_to_text': failed on item 2 of split 'test'") as err:
        build_items(load_task(path))
    assert str(path) in str(err.value)


def test_gold_outside_the_choices_is_skipped_with_its_reason(tmp_path):
    rows = [dict(r) for r in TEST_ROWS]
    rows[1]["label"], rows[3]["label"] = 5, None
    path = tiny(
        tmp_path,
        "doc_to_text: q\ndoc_to_choice: opts\ndoc_to_target: label\n",
        {"test": rows, "train": TRAIN_ROWS},
    )
    items, skipped = build_items(load_task(path))
    assert [it.index for it in items] == [0, 2, 4]
    assert skipped[0] == Skipped(
        "tiny", 1, "gold 5 is not an index into the 2 choices; lm-eval scores this item as always wrong"
    )
    assert skipped[1].index == 3 and "null" in skipped[1].reason


# ------------------------------------------------------------------------------------------------- export


def test_export_makes_data_paths_absolute_and_keeps_the_rest(tmp_path, monkeypatch):
    write_task(tmp_path / "src" / "base", "doc_to_choice: opts\ndoc_to_target: label\n", name="common_yaml")
    own = tiny(tmp_path / "src", "include: base/common_yaml\ndoc_to_text: |-\n  Q: {{q}}\n  A:\n")
    monkeypatch.chdir(tmp_path)  # relative data files must not depend on the cwd
    out = export_tasks(["parus", str(own)], tmp_path / "exported")
    assert [p.name for p in out] == ["parus.yaml", "tiny.yaml"]
    for path, task in zip(out, [load_task("parus"), load_task(own)], strict=True):
        exported = yaml.safe_load(path.read_text(encoding="utf-8"))
        files = exported["dataset_kwargs"].pop("data_files")
        original = json.loads(json.dumps(task.config))
        original["dataset_kwargs"].pop("data_files")
        assert exported == original
        assert all(Path(f).is_absolute() and Path(f).is_file() for f in files.values())
        assert build_items(load_task(path), limit=20) == build_items(task, limit=20)


def test_export_of_a_task_without_its_data_points_at_the_cwd(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (path,) = export_tasks(["xnli_ru"], tmp_path / "out")
    files = yaml.safe_load(path.read_text(encoding="utf-8"))["dataset_kwargs"]["data_files"]
    assert files == {"validation": str(tmp_path / "data" / "xnli_ru" / "validation.jsonl")}
    assert "not found" in caplog.text


# --------------------------------------------------------------------------------------------- the bundle


@pytest.mark.shared
def test_bundle_regenerates_the_bundled_files_byte_for_byte(tmp_path):
    from vikhr.paths import shared_data_dir

    bundle(shared_data_dir(), tmp_path)
    bundled = next(iter(shipped_tasks().values())).parent / "data"
    for f in sorted(tmp_path.iterdir()):
        assert f.read_bytes() == (bundled / f.name).read_bytes(), f.name


# ------------------------------------------------------------------------------- cross-check with lm-eval


LMEVAL_DUMP = """
import json, sys
from lm_eval.tasks import TaskManager
include, out, limit, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
res = {}
for name, task in TaskManager(include_path=include, include_defaults=False).load(names)["tasks"].items():
    if task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=1234)  # lm-eval's default --seed 0,1234,1234,1234
    task.build_all_requests(limit=limit)
    res[name] = [[i.doc_id, i.idx, i.request_type, list(i.args[:2])] for i in task.instances]
json.dump(res, open(out, "w"), ensure_ascii=False)
"""


@pytest.mark.slow
def test_requests_match_lm_eval(tmp_path):
    """The shipped tasks (first 40 docs) and few-shot / loglikelihood / generation tasks: every request equals
    the one lm-eval 0.4.13 builds from the exported YAML."""
    if not LMEVAL_PYTHON.is_file():
        pytest.skip(f"needs lm-eval 0.4.13 in {LMEVAL_PYTHON.parent.parent}")
    opts = ["да", "нет", "может быть"]
    rows = [
        {
            "q": f"вопрос {i}",
            "opts": opts,
            "label": i % 3,
            "n": i if i % 2 else i + 0.5,
            "answer": f"ответ {i}",
        }
        for i in range(12)
    ]
    rows.append(dict(rows[4]))  # a duplicate: every copy is left out of its own examples
    data = {"test": rows, "train": rows[:8]}
    fewshot = "description: 'Тема {{n}}. '\n" + PROMPT.replace(
        "doc_to_text: q", 'doc_to_text: "{{q}} ({{n}})\\nОтвет:"'
    )
    specs = {
        "fs_train": fewshot + "training_split: train\nnum_fewshot: 3\n",
        "fs_test": fewshot + "fewshot_split: test\nnum_fewshot: 4\ntarget_delimiter: ': '\n",
        "fs_first": fewshot + "fewshot_split: train\nfewshot_config:\n  sampler: first_n\nnum_fewshot: 2\n",
        "ll": "output_type: loglikelihood\ntraining_split: train\nnum_fewshot: 2\ndoc_to_text: '{{q}}'\n"
              "doc_to_target: \"{{' ' + answer}}\"\n",
        "gen": "output_type: generate_until\ntraining_split: train\nnum_fewshot: 2\ndoc_to_text: '{{q}}?'\n"
               "doc_to_target: answer\ngeneration_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 16\n",
    }  # fmt: skip
    paths = []
    for n, spec in specs.items():
        head = HEAD.replace("task: tiny", f"task: {n}").replace("output_type: multiple_choice\n", "")
        paths.append(
            write_task(
                tmp_path / n,
                head + ("" if "output_type" in spec else "output_type: multiple_choice\n") + spec,
                data,
            )
        )
    names = [*BUNDLED, *specs]
    export_tasks([*BUNDLED, *map(str, paths)], tmp_path / "exported")
    (tmp_path / "dump.py").write_text(LMEVAL_DUMP, encoding="utf-8")
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(tmp_path / "hf"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        str(LMEVAL_PYTHON),
        str(tmp_path / "dump.py"),
        str(tmp_path / "exported"),
        str(tmp_path / "out.json"),
        "40",
        ",".join(names),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert set(theirs) == set(names)
    for name, path in zip(names, [*BUNDLED, *paths], strict=True):
        task = load_task(path)
        items, skipped = build_items(task, limit=40)
        assert skipped == []
        ours = []
        for it in items:
            if task.output_type == "generate_until":
                kwargs = {k: task.generation_kwargs[k] for k in ("until", "max_gen_toks")}
                ours.append([it.index, 0, "generate_until", [it.context, kwargs]])
            else:
                ours += [
                    [it.index, j, "loglikelihood", [it.context, c]] for j, c in enumerate(it.continuations)
                ]
        assert ours == theirs[name], name
