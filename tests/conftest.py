"""Shared fixtures: the offline data folder, small text samples, tiny model folders built in the test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vikhr.paths import BUNDLED_DATA, shared_data_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data not available")
    return d


@pytest.fixture(scope="session")
def flores(shared) -> dict[str, list[str]]:
    p = shared / "parallel"
    return {
        "ru": (p / "flores200.devtest.rus_Cyrl").read_text(encoding="utf-8").splitlines(),
        "en": (p / "flores200.devtest.eng_Latn").read_text(encoding="utf-8").splitlines(),
    }


@pytest.fixture(scope="session")
def ru_sample() -> list[str]:
    """About 400k characters of bundled Russian prose, one paragraph per item."""
    out, n = [], 0
    for f in sorted((BUNDLED_DATA / "ru").rglob("*.txt")):
        for line in f.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                out.append(line)
                n += len(line)
        if n > 400_000:
            break
    return out


def make_model_folder(dest: Path, tokenizer_dir: Path, *, tie: bool = True, extra_vocab: int = 0) -> Path:
    """A tiny Llama model (random weights) saved with the tokenizer files of `tokenizer_dir`; `tie=False` unties
    the head, `extra_vocab` adds rows past the tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok) + extra_vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(dest)
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture(scope="session")
def tiny_smollm(shared, tmp_path_factory) -> Path:
    """A tiny model folder with SmolLM2's real (byte-level BPE) tokenizer."""
    return make_model_folder(tmp_path_factory.mktemp("tiny-smollm"), shared / "tokenizers" / "smollm2-135m")


@pytest.fixture(scope="session")
def tiny_mistral(shared, tmp_path_factory) -> Path:
    """A tiny model folder with Mistral-7B's real (SentencePiece) tokenizer, tokenizer.model included."""
    return make_model_folder(
        tmp_path_factory.mktemp("tiny-mistral"), shared / "tokenizers" / "mistral-7b-v0.1"
    )


@pytest.fixture(scope="session")
def tiny_server(tiny_smollm):
    """A real `vikhr serve` process on loopback serving the tiny SmolLM2-tokenizer model as `tiny`."""
    from vikhr.serve.launch import start_server

    with start_server(tiny_smollm, "--served-model-name", "tiny") as srv:
        yield srv
