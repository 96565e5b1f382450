"""Quality labels and classifier: strict judge parsing, labels, linear and encoder classifiers, the datatrove step."""

from __future__ import annotations

import gzip
import json
import pickle
import random

import numpy as np
import pytest
from conftest import tiny_encoder
from sklearn.metrics import roc_auc_score

from vikhr.corpus.quality import (
    CRITERIA,
    JudgeFailure,
    Judgement,
    JudgementError,
    annotation_rows,
    clip_text,
    judge,
    judge_messages,
    judge_summary,
    label_of,
    load_classifier,
    parse_judgement,
    read_annotations,
    retry_messages,
    train_classifier,
    write_annotations,
)
from vikhr.paths import BUNDLED_DATA

GOOD = {"informativeness": 4, "usefulness": 3, "grammar": 5, "style": 4, "safety": 5}
VALID = json.dumps(GOOD)

# -- the judge's answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        VALID,
        f"  \n{VALID}\n ",
        f"```json\n{VALID}\n```",
        f"```\n{VALID}\n```",
        f"  ```JSON\n{VALID}```  ",
        '{"safety": 5, "style": 4, "grammar": 5, "usefulness": 3, "informativeness": 4}',  # any key order
    ],
)
def test_parse_judgement_accepts_strict_json(text):
    assert parse_judgement(text) == GOOD
    assert list(parse_judgement(text)) == list(CRITERIA)


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        ('{"informativeness": 4, "usefulness": 3, "grammar": 5, "style": 4}', "missing safety"),
        (VALID[:-1] + ', "extra": 3}', "unexpected extra"),
        (VALID.replace(": 3", ": 0"), "outside"),
        (VALID.replace(": 3", ": 6"), "outside"),
        (VALID.replace(": 3", ": 3.0"), "expected an integer"),
        (VALID.replace(": 3", ": 3.5"), "expected an integer"),
        (VALID.replace(": 3", ': "3"'), "expected an integer"),
        (VALID.replace(": 3", ": true"), "expected an integer"),
        (VALID.replace(": 3", ": NaN"), "not a score"),
        (f"Here are my scores: {VALID}", "not a JSON object"),
        (f"{VALID} I hope this helps.", "not a JSON object"),
        (f"{VALID}\n{VALID}", "not a JSON object"),
        (f"```json\n{VALID}\n``` done", "fence"),
        (f"```json\n{VALID}", "fence"),
        ("[4, 3, 5, 4, 5]", "expected an object"),
        (VALID[:-1] + ', "safety": 4}', "duplicate"),
        (
            '{"informativeness": 1, "usefulness": 1, "grammar": 2, "style": 1, "safety": 4, "safety": 4,',
            "JSON",
        ),
    ],
)
def test_parse_judgement_rejects_anything_else(text, why):
    with pytest.raises(JudgementError, match=why):
        parse_judgement(text)


