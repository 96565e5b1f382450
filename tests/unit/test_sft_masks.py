"""SFT loss masks: one rendering, one tokenization, and exactly the assistant replies plus their end-of-turn token
in the loss — for SmolLM2's ChatML (byte-level BPE), Mistral's [INST] template (SentencePiece) and a tiny BPE."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import CHATML

from vikhr.instruct.masks import (
    ChatTemplateError,
    Encoded,
    MaskStats,
    assistant_spans,
    check_chat_template,
    encode_all,
    encode_conversation,
    end_of_turn,
    strip_generation_markers,
)
from vikhr.train import IGNORE_INDEX

MISTRAL_V01 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
"""Mistral-7B-Instruct-v0.1's template (the common version: a system message raises)."""

MISTRAL_V01_SYSTEM = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + (system if loop.first else '') + message['content'] }}"
    "{{ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
"""The v0.1 template with the system prompt prepended to the first user message."""

SYSTEM_ON_LAST_TURN = (
    "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% set last_user = (messages | selectattr('role', 'equalto', 'user') | list | last) %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'user' %}{{ '<|im_start|>user\n' }}"
    "{% if message is sameas last_user and system %}{{ system + '\n\n' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>assistant\n' + message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""A template that is not prefix-consistent: the system prompt goes into the last user turn (as newer Mistral
templates do)."""

CONVERSATIONS = {
    "single": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    "multi": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "7 is a prime number."},
        {"role": "user", "content": "And another one?"},
        {"role": "assistant", "content": "Hi!"},
    ],
    "system": [
        {"role": "system", "content": "Ты — полезный ассистент. Отвечай кратко."},
        {"role": "user", "content": "Сколько будет 2+2?"},
        {"role": "assistant", "content": "Четыре."},
        {"role": "user", "content": "А 3+3?"},
        {"role": "assistant", "content": "Шесть."},
    ],
    "russian": [
        {"role": "user", "content": "Расскажи про ёжиков."},
        {
            "role": "assistant",
            "content": "Ёжики — небольшие млекопитающие; они едят насекомых, червей и ягоды.",
        },
    ],
    "whitespace": [
        {"role": "user", "content": "  Keep my spaces.  "},
        {"role": "assistant", "content": " Leading space, trailing spaces and newlines  \n\n"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "\nStarts with a newline.\n"},
    ],
    "code": [
        {"role": "user", "content": "Write a function that doubles a number."},
        {"role": "assistant", "content": "```python\ndef double(x):\n    return 2 * x  # удвоить\n```\n"},
    ],
    "spaces": [
        {"role": "user", "content": "Columns   please"},
        {"role": "assistant", "content": "a    b\t\tc     d\n|  x  |  y  |"},
    ],
}


# ----------------------------------------------------------------------------------------------------- helpers


def loss_runs(tok, enc: Encoded) -> list[str]:
    """The text of each maximal run of loss tokens, decoded in context (a SentencePiece decoder drops a leading
    space when decoding a run alone)."""
    runs, start = [], None
    for j, m in enumerate([*enc.loss_mask, False]):
        if m and start is None:
            start = j
        elif not m and start is not None:
            before = tok.decode(enc.input_ids[:start])
            upto = tok.decode(enc.input_ids[:j])
            assert upto.startswith(before)
            runs.append(upto[len(before) :])
            start = None
    return runs


def replies(messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


def reference_ids(tok, messages, template) -> list[int]:
    return list(tok.apply_chat_template(messages, chat_template=template, tokenize=True)["input_ids"])


def check_exact(tok, messages, template, eot: str, max_length: int = 4096) -> Encoded:
    """Ids as apply_chat_template gives them; the loss runs are exactly each reply + eot; nothing straddles."""
    enc = encode_conversation(tok, messages, template, max_length)
    assert enc.input_ids == reference_ids(tok, messages, template)
    assert enc.straddling == 0
    assert loss_runs(tok, enc) == [r + eot for r in replies(messages)]
    assert not enc.truncated and enc.answer_tokens == sum(enc.loss_mask) > 0
    assert enc.labels == [t if m else IGNORE_INDEX for t, m in zip(enc.input_ids, enc.loss_mask, strict=True)]
    eot_id = tok.convert_tokens_to_ids(eot)
    ends = [
        j
        for j, m in enumerate(enc.loss_mask)
        if m and (j + 1 == len(enc.loss_mask) or not enc.loss_mask[j + 1])
    ]
    assert [enc.input_ids[j] for j in ends] == [eot_id] * len(replies(messages))
    return enc


# ------------------------------------------------------------------------------------------ real tokenizers


def _load(shared: Path, name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared / "tokenizers" / name)


@pytest.fixture(scope="module")
def smollm2(shared):
    tok = _load(shared, "smollm2-135m")
    return SimpleNamespace(tok=tok, template=tok.chat_template, system=tok.chat_template, eot="<|im_end|>")


@pytest.fixture(scope="module")
def mistral(shared):
    tok = _load(shared, "mistral-7b-v0.1")
    assert not tok.chat_template  # the base model's tokenizer has none: the tests pass v0.1 instruct's
    return SimpleNamespace(tok=tok, template=MISTRAL_V01, system=MISTRAL_V01_SYSTEM, eot="</s>")


@pytest.fixture(params=["smollm2", "mistral"])
def real(request):
    return request.getfixturevalue(request.param)


@pytest.mark.shared
@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_real_tokenizers_mask_exactly_the_replies(real, case):
    messages = CONVERSATIONS[case]
    template = real.system if messages[0]["role"] == "system" else real.template
    assert check_chat_template(real.tok, template) == template
    assert end_of_turn(real.tok, template) == real.eot
    check_exact(real.tok, messages, template, real.eot)


@pytest.mark.shared
def test_real_tokenizers_eot_trained_when_pad_is_eos(shared, smollm2):
    assert smollm2.tok.pad_token_id == smollm2.tok.eos_token_id  # SmolLM2: pad = eos = <|im_end|>
    mistral = _load(shared, "mistral-7b-v0.1")
    mistral.pad_token = mistral.eos_token
    for tok, template in ((smollm2.tok, smollm2.template), (mistral, MISTRAL_V01)):
        enc = encode_conversation(tok, CONVERSATIONS["multi"], template, 4096)
        eos_at = [j for j, t in enumerate(enc.input_ids) if t == tok.pad_token_id]
        run_ends = [j for j, m in enumerate(enc.loss_mask) if m and not enc.loss_mask[j + 1 :][:1] == [True]]
        # each of the 3 replies ends in a trained eos (= pad), labelled with its id; other eos are prompt
        assert len(run_ends) == 3 and set(run_ends) <= set(eos_at)
        assert [j for j in eos_at if enc.labels[j] == tok.eos_token_id] == run_ends


@pytest.mark.shared
def test_real_tokenizers_truncation(real):
    messages = CONVERSATIONS["multi"]
    full = encode_conversation(real.tok, messages, real.template, 4096)
    runs = [j for j, m in enumerate(full.loss_mask) if m and not full.loss_mask[j - 1]]
    first_len = sum(full.loss_mask[: runs[1]])
    # cut inside the second answer: the first answer and the second's first tokens survive
    cut = runs[1] + 2
    enc = encode_conversation(real.tok, messages, real.template, cut)
    assert enc.truncated and len(enc.input_ids) == cut and enc.input_ids == full.input_ids[:cut]
    assert enc.answer_tokens == first_len + 2 == sum(enc.loss_mask)
    # cut before the first answer: nothing left to learn, and the example is still returned
    encs, stats = encode_all(real.tok, [messages, messages], real.template, runs[0])
    assert [e.answer_tokens for e in encs] == [0, 0] and all(e.truncated for e in encs)
    assert (stats.examples, stats.truncated, stats.truncated_away, stats.answer_tokens) == (2, 2, 2, 0)
    assert stats.prompt_tokens == 2 * runs[0]


@pytest.mark.shared
def test_real_tokenizers_straddling_tokens_are_left_out(smollm2, mistral):
    # byte-level: the generation prompt's "\n" and the reply's "\n" merge into one "\n\n" token;
    # SentencePiece: "[/INST]" + "))" gives a "]))" token
    for t, reply in ((smollm2, "\n\nfoo bar"), (mistral, "))foo bar")):
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]
        text, spans = assistant_spans(t.tok, messages, t.template)
        assert text[slice(*spans[0])] == reply + t.eot
        enc = encode_conversation(t.tok, messages, t.template, 4096)
        assert enc.straddling == 1
        (run,) = loss_runs(t.tok, enc)
        assert (reply + t.eot).endswith(run) and len(run) < len(reply + t.eot)
        _, stats = encode_all(t.tok, [messages], t.template, 4096)
        assert stats.straddling == 1


@pytest.mark.shared
def test_mistral_has_no_template_and_the_error_names_the_fix(shared, mistral):
    folder = str(shared / "tokenizers" / "mistral-7b-v0.1")
    with pytest.raises(ChatTemplateError, match="set sft.chat_template to a Jinja template") as e:
        check_chat_template(mistral.tok, None, where=folder)
    assert folder in str(e.value)


@pytest.mark.shared
def test_mistral_template_refusing_system_is_accepted_but_system_conversations_fail(mistral):
    assert check_chat_template(mistral.tok, MISTRAL_V01) == MISTRAL_V01
    with pytest.raises(
        ChatTemplateError, match="does not render this conversation: TemplateError: Conversation"
    ):
        encode_conversation(mistral.tok, CONVERSATIONS["system"], MISTRAL_V01, 4096)


@pytest.mark.shared
def test_bos_is_prepended_when_the_template_lacks_it(mistral):
    template = MISTRAL_V01.removeprefix("{{ bos_token }}")
    messages = CONVERSATIONS["russian"]
    ref = reference_ids(mistral.tok, messages, template)
    assert ref[0] != mistral.tok.bos_token_id  # apply_chat_template never adds one
    enc = encode_conversation(mistral.tok, messages, template, 4096)
    assert enc.input_ids == [mistral.tok.bos_token_id, *ref] and not enc.loss_mask[0]
    assert loss_runs(mistral.tok, enc) == [replies(messages)[0] + "</s>"]
    plain = encode_conversation(mistral.tok, messages, template, 4096, add_bos=False)
    assert plain.input_ids == ref and plain.loss_mask == enc.loss_mask[1:]


@pytest.mark.shared
def test_smollm2_template_saved_without_markers_renders_the_same(smollm2):
    marked = smollm2.template.replace(
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
        "{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == 'assistant' %}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{% else %}"
        "{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}",
    )
    assert "{% generation %}" in marked
    stripped = strip_generation_markers(marked)
    assert "{% generation" not in stripped and "endgeneration" not in stripped
    for messages in CONVERSATIONS.values():
        expected = smollm2.tok.apply_chat_template(messages, chat_template=smollm2.template, tokenize=False)
        for t in (marked, stripped):
            assert smollm2.tok.apply_chat_template(messages, chat_template=t, tokenize=False) == expected


# ------------------------------------------------------------------------------- a tiny tokenizer (no shared)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Привет, как дела? Всё хорошо, спасибо!",
    "def double(x):\n    return 2 * x\n",
    "user assistant system hello world, numbers 1 2 3.",
] * 5


@pytest.fixture(scope="module")
def tiny():
    """A byte-level BPE trained here on a few sentences, ChatML markers as special tokens, pad = eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )  # fmt: skip
    fast.chat_template = CHATML
    return fast


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_tiny_tokenizer_masks_exactly_the_replies(tiny, case):
    assert tiny.pad_token_id == tiny.eos_token_id
    assert end_of_turn(tiny, CHATML) == "<|im_end|>"
    enc = check_exact(tiny, CONVERSATIONS[case], check_chat_template(tiny), "<|im_end|>")
    text, spans = assistant_spans(tiny, CONVERSATIONS[case], CHATML)
    assert [text[a:b] for a, b in spans] == [r + "<|im_end|>" for r in replies(CONVERSATIONS[case])]
    assert sum(enc.labels[j] == tiny.eos_token_id for j in range(len(enc.labels))) == len(spans)


