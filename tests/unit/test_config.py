from pathlib import Path

import pytest

from vikhr.config import ConfigError, dump_yaml, load_config, parse_overrides, resolve_path


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_are_the_paper_recipe():
    cfg = load_config(None)
    assert cfg.tokenizer.vocab_size == 40_000
    assert cfg.tokenizer.model_type == "bpe"
    assert cfg.source_model == "smollm2-135m-instruct"


def test_yaml_sets_only_what_it_changes_and_overrides_win(tmp_path):
    p = write(tmp_path, "tokenizer:\n  vocab_size: 1000\n  mode: extend\n")
    cfg = load_config(
        p, ["tokenizer.vocab_size=2000", "tokenizer.vocab_sizes=[100, 200]", "data.target=[a, b]"]
    )
    assert cfg.tokenizer.vocab_size == 2000
    assert cfg.tokenizer.mode == "extend"
    assert cfg.tokenizer.vocab_sizes == [100, 200]
    assert cfg.data.target == ["a", "b"]
    assert cfg.tokenizer.extra_share == 0.1  # untouched default


def test_unknown_key_names_full_path_and_file(tmp_path):
    p = write(tmp_path, "tokenizer:\n  vocab_szie: 1000\n")
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_szie") as e:
        load_config(p)
    assert str(p) in str(e.value)
    with pytest.raises(ConfigError, match=r"tokenizer\.nope"):
        load_config(None, ["tokenizer.nope=1"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) bogus"):
        load_config(None, ["bogus=1"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("tokenizer.mode=merge", "must be one of"),
        ("tokenizer.vocab_size=big", "must be int"),
        ("tokenizer.vocab_size=true", "must be int"),
        ("tokenizer=3", "must be a mapping"),
        ("data.target=notalist", "must be a list"),
        ("novalue", "not key=value"),
    ],
)
def test_bad_values_are_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_float_accepts_int_and_yaml_parse():
    cfg = load_config(None, ["tokenizer.extra_share=0"])
    assert cfg.tokenizer.extra_share == 0.0 and isinstance(cfg.tokenizer.extra_share, float)
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "a: [1, 2"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_dump_round_trips_and_paths_are_relative_to_the_config(tmp_path):
    p = write(tmp_path, "run_dir: out\ntokenizer:\n  vocab_size: 123\n")
    cfg = load_config(p)
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert again.tokenizer == cfg.tokenizer and again.data == cfg.data
    assert resolve_path(cfg, cfg.run_dir) == (tmp_path / "out").resolve()


def test_shipped_configs_load_by_name_with_paths_from_the_working_directory(tmp_path, monkeypatch):
    from vikhr.config import SHIPPED_CONFIGS, shipped_configs

    assert shipped_configs() == ["demo", "mistral-7b-ru"]
    monkeypatch.chdir(tmp_path)
    for name in shipped_configs():
        cfg = load_config(name)
        assert Path(cfg.config_path) == SHIPPED_CONFIGS / f"{name}.yaml"
        assert resolve_path(cfg, cfg.run_dir) == tmp_path / "runs" / name
    copy = tmp_path / "mine" / "exp.yaml"
    copy.parent.mkdir()
    copy.write_text((SHIPPED_CONFIGS / "demo.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    assert (
        resolve_path(load_config(copy), "runs/demo") == copy.parent / "runs" / "demo"
    )  # a copy: its own folder
    with pytest.raises(ConfigError, match="shipped configs by name: demo, mistral-7b-ru"):
        load_config("no-such-config")
