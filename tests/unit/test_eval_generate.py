"""Generative answers through the engine, lm-eval's extraction and exact match, side-by-side reports."""

import argparse
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vikhr.eval.bpc import start_token_id
from vikhr.eval.generate import exact_match, extract_answer, generate_answers
from vikhr.eval.sbs import (
    add_sbs_arguments,
    bundled_prompts,
    read_prompts,
    side_by_side,
    write_side_by_side,
)
from vikhr.models import named_models

PROMPTS = ["Как приготовить шаурму дома?", "Hello, how are you?", "Напиши письмо", "Что такое борщ?"]


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(
        folder
    )


@pytest.fixture(scope="module")
def smollm(tiny_smollm):
    return load(tiny_smollm)


def reference(model, tok, ids: list[int], n: int) -> tuple[str, int]:
    """Greedy text and token count from Hugging Face generate, one prompt at a time, no padding."""
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)  # fmt: skip
    new = out[0, len(ids) :].tolist()
    return tok.decode(new, skip_special_tokens=True), len(new)


def test_greedy_equals_generate(smollm):
    model, tok = smollm
    n = 10
    # plain continuation after the start token, batched 2 at a time (prefilled together and joining a batch)
    answers = generate_answers(model, tok, PROMPTS, max_new_tokens=n, chat=False, max_batch=2)
    assert [a.prompt for a in answers] == PROMPTS
    for prompt, a in zip(PROMPTS, answers, strict=True):
        ids = [start_token_id(tok), *tok(prompt, add_special_tokens=False)["input_ids"]]
        assert (a.text, a.tokens) == reference(model, tok, ids, n)
        assert a.finish_reason in ("stop", "length") and a.seconds > 0
    # under the chat template, with a system message
    answers = generate_answers(model, tok, PROMPTS[:2], max_new_tokens=n, system="Отвечай по-русски.")
    for prompt, a in zip(PROMPTS[:2], answers, strict=True):
        msgs = [{"role": "system", "content": "Отвечай по-русски."}, {"role": "user", "content": prompt}]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert (a.text, a.tokens) == reference(
            model, tok, tok(text, add_special_tokens=False)["input_ids"], n
        )
    assert not model.training


def test_seeded_sampling_is_reproducible(smollm):
    model, tok = smollm
    kw = dict(max_new_tokens=8, temperature=1.0, chat=False, max_batch=3)
    a = [x.text for x in generate_answers(model, tok, PROMPTS, seed=0, **kw)]
    b = [x.text for x in generate_answers(model, tok, PROMPTS, seed=0, **kw)]
    c = [x.text for x in generate_answers(model, tok, PROMPTS, seed=1, **kw)]
    greedy = [x.text for x in generate_answers(model, tok, PROMPTS, max_new_tokens=8, chat=False)]
    assert a == b and a != c and a != greedy
    # prompt i uses seed + i: the same prompt twice gives different samples
    twice = generate_answers(model, tok, [PROMPTS[0]] * 2, seed=5, **kw)
    assert twice[0].text != twice[1].text
    assert generate_answers(model, tok, [], chat=False) == []


