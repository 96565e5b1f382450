"""Tokenizer efficiency report: exact measures on a tiny tokenizer, readable pieces (on tokenizers trained in the
session, and on the real ones), real tokenizers on FLORES."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vikhr.tokenizer.report import (
    default_texts,
    default_tokenizers,
    efficiency_report,
    load_tokenizer,
    markdown_table,
    measure,
    split_example,
    write_report,
)

SENTENCE = "Машинное обучение изменяет мир"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "a": 1, "b": 2, "cc": 3, ".": 4, "ж": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def shared_tokenizer(name: str) -> Path:
    path = default_tokenizers().get(name)
    if path is None:
        pytest.skip(f"shared tokenizer {name} not available")
    return path


def join_pieces(pieces: list[str]) -> str:
    """Undo split_example's display: `<0xD0>` bytes back to bytes, `▁` back to a space."""
    data = b"".join(
        bytes([int(part[3:5], 16)]) if re.fullmatch(r"<0x[0-9A-F]{2}>", part) else part.encode("utf-8")
        for piece in pieces
        for part in re.split(r"(<0x[0-9A-F]{2}>)", piece)
    )
    return data.decode("utf-8").replace("▁", " ")


def test_measure_exact_numbers():
    lines = ["a b cc.", "a dd", "ж"]
    # words 3 + 2 + 1; tokens a b cc . | a [UNK] | ж; "ж" is 2 bytes in UTF-8.
    m = measure(tiny_tokenizer(), lines)
    assert m == {
        "lines": 3,
        "chars": 12,
        "words": 6,
        "bytes": 13,
        "tokens": 7,
        "chars_per_token": 12 / 7,
        "tokens_per_word": 7 / 6,
        "bytes_per_token": 13 / 7,
        "unk_rate": 1 / 7,
    }
    assert measure(tiny_tokenizer(), lines, batch_size=1) == m


def test_measure_rejects_empty_text():
    with pytest.raises(ValueError, match="at least one line"):
        measure(tiny_tokenizer(), [])
    with pytest.raises(ValueError, match="0 words"):
        measure(tiny_tokenizer(), ["", "   "])


def test_load_tokenizer_missing_path_names_it(tmp_path):
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="no-such"):
        load_tokenizer("./no-such/tokenizer")


def test_load_tokenizer_folder_without_tokenizer_files(tmp_path):
    (tmp_path / "README.md").write_text("not a tokenizer")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        load_tokenizer(tmp_path)


