"""`vikhr eval` and the `evaluate` stage on tiny models: report files, per-item samples, counted skips, bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_run_config
from vikhr.eval.harness import EvalSettings, accuracy, run_evaluation

TASK = """task: tiny_nli
dataset_path: json
dataset_kwargs:
  data_files:
    test: items.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: ""
doc_to_choice: "{{[premise + ', правильно? Да, ' + hypothesis, premise + ', правильно? Нет, ' + hypothesis]}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: acc_bytes
"""


def write_task(folder, rows: list[dict]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    (folder / "tiny_nli.yaml").write_text(TASK, encoding="utf-8")
    return str(folder / "tiny_nli.yaml")


ROWS = [
    {"premise": "Кот спит на диване", "hypothesis": "кот отдыхает", "label": 0},
    {"premise": "Идёт дождь", "hypothesis": "на улице сухо", "label": 1},
    {"premise": "Мальчик читает книгу", "hypothesis": "мальчик занят", "label": 0},
    {"premise": "Поезд опоздал", "hypothesis": "поезд пришёл вовремя", "label": 5},  # gold not among choices
]


def test_accuracy_interval():
    a = accuracy([1.0, 0.0, 1.0, 1.0])
    assert a["value"] == 0.75 and a["n"] == 4
    lo, hi = a["ci95"]
    assert 0 < lo < 0.75 < hi <= 1
    assert accuracy([])["value"] is None


def test_run_evaluation_writes_report_and_samples(tiny_smollm, tiny_mistral, tmp_path):
    yaml_path = write_task(tmp_path / "task", ROWS)
    settings = EvalSettings(
        tasks=[yaml_path, "parus"], limit=6, batch_size=4, dtype="float32", speed=False,
        text={"ru": ["Кот спит на диване.", "Идёт дождь."]},
    )  # fmt: skip
    out = tmp_path / "out"
    report = run_evaluation({"a": str(tiny_smollm), "b": str(tiny_mistral)}, settings, out)
    for name in ("a", "b"):
        tasks = report["models"][name]["tasks"]
        nli = tasks["tiny_nli"]
        assert nli["items"] == 3 and nli["skipped"] == 1  # counted, not silent
        assert set(nli["metrics"]) == {"acc", "acc_norm", "acc_bytes"}
        assert nli["chance"] == pytest.approx(0.5) and nli["majority"] == pytest.approx(2 / 3)
        assert tasks["parus"]["items"] == 6
        rows = [json.loads(x) for x in (out / "samples" / name / "tiny_nli.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and sum("skipped" in r for r in rows) == 1
        scored = [r for r in rows if "skipped" not in r]
        assert all(len(r["loglikelihoods"]) == 2 and r["gold"] in (0, 1) for r in scored)
        text = report["models"][name]["text"]["ru"]
        assert text["bits_per_char"] > 0 and text["bits_per_byte"] < text["bits_per_char"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "tiny_nli" in md and "parus" in md and "bits_per_char" in md
    assert (out / "report.png").stat().st_size > 1000
    assert json.loads((out / "report.json").read_text())["models"].keys() == {"a", "b"}


def test_not_a_causal_lm_is_a_clear_error(tiny_smollm, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(folder)  # fmt: skip
    AutoTokenizer.from_pretrained(tiny_smollm).save_pretrained(folder)
    with pytest.raises(ValueError, match="not a causal language model"):
        run_evaluation(
            {"bert": str(folder)}, EvalSettings(tasks=["parus"], limit=1, speed=False), tmp_path / "o"
        )


def test_bad_task_fails_before_any_model_loads(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        TASK.replace("output_type: multiple_choice", "output_type: multiple_choice\nprocess_docs: x")
    )
    with pytest.raises(ValueError, match="process_docs"):
        run_evaluation(
            {"m": str(tmp_path / "missing")}, EvalSettings(tasks=[str(bad)], speed=False), tmp_path / "o"
        )


def test_evaluate_stage_records_headline_numbers(tiny_smollm, tmp_path):
    from vikhr import pipeline
    from vikhr.config import load_config

    yaml_path = write_task(tmp_path / "task", ROWS[:3])
    cfg_path = tiny_run_config(
        tmp_path, tiny_smollm,
        {"evaluate": {"models": ["source"], "tasks": [yaml_path], "speed": False, "prompts": "", "text_lines": 5}},
    )  # fmt: skip
    cfg = load_config(str(cfg_path))
    pipeline.run(cfg, "evaluate", "evaluate")
    rundir = pipeline.open_rundir(cfg)
    rec = rundir.manifest.get("evaluate")
    assert "tiny_nli/acc" in rec["metrics"]["source"]
    assert (rundir.stage_dir("evaluate") / "report.md").is_file()
    steps = pipeline.run(cfg, "evaluate", "evaluate")
    assert [p.action for p in steps] == ["skip"]  # up to date
    (tmp_path / "task" / "items.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS[:2]), encoding="utf-8"
    )
    steps = pipeline.plan(load_config(str(cfg_path)), rundir, "evaluate", "evaluate")
    assert [p.action for p in steps] == ["run"]  # the task's data changed


GEN_TASK = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Вопрос: {{question}}\\nОтвет:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
filter_list:
  - name: first
    filter:
      - function: regex
        regex_pattern: "(\\\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
    ignore_case: true
"""


