"""Shared fixtures: tiny tokenizers and models built in the session from the bundled text, text samples, and the
optional `../shared/data` folder.

Tests that need real third-party data (a real tokenizer, FLORES, RusLit) carry `@pytest.mark.shared`: without the
folder they are skipped, and under CI (`CI=true`) they fail instead, so a CI run can never pass by skipping them.
Everything else runs on a bare clone.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from vikhr.paths import BUNDLED_DATA, shared_data_dir

SMOLLM_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
    "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
    "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>",
)  # fmt: skip
"""SmolLM2's 17 special tokens with its ids 0-16; the first three have roles (unk, bos, eos = pad)."""

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-Instruct's ChatML template (with a shorter default system prompt)."""


# ------------------------------------------------------------------------------------------- the shared data


def in_ci() -> bool:
    """True when the environment says this is a CI run (`CI=true`, as GitHub Actions and GitLab set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_shared() -> Path:
    """The shared data folder; skips the test without it, or fails it under CI."""
    d = shared_data_dir()
    if d is None:
        where = os.environ.get("VIKHR_SHARED_DATA") or "../shared/data"
        msg = f"needs the shared data folder (real tokenizers, FLORES, RusLit); not found at {where}"
        if in_ci():
            pytest.fail(f"{msg}. CI must provide it (set VIKHR_SHARED_DATA), not skip", pytrace=False)
        pytest.skip(msg)
    return d


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `shared` skips (or, under CI, fails) before any of its fixtures is built."""
    if item.get_closest_marker("shared") is not None:
        require_shared()


@pytest.fixture(scope="session")
def shared() -> Path:
    """`../shared/data` (or $VIKHR_SHARED_DATA). Tests using it should be marked `shared`."""
    return require_shared()


@pytest.fixture(scope="session")
def flores(shared) -> dict[str, list[str]]:
    """FLORES-200 devtest, 1,012 lines each: {"ru": [...], "en": [...]}."""
    p = shared / "parallel"
    return {
        "ru": (p / "flores200.devtest.rus_Cyrl").read_text(encoding="utf-8").splitlines(),
        "en": (p / "flores200.devtest.eng_Latn").read_text(encoding="utf-8").splitlines(),
    }


# ---------------------------------------------------------------------------------------------- bundled text


def bundled_lines(lang: str, max_chars: int) -> list[str]:
    """Non-empty lines of the bundled training text of `lang` (`ru`, `en`), in file order, about `max_chars`."""
    out, n = [], 0
    for f in sorted((BUNDLED_DATA / lang).rglob("*.txt")):
        for line in f.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                out.append(line)
                n += len(line)
                if n >= max_chars:
                    return out
    return out


@pytest.fixture(scope="session")
def ru_sample() -> list[str]:
    """About 400k characters of bundled Russian prose, one paragraph per item."""
    return bundled_lines("ru", 400_000)


@pytest.fixture(scope="session")
def heldout() -> dict[str, list[str]]:
    """The bundled held-out text (left out of every tiny tokenizer's training) as sentences, FLORES-like:
    {"ru": [...], "en": [...]}, a few hundred each."""
    out = {}
    for lang in ("ru", "en"):
        text = (BUNDLED_DATA / "heldout" / f"{lang}.txt").read_text(encoding="utf-8")
        out[lang] = [s for s in re.split(r"(?<=[.!?…])\s+|\n+", text) if len(s.strip()) >= 20]
    return out


# ------------------------------------------------------------------------------------------- tiny tokenizers


