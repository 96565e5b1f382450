"""`vikhr eval translate`: an English multiple-choice set becomes a Russian lm-eval task through `LLMClient`.

A fake OpenAI-compatible translator runs in a thread on loopback and answers each item deterministically: a good
Russian translation for most, and for chosen items a dropped option, English left in the question, an English
option, garbage, a persistent 500. Its usage numbers and a per-item request counter let the tests check the cost
accounting and that a rerun asks only for what is missing.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from vikhr.config import LLMConfig
from vikhr.corpus.readers import InputError
from vikhr.eval.translate import (
    add_translate_arguments,
    check_translation,
    option_in_target,
    parse_translation,
    read_mc_items,
    script_share,
    translate_mc,
)
from vikhr.llm import LLMClient, LLMError, LLMUnreachableError
from vikhr.scripts import CYRILLIC

MODEL = "fake-translator"
ENV = ("VIKHR_LLM_BASE_URL", "OPENAI_BASE_URL", "VIKHR_LLM_MODEL", "VIKHR_LLM_API_KEY", "OPENAI_API_KEY")

# English item -> (behaviour, Russian translation). Behaviours: ok, fenced (prose + ```json fence around a good
# answer), drop_option, english_question, english_option, garbage, error500.
ITEMS = [
    ("q0", "What is the capital of France?", ["Paris", "London", "Berlin", "Madrid"], "A", "ok",
     "Какова столица Франции?", ["Париж", "Лондон", "Берлин", "Мадрид"]),
    ("q1", "What is 2 + 2?", ["3", "4", "5", "22"], "B", "ok",
     "Сколько будет 2 + 2?", ["3", "4", "5", "22"]),
    ("q2", "Which formula is that of table salt?", ["NaCl", "H2O", "CO2", "$\\frac{1}{2}$ mol"], "A", "ok",
     "Какова формула поваренной соли?", ["NaCl", "H2O", "CO2", "$\\frac{1}{2}$ mol"]),
    ("q3", "Which of these is a mammal?", ["Shark", "Whale", "Trout", "Eel"], "B", "drop_option",
     "Кто из них млекопитающее?", ["Акула", "Кит", "Форель", "Угорь"]),
    ("q4", "Which planet is the largest?", ["Mars", "Jupiter", "Venus", "Mercury"], "B", "english_question",
     "Какая планета самая большая?", ["Марс", "Юпитер", "Венера", "Меркурий"]),
    ("q5", "Which statements are true?", ["I only", "II only", "I and II", "None of the above"], "C",
     "english_option", "Какие утверждения верны?", ["Только I", "Только II", "I и II", "Ничего из перечисленного"]),
    ("q6", "Who wrote War and Peace?", ["Tolstoy", "Pushkin", "Chekhov", "Gogol"], "A", "garbage",
     "Кто написал «Войну и мир»?", ["Толстой", "Пушкин", "Чехов", "Гоголь"]),
    ("q7", "What colour is the sky?", ["Blue", "Green", "Red", "Black"], "A", "error500",
     "Какого цвета небо?", ["Синего", "Зелёного", "Красного", "Чёрного"]),
    ("q8", "How many legs does a spider have?", ["Six", "Eight", "Ten", "Four", "Twelve"], "B", "fenced",
     "Сколько ног у паука?", ["Шесть", "Восемь", "Десять", "Четыре", "Двенадцать"]),
    ("q9", "Which gas do plants absorb?", ["Oxygen", "Nitrogen", "Helium", "Carbon dioxide"], "D", "ok",
     "Какой газ поглощают растения?", ["Кислород", "Азот", "Гелий", "Углекислый газ"]),
]  # fmt: skip
EXPECTED_REJECTS = {
    "q3": "option_count_changed",
    "q4": "question_not_in_target_language",
    "q5": "option_not_in_target_language",
    "q6": "unparseable",
    "q7": "llm_error",
}


class FakeTranslator:
    """A loopback OpenAI-compatible server: POST /v1/chat/completions answers by the item's behaviour."""

    def __init__(self) -> None:
        self.by_question = {it[1]: it for it in ITEMS}
        self.behaviour = {it[1]: it[4] for it in ITEMS}
        self.requests: dict[str, int] = {}
        self.usages: list[dict] = []
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                fake.send(self, 200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                fake.answer(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        src = json.loads(body["messages"][-1]["content"])
        q = src["question"]
        with self.lock:
            self.requests[q] = self.requests.get(q, 0) + 1
            self.bodies.append(body)
        if body.get("model") != MODEL:
            return self.send(h, 404, {"error": {"message": f"model {body.get('model')} not found"}})
        _, q_en, opts_en, _, how, q_ru, opts_ru = self.by_question[q]
        how = self.behaviour[q]
        if how == "error500":
            return self.send(h, 500, {"error": {"message": "translator crashed", "type": "server_error"}})
        if how == "drop_option":
            opts_ru = opts_ru[:-1]
        elif how == "english_question":
            q_ru = q_en
        elif how == "english_option":
            opts_ru = [*opts_ru[:-1], opts_en[-1]]
        text = json.dumps({"question": q_ru, "options": opts_ru}, ensure_ascii=False)
        if how == "garbage":
            text = "Sorry, I cannot translate this right now."
        elif how == "fenced":
            text = f"Here is the translation:\n```json\n{text}\n```\nDone."
        usage = {"prompt_tokens": len(body["messages"][-1]["content"]), "completion_tokens": len(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        with self.lock:
            self.usages.append(usage)
        self.send(
            h,
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": MODEL,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": usage,
            },
        )

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, obj: dict) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.usages.clear()

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
    f = FakeTranslator()
    yield f
    f.close()


def client_for(base_url: str, tmp_path: Path, **kw) -> LLMClient:
    cfg = LLMConfig(base_url=base_url, model=MODEL, max_retries=1, backoff_s=0.0, max_backoff_s=0.0, **kw)
    return LLMClient(cfg, cache_dir=tmp_path / "llm-cache")


def write_mmlu_pro(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for qid, q, opts, letter, *_ in ITEMS:
            row = {
                "question_id": qid, "question": q, "options": opts, "answer": letter,
                "answer_index": "ABCDEFGHIJ".index(letter), "category": "demo",
            }  # fmt: skip
            f.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def task_files(out: Path, name: str) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in (f"{name}.jsonl", f"{name}.yaml", "rejected.jsonl")}


# -- the whole run ---------------------------------------------------------------------------------------------


def test_translate_keeps_good_items_rejects_bad_ones_and_resumes_from_cache(fake, tmp_path):
    src = write_mmlu_pro(tmp_path / "mmlu_pro.jsonl")
    items = read_mc_items(src)
    out = tmp_path / "task"
    with client_for(fake.base_url, tmp_path) as client:
        res = translate_mc(
            client, items, out, name="mmlu_pro_ru", price_in=2.0, price_out=8.0, source=src
        )  # fmt: skip
    assert (res.total, res.kept, res.rejected) == (10, 5, 5)
    assert res.kept + res.rejected == res.total

    kept = {r["id"]: r for r in read_jsonl(res.data)}
    rejected = {r["id"]: r for r in read_jsonl(res.rejected_file)}
    assert set(kept) == {"q0", "q1", "q2", "q8", "q9"}
    assert {k: r["reason"] for k, r in rejected.items()} == EXPECTED_REJECTS
    assert "option 4 (D)" in rejected["q5"]["detail"]
    assert rejected["q6"]["raw"] == "Sorry, I cannot translate this right now."  # the raw answer is kept
    assert rejected["q7"]["detail"].startswith("llm_error: ") and "500" in rejected["q7"]["detail"]
    assert rejected["q3"]["options_en"] == ITEMS[3][2]

    # The answer key stays with its option; Russian text, English originals, id and category are kept.
    by_id = {it[0]: it for it in ITEMS}
    for qid, row in kept.items():
        _, q_en, opts_en, letter, _, q_ru, opts_ru = by_id[qid]
        assert row["answer"] == letter and row["answer_index"] == "ABCDEFGHIJ".index(letter)
        assert row["options"][row["answer_index"]] == opts_ru[row["answer_index"]]
        assert (row["question"], row["options"]) == (q_ru, opts_ru)
        assert (row["question_en"], row["options_en"], row["category"]) == (q_en, opts_en, "demo")
    assert kept["q8"]["answer"] == "B" and len(kept["q8"]["options"]) == 5  # parsed out of a fence
    assert kept["q2"]["options"] == ["NaCl", "H2O", "CO2", "$\\frac{1}{2}$ mol"]  # formulas pass unchanged
    assert kept["q1"]["options"] == ["3", "4", "5", "22"]  # numbers pass

    # Requests: one per item at temperature 0; the persistent 500 was tried 1 + max_retries times.
    assert all(b["temperature"] == 0 and b["model"] == MODEL for b in fake.bodies)
    assert fake.requests[ITEMS[7][1]] == 2
    assert sum(fake.requests.values()) == len(ITEMS) + 1

    # Cost: the usage the server reported, and USD from the prices per 1M tokens.
    p = sum(u["prompt_tokens"] for u in fake.usages)
    c = sum(u["completion_tokens"] for u in fake.usages)
    assert (res.cost["prompt_tokens"], res.cost["completion_tokens"], res.cost["cached_tokens"]) == (p, c, 0)
    assert res.cost["requests"] == len(ITEMS) + 1
    assert res.cost["usd"] == pytest.approx((2.0 * p + 8.0 * c) / 1e6)
    assert res.cost["all_items"] == {"prompt_tokens": p, "completion_tokens": c, "usd": res.cost["usd"]}

    stats = json.loads(res.stats_file.read_text(encoding="utf-8"))
    assert (stats["total"], stats["kept"], stats["rejected"]) == (10, 5, 5)
    assert sum(stats["reasons"].values()) == 5 and stats["reasons"]["llm_error"] == 1
    assert (stats["model"], stats["base_url"], stats["cost"]) == (MODEL, fake.base_url, res.cost)
    assert stats["llm"]["requests"] == len(ITEMS) + 1

    # The lm-eval task.
    task = yaml.safe_load(res.yaml.read_text(encoding="utf-8"))
    assert task["task"] == "mmlu_pro_ru"
    assert task["dataset_path"] == "json"
    assert task["dataset_kwargs"] == {"data_files": {"test": "mmlu_pro_ru.jsonl"}}
    assert (out / task["dataset_kwargs"]["data_files"]["test"]) == res.data
    assert (task["test_split"], task["output_type"]) == ("test", "multiple_choice")
    assert task["doc_to_text"] == "Вопрос: {{question.strip()}}\nОтвет:"
    assert (task["doc_to_choice"], task["doc_to_target"], task["target_delimiter"]) == (
        "options", "answer_index", " "
    )  # fmt: skip
    assert [m["metric"] for m in task["metric_list"]] == ["acc", "acc_norm", "acc_bytes"]
    assert all(m["aggregation"] == "mean" and m["higher_is_better"] is True for m in task["metric_list"])
    assert task["metadata"] == {"version": 1.0, "source": str(src), "translated_by": MODEL}
    assert "Вопрос" in res.yaml.read_text(encoding="utf-8")  # allow_unicode: readable, not escaped

    # A rerun: finished items come from the cache; only the failed item is asked again; same files.
    first = task_files(out, "mmlu_pro_ru")
    fake.reset_counts()
    with client_for(fake.base_url, tmp_path) as client:
        again = translate_mc(client, items, out, name="mmlu_pro_ru", price_in=2.0, price_out=8.0, source=src)
        assert client.stats.cache_hits == len(ITEMS) - 1
    assert fake.requests == {ITEMS[7][1]: 2}
    assert task_files(out, "mmlu_pro_ru") == first
    assert (again.cost["prompt_tokens"], again.cost["completion_tokens"]) == (0, 0)
    assert again.cost["cached_tokens"] == p + c and again.cost["usd"] == 0.0
    assert again.cost["all_items"] == res.cost["all_items"]

    # Once the endpoint works for that item, a third run sends its one request and keeps it.
    fake.behaviour[ITEMS[7][1]] = "ok"
    fake.reset_counts()
    with client_for(fake.base_url, tmp_path) as client:
        third = translate_mc(client, items, out, name="mmlu_pro_ru", source=src)
    assert fake.requests == {ITEMS[7][1]: 1}
    assert (third.kept, third.rejected) == (6, 4)
    assert third.cost["usd"] is None  # no prices given


def test_limit_translates_the_first_items_with_the_same_requests(fake, tmp_path):
    items = read_mc_items(write_mmlu_pro(tmp_path / "set.jsonl"))
    with client_for(fake.base_url, tmp_path) as client:
        res = translate_mc(client, items, tmp_path / "small", name="small", limit=3)
    assert (res.total, res.kept) == (3, 3)
    fake.reset_counts()
    with client_for(fake.base_url, tmp_path) as client:  # the full set reuses the cached first three
        translate_mc(client, items, tmp_path / "full", name="full")
    assert all(fake.requests.get(it[1], 0) == 0 for it in ITEMS[:3])


def test_unreachable_endpoint_raises_and_writes_nothing(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    items = read_mc_items(write_mmlu_pro(tmp_path / "set.jsonl"))
    out = tmp_path / "task"
    with client_for(f"http://127.0.0.1:{port}/v1", tmp_path) as client, pytest.raises(LLMUnreachableError):
        translate_mc(client, items, out, name="t")
    assert not out.exists()


def test_every_request_failing_raises_and_writes_nothing(fake, tmp_path):
    items = read_mc_items(write_mmlu_pro(tmp_path / "set.jsonl"))
    out = tmp_path / "task"
    cfg = LLMConfig(base_url=fake.base_url, model="no-such-model", max_retries=0)
    with (
        LLMClient(cfg, cache_dir=tmp_path / "c") as client,
        pytest.raises(LLMError, match="every translation"),
    ):
        translate_mc(client, items, out, name="t")
    assert not out.exists()


def test_out_dir_with_other_files_is_refused_before_any_request(fake, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    items = read_mc_items(write_mmlu_pro(tmp_path / "set.jsonl"))
    with client_for(fake.base_url, tmp_path) as client, pytest.raises(ValueError, match="notes.txt"):
        translate_mc(client, items, out, name="t")
    assert fake.requests == {} and (out / "notes.txt").read_text() == "keep me"


def test_cli_function_prints_summary_and_yaml_path(fake, tmp_path, capsys):
    src = write_mmlu_pro(tmp_path / "mmlu_pro.jsonl")
    parser = argparse.ArgumentParser()
    add_translate_arguments(parser)
    args = parser.parse_args(
        [str(src), "--out", str(tmp_path / "cli"), "--base-url", fake.base_url, "--model", MODEL,
         "--concurrency", "2", "--limit", "4", "--price-in", "1", "--price-out", "1"]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "kept 3 of 4, rejected 1 (option_count_changed 1)" in out
    assert str(tmp_path / "cli" / "mmlu_pro_ru.yaml") in out and "$" in out
    assert yaml.safe_load((tmp_path / "cli" / "mmlu_pro_ru.yaml").read_text())["task"] == "mmlu_pro_ru"


# -- reading the English set -----------------------------------------------------------------------------------


def test_read_mmlu_form_json_list_and_parquet(tmp_path):
    rows = [
        {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1},
        {"question": "Sky?", "subject": "nature", "choices": ["blue", "red"], "answer": 0},
    ]
    jl = tmp_path / "mmlu.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    items = read_mc_items(jl)
    assert [(i["id"], i["category"], i["options"], i["answer"], i["answer_index"]) for i in items] == [
        (0, "math", ["3", "4", "5", "6"], "B", 1),
        (1, "nature", ["blue", "red"], "A", 0),
    ]
    js = tmp_path / "mmlu.json"
    js.write_text(json.dumps(rows), encoding="utf-8")
    assert read_mc_items(js) == items
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mmlu.parquet")
    assert read_mc_items(tmp_path / "mmlu.parquet") == items


def test_read_custom_field_names(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"q": "Why?", "alts": ["a", "b", "c"], "gold": "c"}) + "\n", encoding="utf-8")
    (item,) = read_mc_items(p, question="q", options="alts", answer="gold")
    assert (item["question"], item["options"], item["answer"], item["answer_index"]) == (
        "Why?", ["a", "b", "c"], "C", 2
    )  # fmt: skip


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"bad\.jsonl:2: not a JSON object"),
        ('{"question": "Q", "options": ["a", "b"], "answer": "C"}', r"bad\.jsonl:2: 'answer' is 'C', not one"),
        ('{"question": "Q", "options": ["a", "b"], "answer": 5}', r"bad\.jsonl:2: 'answer' is 5"),
        ('{"question": "Q", "options": ["a", "b"], "answer": "yes"}', r"bad\.jsonl:2: .*expected an option"),
        ('{"question": "Q", "options": ["a", "b"], "answer": "A", "answer_index": 1}', r"bad\.jsonl:2: .*answer_index"),
        ('{"question": "Q", "options": ["a"], "answer": 0}', r"bad\.jsonl:2: 'options' must be a list"),
        ('{"question": "", "options": ["a", "b"], "answer": 0}', r"bad\.jsonl:2: 'question' must be"),
        ('{"options": ["a", "b"], "answer": 0}', r"bad\.jsonl:2: no field 'question'"),
        ("[1, 2]", r"bad\.jsonl:2: expected a JSON object"),
    ],
)  # fmt: skip
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    p = tmp_path / "bad.jsonl"
    good = json.dumps({"question": "Q", "options": ["a", "b"], "answer": "A"})
    p.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_mc_items(p)


