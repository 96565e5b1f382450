"""The batching engine on a tiny model: batched decoding equals one-at-a-time decoding, limits, the chat loop."""

import io
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vikhr.serve.chat import chat_loop
from vikhr.serve.engine import Delta, Engine, EngineBusy, EngineClosed, Finished, SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_smollm):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    model = AutoModelForCausalLM.from_pretrained(tiny_smollm, dtype=torch.float32)
    eng = Engine(model, tok, max_batch=4, max_pending=8).start()
    yield eng
    eng.stop(0)


def prompts(engine):
    texts = [
        "Hello",
        "The capital of France is",
        "Жили-были дед да баба, и была у них",
        "1 2 3 4 5 6 7 8 9 10 11",
    ]
    return [engine.tokenizer(t)["input_ids"] for t in texts]


def reference(engine, ids, n):
    """Greedy tokens from Hugging Face generate, one prompt at a time, no padding."""
    out = engine.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=n, min_new_tokens=n, do_sample=False)  # fmt: skip
    return out[0, len(ids) :].tolist()


def test_batched_equals_one_at_a_time(engine):
    ps = prompts(engine)
    ref = [reference(engine, ids, GREEDY.max_tokens) for ids in ps]
    # all at once (prefilled together, left-padded), then staggered (joining a running batch)
    together = [r.result()[0] for r in [engine.submit(ids, GREEDY) for ids in ps]]
    staggered = []
    for ids in ps:
        staggered.append(engine.submit(ids, SamplingParams(**{**GREEDY.__dict__, "max_tokens": 12})))
        time.sleep(0.01)
    staggered = [r.result()[0] for r in staggered]
    for want, a, b in zip(ref, together, staggered, strict=True):
        # the engine drops one trailing U+FFFD: a character the length limit cut in half
        expected = engine.tokenizer.decode(want, skip_special_tokens=True).removesuffix("\ufffd")
        assert a.text == expected and b.text == expected
        assert a.tokens == b.tokens == GREEDY.max_tokens and a.reason == "length"
    info = engine.load_info()
    assert info["running"] == 0 and info["mean_batch"] > 1


def test_deltas_add_up_and_seed_reproduces(engine):
    ids = prompts(engine)[1]
    p = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=5, ignore_eos=True)
    req = engine.submit(ids, p, n=2)
    deltas = {0: "", 1: ""}
    finished = {}
    for ev in req.stream():
        if isinstance(ev, Delta):
            deltas[ev.index] += ev.text
        elif isinstance(ev, Finished):
            finished[ev.index] = ev.text
    assert deltas == finished
    again = engine.submit(ids, p, n=2).result()
    assert [f.text for f in again] == [finished[0], finished[1]]


def test_stop_string_cuts_the_text(engine):
    ids = prompts(engine)[0]
    full = engine.submit(ids, GREEDY).result()[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = engine.submit(ids, SamplingParams(**{**GREEDY.__dict__, "stop": (stop,)})).result()[0]
    assert cut.reason == "stop" and cut.text == full[: full.find(stop)]


def test_limits(engine):
    with pytest.raises(ValueError, match="maximum context length"):
        engine.submit([1] * (engine.context_length - 5), GREEDY)
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], GREEDY)


def test_cancel_frees_the_row(engine):
    req = engine.submit(prompts(engine)[0], SamplingParams(max_tokens=1500, ignore_eos=True))
    time.sleep(0.2)
    req.cancel()
    deadline = time.monotonic() + 5
    while engine.load_info()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.load_info()["running"] == 0


def test_busy_and_closed(tiny_smollm):
    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    model = AutoModelForCausalLM.from_pretrained(tiny_smollm)
    eng = Engine(model, tok, max_batch=1, max_pending=1)  # not started: everything waits
    eng.submit([1, 2], GREEDY)
    with pytest.raises(EngineBusy):
        eng.submit([1, 2], GREEDY)
    eng.start()
    eng.stop(drain_s=30)  # the waiting request is finished first
    with pytest.raises(EngineClosed):
        eng.submit([1, 2], GREEDY)


def test_padded_vocabulary_rows_are_never_sampled(tiny_smollm):
    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    model = AutoModelForCausalLM.from_pretrained(tiny_smollm)
    model.resize_token_embeddings(len(tok) + 64, mean_resizing=False)
    with torch.no_grad():
        model.get_output_embeddings().weight[len(tok) :] = 100.0  # padding rows would win every draw
    eng = Engine(model, tok).start()
    try:
        out = eng.submit([1, 2, 3], SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True)).result()[
            0
        ]
    finally:
        eng.stop(0)
    assert out.tokens == 10 and out.text  # only real tokens: text came out


def test_chat_loop_commands_and_history(engine):
    stdin = io.StringIO("Привет!\n/system Отвечай кратко.\nКак дела?\n/reset\n/oops\n/quit\nnever read\n")
    stdout = io.StringIO()
    turns = chat_loop(engine, SamplingParams(max_tokens=5, temperature=0.0), stdin=stdin, stdout=stdout)
    out = stdout.getvalue()
    assert turns == 2
    assert "[system prompt set]" in out and "[conversation cleared]" in out and "/reset clears" in out


def test_a_character_cut_by_the_length_limit_is_dropped(tiny_smollm):
    from vikhr.serve.engine import Request, _Seq

    tok = AutoTokenizer.from_pretrained(tiny_smollm)
    lead = tok.convert_tokens_to_ids("Ð")  # the byte 0xD0: the first half of a Cyrillic letter
    assert tok.decode([lead]) == "\ufffd"
    seq = _Seq(Request(1, [0], GREEDY), 0, None, ids=tok.encode("мир", add_special_tokens=False))
    seq.decode_more(tok)
    seq.ids.append(lead)
    seq.decode_more(tok)
    assert seq.text == "мир"  # held back while unfinished
    seq.decode_more(tok, final=True)
    assert seq.text == "мир"  # and dropped at the end, not shown as U+FFFD
