"""Token mapping, init methods and model surgery on tiny models and tokenizers trained in the session."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from vikhr.tokenizer import build, spm
from vikhr.transplant.apply import build_matrices, install, is_tied, padded
from vikhr.transplant.calibrate import CalibrationOptions, calibrate, fit_rows, pack
from vikhr.transplant.init import first_rows, hewitt_rows, init_rows, mean_rows, random_rows
from vikhr.transplant.mapping import TokenMappingError, build_token_map


@pytest.fixture(scope="module")
def smol_tok(bytelevel_tokenizer):
    return AutoTokenizer.from_pretrained(bytelevel_tokenizer)


@pytest.fixture(scope="module")
def mistral_tok(spm_tokenizer):
    return AutoTokenizer.from_pretrained(spm_tokenizer)


@pytest.fixture(scope="module")
def new_tok(smol_tok, ru_sample, tmp_path_factory):
    """A 1,500-piece Russian tokenizer trained for the SmolLM2-like base (`replace`: its special tokens carried
    over)."""
    d = tmp_path_factory.mktemp("newtok")
    specials = build.special_tokens_of(smol_tok)
    opts = spm.SpmOptions(
        vocab_size=1500,
        special_tokens=tuple(specials.ordered()),
        unk_token=specials.unk,
        bos_token=None,
        eos_token=None,
    )
    model = spm.train_sentencepiece(ru_sample[:3000], d / "m", opts)
    return build.build_standalone(model, d / "hf", specials, smol_tok.chat_template)


def tiny_model(vocab: int, tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=tied,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def test_mapping_across_families(new_tok, smol_tok):
    tmap = build_token_map(new_tok, smol_tok)
    c = tmap.counts()
    n_special = sum(t.special for t in smol_tok.added_tokens_decoder.values())
    assert sum(c.values()) == len(new_tok) and c["special"] == n_special == 17 and c["copied"] > 256
    vocab = new_tok.get_vocab()
    # a byte piece maps to the byte-level token of that byte
    assert tmap.kinds[vocab["<0x0A>"]] == "copied"
    assert smol_tok.convert_ids_to_tokens(tmap.sources[vocab["<0x0A>"]]) == ["Ċ"]
    # a ▁-piece is the base's Ġ-pieces of " word"; a piece without ▁ is not
    word = next(t for t in vocab if t.startswith("▁") and len(t) > 4 and tmap.kinds[vocab[t]] == "pieces")
    expected = smol_tok(word.replace("▁", " "), add_special_tokens=False)["input_ids"]
    assert tmap.sources[vocab[word]] == expected
    assert smol_tok.decode(tmap.sources[vocab[word]]) == word.replace("▁", " ")
    # special tokens by content
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tmap.kinds[vocab[t]] == "special"
        assert tmap.sources[vocab[t]] == [smol_tok.convert_tokens_to_ids(t)]


def test_mapping_onto_a_sentencepiece_base_and_by_role(mistral_tok, new_tok, ru_sample, tmp_path):
    # a tokenizer trained without a base: <s>, </s>, <unk> map by role
    model = spm.train_sentencepiece(ru_sample[:2000], tmp_path / "m", spm.SpmOptions(vocab_size=1200))
    tok = build.build_standalone(model, tmp_path / "hf", build.DEFAULT_SPECIALS, None)
    tmap = build_token_map(tok, mistral_tok)
    vocab = tok.get_vocab()
    assert tmap.sources[vocab["<s>"]] == [mistral_tok.bos_token_id]
    # "▁при" exists in the base's vocabulary: copied, not averaged
    assert "▁при" in mistral_tok.get_vocab()
    assert tmap.kinds[vocab["▁при"]] == "copied"
    assert tmap.sources[vocab["▁при"]] == [mistral_tok.convert_tokens_to_ids("▁при")]


def test_unmappable_special_token_is_a_clear_error(new_tok, mistral_tok):
    # SmolLM2's <|im_start|> has no counterpart in a Mistral-like vocabulary and no role there
    with pytest.raises(TokenMappingError, match=r"<\|im_start\|>|<repo_name>"):
        build_token_map(new_tok, mistral_tok)


def test_init_methods():
    base = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    assert torch.equal(
        mean_rows(base, [[0, 1], [2], [0, 1, 2]]), torch.tensor([[0.5, 1.0], [3.0, 3.0], [4 / 3, 5 / 3]])
    )
    assert torch.equal(first_rows(base, [[2, 0], [1]]), base[[2, 1]])
    with pytest.raises(ValueError, match="at least one source"):
        mean_rows(base, [[]])
    big = torch.randn(4000, 8) * torch.arange(1, 9) + 5
    h = hewitt_rows(big, 20000, torch.Generator().manual_seed(0))
    assert torch.allclose(h.mean(0), big.mean(0), atol=0.2)
    assert torch.allclose(h.std(0), big.std(0), rtol=0.05)
    r = random_rows(big, 5000, torch.Generator().manual_seed(0))
    assert abs(r.std().item() - big.std().item()) / big.std().item() < 0.05
    assert torch.equal(
        init_rows("hewitt", big, [[0]] * 3, seed=1), init_rows("hewitt", big, [[0]] * 3, seed=1)
    )
    with pytest.raises(ValueError, match="unknown init method"):
        init_rows("magic", base, [[0]])


def test_install_tied_padded_and_rows_set_explicitly(new_tok, smol_tok):
    tmap = build_token_map(new_tok, smol_tok)
    model = tiny_model(len(smol_tok))
    base_emb = model.get_input_embeddings().weight.detach().clone()
    mats = build_matrices(model, tmap, "mean", "same", 64, 0)
    install(model, mats)
    w = model.get_input_embeddings().weight
    assert w.shape[0] == padded(len(new_tok), 64) and w.shape[0] % 64 == 0
    assert model.config.vocab_size == w.shape[0]
    assert is_tied(model)
    for i in tmap.ids("copied", "special"):  # bit-exact copies
        assert torch.equal(w[i], base_emb[tmap.sources[i][0]])
    for i in tmap.ids("pieces")[:50]:
        assert torch.allclose(w[i], base_emb[tmap.sources[i]].mean(0), atol=1e-6)
    assert torch.count_nonzero(w[len(new_tok) :]) == 0  # padding rows: zero, not re-initialised
    out = model(torch.tensor([[1, 2, 3]]))
    assert out.logits.shape[-1] == w.shape[0]


def test_install_untied_uses_the_heads_own_rows(new_tok, smol_tok):
    """The untied-head trap: the LM head must get rows from the base head, not the embedding, nor a re-init."""
    tmap = build_token_map(new_tok, smol_tok)
    model = tiny_model(len(smol_tok), tied=False)
    base_emb = model.get_input_embeddings().weight.detach().clone()
    base_head = model.get_output_embeddings().weight.detach().clone()
    install(model, build_matrices(model, tmap, "mean", "first", 64, 0))
    assert not is_tied(model)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for i in tmap.ids("copied")[:100]:
        assert torch.equal(head[i], base_head[tmap.sources[i][0]])
        assert torch.equal(emb[i], base_emb[tmap.sources[i][0]])
    for i in tmap.ids("pieces")[:100]:
        assert torch.equal(head[i], base_head[tmap.sources[i][0]])  # `first` on the output side
    assert torch.count_nonzero(head[len(new_tok) :]) == 0


def test_base_with_an_already_padded_vocabulary(new_tok, smol_tok):
    """Base rows past the tokenizer (padding) are never used as sources."""
    model = tiny_model(len(smol_tok) + 40)
    tmap = build_token_map(new_tok, smol_tok)
    assert max(i for s in tmap.sources for i in s) < len(smol_tok)
    install(model, build_matrices(model, tmap, "mean", "same", 64, 0))
    assert model.get_input_embeddings().weight.shape[0] == padded(len(new_tok), 64)


def test_calibration_fits_only_the_given_rows():
    torch.manual_seed(0)
    hidden = torch.randn(3000, 8)
    true_w = torch.randn(20, 8) * 2
    targets = torch.distributions.Categorical(logits=hidden @ true_w.T).sample()
    w0 = torch.zeros(20, 8)
    rows = list(range(10, 20))
    opts = CalibrationOptions(epochs=5, lr=0.05, batch_tokens=500)
    fitted, hist = fit_rows(hidden, targets, w0, rows, opts)
    assert hist["train"][-1] < hist["train"][0] and min(hist["heldout"]) < hist["heldout"][0]
    assert hist["best_epoch"] > 0
    assert torch.equal(fitted[:10], w0[:10]) and not torch.equal(fitted[10:], w0[10:])


def test_calibrate_on_a_tiny_model_lowers_the_loss_and_keeps_copied_rows():
    model = tiny_model(50)
    before = model.get_input_embeddings().weight.detach().clone()
    stream = [i % 17 + 30 for i in range(600)]  # a repeated pattern over rows 30..46
    info = calibrate(
        model, stream, list(range(30, 50)), True, CalibrationOptions(tokens=600, seq_len=32, lr=0.05)
    )
    after = model.get_input_embeddings().weight
    assert torch.equal(after[:30], before[:30])
    assert info["losses"][-1] < info["losses"][0] and is_tied(model)
    with pytest.raises(ValueError, match="at least 32 tokens"):
        pack([1, 2, 3], 32, 100)


def test_calibrate_an_untied_model_changes_only_the_heads_new_rows():
    model = tiny_model(50, tied=False)
    emb = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    stream = [i % 17 + 30 for i in range(600)]
    calibrate(model, stream, list(range(30, 50)), False, CalibrationOptions(tokens=600, seq_len=32, lr=0.05))
    assert torch.equal(model.get_input_embeddings().weight, emb)
    new_head = model.get_output_embeddings().weight
    assert torch.equal(new_head[:30], head[:30]) and not torch.equal(new_head[30:], head[30:])