def train_bytelevel_tokenizer(out: Path, texts: list[str], vocab_size: int = 2000) -> Path:
    """A byte-level BPE tokenizer folder shaped like SmolLM2's: no normalizer, GPT-2 byte-level split, SmolLM2's
    special tokens and roles (ChatML markers among them), no bos/eos added when encoding, a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SMOLLM_SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    unk, bos, eos = SMOLLM_SPECIALS[:3]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos, unk_token=unk
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    return out


def train_spm_tokenizer(out: Path, texts: list[str], vocab_size: int = 2000) -> Path:
    """A SentencePiece BPE tokenizer folder shaped like Mistral's, trained and converted by the package itself:
    `<unk> <s> </s>` at ids 0-2, byte fallback, a dummy-prefix `▁`, `<s>` added when encoding, no chat template,
    and the SentencePiece model as `tokenizer.model`."""
    from vikhr.tokenizer import build, spm

    model = spm.train_sentencepiece(
        texts, out / "spm" / "m", spm.SpmOptions(vocab_size=vocab_size, add_dummy_prefix=True, num_threads=1)
    )
    specials = build.SpecialTokens(bos="<s>", eos="</s>", unk="<unk>", add_bos=True)
    hf = out / "hf"
    build.build_standalone(model, hf, specials, None)
    (hf / build.SP_MODEL_NAME).rename(hf / "tokenizer.model")
    return hf


@pytest.fixture(scope="session")
def bytelevel_tokenizer(tmp_path_factory) -> Path:
    """A 2,000-token SmolLM2-like byte-level BPE tokenizer folder trained on bundled text, English-centric like
    SmolLM2: on the held-out text 1.4 characters per token in Russian (SmolLM2: 1.32), 3.1 in English. Like
    SmolLM2's, it has every lowercase Cyrillic letter as a token (each letter is also given alone, so that the
    little Russian text does not make pieces that end inside a letter) and splits most capitals into bytes."""
    lowercase = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
    texts = bundled_lines("en", 300_000) + bundled_lines("ru", 5_000) + list(lowercase) * 200
    return train_bytelevel_tokenizer(tmp_path_factory.mktemp("bytelevel-tok"), texts)


@pytest.fixture(scope="session")
def spm_tokenizer(tmp_path_factory) -> Path:
    """A 2,000-piece Mistral-like SentencePiece tokenizer folder (tokenizer.model included) trained on bundled
    English and Russian text."""
    texts = bundled_lines("en", 150_000) + bundled_lines("ru", 150_000)
    return train_spm_tokenizer(tmp_path_factory.mktemp("spm-tok"), texts)


# ------------------------------------------------------------------------------------------------ tiny models


TINY_RUN: dict = {
    "run_dir": "run",
    "tokenizer": {"vocab_size": 1500, "sample_chars": 200_000, "report_lines": 20, "report_tokenizers": []},
    "transplant": {"eval_lines": 4, "calibration_tokens": 1024, "calibration_seq_len": 64, "calibration_epochs": 2,
                   "prompts": ["Привет", "Hello"]},
    "pretrain": {"seq_len": 32, "batch_size": 2, "grad_accum": 1, "max_steps": 2, "max_documents": 4,
                 "report_to": []},
    "sft": {"seq_len": 128, "batch_size": 2, "grad_accum": 1, "max_steps": 2, "report_to": [], "max_prompts": 2,
            "max_new_tokens": 8},
    "evaluate": {"tasks": ["parus"], "limit": 4, "text_lines": 4, "prompts": "", "speed": False},
}  # fmt: skip
"""Settings of a whole pipeline run on a tiny model that takes seconds per stage."""


def tiny_run_config(tmp_path: Path, source_model: Path, settings: dict | None = None) -> Path:
    """Write `exp.yaml` for a tiny pipeline run on `source_model`: `TINY_RUN` with `settings` merged in by section."""
    import yaml

    data = {**TINY_RUN, "source_model": str(source_model)}
    for key, value in (settings or {}).items():
        data[key] = (
            {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def make_model_folder(dest: Path, tokenizer_dir: Path, *, tie: bool = True, extra_vocab: int = 0) -> Path:
    """A tiny Llama model (random weights) saved with the tokenizer files of `tokenizer_dir`; `tie=False` unties
    the head, `extra_vocab` adds rows past the tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok) + extra_vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(dest)
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture(scope="session")
def tiny_smollm(bytelevel_tokenizer, tmp_path_factory) -> Path:
    """A tiny tied Llama model folder with the SmolLM2-like byte-level tokenizer (`bytelevel_tokenizer`)."""
    return make_model_folder(tmp_path_factory.mktemp("tiny-smollm"), bytelevel_tokenizer)


@pytest.fixture(scope="session")
def tiny_mistral(spm_tokenizer, tmp_path_factory) -> Path:
    """A tiny tied Llama model folder with the Mistral-like SentencePiece tokenizer (`spm_tokenizer`)."""
    return make_model_folder(tmp_path_factory.mktemp("tiny-mistral"), spm_tokenizer)


@pytest.fixture(scope="session")
def tiny_server(tiny_smollm):
    """A real `vikhr serve` process on loopback serving the tiny SmolLM2-like model as `tiny`."""
    from vikhr.serve.launch import start_server

    with start_server(tiny_smollm, "--served-model-name", "tiny") as srv:
        yield srv


def tiny_encoder(folder: Path, texts: list[str]) -> Path:
    """A tiny random BERT and a 500-piece WordPiece tokenizer trained on `texts`, saved like a hub encoder (the
    quality classifier's `encoder` kind, in tests and `benchmarks/quality_bench.py`)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=500, special_tokens=specials))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))  # fmt: skip
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=256)  # fmt: skip
    fast.save_pretrained(folder)
    cfg = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256)  # fmt: skip
    BertModel(cfg).save_pretrained(folder)
    return folder