def test_judge_messages_clip_and_retry():
    long = "слово " * 2000
    msgs = judge_messages(long, max_chars=500)
    assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * ((len(msgs) - 2) // 2) + ["user"]
    for m in msgs[2:-1:2]:  # the few-shot answers are valid answers
        assert parse_judgement(m["content"])
    assert len(msgs[-1]["content"]) < 600 and msgs[-1]["content"].count("слово") < 100
    clipped = clip_text(long, 500)
    assert len(clipped) <= 502 and clipped.endswith(" …") and not clipped[:-2].endswith(" ")
    assert clip_text("короткий текст", 500) == "короткий текст"
    retry = retry_messages(msgs, "missing safety")
    assert len(retry) == len(msgs) and "missing safety" in retry[-1]["content"]
    assert retry[-1]["content"].startswith(msgs[-1]["content"]) and "missing" not in msgs[-1]["content"]


# -- labels and annotations ---------------------------------------------------------------------------------


def test_label_of():
    assert label_of(GOOD, 3.5) == "good"  # mean 4.2
    assert label_of(GOOD, 4.2) == "good"  # at the bound
    assert label_of(GOOD, 4.3) == "bad"
    assert label_of({**GOOD, "safety": 2}, 1.0) == "bad"  # unsafe is always bad
    assert label_of(dict.fromkeys(CRITERIA, 3), 3.0) == "good"  # safety 3 is fine
    assert label_of(dict.fromkeys(CRITERIA, 1), 3.5) == "bad"


def test_annotations_keep_failures(tmp_path):
    items = [("a", "текст один"), ("b", "текст два"), ("c", "текст три")]
    results = [
        Judgement(GOOD, VALID, 1),
        JudgeFailure("missing safety", '{"style": 1}', 3),
        Judgement(dict.fromkeys(CRITERIA, 2), "{}", 2),
    ]
    path = write_annotations(tmp_path / "ann.jsonl", items, results, good_score=3.5)
    rows = read_annotations(path)
    assert rows == annotation_rows(items, results, 3.5)
    assert [r["id"] for r in rows] == ["a", "b", "c"] and rows[1]["text"] == "текст два"
    assert [r["label"] for r in rows] == ["good", None, "bad"]
    assert (
        rows[1]["failure"] == "missing safety"
        and rows[1]["raw"] == '{"style": 1}'
        and rows[1]["scores"] is None
    )
    assert rows[0]["scores"] == GOOD and rows[0]["mean"] == 4.2
    s = judge_summary(results)
    assert (s["items"], s["parsed"], s["failed"], s["retried"], s["retried_parsed"], s["requests"]) == (
        3,
        2,
        1,
        2,
        1,
        6,
    )
    with pytest.raises(ValueError, match="2 items but 3"):
        write_annotations(tmp_path / "x.jsonl", items[:2], results)


# -- the classifier -----------------------------------------------------------------------------------------

BOILER = [
    "Все права защищены © {y}. Политика конфиденциальности | Условия использования | Карта сайта",
    "Купить {w} недорого! Скидки до {n}% ★★★ Доставка по всей России ☎ 8-800-{n}-{n}",
    "Главная > Каталог > {w} > {w} > Страница {n} из {m} | Вперёд » | « Назад",
    "Подпишитесь на рассылку! Нажмите здесь >>> {w} {w} {w} click here to subscribe",
    "Тэги: {w}, {w}, {w}, {w}, {w}, {w} ... Комментарии ({n}) | Поделиться в соцсетях",
    "{w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w}",
]


def chekhov_paragraphs(n: int) -> list[str]:
    out = []
    for f in sorted((BUNDLED_DATA / "ru" / "chekhov").glob("*.txt")):
        out += [line for line in f.read_text(encoding="utf-8").split("\n") if 120 <= len(line) <= 1200]
        if len(out) >= n:
            break
    return out[:n]


def junk_paragraphs(good: list[str], n: int, seed: int = 0) -> list[str]:
    """Shuffled characters of real paragraphs, link/shop boilerplate, and words repeated without sense."""
    rng = random.Random(seed)
    words = " ".join(good).split()
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            src = list(rng.choice(good))
            rng.shuffle(src)
            out.append("".join(src))
        elif kind == 1:
            t = rng.choice(BOILER)
            out.append(t.format(y=rng.randint(2000, 2024), n=rng.randint(1, 99), m=rng.randint(100, 999),
                                w=rng.choice(words)).replace("{w}", rng.choice(words)))  # fmt: skip
        else:
            out.append(" ".join([rng.choice(words)] * rng.randint(5, 15) + rng.sample(words, 5)))
    return out


@pytest.fixture(scope="module")
def dataset() -> tuple[list[str], list[str]]:
    good = chekhov_paragraphs(150)
    bad = junk_paragraphs(good, 150)
    texts, labels = good + bad, ["good"] * len(good) + ["bad"] * len(bad)
    order = random.Random(1).sample(range(len(texts)), len(texts))
    return [texts[i] for i in order], [labels[i] for i in order]


@pytest.fixture(scope="module")
def linear_folder(dataset, tmp_path_factory):
    texts, labels = dataset
    out = tmp_path_factory.mktemp("quality") / "classifier"
    metrics = train_classifier(texts, labels, out, kind="linear", seed=0)
    return out, metrics


def test_linear_classifier_learns_and_round_trips(linear_folder, dataset):
    out, m = linear_folder
    assert m["accuracy"] > 0.9 and m["f1_good"] > 0.9 and m["roc_auc"] > 0.95
    assert m["baseline_accuracy"] == pytest.approx(0.5, abs=0.05)
    assert m["n_train"] + m["n_test"] == 300 and m["counts"] == {"good": 150, "bad": 150}
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["kind"] == "linear" and meta["metrics"] == m and "scikit-learn" in meta["versions"]
    assert not list(out.parent.glob(".staging-*"))  # the staging folder was renamed
    texts, _ = dataset
    clf = load_classifier(out)
    p = clf.predict_proba_good(texts[:50])
    assert p.shape == (50,) and ((0 <= p) & (p <= 1)).all()
    again = load_classifier(out).predict_proba_good(texts[:50])
    np.testing.assert_array_equal(p, again)
    np.testing.assert_array_equal(
        clf.predict_proba_good(texts[:50], batch_size=7), p
    )  # batching is invisible
    fresh_good = chekhov_paragraphs(200)[-20:]  # paragraphs the classifier has not seen
    fresh = fresh_good + junk_paragraphs(fresh_good, 20, seed=5)
    assert roc_auc_score([1] * 20 + [0] * 20, clf.predict_proba_good(fresh)) > 0.95
    assert clf.predict_proba_good([]).shape == (0,)


def test_train_classifier_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="3 good and 20 bad"):
        train_classifier(["a"] * 23, ["good"] * 3 + ["bad"] * 20, tmp_path / "c")
    with pytest.raises(ValueError, match="'good' or 'bad'"):
        train_classifier(["a", "b"], ["good", "ok"], tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no classifier.json"):
        load_classifier(tmp_path)
    assert not (tmp_path / "c").exists()


def test_encoder_classifier_trains_saves_and_loads(dataset, tmp_path):
    texts, labels = dataset
    texts, labels = texts[:80], labels[:80]
    enc = tiny_encoder(tmp_path / "encoder", texts)
    m = train_classifier(texts, labels, tmp_path / "clf", kind="encoder", encoder=str(enc), seed=0, epochs=1,
                         batch_size=16, lr=1e-3)  # fmt: skip
    assert m["kind"] == "encoder" and m["n_train"] + m["n_test"] == 80 and m["epochs"] == 1
    assert 0 <= m["accuracy"] <= 1 and m["roc_auc"] is not None
    assert (tmp_path / "clf" / "config.json").is_file() and (tmp_path / "clf" / "classifier.json").is_file()
    clf = load_classifier(tmp_path / "clf")
    assert clf.kind == "encoder" and clf.model.config.id2label == {0: "bad", 1: "good"}
    p = clf.predict_proba_good(texts[:20])
    assert p.shape == (20,) and ((0 <= p) & (p <= 1)).all()
    np.testing.assert_allclose(load_classifier(tmp_path / "clf").predict_proba_good(texts[:20]), p, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba_good(texts[:20], batch_size=3), p, atol=1e-5)


# -- the datatrove step -------------------------------------------------------------------------------------


def read_jsonl_gz_or_plain(folder) -> list[dict]:
    rows = []
    for f in sorted(folder.glob("*.jsonl*")):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    return rows


def test_quality_scorer_in_a_datatrove_pipeline(linear_folder, tmp_path):
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.writers import JsonlWriter

    from vikhr.corpus.steps_quality import QualityScorer

    folder, _ = linear_folder
    good = chekhov_paragraphs(230)[-30:]
    bad = junk_paragraphs(good, 30, seed=9)
    docs = [Document(text=t, id=f"g{i}") for i, t in enumerate(good)] + [
        Document(text=t, id=f"b{i}") for i, t in enumerate(bad)
    ]
    scorer = QualityScorer(
        folder, threshold=0.5, batch_size=16,
        exclusion_writer=JsonlWriter(str(tmp_path / "dropped"), compression=None),
    )  # fmt: skip
    ex = LocalPipelineExecutor(
        [docs, scorer, JsonlWriter(str(tmp_path / "kept"), compression=None)],
        tasks=1, workers=1, logging_dir=str(tmp_path / "logs"),
    )  # fmt: skip
    ex.run()
    kept, dropped = read_jsonl_gz_or_plain(tmp_path / "kept"), read_jsonl_gz_or_plain(tmp_path / "dropped")
    assert len(kept) + len(dropped) == 60  # in = kept + dropped
    assert all(r["metadata"]["quality"] >= 0.5 and "reason" not in r["metadata"] for r in kept)
    assert all(r["metadata"]["quality"] < 0.5 and r["metadata"]["reason"] == "low_quality" for r in dropped)
    assert (
        sum(r["id"].startswith("g") for r in kept) >= 27
        and sum(r["id"].startswith("b") for r in dropped) >= 27
    )
    stats = json.loads((tmp_path / "logs" / "stats.json").read_text())
    step = next(s for s in stats if "Quality" in s["name"])["stats"]
    assert step["total"] == 60 and step["dropped_low_quality"] == len(dropped)
    assert step["forwarded"] == len(kept)


def test_quality_scorer_scores_only_and_pickles_without_its_model(linear_folder):
    from datatrove.data import Document

    from vikhr.corpus.steps_quality import QualityScorer

    folder, _ = linear_folder
    scorer = QualityScorer(folder)
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(chekhov_paragraphs(5) + ["ааа ааа ааа ааа"])]
    out = list(scorer.run(iter(docs)))
    assert len(out) == 6 and all(
        0 <= d.metadata["quality"] <= 1 for d in out
    )  # no threshold: nothing dropped
    assert scorer._model is not None
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone._model is None and clone.classifier == str(folder)
    assert [
        d.metadata["quality"] for d in clone.run(iter([Document(text=d.text, id=d.id) for d in docs]))
    ] == [d.metadata["quality"] for d in out]
    with pytest.raises(ValueError, match="threshold"):
        QualityScorer(folder, threshold=1.5)


