"""The `instruct` stage: sources read and normalised, prompts deduplicated across sources with the corpus chain,
caps and weights, the per-source table with `in = kept + dropped`, every left-out record written with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_run_config

from vikhr import pipeline
from vikhr.config import ConfigError, load_config
from vikhr.instruct.formats import read_examples

SEEDS = Path(__file__).resolve().parents[2] / "src" / "vikhr" / "data" / "instruct" / "ru_seed_tasks.jsonl"


def _seed_prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in SEEDS.read_text(encoding="utf-8").splitlines()[:n]]
    return [r["instruction"] + ("\n\n" + r["instances"][0]["input"] if r["instances"][0]["input"] else "")
            for r in rows]  # fmt: skip


def _alpaca(path: Path) -> Path:
    """An Alpaca file: an exact and a near duplicate of seed prompts, two new examples, three bad records."""
    p0, p1 = _seed_prompts(2)
    rows = [
        {"instruction": p0, "input": "", "output": "Другой ответ."},  # exact duplicate of seed 0's prompt
        {"instruction": p1.replace("?", "!") + " пожалуйста", "input": "", "output": "Ответ."},  # near duplicate
        {"instruction": "Назови три столицы Европы и коротко опиши каждую из них", "output": "Париж, Рим, Берлин."},
        {"instruction": "Объясни, почему небо голубое, простыми словами для ребёнка", "output": "Из-за рассеяния."},
        {"instruction": "Пустой ответ здесь будет отклонён проверкой данных", "output": "  "},
        {"conversations": [{"from": "human", "value": "Привет"}, {"from": "gpt", "value": "Здравствуйте"},
                           {"from": "gpt", "value": "Ещё раз"}]},
    ]  # fmt: skip
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + ["{not json"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_instruct_stage_table_dedup_caps_and_reasons(tiny_smollm, tmp_path):
    extra = _alpaca(tmp_path / "extra.jsonl")
    settings = {"instruct": {"sources": {
        "seeds": {"path": ["bundled:instruct/ru_seed_tasks.jsonl"], "format": "seed", "cap": 100},
        "extra": {"path": [str(extra)], "weight": 2.0},
    }}}  # fmt: skip
    cfg = load_config(tiny_run_config(tmp_path, tiny_smollm, settings))
    steps = pipeline.run(cfg, "instruct", "instruct")
    assert [(s.name, s.action) for s in steps] == [("instruct", "run")]
    out = tmp_path / "run" / "instruct"
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    rows = {r["source"]: r for r in stats["sources"]}
    assert (
        rows["seeds"]["in"] == 137
        and rows["seeds"]["kept"] == 100
        and rows["seeds"]["reasons"] == {"over_cap": 37}
    )
    assert rows["seeds"]["language"] == "ru" and rows["seeds"]["answer_tokens"] > 0
    extra_row = rows["extra"]
    assert extra_row["in"] == 7 and extra_row["kept"] == 2 and extra_row["mix"] == 4  # weight 2: twice each
    assert extra_row["reasons"] == {"exact_duplicate": 1, "near_duplicate": 1, "empty_answer": 1,
                                    "not_alternating": 1, "bad_record": 1}  # fmt: skip
    for r in stats["sources"]:
        assert r["in"] == r["kept"] + r["dropped"]
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text(encoding="utf-8").splitlines()]
    dups = {d["reason"]: d for d in dropped if d["reason"].endswith("_duplicate")}
    assert dups["exact_duplicate"]["duplicate_of"] == "seeds:0:0"
    assert dups["near_duplicate"]["duplicate_of"] == "seeds:1:0"
    assert any(d["reason"] == "bad_record" and d["record"] == "{not json" for d in dropped)
    assert "| seeds | ru | 137 | 100 |" in (out / "stats.md").read_text(encoding="utf-8")
    examples, rejected = read_examples(out / "data" / "train.jsonl")
    assert len(examples) == 104 and not rejected
    # unchanged inputs: skipped; a changed cap reruns it
    assert [s.action for s in pipeline.run(cfg, "instruct", "instruct")] == ["skip"]
    cfg2 = load_config(tiny_run_config(tmp_path, tiny_smollm, settings), ["instruct.sources.seeds.cap=0"])
    assert [s.action for s in pipeline.run(cfg2, "instruct", "instruct")] == ["run"]


def test_instruct_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="instruct.sources.a.weight"):
        load_config(None, ["instruct.sources={a: {path: [x.jsonl], weight: 0}}"])
    with pytest.raises(ConfigError, match="reward_quantile"):
        load_config(None, ["instruct.reward_threshold=0.5", "instruct.reward_quantile=0.2"])
    with pytest.raises(ConfigError, match="instruct.sources.a.format"):
        load_config(None, ["instruct.sources={a: {path: [x.jsonl], format: csv}}"])


def test_missing_source_file_names_it(tiny_smollm, tmp_path):
    settings = {"instruct": {"sources": {"mine": {"path": [str(tmp_path / "nope.jsonl")]}}}}
    cfg = load_config(tiny_run_config(tmp_path, tiny_smollm, settings))
    with pytest.raises(Exception, match="nope.jsonl"):
        pipeline.run(cfg, "instruct", "instruct")


@pytest.mark.slow
def test_reward_stage_then_instruct_filters_by_quantile(tiny_smollm, tmp_path):
    """The reward stage trains on preference pairs; `instruct.reward_model: reward` scores every example and drops
    the lowest share, each written with its score."""
    from conftest import tiny_encoder

    words = ["хороший подробный ответ", "плохо", "полезно и вежливо", "грубо"]
    encoder = tiny_encoder(tmp_path / "enc", words * 50 + _seed_prompts(40))
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Вопрос {i}", "chosen": f"хороший подробный ответ {i}", "rejected": f"грубо {i}"}
            for i in range(40)] + [{"prompt": "x", "chosen": "same", "rejected": "same"}]  # fmt: skip
    pairs.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    settings = {
        "reward": {"pairs": [str(pairs)], "model": str(encoder), "epochs": 2, "batch_size": 8, "lr": 1e-3,
                   "max_length": 32, "eval_share": 0.2},
        "instruct": {"reward_model": "reward", "reward_quantile": 0.25, "reward_max_length": 64},
    }  # fmt: skip
    cfg = load_config(tiny_run_config(tmp_path, tiny_smollm, settings))
    steps = pipeline.run(cfg, "reward", "instruct")
    assert [(s.name, s.action) for s in steps] == [("reward", "run"), ("instruct", "run")]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))["stages"]
    r = manifest["reward"]["metrics"]
    assert r["configured"] and r["pairs"] == 40 and r["rejected"] == 1  # the identical pair, written with why
    assert (tmp_path / "run" / "reward" / "model" / "config.json").is_file()
    assert "identical_pair" in (tmp_path / "run" / "reward" / "rejected.jsonl").read_text(encoding="utf-8")
    stats = json.loads((tmp_path / "run" / "instruct" / "stats.json").read_text(encoding="utf-8"))
    row = stats["sources"][0]
    assert row["in"] == 137 and row["reasons"]["low_reward"] == 34 and row["kept"] == 103  # floor(0.25 * 137)
    dropped = [
        json.loads(x) for x in (tmp_path / "run" / "instruct" / "dropped.jsonl").read_text().splitlines()
    ]
    low = [d for d in dropped if d["reason"] == "low_reward"]
    kept = [
        json.loads(x)
        for x in (tmp_path / "run" / "instruct" / "data" / "train.jsonl").read_text().splitlines()
    ]
    assert max(d["score"] for d in low) <= min(k["reward"] for k in kept)
