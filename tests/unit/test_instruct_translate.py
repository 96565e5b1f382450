"""`vikhr instruct translate`: English instruction sets become Russian ones through `LLMClient` (Veles, ruFLAN).

A fake OpenAI-compatible endpoint runs in a thread on loopback. Translation requests (its system prompt is the
translator's) are answered from a table keyed by the masked English text the client sends; reply requests (mode
`generate`) from a table keyed by the translated last user message. Special answers give an error status, a body
that is not JSON, an empty or a cut answer. A per-key request counter and usage numbers let the tests check the
placeholders, the cost accounting and that a rerun sends only what is missing.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vikhr.config import LLMConfig
from vikhr.instruct.formats import Example, Rejected, read_examples
from vikhr.instruct.translate import (
    TRANSLATE_PROMPT,
    add_translate_arguments,
    language_problem,
    markup_problem,
    needs_translation,
    placeholder_problem,
    protect,
    restore,
    translate_examples,
)
from vikhr.llm import LLMClient, LLMError
from vikhr.scripts import CYRILLIC

MODEL = "fake-llm"
ENV = ("VIKHR_LLM_BASE_URL", "OPENAI_BASE_URL", "VIKHR_LLM_MODEL", "VIKHR_LLM_API_KEY", "OPENAI_API_KEY")
ERROR500, GARBAGE, CUT = object(), object(), object()
"""Special answers: a persistent 500, a 200 whose body is not JSON, a reply stopped at its length limit."""

SYSTEM = "You are a helpful assistant."
CODE = "```python\ndef add(a, b):\n    # the sum\n    return a + b\n```"
URL = "https://docs.python.org/3/"
CODE_REPLY = f"Here is the function:\n\n{CODE}\n\nCall `add(2, 3)` to get 5. See {URL} for details.\n"
STEPS = "Steps:\n1. Boil water.\n2. Add the pasta.\n3. Wait ten minutes."
CODE_ONLY = "```\nx = 1\n```"
PRINT_PROMPT = "Explain what `print('hi')` does:\n\n```python\nprint('hi')\n```"

# Masked English text -> translation (or a special answer).
TRANSLATIONS = {
    SYSTEM: "Ты — полезный ассистент.",
    "What is the capital of France?": "Какова столица Франции?",
    "The capital of France is Paris.": "Столица Франции — Париж.",
    "Write a Python function ⟦0⟧ that adds two numbers.":
        "Напиши на Python функцию ⟦0⟧, которая складывает два числа.",
    "Here is the function:\n\n⟦0⟧\n\nCall ⟦1⟧ to get 5. See ⟦2⟧ for details.\n":
        "Вот функция:\n\n⟦0⟧\n\nВызовите ⟦1⟧, чтобы получить 5. Подробности: ⟦2⟧.",
    "Give me the steps to cook pasta.": "Перечисли шаги приготовления пасты.",
    STEPS: "Шаги:\n1. Вскипятите воду.\n2. Добавьте пасту.\n3. Подождите десять минут.",
    "Say hello.": "Скажи «привет».",
    "Hello there, my friend!": "Hello there, my friend!",  # left in English
    "Explain ⟦0⟧ in Python.": "Объясни функцию len в Python.",  # the placeholder is lost
    "It returns the length of ⟦0⟧.": "Она возвращает длину ⟦0⟧.",
    "Print ⟦0⟧.": "Выведи ⟦0⟧ и ещё раз ⟦0⟧.",  # duplicated
    "Use ⟦0⟧.": "Используйте ⟦0⟧.",
    "List three colours.": "Назови три цвета.",
    "- red\n- green\n- blue": "- красный, зелёный\n- синий",  # a list item merged
    "What is garbage?": GARBAGE,
    "Something worthless.": "Что-то никчёмное.",
    "Rayleigh scattering.": "Рэлеевское рассеяние.",
    "Why did the chicken cross the road?": "Зачем курица перешла дорогу?",
    "Why is the sky blue?": ERROR500,
    "Tell me a joke.": "",
    "Show the code.": "Покажи код.",
    # mode generate
    "Name three primary colours.": "Назови три основных цвета.",
    "Explain what ⟦0⟧ does:\n\n⟦1⟧": "Объясни, что делает ⟦0⟧:\n\n⟦1⟧",
    "Answer briefly.": "Отвечай кратко.",
    "Is water wet?": "Вода мокрая?",
    "What is two plus two?": "Сколько будет два плюс два?",
    "What is 2+2?": "Сколько будет 2+2?",
    "Describe the Moon.": "Describe the Moon.",  # the prompt's translation fails: no reply is asked for
    "Write a long story.": "Напиши длинный рассказ.",
}  # fmt: skip
# Translated last user message -> generated reply.
REPLIES = {
    "Назови три основных цвета.": "Красный, жёлтый и синий.",
    "Объясни, что делает `print('hi')`:\n\n```python\nprint('hi')\n```": "Она выводит строку `hi` на экран.",
    "Вода мокрая?": "Yes, water is wet.",  # English
    "Сколько будет два плюс два?": ERROR500,
    "Сколько будет 2+2?": "4",
    "Напиши длинный рассказ.": CUT,
}


def ex(i: int, *turns: tuple[str, str], source: str = "hermes") -> Example:
    return Example(
        [{"role": r, "content": c} for r, c in turns], source, f"{source}:{i}", f"{source}.jsonl:{i + 1}"
    )


VELES = [
    ex(0, ("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris.")),
    ex(1, ("user", "Write a Python function `add` that adds two numbers."), ("assistant", CODE_REPLY)),
    ex(2, ("system", SYSTEM), ("user", "Give me the steps to cook pasta."), ("assistant", STEPS)),
    ex(3, ("system", SYSTEM), ("user", "Say hello."), ("assistant", "Hello there, my friend!")),
    ex(4, ("user", "Explain `len` in Python."), ("assistant", "It returns the length of `x`.")),
    ex(5, ("user", "Print `hi`."), ("assistant", "Use `print('hi')`.")),
    ex(6, ("user", "List three colours."), ("assistant", "- red\n- green\n- blue")),
    ex(7, ("user", "What is garbage?"), ("assistant", "Something worthless.")),
    ex(8, ("user", "Why is the sky blue?"), ("assistant", "Rayleigh scattering.")),
    ex(9, ("user", "Tell me a joke."), ("assistant", "Why did the chicken cross the road?")),
    ex(10, ("user", "Show the code."), ("assistant", CODE_ONLY)),
]
VELES_REJECTS = {
    "hermes:3": "wrong_language",
    "hermes:4": "markup_lost",
    "hermes:5": "markup_lost",
    "hermes:6": "markup_changed",
    "hermes:7": "llm_error",
    "hermes:8": "llm_error",
    "hermes:9": "empty_answer",
}
FLAN = [
    ex(0, ("user", "Name three primary colours."), ("assistant", "Red, yellow and blue."), source="flan"),
    ex(1, ("user", PRINT_PROMPT), ("assistant", "It prints hi."), source="flan"),
    ex(2, ("system", "Answer briefly."), ("user", "Is water wet?"), ("assistant", "Yes."), source="flan"),
    ex(3, ("user", "What is two plus two?"), ("assistant", "Four."), source="flan"),
    ex(4, ("user", "What is 2+2?"), ("assistant", "4"), source="flan"),
    ex(5, ("user", "Describe the Moon."), ("assistant", "The Moon is grey."), source="flan"),
    ex(6, ("user", "Write a long story."), ("assistant", "Once upon a time..."), source="flan"),
]  # fmt: skip
FLAN_REJECTS = {
    "flan:2": "wrong_language",
    "flan:3": "llm_error",
    "flan:5": "wrong_language",
    "flan:6": "truncated",
}


class FakeLLM:
    """A loopback OpenAI-compatible server answering from `TRANSLATIONS` and `REPLIES`."""

    def __init__(self) -> None:
        self.translations = dict(TRANSLATIONS)
        self.replies = dict(REPLIES)
        self.requests: Counter[str] = Counter()
        self.usages: list[dict] = []
        self.bodies: list[dict] = []
        self.unknown: list[str] = []
        """Texts the tables do not hold: a test that sends one is wrong, the fixture fails it."""
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                fake.send(self, 200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

            def do_POST(self) -> None:
                fake.answer(self, json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        msgs = body["messages"]
        translating = msgs[0]["role"] == "system" and msgs[0]["content"].startswith("You are a professional")
        key = msgs[-1]["content"]
        with self.lock:
            self.requests[key] += 1
            self.bodies.append(body)
        if body.get("model") != MODEL:
            return self.send(h, 404, {"error": {"message": f"model {body.get('model')} not found"}})
        table = self.translations if translating else self.replies
        if key not in table:
            self.unknown.append(key)
            return self.send(h, 400, {"error": {"message": f"the fake does not know {key!r}"}})
        text, finish = table[key], "stop"
        if text is ERROR500:
            return self.send(h, 500, {"error": {"message": "translator crashed", "type": "server_error"}})
        if text is GARBAGE:
            return self.send(h, 200, b"<html>Bad gateway</html>")
        if text is CUT:
            text, finish = "Жила-была", "length"
        usage = {"prompt_tokens": sum(len(m["content"]) for m in msgs), "completion_tokens": len(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        with self.lock:
            self.usages.append(usage)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        self.send(
            h,
            200,
            {"id": "c", "object": "chat.completion", "model": MODEL, "choices": [choice], "usage": usage},
        )

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, obj: dict | bytes) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.usages.clear()
            self.bodies.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIKHR_CACHE", str(tmp_path / "vikhr-cache"))


@pytest.fixture
def fake():
    f = FakeLLM()
    yield f
    f.close()
    assert f.unknown == [], "requests the fake has no answer for"


def client_for(fake: FakeLLM, tmp_path: Path, model: str = MODEL) -> LLMClient:
    cfg = LLMConfig(base_url=fake.base_url, model=model, max_retries=1, backoff_s=0.0, max_backoff_s=0.0)
    return LLMClient(cfg, cache_dir=tmp_path / "llm-cache")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def files(out: Path, name: str) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in (f"{name}.jsonl", "rejected.jsonl")}


# -- whole runs ------------------------------------------------------------------------------------------------


def test_translate_mode_keeps_markup_rejects_with_reasons_and_resumes_from_cache(fake, tmp_path):
    out = tmp_path / "veles"
    with client_for(fake, tmp_path) as client:
        res = translate_examples(
            VELES, client, out, mode="translate", name="veles", price_in=2.0, price_out=8.0
        )
    assert (res.total, res.kept, res.rejected) == (11, 4, 7)
    kept = {r["id"]: r for r in read_jsonl(res.data)}
    rejected = {r["id"]: r for r in read_jsonl(res.rejected_file)}
    assert {k: r["reason"] for k, r in rejected.items()} == VELES_REJECTS
    assert set(kept) == {"hermes:0", "hermes:1", "hermes:2", "hermes:10"}

    # Code blocks, inline code and URLs come back byte for byte; the source's trailing newline is kept.
    code = kept["hermes:1"]["messages"]
    assert code[0] == {
        "role": "user",
        "content": "Напиши на Python функцию `add`, которая складывает два числа.",
    }
    assert code[1]["content"] == (
        f"Вот функция:\n\n{CODE}\n\nВызовите `add(2, 3)`, чтобы получить 5. Подробности: {URL}.\n"
    )
    assert kept["hermes:2"]["messages"] == [
        {"role": "system", "content": "Ты — полезный ассистент."},
        {"role": "user", "content": "Перечисли шаги приготовления пасты."},
        {"role": "assistant", "content": TRANSLATIONS[STEPS]},
    ]
    assert kept["hermes:10"]["messages"][1]["content"] == CODE_ONLY  # nothing to translate: kept, never sent
    assert CODE_ONLY not in fake.requests and not any("```" in k for k in fake.requests)
    assert all(kept[k]["orig_messages"] == VELES[int(k.split(":")[1])].messages for k in kept)
    assert all(r["source"] == "hermes" for r in kept.values())

    # Rejections carry the detail, the failing message, the raw answer and the source example.
    assert "missing ⟦0⟧" in rejected["hermes:4"]["detail"] and rejected["hermes:4"]["message"] == 0
    assert "duplicated ⟦0⟧" in rejected["hermes:5"]["detail"]
    assert rejected["hermes:6"]["detail"] == "list items 3 -> 2" and rejected["hermes:6"]["message"] == 1
    assert (
        rejected["hermes:3"]["raw"] == "Hello there, my friend!"
        and "cyrillic share 0.00" in rejected["hermes:3"]["detail"]
    )
    assert "non-JSON" in rejected["hermes:7"]["detail"] and "500" in rejected["hermes:8"]["detail"]
    assert rejected["hermes:8"]["orig_messages"] == VELES[8].messages

    # Requests: temperature 0, the translator's instructions, one per distinct text (the system prompt is shared
    # by two examples); the 500 was tried 1 + max_retries times.
    prompt = TRANSLATE_PROMPT.format(language="Russian")
    assert all(b["temperature"] == 0 and b["messages"][0]["content"] == prompt for b in fake.bodies)
    assert fake.requests[SYSTEM] == 1 and fake.requests["Why is the sky blue?"] == 2
    distinct = {m["content"] for e in VELES for m in e.messages} - {CODE_ONLY}
    assert res.requests == {"translations": len(distinct), "generations": 0}
    assert sum(fake.requests.values()) == len(distinct) + 1

    # Cost and stats.
    p, c = (sum(u[k] for u in fake.usages) for k in ("prompt_tokens", "completion_tokens"))
    cost = res.cost
    assert (cost["prompt_tokens"], cost["completion_tokens"], cost["requests"]) == (p, c, len(distinct) + 1)
    assert res.cost["usd"] == pytest.approx((2.0 * p + 8.0 * c) / 1e6)
    stats = json.loads(res.stats_file.read_text(encoding="utf-8"))
    assert (stats["total"], stats["kept"], stats["rejected"]) == (11, 4, 7)
    assert stats["kept"] + stats["rejected"] == stats["total"] and sum(stats["reasons"].values()) == 7
    assert (stats["mode"], stats["model"], stats["cost"]) == ("translate", MODEL, res.cost)
    assert stats["reasons"]["llm_error"] == 2

    # A rerun: everything that succeeded comes from the cache, only the failed requests go again; same files.
    first = files(out, "veles")
    fake.reset()
    with client_for(fake, tmp_path) as client:
        again = translate_examples(
            VELES, client, out, mode="translate", name="veles", price_in=2.0, price_out=8.0
        )
    assert fake.requests == {"What is garbage?": 1, "Why is the sky blue?": 2}
    assert files(out, "veles") == first
    assert (again.cost["prompt_tokens"], again.cost["usd"]) == (0, 0.0)
    assert again.cost["all_items"] == res.cost["all_items"]

    # The output reads back as `messages` records.
    back, bad = read_examples(res.data)
    assert bad == [] and [e.messages for e in back] == [r["messages"] for r in read_jsonl(res.data)]


def test_generate_mode_translates_prompts_and_asks_for_replies(fake, tmp_path):
    out = tmp_path / "ruflan"
    with client_for(fake, tmp_path) as client:
        res = translate_examples(FLAN, client, out, mode="generate", name="ruflan")
    assert (res.total, res.kept, res.rejected) == (7, 3, 4)
    kept = {r["id"]: r for r in read_jsonl(res.data)}
    rejected = {r["id"]: r for r in read_jsonl(res.rejected_file)}
    assert {k: r["reason"] for k, r in rejected.items()} == FLAN_REJECTS
    assert kept["flan:0"]["messages"] == [
        {"role": "user", "content": "Назови три основных цвета."},
        {"role": "assistant", "content": "Красный, жёлтый и синий."},
    ]
    assert (
        kept["flan:1"]["messages"][0]["content"]
        == "Объясни, что делает `print('hi')`:\n\n```python\nprint('hi')\n```"
    )
    assert kept["flan:4"]["messages"][1]["content"] == "4"  # a reply without prose passes
    assert kept["flan:0"]["orig_messages"] == FLAN[0].messages
    assert rejected["flan:2"]["raw"] == "Yes, water is wet." and rejected["flan:2"]["message"] == 2
    assert rejected["flan:6"]["detail"].startswith("the answer stopped")

    # The English replies are never sent; a reply is asked for only when the prompt's translation passed, in the
    # target language, with the example's own (translated) system message kept first.
    assert not any(e.messages[-1]["content"] in fake.requests for e in FLAN)
    assert "Describe the Moon." in fake.requests and res.requests == {"translations": 8, "generations": 6}
    gen = {
        b["messages"][-1]["content"]: b
        for b in fake.bodies
        if not b["messages"][0]["content"].startswith("You are")
    }
    assert set(gen) == set(REPLIES)
    assert gen["Вода мокрая?"]["messages"][0]["content"].startswith(
        "Отвечай кратко.\n\nAlways reply in Russian"
    )
    assert gen["Назови три основных цвета."]["messages"][0] == {
        "role": "system", "content": "Always reply in Russian, whatever language the request is in; keep code, "
        "formulas and identifiers as they are."
    }  # fmt: skip
    assert all(b["max_tokens"] == 4096 and b["temperature"] == 0 for b in gen.values())
    stats = json.loads(res.stats_file.read_text(encoding="utf-8"))
    assert (stats["mode"], stats["kept"] + stats["rejected"], stats["total"]) == ("generate", 7, 7)


def test_rerun_of_a_finished_set_sends_nothing_and_gives_the_same_files(fake, tmp_path):
    out = tmp_path / "small"
    with client_for(fake, tmp_path) as client:
        first = translate_examples(FLAN[:2] + FLAN[4:5], client, out, mode="generate", name="small")
    assert first.kept == first.total == 3
    before = files(out, "small")
    fake.reset()
    with client_for(fake, tmp_path) as client:
        again = translate_examples(FLAN[:2] + FLAN[4:5], client, out, mode="generate", name="small")
        assert client.stats.cache_hits == 6
    assert fake.requests == {} and again.cost["requests"] == 0
    assert files(out, "small") == before


def test_bad_examples_and_reader_rejections_are_counted(fake, tmp_path):
    no_reply = ex(0, ("user", "What is the capital of France?"))
    unreadable = [Rejected("hermes", "hermes:7", "hermes.jsonl:8", "bad_record", "not JSON", "{oops")]
    with client_for(fake, tmp_path) as client:
        res = translate_examples(
            [no_reply, VELES[0]], client, tmp_path / "o", name="o", unreadable=unreadable
        )
    assert (res.total, res.kept, res.rejected) == (3, 1, 2)
    rows = read_jsonl(res.rejected_file)
    assert [r["reason"] for r in rows] == ["bad_record", "bad_example"]
    assert rows[0]["stage"] == "read" and rows[0]["record"] == "{oops"
    assert rows[1]["detail"].startswith("no_assistant")
    assert json.loads(res.stats_file.read_text())["unreadable"] == 1


def test_every_request_failing_raises_and_writes_nothing(fake, tmp_path):
    out = tmp_path / "o"
    with (
        client_for(fake, tmp_path, model="no-such-model") as client,
        pytest.raises(LLMError, match="every translation"),
    ):
        translate_examples(VELES[:2], client, out, name="o")
    assert not out.exists()


def test_cli_reads_inputs_and_prints_a_summary(fake, tmp_path, capsys):
    src = tmp_path / "alpaca.jsonl"
    rows = [
        {"instruction": "What is the capital of France?", "output": "The capital of France is Paris."},
        {"instruction": "Say hello.", "output": "Hello there, my friend!"},
        {"instruction": "no output"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_translate_arguments(parser)
    args = parser.parse_args(
        [str(src), "--out", str(tmp_path / "cli"), "--base-url", fake.base_url, "--model", MODEL, "--concurrency", "2",
         "--price-in", "1", "--price-out", "1"]
    )  # fmt: skip
    assert args.mode == "translate" and args.func(args) == 0
    printed = capsys.readouterr().out
    assert "kept 1 of 3, rejected 2" in printed and "$" in printed
    assert str(tmp_path / "cli" / "alpaca_ru.jsonl") in printed
    stats = json.loads((tmp_path / "cli" / "stats.json").read_text())
    assert stats["sources"] == [str(src)] and stats["unreadable"] == 1


# -- the pure parts --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        CODE_REPLY,
        "Run ``a `b` c`` and `x`, see (https://en.wikipedia.org/wiki/Foo_(bar)), www.example.com.",
        "Unclosed fence:\n```python\nprint(1)\n",
        "Already ⟦0⟧ and ⟦ 1 ⟧ here, `c`.",
        "~~~\ncode\n~~~ then **https://x.org/a**!",
    ],
)
def test_protect_restores_byte_for_byte(text):
    prot = protect(text)
    assert restore(prot.text, prot.spans) == text
    assert placeholder_problem(prot.text, len(prot.spans)) is None
    assert "`" not in prot.text and "http" not in prot.text


def test_protect_keeps_sentence_punctuation_outside_urls():
    prot = protect("See https://x.org/a. Or (https://y.org/b), `z`!")
    assert prot.spans == ("https://x.org/a", "https://y.org/b", "`z`")
    assert prot.text == "See ⟦0⟧. Or (⟦1⟧), ⟦2⟧!"


def test_placeholder_and_markup_checks():
    assert placeholder_problem("⟦1⟧ и ⟦ 0 ⟧", 2) is None  # spaces inside a placeholder are forgiven
    assert placeholder_problem("⟦0⟧ ⟦0⟧ ⟦3⟧", 2) == "missing ⟦1⟧; duplicated ⟦0⟧; unknown ⟦3⟧"
    assert markup_problem("# Title\n- a\n- b", "# Заголовок\n- а\n- б") is None
    assert (
        markup_problem("# Title\n1. a\n2. b", "Заголовок\n1. а и б") == "list items 2 -> 1; headings 1 -> 0"
    )
    assert markup_problem("| a | b |\n|---|---|", "| а | б |") == "table rows 2 -> 1"
    assert markup_problem("Code:\n⟦0⟧\nDone.", "Код: ⟦0⟧ Готово.") == "⟦0⟧ no longer on a line of its own"
    assert markup_problem("Text.", "```\nТекст.\n```") == "a code fence appeared"


def test_language_check_ignores_code_urls_and_acronyms():
    def problem(text: str, source: str | None = "x") -> str | None:
        return language_problem(text, source, CYRILLIC, 0.8)

    assert problem("Вызовите `print_value(x)` и откройте https://example.com/path/to/docs.") is None
    assert problem("Используйте:\n```python\nfor item in items:\n    print(item)\n```") is None
    assert problem("Протокол HTTP и API") is None
    assert problem("The capital is Paris.") is not None
    assert problem("NaCl", source="NaCl") is None  # unchanged formula
    assert problem("4", source="What is 2+2?") == "no prose letters came back"
    assert problem("4", source=None) is None
    assert not needs_translation(CODE_ONLY) and not needs_translation("`x` = 2 + 2, https://a.b")
    assert needs_translation("Hi `x`")
