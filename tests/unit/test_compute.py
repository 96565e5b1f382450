"""`vikhr.compute`: the parameter formula against real models, the paper config's FLOPs and memory, and plans that
never touch a hub or a weight file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vikhr.compute import (
    DEFAULT_CHARS_PER_TOKEN,
    EXTEND_OVERLAP,
    PAPER_REFERENCE,
    compute_plan,
    format_plan,
    lora_params,
    model_shape,
    shape_of,
)
from vikhr.config import ConfigError, load_config

PAIRS = [
    {"chosen": "\n\nHuman: Привет, как дела?\n\nAssistant: Хорошо, спасибо!",
     "rejected": "\n\nHuman: Привет, как дела?\n\nAssistant: Не знаю."},
] * 50  # fmt: skip


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    """A small preference file, so that the paper config plans without ../shared/data."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p, ensure_ascii=False) for p in PAIRS) + "\n", encoding="utf-8")
    return path


def mistral(pairs: Path, *extra: str):
    return load_config("mistral-7b-ru", ["compute.pretrain_tokens=11e9", f"reward.pairs=[{pairs}]", *extra])


def _save(config, folder: Path) -> Path:
    folder.mkdir()
    config.to_json_file(folder / "config.json")
    return folder


def _tiny_configs():
    from transformers import BertConfig, LlamaConfig, MistralConfig, Qwen2Config, XLMRobertaConfig

    small = dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=300
    )
    return {
        "llama-tied": LlamaConfig(**small, num_key_value_heads=2, tie_word_embeddings=True),
        "llama-untied": LlamaConfig(**small, num_key_value_heads=2, tie_word_embeddings=False),
        "mistral-head-dim": MistralConfig(
            **small, num_key_value_heads=1, head_dim=32, tie_word_embeddings=False
        ),
        "qwen2-bias": Qwen2Config(**small, num_key_value_heads=2, tie_word_embeddings=False),
        "bert": BertConfig(**small, max_position_embeddings=40, type_vocab_size=2, num_labels=1),
        "xlm-roberta": XLMRobertaConfig(**small, max_position_embeddings=40, type_vocab_size=1, num_labels=1),
    }


