"""The quality judge against real `vikhr serve` processes on loopback (no mocks).

A tiny random model can never answer in the rubric's JSON, so every item must end as a `JudgeFailure` after all
its tries, each try a real request; the real SmolLM2-135M-Instruct is small but follows the few-shot format.
"""

from __future__ import annotations

import random
import socket

import pytest

from vikhr.config import LLMConfig, QualityConfig
from vikhr.corpus.quality import (
    JudgeFailure,
    Judgement,
    QualityDataError,
    annotate_and_train,
    judge,
    judge_summary,
    read_annotations,
)
from vikhr.llm import LLMClient, LLMUnreachableError
from vikhr.log import get_logger
from vikhr.paths import BUNDLED_DATA

log = get_logger(__name__)
ENV = ("VIKHR_LLM_BASE_URL", "OPENAI_BASE_URL", "VIKHR_LLM_MODEL", "VIKHR_LLM_API_KEY", "OPENAI_API_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def client_for(base_url: str, model: str, tmp_path, **kw) -> LLMClient:
    kw = {"backoff_s": 0.01, "max_backoff_s": 0.1, **kw}
    return LLMClient(LLMConfig(base_url=base_url, model=model, **kw), cache_dir=tmp_path / "llm-cache")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chekhov(n: int, max_len: int = 260) -> list[str]:
    text = (BUNDLED_DATA / "ru" / "chekhov" / "Ванька.txt").read_text(encoding="utf-8")
    return [line for line in text.split("\n") if 120 <= len(line) <= max_len][:n]


def junk(n: int) -> list[str]:
    rng = random.Random(0)
    src = chekhov(1)[0]
    out = [
        "".join(rng.sample(src, len(src))),
        "Все права защищены © 2024. Политика конфиденциальности | Условия | Карта сайта | Подписаться >>>",
        "ааа ааа ааа ааа ааа ааа ааа ааа ааа ааа ааа ааа",
    ]
    return out[:n]


@pytest.mark.slow
def test_gibberish_judge_ends_in_failures_after_every_try(tiny_server, tmp_path):
    items = [f"Короткий абзац номер {i}: мальчик писал письмо дедушке." for i in range(4)]
    items.append("слово " * 4000)  # longer than the tiny model's context: a 400, not retried
    client = client_for(tiny_server.base_url, "tiny", tmp_path, max_concurrency=4)
    kw = dict(attempts=3, temperature=0, max_tokens=24, max_chars=0, show_progress=False)
    res = judge(items, client, **kw)
    assert len(res) == len(items)  # nothing lost
    assert all(isinstance(r, JudgeFailure) for r in res)
    assert all(r.attempts == 3 and r.reason and "request failed" not in r.reason for r in res[:4])
    assert res[4].attempts == 1 and "request failed" in res[4].reason and "context" in res[4].reason
    st = client.stats
    assert (
        st.calls == 13 and st.requests == 13 and st.cache_hits == 0 and st.failures == 1
    )  # retries were sent
    s = judge_summary(res)
    assert (s["parsed"], s["failed"], s["retried"], s["requests"]) == (0, 5, 4, 13)
    # the same batch again is answered from the cache, try for try: each retry was a request of its own
    again = judge(items, client, **kw)
    assert client.stats.cache_hits == 12 and client.stats.requests == 14  # only the refused one is sent again
    assert [(r.reason, r.raw) for r in again] == [(r.reason, r.raw) for r in res]
    # the whole pipeline keeps every failure and says why it cannot train
    with pytest.raises(QualityDataError, match=r"0 items good and 0 bad \(4 failed\)"):
        annotate_and_train(
            [(str(i), t) for i, t in enumerate(items[:4])], client, tmp_path / "q", QualityConfig(), attempts=3,
            max_chars=200,
        )  # fmt: skip
    rows = read_annotations(tmp_path / "q" / "annotations.jsonl")
    assert len(rows) == 4 and all(r["label"] is None and r["failure"] and r["attempts"] == 3 for r in rows)
    client.close()


@pytest.mark.slow
def test_real_smollm2_judge(tmp_path):
    from vikhr.serve.launch import start_server

    items = chekhov(3) + junk(3)
    assert len(items) == 6
    with start_server("smollm2-135m-instruct", "--served-model-name", "judge", timeout=300) as srv:
        client = client_for(srv.base_url, "judge", tmp_path, max_concurrency=2, timeout_s=600, max_retries=1)
        res = judge(items, client, attempts=3, temperature=0, show_progress=False)
        client.close()
    s = judge_summary(res)
    log.warning(
        "SmolLM2-135M judge: %d/%d parsed (%d after a retry), %d requests; scores: %s",
        s["parsed"], s["items"], s["retried_parsed"], s["requests"],
        [r.scores if isinstance(r, Judgement) else r.reason for r in res],
    )  # fmt: skip
    assert s["parsed"] + s["failed"] == len(items) == len(res)
    assert s["parsed"] >= 1, [r.raw for r in res]
    assert all(1 <= v <= 5 for r in res if isinstance(r, Judgement) for v in r.scores.values())


def test_unreachable_endpoint_fails_fast_and_loudly(tmp_path):
    port = closed_port()
    client = client_for(f"http://127.0.0.1:{port}/v1", "judge", tmp_path, max_retries=1)
    with pytest.raises(LLMUnreachableError, match=rf"127.0.0.1:{port}.*2 tries"):
        judge(["Текст."] * 3, client, attempts=3, show_progress=False)
    # fast: the judge's own re-asks (`attempts`) are not spent on an unreachable endpoint, only the transport's
    # 1 + max_retries tries per item in flight (benchmarks/quality_bench.py measures the seconds)
    assert client.stats.requests <= 3 * 2
    with pytest.raises(LLMUnreachableError):
        annotate_and_train([("a", "Текст.")], client, tmp_path / "q", QualityConfig())
    assert client.stats.requests <= 3 * 2 + 2
    assert not (tmp_path / "q" / "annotations.jsonl").exists()
    client.close()
