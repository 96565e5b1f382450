"""The vocabulary stage end to end on small inputs: outputs, manifest, skipping, reruns, failures."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from vikhr import pipeline
from vikhr.cli import main
from vikhr.config import load_config


def make_config(tmp_path: Path, source_model: str, *extra: str):
    p = tmp_path / "exp.yaml"
    p.write_text(
        f"run_dir: run\nsource_model: {json.dumps(source_model)}\n"
        "tokenizer:\n  vocab_size: 2000\n  sample_chars: 300000\n  report_lines: 100\n"
        "  report_tokenizers: []\n",
        encoding="utf-8",
    )
    return p, load_config(p, list(extra))


def test_replace_with_a_byte_level_base(tmp_path, tiny_smollm):
    path, cfg = make_config(tmp_path, str(tiny_smollm))
    steps = pipeline.run(cfg, stop="tokenizer")
    assert [(s.name, s.action) for s in steps] == [("corpus", "run"), ("tokenizer", "run")]
    out = tmp_path / "run" / "tokenizer"
    for f in [
        "hf/tokenizer.json",
        "sentencepiece.model",
        "report/report.md",
        "report/efficiency.png",
        "stats.json",
    ]:
        assert (out / f).is_file(), f
    tok = AutoTokenizer.from_pretrained(out / "hf")
    base = AutoTokenizer.from_pretrained(tiny_smollm)
    assert len(tok) == 2000
    # special tokens carried over by role, chat template works the same
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        base.bos_token, base.eos_token, base.pad_token, base.unk_token,
    )  # fmt: skip
    msgs = [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert rendered == base.apply_chat_template(msgs, tokenize=False)
    ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tok.decode(ids) == rendered
    # every special token of the base exists in the new vocabulary
    for t in base.added_tokens_decoder.values():
        if t.special:
            assert tok.convert_tokens_to_ids(t.content) != tok.unk_token_id or t.content == tok.unk_token
    rec = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["tokenizer"]
    m = rec["metrics"]
    assert m["differing_lines"]["fast_vs_sentencepiece"] == {"ru": 0, "en": 0}
    assert m["chars_per_token"]["ru"] > 1.5 * m["base_chars_per_token"]["ru"]  # 2k pieces only
    assert m["pieces"]["shared"] + m["pieces"]["new"] <= 2000
    assert rec["versions"]["transformers"] and rec["fingerprint"] and rec["seconds"] > 0
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert not list((tmp_path / "run").glob(".staging-*"))

    # unchanged config: skipped; changed config: runs again; --force: runs again
    assert [s.action for s in pipeline.run(cfg, stop="tokenizer")] == ["skip", "skip"]
    cfg2 = load_config(path, ["tokenizer.vocab_size=1800"])
    assert [
        (s.action, s.reason) for s in pipeline.plan(cfg2, pipeline.open_rundir(cfg2), stop="tokenizer")
    ] == [("skip", "up to date"), ("run", "config or inputs changed")]
    assert [s.action for s in pipeline.run(cfg, stop="tokenizer", force=["tokenizer"])] == ["skip", "run"]
    rows = pipeline.status(cfg)
    assert [r["state"] for r in rows] == ["done", "done"] + ["not run"] * 7
    assert rows[1]["state"] == "done" and rows[1]["metrics"]["vocab_size"] == 2000


def test_extend_a_sentencepiece_base_keeps_ids_and_english(tmp_path, tiny_mistral, heldout):
    _, cfg = make_config(tmp_path, str(tiny_mistral), "tokenizer.mode=extend", "tokenizer.vocab_size=4000")
    pipeline.run(cfg, stop="tokenizer")
    out = tmp_path / "run" / "tokenizer"
    tok = AutoTokenizer.from_pretrained(out / "hf")
    base = AutoTokenizer.from_pretrained(tiny_mistral)
    assert len(tok) > len(base)
    vocab, bvocab = tok.get_vocab(), base.get_vocab()
    assert all(vocab[p] == i for p, i in bvocab.items())
    en = heldout["en"][:200]
    assert tok(en)["input_ids"] == base(en)["input_ids"]  # bos added like the base, same ids
    stats = json.loads((out / "stats.json").read_text())["pieces"]
    assert stats["base_kind"] == "sentencepiece" and stats["new"] == len(tok) - len(base)
    eq = json.loads((out / "equivalence.json").read_text())
    assert eq["fast_vs_sentencepiece"]["ru"]["differing"] == 0
    assert eq["lines_changed_vs_base"]["en"] == 0


def test_extend_a_byte_level_base(tmp_path, tiny_smollm, heldout):
    _, cfg = make_config(tmp_path, str(tiny_smollm), "tokenizer.mode=extend", "tokenizer.max_new_tokens=300")
    pipeline.run(cfg, stop="tokenizer")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "tokenizer" / "hf")
    base = AutoTokenizer.from_pretrained(tiny_smollm)
    assert len(tok) == len(base) + 300
    en, ru = heldout["en"][:200], heldout["ru"][:200]
    assert tok(en)["input_ids"] == base(en)["input_ids"]
    assert sum(map(len, tok(ru)["input_ids"])) < sum(map(len, base(ru)["input_ids"]))


def test_standalone_without_a_base_and_a_sweep(tmp_path):
    _, cfg = make_config(tmp_path, "", "tokenizer.vocab_sizes=[1000, 1500]")
    pipeline.run(cfg, stop="tokenizer")
    out = tmp_path / "run" / "tokenizer"
    tok = AutoTokenizer.from_pretrained(out / "hf")
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    sweep = json.loads((out / "sweep" / "report.json").read_text())
    assert sweep["vocab_sizes"] == {"vocab-1000": 1000, "vocab-1500": 1500}
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["tokenizer"]["metrics"]
    cpt = m["sweep_chars_per_token"]
    assert cpt["vocab-1500"]["ru"] > cpt["vocab-1000"]["ru"]
    assert (out / "sweep" / "1000" / "hf" / "tokenizer.json").is_file()


def test_failure_leaves_no_finished_looking_output(tmp_path, tiny_smollm):
    _, cfg = make_config(tmp_path, str(tiny_smollm), "tokenizer.vocab_size=900000")
    from vikhr.tokenizer.spm import TokenizerTrainingError

    with pytest.raises(TokenizerTrainingError, match="too little text"):
        pipeline.run(cfg, stop="tokenizer")
    run = tmp_path / "run"
    assert not (run / "tokenizer").exists()
    assert not list(run.glob(".staging-*"))
    manifest = run / "manifest.json"
    assert not manifest.exists() or "tokenizer" not in json.loads(manifest.read_text())["stages"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("tokenizer.mode=merge", "must be one of"),
        ("data.target=[/nonexistent/corpus]", "input not found: /nonexistent/corpus"),
        ("source_model=/nonexistent/model", "/nonexistent/model"),
        ("tokenizer.report_texts={ru: /nonexistent/ru.txt}", "/nonexistent/ru.txt"),
        ("tokenizer.report_tokenizers=[./missing-tokenizer]", "missing-tokenizer"),
    ],
)
def test_cli_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, override, message):
    path, _ = make_config(tmp_path, "")
    assert main(["run", "-c", str(path), override]) == 2
    assert message in capsys.readouterr().err


def test_cli_config_status_and_dry_run(tmp_path, capsys):
    path, _ = make_config(tmp_path, "")
    assert main(["config", "-c", str(path), "tokenizer.vocab_size=1234"]) == 0
    assert "vocab_size: 1234" in capsys.readouterr().out
    assert main(["run", "-c", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer\trun\tnot run yet" in out and "transplant\trun\tnot run yet" in out
    assert not (tmp_path / "run" / "tokenizer").exists()
    assert main(["status", "-c", str(path)]) == 0
    assert "not run" in capsys.readouterr().out


def test_empty_and_non_utf8_inputs(tmp_path, capsys):
    path, _ = make_config(tmp_path, "")
    (tmp_path / "empty.txt").write_text("  \n\n", encoding="utf-8")
    assert main(["run", "-c", str(path), "data.target=[empty.txt]"]) == 2
    err = capsys.readouterr().err
    assert "no text in the corpus inputs" in err and "empty.txt (empty_file)" in err
    (tmp_path / "cp1251.txt").write_bytes("Текст в другой кодировке".encode("cp1251"))
    args = ["run", "-c", str(path), "data.target=[cp1251.txt]", "data.on_decode_error=error"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cp1251.txt: not valid UTF-8" in err and "line 1" in err


def _cli_tokenizer_report(tmp_path, capsys, tokenizers: dict[str, Path], texts: dict[str, list[str]]) -> str:
    """`vikhr tokenizer-report` on `name=folder` (or a bare folder when name is its folder name); the printed
    table."""
    ru, en = tmp_path / "ru.txt", tmp_path / "en.txt"
    ru.write_text("\n".join(texts["ru"][:50]), encoding="utf-8")
    en.write_text("\n".join(texts["en"][:50]), encoding="utf-8")
    args = ["tokenizer-report"] + [str(p) if p.name == n else f"{n}={p}" for n, p in tokenizers.items()]
    assert main([*args, "--texts", f"ru={ru}", f"en={en}", "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "rep" / "efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["tokenizer-report", str(tmp_path / "no-such-tokenizer"), "--out", str(tmp_path / "x")]) == 2
    assert "no-such-tokenizer" in capsys.readouterr().err
    return out


def test_cli_tokenizer_report(tmp_path, capsys, spm_tokenizer, bytelevel_tokenizer, heldout):
    out = _cli_tokenizer_report(tmp_path, capsys, {"spm": spm_tokenizer, "hf": bytelevel_tokenizer}, heldout)
    assert "| spm |" in out and "| hf |" in out  # the second one is named after its folder


@pytest.mark.shared
def test_cli_tokenizer_report_on_real_tokenizers(tmp_path, capsys, shared, flores):
    toks = shared / "tokenizers"
    tokenizers = {"mistral": toks / "mistral-7b-v0.1", "smollm2-135m": toks / "smollm2-135m"}
    out = _cli_tokenizer_report(tmp_path, capsys, tokenizers, flores)
    assert "| mistral |" in out and "| smollm2-135m |" in out