# -- judge loop and annotate_and_train with a scripted client -----------------------------------------------


class ScriptedJudge:
    """Stands in for `LLMClient` in `judge`: rates texts in `bad` low, the rest high; sloppy or silent on cue."""

    def __init__(self, bad: set[str] = frozenset()) -> None:
        from vikhr.llm import LLMStats

        self.bad = bad
        self.stats = LLMStats()
        self.requests: list[tuple[list[dict], dict]] = []

    def chat_many(self, conversations, **params):
        from vikhr.llm import ChatResult

        out = []
        for conv in conversations:
            self.requests.append((conv, params))
            self.stats.calls += 1
            text = conv[-1]["content"]
            retry = "not usable" in text
            if "НЕ ОТВЕЧАЮ" in text:
                answer = "I cannot rate this."
            elif "НЕБРЕЖНО" in text and not retry:
                answer = f"Sure! {VALID}"
            elif text.split('"""')[1].strip() in self.bad:
                answer = json.dumps(dict.fromkeys(CRITERIA, 2))
            else:
                answer = VALID
            out.append(ChatResult(answer, "stop", {}, False, {}))
        return out


def test_judge_retries_with_a_changed_request_and_loses_nothing():
    client = ScriptedJudge()
    items = ["Хороший текст.", "НЕБРЕЖНО: хороший текст.", "НЕ ОТВЕЧАЮ на это."]
    res = judge(items, client, attempts=3, temperature=0, show_progress=False)  # type: ignore[arg-type]
    assert isinstance(res[0], Judgement) and res[0].attempts == 1 and res[0].scores == GOOD
    assert isinstance(res[1], Judgement) and res[1].attempts == 2
    assert isinstance(res[2], JudgeFailure) and res[2].attempts == 3 and res[2].raw == "I cannot rate this."
    assert "not a JSON object" in res[2].reason
    assert len(client.requests) == 1 + 2 + 3
    sent = [(c[-1]["content"], p.get("seed")) for c, p in client.requests if "НЕ ОТВЕЧАЮ" in c[-1]["content"]]
    assert [seed for _, seed in sent] == [None, 1, 2]  # every try is a different request (no cache replay)
    assert "not usable" not in sent[0][0] and "not usable" in sent[1][0]
    assert all(p["temperature"] == 0 and p["max_tokens"] == 64 for _, p in client.requests)
    s = judge_summary(res)
    assert (s["parsed"], s["failed"], s["retried"], s["retried_parsed"], s["requests"]) == (2, 1, 2, 1, 6)
    with pytest.raises(ValueError, match="attempts"):
        judge(items, client, attempts=0)  # type: ignore[arg-type]
    assert judge([], client) == []  # type: ignore[arg-type]


