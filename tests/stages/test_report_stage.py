"""The `report` stage: the run report (Markdown, one self-contained HTML file, plots, summary.json) and the final
model's card, on a run directory built from small files (every stage done; a partial run; an empty one; a broken
file), and once on a real tiny pipeline run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import tiny_run_config

from vikhr.config import load_config
from vikhr.manifest import StageRecord
from vikhr.pipeline import open_rundir
from vikhr.report.card import front_matter
from vikhr.stages import report

SECTIONS = ("## Stages", "## Corpus", "## Tokenizer", "## Transplant", "## Continued pre-training", "## Reward model",
            "## Instruction data", "## Instruction tuning (SFT)", "## Evaluation", "## Side-by-side answers",
            "## Generation speed", "## Final model")  # fmt: skip


def _config(tmp_path: Path, **settings):
    path = tmp_path / "exp.yaml"
    data = {"run_dir": "run", "source_model": "smollm2-135m-instruct", **settings}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_config(path)


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _model(folder: Path, chat: bool = True) -> None:
    _write(folder / "config.json", {"model_type": "llama"})
    _write(folder / "tokenizer_config.json", {"chat_template": "{{ messages }}"} if chat else {})


def _done(rundir, name: str, seconds: float, metrics: dict | None = None) -> None:
    rundir.stage_dir(name).mkdir(parents=True, exist_ok=True)
    rundir.manifest.put(StageRecord(name=name, seconds=seconds, metrics=metrics or {}))


def _history(steps: int, every: int) -> list[dict]:
    h = [{"loss": 8.0 - s / steps, "ce": 7.9 - s / steps, "kl": 0.01, "learning_rate": 1e-4, "step": s}
         for s in range(every, steps + 1, every)]  # fmt: skip
    return h + [{"eval_target_ce": 7.5, "step": steps}, {"train_loss": 7.7, "step": steps}]


def _eval_model(path: str, bpc_ru: float, acc: float, speed: float) -> dict:
    return {
        "path": path,
        "tasks": {"parus": {"metrics": {"acc": {"value": acc, "n": 100, "ci95": [acc - 0.1, acc + 0.1]}},
                            "chance": 0.5, "items": 100}},
        "text": {"ru": {"bits_per_char": bpc_ru}, "en": {"bits_per_char": 1.1}},
        "generation": {"chars_per_s": speed / 2, "mean_chars": 200.0, "purity": {"latin_share": 0.02}},
        "speed": {"chars_per_s": speed, "tokens_per_s": speed / 3},
    }  # fmt: skip


def fake_run(cfg, stages=("corpus", "tokenizer", "transplant", "pretrain", "reward", "instruct", "sft",
                          "evaluate")):  # fmt: skip
    """A run directory with the files and manifest records the named stages leave (small, made up)."""
    rd = open_rundir(cfg)
    d = rd.stage_dir
    if "corpus" in stages:
        _done(rd, "corpus", 12.5)
        _write(d("corpus") / "stats.json", {
            "sources": {"ru": {"input": {"documents": 76, "paragraphs": 10053, "bad_records": 0},
                               "kept": {"paragraphs": 9620, "chars": 1799861, "tokens": 1312761},
                               "dropped": {"exact_duplicate": 247, "too_short": 164}}},
            "dedup": {"exact_duplicate": 247, "near_duplicate": 1, "threshold": 0.8},
            "tokenizer": "smollm2", "output_unit": "document"})  # fmt: skip
        _write(d("corpus") / "table.md", "| source |\n|---|\n| ru |\n")
    if "tokenizer" in stages:
        _done(rd, "tokenizer", 30.0, {"vocab_size": 32000, "chars_per_token": {"ru": 3.9, "en": 3.1},
                                      "base_chars_per_token": {"ru": 1.3, "en": 4.5}})  # fmt: skip
        same = {"chars_per_token": 1.3, "tokens": 1000}
        _write(d("tokenizer") / "report" / "report.json", {
            "vocab_sizes": {"base: smollm2-135m-instruct": 49152, "vikhr-replace": 32000, "smollm2-135m": 49152},
            "languages": {"ru": {"base: smollm2-135m-instruct": same, "vikhr-replace": {"chars_per_token": 3.9,
                                 "tokens": 333}, "smollm2-135m": same},
                          "en": {"base: smollm2-135m-instruct": {"chars_per_token": 4.5, "tokens": 200},
                                 "vikhr-replace": {"chars_per_token": 3.1, "tokens": 290},
                                 "smollm2-135m": {"chars_per_token": 4.5, "tokens": 200}}}})  # fmt: skip
        _write(d("tokenizer") / "stats.json", {"mode": "replace", "vocab_size": 32000,
                                               "pieces": {"new": 20000, "shared": 12000, "dropped": 37152},
                                               "training_text": {"target_chars": 1800000, "extra_chars": 200000}})  # fmt: skip
    if "transplant" in stages:
        _done(rd, "transplant", 95.0)
        _model(d("transplant") / "model", chat=False)
        _write(d("transplant") / "transplant_report.json", {
            "method": "calibrated", "vocab_size": 32000, "padded_vocab_size": 32000, "tied": True,
            "rows": {"copied": 12000, "special": 17, "pieces": 19983}, "base": {"bits_per_char": {"ru": 2.4}},
            "transplanted": {"bits_per_char": {"ru": 3.0}, "uniform_bits_per_char": {"ru": 4.0}},
            "dominance": {"mass_on_new_rows": 0.4, "share_of_new_tokens": 0.5, "warning": False}})  # fmt: skip
    if "pretrain" in stages:
        _done(rd, "pretrain", 240.0)
        _model(d("pretrain") / "model", chat=False)
        _write(d("pretrain") / "pretrain_report.json", {
            "data": {"steps": 12, "tokens_per_step": 2048, "train_documents": 70, "replay_documents": 0,
                     "source": "corpus stage"},
            "settings": {"logging_steps": 10, "kl_weight": 1.0, "reference": "init", "lr": 3e-4},
            "train": {"train_loss": 7.7}, "bits_per_char": {"transplanted": {"ru": 3.0}, "trained": {"ru": 2.0}},
            "base_bits_per_char": {"ru": 2.4}})  # fmt: skip
        _write(d("pretrain") / "log_history.json", _history(12, 10))
    if "reward" in stages:
        _done(rd, "reward", 0.02, {"configured": False})
    if "instruct" in stages:
        _done(rd, "instruct", 4.0)
        _write(d("instruct") / "stats.json", {
            "sources": [{"source": "ru_seed_tasks", "language": "ru", "in": 137, "kept": 137, "dropped": 0, "mix": 137,
                         "prompt_tokens": 10449, "answer_tokens": 11891}],
            "dedup": {"removed": 0}, "reward": {}, "tokenizer": "tokenizer stage", "mix": 137})  # fmt: skip
    if "sft" in stages:
        _done(rd, "sft", 120.0)
        _model(d("sft") / "model")
        _write(d("sft") / "sft_report.json", {
            "data": {"steps": 52, "train_examples": 130, "rows": 40, "truncated_away": 0, "source": "instruct stage",
                     "model_origin": "pretrain stage"},
            "settings": {"logging_steps": 2, "lora": False, "seq_len": 512, "lr": 4e-4},
            "held_out_answer_loss": {"before": 2.5, "after": 1.9},
            "answers": {"before": {"prompts": 8, "stop_share": 0.1, "latin_share": 0.05, "mean_chars": 300.0},
                        "after": {"prompts": 8, "stop_share": 0.9, "latin_share": 0.01, "mean_chars": 250.0}}})  # fmt: skip
        _write(d("sft") / "log_history.json", _history(52, 2))
    if "evaluate" in stages:
        _done(rd, "evaluate", 60.0)
        models = {"source": _eval_model("/models/smollm2", 2.4, 0.52, 900.0)}
        for name, bpc in (("transplant", 3.0), ("pretrain", 2.0), ("sft", 2.1)):
            if name in stages:
                models[name] = _eval_model(str(d(name) / "model"), bpc, 0.55, 1800.0)
        _write(d("evaluate") / "report.json", {"settings": {"limit": 100}, "dtype": "float32", "device": "cpu",
                                               "models": models, "side_by_side": {"json": "sbs/sbs.json"}})  # fmt: skip
        answers = [
            {"text": "Шаурма | это " + "очень " * 100, "finish_reason": "length"},
            {"text": "Борщ.\nВарить."},
        ]
        _write(d("evaluate") / "sbs" / "sbs.json", {
            "prompts": ["Как приготовить шаурму?", "Рецепт борща?"],
            "models": {n: {"answers": answers} for n in models}})  # fmt: skip
    return rd


def test_full_report(tmp_path):
    cfg = _config(tmp_path, instruct={}, data={"target": ["bundled:ru"], "extra": ["bundled:en"]})
    rd = fake_run(cfg)
    record = report.run(cfg, rd)
    out = rd.stage_dir("report")
    md = (out / "report.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in md, section
    assert "*Not configured*: no `reward.pairs`" in md
    assert "## Problems" not in md
    # the tokenizer shared under another name is shown once, with a note
    assert "smollm2-135m = base: smollm2-135m-instruct" in md and "| smollm2-135m |" not in md
    assert "| tuned (SFT) | 2.100 | 1.100 | 0.550 [0.45, 0.65] | 0.020 | 1800 |" in md
    assert "Шаурма \\| это" in md and "…" in md  # answers escaped and cut
    assert f"vikhr chat {rd.stage_dir('sft') / 'model'}" in md
    # plots: every figure the data allows, as real PNGs
    plots = {p.name for p in (out / "plots").iterdir()}
    assert plots == {"stages.png", "tokenizer.png", "pretrain_loss.png", "sft_loss.png", "bpc.png", "speed.png",
                     "tasks.png"}  # fmt: skip
    # one self-contained HTML file: every plot embedded, nothing fetched
    page = (out / "report.html").read_text(encoding="utf-8")
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == len(plots)
    assert not re.search(r"<(script|link)\b|src=\"(?!data:)|https?://", page)
    assert "<table>" in page and "<h2" in page
    # the key numbers for machines
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert s["models"]["sft"]["bits_per_char"] == {"ru": 2.1, "en": 1.1}
    assert s["models"]["sft"]["chars_per_s"] == 1800.0
    assert s["models"]["source"]["tasks"]["parus"]["value"] == 0.52
    assert s["stage_seconds"]["pretrain"] == 240.0 and s["total_seconds"] == pytest.approx(561.52)
    assert s["stages"]["reward"] == "not configured"
    assert s["final_model"] == str(rd.stage_dir("sft") / "model") and s["final_stage"] == "sft"
    assert s["chat_command"] == f"vikhr chat {rd.stage_dir('sft') / 'model'}"
    assert record.outputs["model_card"] == "sft/model/README.md"
    assert record.metrics["final_model"] == s["final_model"]
    # the model card: Hugging Face front matter and the run's numbers
    card = (rd.stage_dir("sft") / "model" / "README.md").read_text(encoding="utf-8")
    assert card == (out / "model_card.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    assert meta["language"] == ["ru", "en"]
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["datasets"] == [
        "RusLit (Chekhov)",
        "Project Gutenberg (English)",
        "IlyaGusev/rulm seed tasks",
    ]
    assert {"vikhr", "tokenizer-replace", "continued-pretraining", "sft"} <= set(meta["tags"])
    body = card.split("\n---\n", 1)[1]
    assert "`replace` mode, 32,000 tokens" in body and "12 optimizer steps, 24,576 tokens" in body
    assert "| tuned (SFT) (this model) | 2.100 | 1.100 | 0.550 | 1800 |" in body
    assert "apply_chat_template" in body and f"vikhr chat {rd.stage_dir('sft') / 'model'}" in body
    assert "## Limitations" in body
    # transplant and pretrain models are not the final one: no card there
    assert not (rd.stage_dir("pretrain") / "model" / "README.md").exists()


def test_partial_run_says_what_did_not_run(tmp_path):
    cfg = _config(
        tmp_path,
        stages=["tokenizer", "transplant", "evaluate"],
        evaluate={"models": ["source", "transplant"]},
    )
    rd = fake_run(cfg, stages=("tokenizer", "transplant", "evaluate"))
    report.run(cfg, rd)
    md = (rd.stage_dir("report") / "report.md").read_text(encoding="utf-8")
    assert "*Not run*: the config's `stages` leaves `corpus` out." in md
    assert "*Not run*: the config's `stages` leaves `pretrain` out." in md
    assert "*Not run*: the config's `stages` leaves `reward` out." in md
    s = json.loads((rd.stage_dir("report") / "summary.json").read_text(encoding="utf-8"))
    assert s["final_stage"] == "transplant" and set(s["models"]) == {"source", "transplant"}
    assert s["stages"]["sft"] == "left out by the config"
    card = (rd.stage_dir("transplant") / "model" / "README.md").read_text(encoding="utf-8")
    assert (
        "No continued pre-training" in card and "apply_chat_template" not in card
    )  # no template: plain text
    assert not {"continued-pretraining", "sft"} & set(front_matter(card)["tags"])


def test_empty_run_and_broken_file(tmp_path):
    cfg = _config(tmp_path, source_model=str(tmp_path / "src"))
    rd = open_rundir(cfg)
    record = report.run(cfg, rd)
    md = (rd.stage_dir("report") / "report.md").read_text(encoding="utf-8")
    assert md.count("*Not run*") >= 8 and "*No model*" in md
    assert record.outputs.get("model_card") is None
    assert json.loads((rd.stage_dir("report") / "summary.json").read_text())["chat_command"] is None
    # a finished stage with an unreadable report: a note naming the file, the rest still written
    rd = fake_run(cfg, stages=("transplant", "evaluate"))
    (rd.stage_dir("evaluate") / "report.json").write_text("{not json", encoding="utf-8")
    report.run(cfg, rd)
    md = (rd.stage_dir("report") / "report.md").read_text(encoding="utf-8")
    assert "## Problems" in md and f"{rd.stage_dir('evaluate') / 'report.json'}: unreadable" in md
    assert "*No report*: the stage finished but `evaluate/report.json`" in md


def test_card_licence_from_a_local_source_folder(tmp_path):
    src = tmp_path / "src"
    _write(src / "README.md", "---\nlicense: mit\nbase_model: someone/else\n---\n# My model\n")
    cfg = _config(tmp_path, source_model=str(src))
    rd = fake_run(cfg, stages=("transplant",))
    report.run(cfg, rd)
    meta = front_matter((rd.stage_dir("transplant") / "model" / "README.md").read_text(encoding="utf-8"))
    assert meta["license"] == "mit" and "base_model" not in meta  # a local folder has no hub id of its own
    (src / "README.md").unlink()  # no licence anywhere: `other`, and the card says so
    report.run(cfg, rd)
    card = (rd.stage_dir("transplant") / "model" / "README.md").read_text(encoding="utf-8")
    assert front_matter(card)["license"] == "other" and "licence is unknown" in card


def test_reward_section_when_trained(tmp_path):
    cfg = _config(tmp_path, reward={"pairs": ["bundled:instruct/hh_rlhf_harmless_sample.jsonl"]})
    rd = fake_run(cfg, stages=("transplant",))
    _done(
        rd,
        "reward",
        50.0,
        {"configured": True, "pairs": 400, "rejected": 2, "accuracy": 0.6, "length_baseline": 0.55},
    )
    _write(rd.stage_dir("reward") / "reward_report.json", {
        "model": "all-minilm-l6-v2",
        "held_out": {"reward_model": {"value": 0.6, "ci95": [0.5, 0.7]},
                     "length_baseline": {"accuracy": {"value": 0.55, "ci95": [0.45, 0.65]}}}})  # fmt: skip
    report.run(cfg, rd)
    md = (rd.stage_dir("report") / "report.md").read_text(encoding="utf-8")
    assert "`all-minilm-l6-v2` on 400 preference pairs" in md
    assert (
        "| reward model | 0.600 [0.50, 0.70] |" in md
        and "| longer/shorter reply wins (baseline) | 0.550" in md
    )
    card = (rd.stage_dir("transplant") / "model" / "README.md").read_text(encoding="utf-8")
    assert "Anthropic/hh-rlhf" in front_matter(card)["datasets"]


def test_stage_module_contract():
    cfg = load_config(None)
    assert report.NAME == "report" and report.VERSION == 1 and report.inputs(cfg) == {}
    assert report.DEPENDS == (
        "corpus",
        "tokenizer",
        "transplant",
        "pretrain",
        "reward",
        "instruct",
        "sft",
        "evaluate",
    )
    assert set(report.SOFT) == set(report.DEPENDS)
    assert report.config_section(cfg) == {
        "language": "ru",
        "source_model": "smollm2-135m-instruct",
        "stages": [],
    }


@pytest.mark.slow
def test_report_on_a_real_tiny_run(tiny_smollm, tmp_path):
    """tokenizer, transplant and evaluate (with answers and speed) on the tiny model, then the report (~15 s)."""
    from vikhr import pipeline

    settings = {"stages": ["tokenizer", "transplant", "evaluate"],
                "evaluate": {"models": ["source", "transplant"], "prompts": "bundled", "max_prompts": 2,
                             "max_new_tokens": 8, "speed": True}}  # fmt: skip
    cfg = load_config(tiny_run_config(tmp_path, tiny_smollm, settings))
    pipeline.run(cfg)
    rd = open_rundir(cfg)
    report.run(cfg, rd)
    out = rd.stage_dir("report")
    md = (out / "report.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in md
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert set(s["models"]) == {"source", "transplant"}
    assert all(m["chars_per_s"] > 0 and set(m["bits_per_char"]) == {"ru", "en"} for m in s["models"].values())
    assert s["final_stage"] == "transplant" and s["stage_seconds"]["transplant"] > 0
    assert {"bpc.png", "speed.png", "tasks.png", "tokenizer.png", "stages.png"} <= {
        p.name for p in (out / "plots").iterdir()
    }
    assert "| prompt | source model | transplanted |" in md  # the side-by-side answers
    meta = front_matter((rd.stage_dir("transplant") / "model" / "README.md").read_text(encoding="utf-8"))
    assert meta["language"] == ["ru", "en"] and meta["pipeline_tag"] == "text-generation"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == len(list((out / "plots").iterdir()))