@pytest.mark.parametrize(
    "name", ["llama-tied", "llama-untied", "mistral-head-dim", "qwen2-bias", "bert", "xlm-roberta"]
)
def test_parameter_formula_matches_a_real_model(name: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = _tiny_configs()[name]
    folder = _save(config, tmp_path / name)
    cfg = load_config(None, [f"source_model={folder}"])
    shape = shape_of(str(folder), cfg)
    auto = AutoModelForSequenceClassification if shape.arch == "encoder" else AutoModelForCausalLM
    model = auto.from_config(config)
    real = sum(p.numel() for p in model.parameters())  # a tied matrix is one parameter
    assert shape.params == real
    assert shape.tied == (name == "llama-tied" or shape.arch == "encoder")


def test_lora_count_matches_peft(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    config = _tiny_configs()["llama-untied"]
    folder = _save(config, tmp_path / "m")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(
        AutoModelForCausalLM.from_config(config), peft.LoraConfig(r=4, target_modules=targets)
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_params(shape_of(str(folder), load_config(None)), targets, 4) == trainable


def test_mistral_7b_from_the_built_in_table() -> None:
    shape = shape_of("mistralai/Mistral-7B-v0.1", load_config(None))
    assert abs(shape.params - 7.24e9) < 0.01e9
    assert (shape.vocab, shape.tied, shape.kv_heads) == (32000, False, 8)


def test_new_vocabulary(pairs_file: Path) -> None:
    shape = model_shape(mistral(pairs_file))
    assert shape.vocab == 40000 and not shape.tied  # 40,000 is a multiple of 64
    assert model_shape(mistral(pairs_file, "tokenizer.vocab_size=40001")).vocab == 40064
    ext = model_shape(mistral(pairs_file, "tokenizer.mode=extend"))
    assert ext.vocab == math.ceil((32000 + round(40000 * (1 - EXTEND_OVERLAP))) / 64) * 64
    assert "approximation" in ext.vocab_note
    demo_ext = model_shape(load_config("demo", ["tokenizer.mode=extend"]))
    assert demo_ext.vocab == 49152 + 32000 and demo_ext.tied  # byte-level base: the learned merges are added


def test_paper_pretrain_flops_and_hours(pairs_file: Path) -> None:
    cfg = mistral(pairs_file)
    assert cfg.pretrain.gradient_checkpointing and cfg.pretrain.reference == "init"
    plan = compute_plan(cfg)
    shape = model_shape(cfg)
    n, d = shape.params, 11e9
    pre = plan["stages"]["pretrain"]
    parts = pre["flops_parts"]
    assert parts["train 6·N·D"] == pytest.approx(6 * n * d)
    assert parts["KL reference forward 2·N·D"] == pytest.approx(2 * n * d)
    assert parts["checkpointing recompute 2·N_layers·D"] == pytest.approx(2 * shape.non_embedding_params * d)
    assert pre["flops"] == pytest.approx(sum(parts.values()))
    training = 6 * n * d + 2 * n * d + 2 * shape.non_embedding_params * d
    assert pre["flops"] == pytest.approx(training, rel=1e-3)  # held-out evaluations are the rest
    assert pre["steps"] == math.ceil(d / (1024 * 3 * 128 * 8))  # Table 3 batch on 8 GPUs
    # the paper: ~1,000 A100-hours; 6·N·D alone at MFU 0.4 is about that, KL and recompute add ~65%
    assert 900 < pre["gpu_hours_6ND"] < 1200
    assert 1500 < pre["gpu_hours"] < 2100
    assert pre["wall_hours"] == pytest.approx(pre["gpu_hours"] / 8)


def test_memory_fits_sharded_not_on_one_card(pairs_file: Path) -> None:
    fsdp = {m["stage"]: m for m in compute_plan(mistral(pairs_file))["memory"]}
    assert fsdp["pretrain"]["fits"] and fsdp["pretrain"]["headroom"] > 10e9
    assert any("reference" in k for k in fsdp["pretrain"]["items"])
    one = {
        m["stage"]: m
        for m in compute_plan(mistral(pairs_file, "compute.strategy=ddp", "compute.gpus=1"))["memory"]
    }
    assert not one["pretrain"]["fits"] and one["pretrain"]["total"] > 16 * 7.3e9
    assert "does not fit" in format_plan(
        compute_plan(mistral(pairs_file, "compute.strategy=ddp", "compute.gpus=1"))
    )


def test_unknown_hub_id_offline_names_source_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config("demo", ["source_model=some-org/no-such-model-vikhr"])
    with pytest.raises(ConfigError, match="source_model.*some-org/no-such-model-vikhr.*local model folder"):
        compute_plan(cfg)


def test_missing_folder_and_missing_data_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="source_model.*does not exist"):
        compute_plan(load_config("demo", [f"source_model={tmp_path / 'nope'}"]))
    cfg = load_config("demo", ["pretrain.max_steps=0", f"data.target=[{tmp_path / 'missing'}]"])
    with pytest.raises(ConfigError, match="data.target.*compute.pretrain_tokens"):
        compute_plan(cfg)


def test_demo_plans(tmp_path: Path) -> None:
    cfg = load_config("demo")
    plan = compute_plan(cfg)
    p = cfg.pretrain
    assert (
        plan["stages"]["pretrain"]["tokens"]
        == 12 * p.seq_len * p.batch_size * p.grad_accum * cfg.compute.gpus
    )
    assert set(plan["stages"]) >= {"transplant", "pretrain", "reward", "sft", "evaluate"}
    assert plan["model"]["vocab"] == 32000 and plan["model"]["tied"]
    assert all(s["flops"] > 0 for s in plan["stages"].values())
    text = format_plan(plan)
    assert PAPER_REFERENCE in text and "fits" in text and "6·N·D" in text
    assert plan["chars_per_token"]["value"] == DEFAULT_CHARS_PER_TOKEN
    json.dumps(plan)  # plain data, for a --json printout


def test_pretrain_tokens_estimated_from_the_files(tmp_path: Path) -> None:
    data = tmp_path / "corpus"
    (data / "sub").mkdir(parents=True)
    line = "Съешь же ещё этих мягких французских булок, да выпей чаю.\n"
    (data / "a.txt").write_text(line * 3000, encoding="utf-8")
    (data / "sub" / "b.jsonl").write_text(
        "".join(json.dumps({"text": line * 5, "id": "x"}, ensure_ascii=False) + "\n" for _ in range(400)),
        encoding="utf-8",
    )
    chars = len(line) * (3000 + 5 * 400)
    cfg = load_config(
        "demo",
        ["pretrain.max_steps=0", "pretrain.epochs=2", "compute.chars_per_token=4", f"data.target=[{data}]"],
    )
    pre = compute_plan(cfg)["stages"]["pretrain"]
    assert pre["tokens"] == pytest.approx(2 * chars * (1 - cfg.pretrain.eval_share) / 4, rel=0.02)
    assert "estimate" in pre["tokens_from"]


def test_run_directory_measurements_are_used(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "tokenizer" / "report").mkdir(parents=True)
    (run / "tokenizer" / "stats.json").write_text(json.dumps({"vocab_size": 31990}))
    report = {
        "languages": {
            "ru": {"base: smollm2": {"chars_per_token": 1.5}, "vikhr-replace": {"chars_per_token": 4.2}}
        }
    }
    (run / "tokenizer" / "report" / "report.json").write_text(json.dumps(report))
    plan = compute_plan(load_config("demo"), run)
    assert plan["chars_per_token"]["value"] == 4.2 and plan["chars_per_token"]["source_tokenizer"] == 1.5
    assert plan["model"]["vocab"] == 32000 and "stats.json" in plan["model"]["vocab_note"]


def test_switches_change_the_terms(pairs_file: Path) -> None:
    plan = compute_plan(
        mistral(pairs_file, "pretrain.reference=none", "pretrain.gradient_checkpointing=false")
    )
    assert set(plan["stages"]["pretrain"]["flops_parts"]) == {
        "train 6·N·D",
        "held-out evals 2·(N + N_ref)·D_eval",
    }
    mem = {m["stage"]: m for m in plan["memory"]}["pretrain"]
    assert not any("reference" in k for k in mem["items"]) and "activations: all layers" in mem["items"]
    lora = compute_plan(mistral(pairs_file, "sft.lora=true"))
    assert "LoRA weights 6·N_lora·D" in lora["stages"]["sft"]["flops_parts"]
    mean = compute_plan(mistral(pairs_file, "transplant.method=mean"))["stages"]["transplant"]
    assert list(mean["flops_parts"]) == ["diagnostics 2·N·D (base + transplanted)"]
    calibrated = compute_plan(mistral(pairs_file, "transplant.method=calibrated"))["stages"]["transplant"]
    assert calibrated["steps"] and "fit new rows 4·V·h·0.9T·epochs" in calibrated["flops_parts"]
    only = compute_plan(mistral(pairs_file, "stages=[pretrain]"))
    assert list(only["stages"]) == ["pretrain"]


def test_kl_weight_zero_still_counts_the_reference_forward(tmp_path):
    """The trainer runs the reference at kl_weight 0 (the KL is still measured and logged): the plan counts it;
    only `reference: none` drops it."""
    from vikhr.compute import compute_plan
    from vikhr.config import load_config

    def flops(*o: str) -> float:
        return compute_plan(load_config("demo", list(o)))["stages"]["pretrain"]["flops"]

    assert flops("pretrain.kl_weight=0") == flops() > flops("pretrain.reference=none")