def test_annotate_and_train_end_to_end(tmp_path, dataset):
    from vikhr.config import QualityConfig
    from vikhr.corpus.quality import QualityDataError, annotate_and_train

    texts, labels = dataset
    bad = {t.strip() for t, y in zip(texts, labels, strict=True) if y == "bad"}
    items = [(f"doc{i}", t) for i, t in enumerate(texts[:120])] + [("odd", "НЕ ОТВЕЧАЮ на это.")]
    summary = annotate_and_train(items, ScriptedJudge(bad), tmp_path / "q", QualityConfig(), attempts=2)  # type: ignore[arg-type]
    assert summary["judged"] + summary["failed"] == len(items) and summary["failed"] == 1
    assert summary["good"] + summary["bad"] == summary["judged"] and min(summary["good"], summary["bad"]) >= 5
    assert summary["classifier"]["n_train"] + summary["classifier"]["n_test"] == summary["judged"]
    assert summary["bad"] == sum(y == "bad" for y in labels[:120])
    assert summary["classifier"]["accuracy"] > 0.9 and summary["llm"]["calls"] == len(items) + 1
    assert json.loads((tmp_path / "q" / "metrics.json").read_text()) == summary
    rows = read_annotations(tmp_path / "q" / "annotations.jsonl")
    assert len(rows) == len(items) and rows[-1]["failure"] and rows[-1]["id"] == "odd"
    assert load_classifier(tmp_path / "q" / "classifier").predict_proba_good(["текст"]).shape == (1,)
    # a sample with one label only: a clear error, and the annotations are still written
    few = items[:3]
    with pytest.raises(QualityDataError, match=r"at least 5 of each: annotate more items .*good_score"):
        annotate_and_train(few, ScriptedJudge(), tmp_path / "few", QualityConfig(), attempts=1)  # type: ignore[arg-type]
    assert len(read_annotations(tmp_path / "few" / "annotations.jsonl")) == 3
