"""Range checks live in the config dataclasses: a value out of range is refused when the config is loaded, with
the full key and the file in the message."""

import pytest

from vikhr.config import ConfigError, PretrainConfig, load_config


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("pretrain.replay_share=1.0", "in [0, 1)"),
        ("pretrain.lr=0", "> 0"),
        ("pretrain.batch_size=0", "> 0"),
        ("pretrain.eval_share=-0.1", "in [0, 1)"),
        ("tokenizer.extra_share=1", "in [0, 1)"),
        ("tokenizer.vocab_sizes=[32000, -1]", "> 0"),
        ("transplant.calibration_tokens=0", "> 0"),
        ("corpus.dedup.threshold=1.0", "in (0, 1)"),
        ("corpus.filters.min_script_share=1.5", "in [0, 1]"),
        ("corpus.quality.good_score=7", "in [1, 5]"),
        ("llm.max_concurrency=0", "> 0"),
    ],
)
def test_out_of_range_values_name_the_full_key(tmp_path, override, allowed):
    path = tmp_path / "exp.yaml"
    path.write_text("run_dir: run\n", encoding="utf-8")
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(path, [override])
    assert f"`{key}` must be {allowed}" in str(e.value) and str(path) in str(e.value)


def test_in_range_edges_pass():
    cfg = load_config(
        None, ["pretrain.replay_share=0", "tokenizer.extra_share=0.99", "corpus.dedup.threshold=0.5"]
    )
    assert cfg.pretrain.replay_share == 0


def test_dataclass_checks_without_the_loader():
    with pytest.raises(ConfigError, match="`kl_weight` must be >= 0"):
        PretrainConfig(kl_weight=-1)