def test_bad_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="no items"):
        read_mc_items(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"latin1\.jsonl:1: not UTF-8"):
        read_mc_items(tmp_path / "latin1.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported format"):
        read_mc_items(tmp_path / "x.csv")
    with pytest.raises(InputError, match="no such file"):
        read_mc_items(tmp_path / "missing.jsonl")


# -- parsing and checking one answer ---------------------------------------------------------------------------


def test_parse_translation_is_lenient_about_wrapping_and_strict_about_content():
    good = {"question": "Вопрос?", "options": ["а", "б"]}
    plain = json.dumps(good, ensure_ascii=False)
    assert parse_translation(plain) == ("Вопрос?", ["а", "б"])
    assert parse_translation(f"```json\n{plain}\n```") == ("Вопрос?", ["а", "б"])
    assert parse_translation(f"Sure! Here it is: {plain} Hope it helps {{x}}") == ("Вопрос?", ["а", "б"])
    assert parse_translation('{"question": "В {x}?", "options": [1, "б"]}') == ("В {x}?", ["1", "б"])
    for bad in ("", "no json here", '{"question": "В"}', '{"question": 1, "options": []}', '```json\n{"q'):
        with pytest.raises(ValueError):
            parse_translation(bad)


def test_script_share_counts_prose_letters():
    assert script_share("Какова столица Франции?", CYRILLIC) == 1.0
    assert script_share("What is the capital of France?", CYRILLIC) == 0.0
    assert script_share("42 + 7", CYRILLIC) is None
    assert script_share("Только I и II", CYRILLIC) == 1.0  # Roman numerals are not prose
    assert script_share("Найдите $\\frac{x}{2}$ при x = 3", CYRILLIC) == 1.0  # math and variables neither
    assert script_share("Ответ: the answer", CYRILLIC) == pytest.approx(5 / 14)