def test_tiny_tokenizer_truncation_and_stats(tiny):
    convs = [CONVERSATIONS["multi"], CONVERSATIONS["single"], CONVERSATIONS["code"]]
    full, full_stats = encode_all(tiny, convs, CHATML, 10_000)
    assert full_stats.truncated == full_stats.truncated_away == 0 and full_stats.examples == 3
    total = sum(len(e.input_ids) for e in full)
    assert full_stats.answer_tokens + full_stats.prompt_tokens == total
    assert full_stats.answer_tokens == sum(e.answer_tokens for e in full)
    assert 0 < full_stats.as_dict()["answer_share"] < 1
    first = full[0].loss_mask.index(True)
    second = first + full[0].loss_mask[first:].index(False)
    second = second + full[0].loss_mask[second:].index(True)
    encs, stats = encode_all(tiny, convs, CHATML, second + 1)
    assert [e.input_ids for e in encs] == [
        e.input_ids[: second + 1] for e in full
    ]  # order kept, none dropped
    assert encs[0].truncated and encs[0].answer_tokens == sum(full[0].loss_mask[: second + 1])
    short, short_stats = encode_all(tiny, convs, CHATML, first)
    assert [e.answer_tokens for e in short] == [0, 0, 0] and short_stats.truncated_away == 3
    assert isinstance(short_stats, MaskStats)