def test_generative_task_exact_match(tiny_smollm, tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    rows = [
        {"question": "Сколько будет два плюс два?", "answer": "4"},
        {"question": "Сто минус один?", "answer": "99"},
    ]
    (folder / "gen.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (folder / "tiny_gen.yaml").write_text(GEN_TASK, encoding="utf-8")
    settings = EvalSettings(tasks=[str(folder / "tiny_gen.yaml")], chat=False, speed=False, dtype="float32")
    report = run_evaluation({"m": str(tiny_smollm)}, settings, tmp_path / "out")
    result = report["models"]["m"]["tasks"]["tiny_gen"]
    assert result["items"] == 2 and result["metrics"]["exact_match"]["n"] == 2
    lines = (tmp_path / "out" / "samples" / "m" / "tiny_gen.jsonl").read_text().splitlines()
    for line in lines:
        row = json.loads(line)
        assert "answer" in row and row["correct"]["exact_match"] in (0.0, 1.0)
        assert row["prediction"] == "[invalid]" or row["prediction"].isdigit()


def test_cli_eval_tasks_text_and_prompts(tiny_smollm, tmp_path, capsys):
    from vikhr.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Как приготовить борщ?\nЧто посмотреть в Казани?\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["eval", f"tiny={tiny_smollm}", "--tasks", "parus,rcb", "--limit", "3", "--text", "ru=task:parus",
            "--text-lines", "3", "--prompts", str(prompts), "--max-new-tokens", "6", "--no-chat", "--dtype",
            "float32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "parus" in printed and "report.md" in printed
    report = json.loads((out / "report.json").read_text())
    m = report["models"]["tiny"]
    assert m["text"]["ru"]["lines"] == 3 and m["tasks"]["rcb"]["items"] == 3
    assert m["generation"]["purity"]["answers"] == 2
    assert (out / "sbs" / "sbs.md").is_file()
    assert main(["eval", "tasks"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("rcb", "parus", "mmlu_pro", "xnli_ru"))
    assert main(["eval", "tasks", "--export", str(tmp_path / "exported"), "parus"]) == 0
    assert (tmp_path / "exported" / "parus.yaml").is_file()
    assert main(["eval", "bad", "--tasks", "no_such_task"]) == 2


def test_interval_contains_the_value_at_the_edges():
    for correct in ([1.0] * 3, [0.0] * 3, [1.0] * 7 + [0.0]):
        a = accuracy(correct)
        assert 0.0 <= a["ci95"][0] <= a["value"] <= a["ci95"][1] <= 1.0