def test_stop_strings_and_message_lists(smollm):
    model, tok = smollm
    # sampled (the random tiny model's greedy text can be empty or one repeated piece), the first seed that
    # gives a two-character stop string inside the answer that is not part of an unfinished UTF-8 character
    kw = dict(max_new_tokens=12, chat=False, temperature=1.0)
    for seed in range(20):
        full = generate_answers(model, tok, PROMPTS[:1], seed=seed, **kw)[0]
        inner = [full.text[i : i + 2] for i in range(1, len(full.text) - 1)]
        cuts = [c for c in inner if "\ufffd" not in c and c.strip()]
        if cuts:
            break
    stopped = generate_answers(model, tok, PROMPTS[:1], seed=seed, stop=[cuts[0]], **kw)[0]
    assert stopped.text == full.text[: full.text.index(cuts[0])] and stopped.finish_reason == "stop"
    msgs = [[{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте"},
             {"role": "user", "content": "Как дела?"}]]  # fmt: skip
    assert generate_answers(model, tok, msgs, max_new_tokens=4)[0].prompt == "Как дела?"
    with pytest.raises(ValueError, match="chat=True"):
        generate_answers(model, tok, msgs, chat=False)


def test_chat_without_template_names_the_model(tiny_mistral):
    model, tok = load(tiny_mistral)
    assert not tok.chat_template
    with pytest.raises(ValueError, match=f"{tiny_mistral.name}.*no chat template"):
        generate_answers(model, tok, ["Привет"])
    assert len(generate_answers(model, tok, ["Привет"], chat=False, max_new_tokens=3)) == 1


def test_extract_answer_follows_lm_eval():
    gsm = r"#### (\-?[0-9\.\,]+)"
    assert extract_answer("Считаем... #### 42\n", gsm) == "42"
    assert extract_answer("#### 1 и потом #### 2", gsm) == "1"
    assert extract_answer("#### 1 и потом #### 2", gsm, group_select=-1) == "2"
    assert extract_answer("ответа нет", gsm) == "[invalid]"
    assert extract_answer("ответа нет", gsm, fallback="?") == "?"
    # several groups: the first non-empty one; all empty: the fallback
    assert extract_answer("Ответ: B", r"(\d+)|\b([A-D])\b") == "B"
    assert extract_answer("xyz", r"(a?)(b?)") == "[invalid]"
    assert extract_answer("  ответ  ", r"ответ\s*") == "ответ"  # the match is stripped
    assert extract_answer("  Москва \n", None) == "Москва"
    with pytest.raises(IndexError):
        extract_answer("#### 1", gsm, group_select=3)


def test_exact_match_follows_lm_eval():
    assert exact_match("Москва", "Москва") and not exact_match("Москва", "москва")
    assert exact_match("Москва", "москва", ignore_case=True)
    assert exact_match("Да.", "Да!", ignore_punctuation=True) and not exact_match("Да.", "Да")
    assert not exact_match("«Да»", "Да", ignore_punctuation=True)  # only ASCII punctuation is dropped
    assert not exact_match("42 ", "42")  # whitespace counts
    assert exact_match("[invalid]", "[invalid]") and not exact_match("[invalid]", "42")
    assert exact_match("ответ 42", "ответ 7", ignore_numbers=True)
    assert exact_match("The answer is 42", "42", regexes_to_ignore=[r"The answer is "])


def cells(line: str) -> list[str]:
    """The cells of a Markdown table row, split at unescaped pipes as GFM does."""
    out, cur, i = [], "", 0
    while i < len(line):
        if line[i] == "\\":
            cur, i = cur + line[i : i + 2], i + 2
            continue
        if line[i] == "|":
            out.append(cur)
            cur = ""
        else:
            cur += line[i]
        i += 1
    return out[1:]  # the text before the first pipe is empty


def test_side_by_side_two_models(tiny_smollm, tiny_mistral, tmp_path):
    prompts = ["Как приготовить шаурму | дома?", "Что такое <b>борщ</b> & щи?\nКратко.", "Привет"]
    result = side_by_side({"smol": tiny_smollm, "mistral": tiny_mistral}, prompts, max_new_tokens=8,
                          dtype="float32", device="cpu")  # fmt: skip
    assert result["models"]["smol"]["chat"] is True and result["models"]["mistral"]["chat"] is False
    for m in result["models"].values():
        assert len(m["answers"]) == 3 and m["purity"]["answers"] == 3 and m["chars_per_s"] >= 0
        for a in m["answers"]:
            assert a["chars"] == len(a["text"]) and 1 <= a["tokens"] <= 8 and "latin_share" in a["purity"]
    # an answer with everything that must be escaped, and offending words to highlight
    tricky = "a | b \\| c\nline two <script>alert(1)</script> lavash и Расwте"
    result["models"]["mistral"]["answers"][1]["text"] = tricky
    paths = write_side_by_side(result, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"sbs.json", "sbs.md", "sbs.html"}

    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["prompts"] == prompts and data["models"]["mistral"]["answers"][1]["text"] == tricky

    md = paths["markdown"].read_text(encoding="utf-8")
    rows = [
        line for line in md.splitlines() if line.startswith("| ") and "chars/s" in line and "<br>" in line
    ]
    assert len(rows) == len(prompts)
    for row in rows:
        assert len(cells(row)) == 3  # prompt | smol | mistral
    assert "шаурму \\| дома?" in rows[0] and "&lt;b&gt;борщ&lt;/b&gt; &amp; щи?<br>Кратко." in rows[1]
    assert "a \\| b \\\\\\| c<br>line two &lt;script&gt;" in cells(rows[1])[2]
    assert "<script>" not in md and "<b>" not in md

    page = paths["html"].read_text(encoding="utf-8")
    assert page.count('<td class="answer">') == len(prompts) * 2
    assert "<script" not in page and '&lt;<mark class="latin">script</mark>&gt;' in page
    assert '<mark class="latin">lavash</mark>' in page and '<mark class="mixed">Расwте</mark>' in page
    assert "&lt;b&gt;борщ&lt;/b&gt; &amp; щи?" in page


def test_cli_and_prompts(tiny_mistral, tmp_path, capsys):
    prompts = bundled_prompts()
    assert len(prompts) >= 20 and "Как приготовить шаурму дома?" in prompts
    f = tmp_path / "p.txt"
    f.write_text("Первый вопрос\n\n  Второй вопрос  \n", encoding="utf-8")
    assert read_prompts(f) == ["Первый вопрос", "Второй вопрос"]
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt: no prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="bad.txt: not UTF-8"):
        read_prompts(tmp_path / "bad.txt")

    assert named_models(["a=x", str(tiny_mistral)]) == {"a": "x", tiny_mistral.name: str(tiny_mistral)}
    with pytest.raises(ValueError, match="given twice"):
        named_models(["a=x", "a=y"])

    p = argparse.ArgumentParser()
    add_sbs_arguments(p)
    args = p.parse_args([f"m={tiny_mistral}", "--prompts", str(f), "--out", str(tmp_path / "o"),
                         "--max-new-tokens", "3", "--dtype", "float32", "--device", "cpu"])  # fmt: skip
    assert args.func(args) == 0
    assert "| m | continuation |" in capsys.readouterr().out
    assert (
        len(json.loads((tmp_path / "o" / "sbs.json").read_text(encoding="utf-8"))["models"]["m"]["answers"])
        == 2
    )
