"""The issue's acceptance checks on real data: exact fast conversion on FLORES RU+EN and the Gutenberg files,
`extend` on Mistral-7B's real SentencePiece model."""

import pytest

from vikhr.corpus.readers import iter_documents, paragraphs, sample_paragraphs
from vikhr.tokenizer import spm

pytestmark = [pytest.mark.slow, pytest.mark.shared]


@pytest.fixture(scope="module")
def ruslit_model(shared, tmp_path_factory):
    paras = []
    for doc in iter_documents([shared / "ru" / "ruslit"]):  # the non-UTF-8 file is skipped with a warning
        paras.extend(paragraphs(doc.text))
    paras = sample_paragraphs(paras, 12_000_000, seed=0)
    model = spm.train_sentencepiece(
        paras, tmp_path_factory.mktemp("ruslit") / "m", spm.SpmOptions(vocab_size=40_000)
    )
    return model


def gutenberg_lines(shared) -> list[str]:
    lines = []
    for f in sorted((shared / "en" / "gutenberg").glob("pg*.txt")):
        raw = f.read_bytes().decode("utf-8")  # keep BOM and CRLF: the tokenizer must handle them as they are
        assert raw.startswith("\ufeff") or "\r\n" in raw
        lines.extend(raw.split("\n"))
        lines.append(raw[:100_000])  # a long multi-line chunk with CRLF and runs of spaces
    return lines


def test_fast_equals_sentencepiece_on_flores_and_gutenberg(ruslit_model, flores, shared):
    sp = spm.processor(ruslit_model)
    fast = spm.proto_to_tokenizer_json(spm.load_proto(ruslit_model))
    for name, lines in [("ru", flores["ru"]), ("en", flores["en"]), ("gutenberg", gutenberg_lines(shared))]:
        res = spm.check_equivalence(sp, fast, lines)
        assert res.differing == 0, (name, res.examples)
    ru = flores["ru"]
    assert sum(map(len, ru)) / sum(len(x) for x in sp.encode(ru)) > 3.6


@pytest.mark.parametrize("name", ["mistral-7b-v0.1", "llama-2"])
def test_extend_real_sentencepiece_base(name, ruslit_model, flores, shared):
    base = spm.load_proto(shared / "tokenizers" / name / "tokenizer.model")
    ext, stats = spm.extend_sp_proto(base, spm.load_proto(ruslit_model))
    sp_base, sp_ext = spm.processor(base), spm.processor(ext)
    en, ru = flores["en"], flores["ru"]
    assert sum(a != b for a, b in zip(sp_base.encode(en), sp_ext.encode(en), strict=True)) == 0
    cpt = sum(map(len, ru)) / sum(len(x) for x in sp_ext.encode(ru))
    base_cpt = sum(map(len, ru)) / sum(len(x) for x in sp_base.encode(ru))
    assert cpt > base_cpt + 1.0, (cpt, base_cpt)
    fast = spm.proto_to_tokenizer_json(ext)
    for lines in (en, ru, gutenberg_lines(shared)[:20_000]):
        res = spm.check_equivalence(sp_ext, fast, lines)
        assert res.differing == 0, res.examples


def test_our_conversion_of_mistral_fixes_the_shipped_double_space_flaw(flores, shared):
    from transformers import AutoTokenizer

    folder = shared / "tokenizers" / "mistral-7b-v0.1"
    sp = spm.processor(folder / "tokenizer.model")
    ours = spm.proto_to_tokenizer_json(spm.load_proto(folder / "tokenizer.model"))
    shipped = AutoTokenizer.from_pretrained(folder)
    lines = flores["ru"] + flores["en"]
    assert spm.check_equivalence(sp, ours, lines).differing == 0
    assert spm.check_equivalence(sp, shipped, lines).differing > 0  # README: 34 of 2,024 lines