def test_load_tokenizer_keeps_tokenizer_json_pipeline(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert len(tok) == 6
    assert tok("a dd", add_special_tokens=False)["input_ids"] == [1, 0]
    assert load_tokenizer(tmp_path / "tokenizer.json")("cc .")["input_ids"] == [3, 4]


@pytest.mark.shared
def test_load_tokenizer_gpt4o_keeps_o200k_regex():
    # AutoTokenizer picks GPT2Tokenizer for this folder, which swaps o200k's split regex for GPT-2's.
    path = shared_tokenizer("gpt-4o")
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok = load_tokenizer(path)
    lines = default_texts()["ru"][:50]
    expected = sum(len(e.ids) for e in raw.encode_batch(lines, add_special_tokens=False))
    assert measure(tok, lines)["tokens"] == expected


def test_split_example_reconstructs_on_tokenizers_trained_here(bytelevel_tokenizer, spm_tokenizer):
    """SentencePiece pieces keep `▁` and byte-fallback names; byte-level pieces show a split character as its
    bytes, never as a replacement character or mojibake; both join back to the text."""
    spm_tok, byte_tok = load_tokenizer(spm_tokenizer), load_tokenizer(bytelevel_tokenizer)
    pieces = split_example(spm_tok, SENTENCE)
    assert pieces[0].startswith("▁") and join_pieces(pieces) == " " + SENTENCE
    rare = split_example(spm_tok, "мир ꙮ")  # a character the tokenizer never saw: byte fallback
    assert rare[-3:] == ["<0xEA>", "<0x99>", "<0xAE>"] and join_pieces(rare) == " мир ꙮ"
    text = SENTENCE + " 😀"
    pieces = split_example(byte_tok, text)
    assert len(pieces) == len(byte_tok(text, add_special_tokens=False)["input_ids"])
    assert "<0xF0>" in pieces  # the emoji's first byte: no 2k vocabulary has the emoji as one token
    assert join_pieces(pieces) == text
    assert not any("\ufffd" in p or "Ð" in p for p in pieces)


@pytest.mark.shared
def test_split_example_sentencepiece_reconstructs():
    tok = load_tokenizer(shared_tokenizer("mistral-7b-v0.1"))
    pieces = split_example(tok, SENTENCE)
    assert pieces[0] == "▁Ма" and len(pieces) == 12
    assert join_pieces(pieces) == " " + SENTENCE
    # Byte-fallback pieces are shown as SentencePiece names them and still join back.
    rare = split_example(tok, "мир ꙮ")
    assert rare[-3:] == ["<0xEA>", "<0x99>", "<0xAE>"]
    assert join_pieces(rare) == " мир ꙮ"


@pytest.mark.shared
def test_split_example_byte_level_reconstructs():
    tok = load_tokenizer(shared_tokenizer("smollm2-135m"))
    pieces = split_example(tok, SENTENCE)
    # "М" is split over two tokens: shown as its bytes, never as a replacement character.
    assert pieces[:3] == ["<0xD0>", "<0x9C>", "а"]
    assert " обучение" not in pieces and " о" in pieces
    assert len(pieces) == len(tok(SENTENCE, add_special_tokens=False)["input_ids"])
    assert join_pieces(pieces) == SENTENCE
    assert not any("\ufffd" in p or "Ð" in p for p in pieces)


@pytest.mark.shared
def test_report_on_real_tokenizers(tmp_path):
    tokenizers = {name: shared_tokenizer(name) for name in ("smollm2-135m", "mistral-7b-v0.1")}
    texts = {lang: lines[:50] for lang, lines in default_texts().items()}
    report = efficiency_report(tokenizers, texts)

    ru = report["languages"]["ru"]
    assert ru["smollm2-135m"]["chars_per_token"] < ru["mistral-7b-v0.1"]["chars_per_token"]
    assert report["vocab_sizes"] == {"smollm2-135m": 49152, "mistral-7b-v0.1": 32000}
    assert report["example"]["counts"] == {"smollm2-135m": 23, "mistral-7b-v0.1": 12}

    paths = write_report(report, tmp_path / "out", title="Test report")
    assert set(paths) == {"json", "markdown", "png"} and all(p.is_file() for p in paths.values())
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == report
    md = paths["markdown"].read_text(encoding="utf-8")
    assert md.startswith("# Test report")
    assert markdown_table(report) in md
    for name in tokenizers:
        assert f"| {name} |" in md
    assert "▁Ма | шин | ное" in md
    assert not list(paths["png"].parent.glob(".*.tmp"))


def test_default_tokenizers_empty_without_shared_data(monkeypatch):
    monkeypatch.setattr("vikhr.tokenizer.report.shared_data_dir", lambda: None)
    assert default_tokenizers() == {}
    texts = default_texts()  # the bundled held-out text instead of FLORES
    assert set(texts) == {"ru", "en"} and all(len(v) > 50 for v in texts.values())


def test_report_from_tokenizer_objects_without_shared_data(tmp_path):
    report = efficiency_report({"tiny": tiny_tokenizer()}, {"xx": ["a b cc.", "ж a"]}, example="a ж dd")
    assert report["languages"]["xx"]["tiny"]["tokens"] == 6
    assert report["example"] == {
        "text": "a ж dd",
        "pieces": {"tiny": ["a", "ж", "[UNK]"]},
        "counts": {"tiny": 3},
    }
    md = markdown_table(report)
    assert "| tiny | 6 | 1.67 | 1.20 | 1.83 |" in md  # 10 chars, 5 words, 11 bytes, 6 tokens
    assert "a | ж | [UNK]" in md
    paths = write_report(report, tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