def test_not_prefix_consistent_template_is_located(tiny):
    messages = [{"role": "system", "content": "Be brief."}, *CONVERSATIONS["multi"]]
    prefix = tiny.apply_chat_template(messages[:3], chat_template=SYSTEM_ON_LAST_TURN, tokenize=False)
    text = tiny.apply_chat_template(messages, chat_template=SYSTEM_ON_LAST_TURN, tokenize=False)
    assert not text.startswith(prefix)  # the system prompt moved to the last user turn
    enc = check_exact(tiny, messages, SYSTEM_ON_LAST_TURN, "<|im_end|>")
    assert enc.answer_tokens > 0


def test_forward_search_fallback(tiny):
    # the header depends on the turn count and the last reply's length: neither the prefix nor the sentinel
    # rendering lines up, and the user turn before the last reply has the same text and the same <|im_end|>
    template = "{{ messages | length }}:{{ (messages | last)['content'] | length }}\n" + CHATML
    messages = [
        *CONVERSATIONS["multi"][:4],
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hi!"},
    ]
    enc = check_exact(tiny, messages, template, "<|im_end|>")
    text, spans = assistant_spans(tiny, messages, template)
    assert text[: spans[-1][0]].endswith("<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    assert enc.answer_tokens > 0


def test_trimming_template(tiny):
    template = CHATML.replace("message['content']", "message['content'] | trim")
    messages = CONVERSATIONS["whitespace"]
    text, spans = assistant_spans(tiny, messages, template)
    assert [text[a:b] for a, b in spans] == [r.strip() + "<|im_end|>" for r in replies(messages)]


def test_reply_the_template_changes_is_an_error_naming_the_message(tiny):
    template = CHATML.replace("message['content']", "message['content'] | replace('.', '!')")
    with pytest.raises(ChatTemplateError, match="assistant message 1 "):
        assistant_spans(tiny, CONVERSATIONS["single"], template)


def test_template_errors(tiny):
    bare = SimpleNamespace(chat_template=None, name_or_path="")
    with pytest.raises(ChatTemplateError, match=r"models/x: .*set sft\.chat_template to a Jinja template"):
        check_chat_template(bare, None, where="models/x")
    with pytest.raises(ChatTemplateError, match="does not render.*TemplateSyntaxError"):
        check_chat_template(tiny, "{% for m in messages %}{{ m.content }}")
    assert check_chat_template(tiny, None) == CHATML
    # the turn ends in plain text, not in a special token
    plain_end = CHATML.replace("'<|im_end|>' + '\n'", "'</turn>\n'")
    with pytest.raises(ChatTemplateError, match="no end-of-turn token"):
        end_of_turn(tiny, plain_end)
    slow = SimpleNamespace(is_fast=False, name_or_path="some/slow")
    with pytest.raises(ValueError, match="some/slow.*not a fast tokenizer"):
        encode_conversation(slow, CONVERSATIONS["single"], CHATML, 16)


MARKED = [
    # (template with markers, the same template written without them)
    (
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' }}{% if m.role == 'assistant' %}"
        "{% generation %}{{ m.content + '<|im_end|>' }}{% endgeneration %}{% else %}"
        "{{ m.content + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}",
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' }}{% if m.role == 'assistant' %}"
        "{{ m.content + '<|im_end|>' }}{% else %}"
        "{{ m.content + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}",
    ),
    (
        "{%- for m in messages %}\n<|im_start|>{{ m.role }}\n"
        "{%- if m.role == 'assistant' %}\n  {%- generation -%}\n  {{ m.content }}<|im_end|>\n"
        "  {%- endgeneration -%}\n{%- else %}\n{{ m.content }}<|im_end|>\n{%- endif %}\n{%- endfor %}\n",
        "{%- for m in messages %}\n<|im_start|>{{ m.role }}\n"
        "{%- if m.role == 'assistant' %}{{ m.content }}<|im_end|>"
        "{%- else %}\n{{ m.content }}<|im_end|>\n{%- endif %}\n{%- endfor %}\n",
    ),
    (
        "{% for m in messages %}\n<|im_start|>{{ m.role }}: \n    {% generation %}\n{{ m.content }}\n"
        "    {% endgeneration %}\nend {%+ generation +%}  x  {% endgeneration %}\n{% endfor %}",
        "{% for m in messages %}\n<|im_start|>{{ m.role }}: \n{{ m.content }}\nend   x  {% endfor %}",
    ),
]


@pytest.mark.parametrize("marked, plain", MARKED)
def test_strip_generation_markers_renders_the_same(tiny, marked, plain):
    stripped = strip_generation_markers(marked)
    assert "generation" not in stripped
    for messages in CONVERSATIONS.values():
        expected = tiny.apply_chat_template(messages, chat_template=plain, tokenize=False)
        assert tiny.apply_chat_template(messages, chat_template=stripped, tokenize=False) == expected
        assert tiny.apply_chat_template(messages, chat_template=marked, tokenize=False) == expected
    assert strip_generation_markers(plain) == plain