def test_option_rule():
    def ok(src: str, opt: str) -> bool:
        return option_in_target(src, opt, CYRILLIC, 0.8)

    assert ok("Paris", "Париж")
    assert ok("42 kg", "42 kg") and ok("3.14", "3.14")  # no prose letters / formula kept
    assert ok("NaCl", "NaCl") and ok("DNA", "DNA") and ok("$\\sqrt{2}$", "$\\sqrt{2}$")
    assert not ok("Paris", "Paris")  # identical, but an English word of 4+ lowercase letters
    assert not ok("None of the above", "None of the above")
    assert not ok("NaCl and KCl", "NaCl and KCl stuff")  # not identical, mostly Latin
    assert not ok("Blue or red", "Синий or red")  # half translated: share 0.5 < 0.8
    assert option_in_target("Blue or red", "Синий or red", CYRILLIC, 0.5)


def test_check_translation_reasons():
    src_q, src_o = "Which?", ["One", "Two", "Three"]
    ru_q, ru_o = "Который?", ["Один", "Два", "Три"]
    assert check_translation(src_q, src_o, ru_q, ru_o, CYRILLIC) == []
    first = [p[0] for p in check_translation(src_q, src_o, ru_q, ru_o[:2], CYRILLIC)]
    assert first == ["option_count_changed"]
    assert check_translation(src_q, src_o, "  ", ru_o, CYRILLIC)[0][0] == "empty_question"
    for q in ("Which?", "Который: which one"):  # English, half English (share 7/15)
        assert check_translation(src_q, src_o, q, ru_o, CYRILLIC)[0][0] == "question_not_in_target_language"
    assert check_translation(src_q, src_o, "Который: which one", ru_o, CYRILLIC, min_share=0.45) == []
    assert check_translation(src_q, src_o, ru_q, ["Один", "", "Три"], CYRILLIC)[0] == (
        "empty_option", "option 2 (B) is empty"
    )  # fmt: skip
    assert (
        check_translation(src_q, src_o, ru_q, ["Один", "Один", "Три"], CYRILLIC)[0][0] == "duplicate_options"
    )
    problems = check_translation(src_q, src_o, ru_q, ["Один", "Два", "Three"], CYRILLIC)
    assert problems[0][0] == "option_not_in_target_language" and "option 3 (C)" in problems[0][1]
