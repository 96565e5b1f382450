"""Paragraph dedup: normalisation, the regex tokenizer, LSH bands/rows, and `run_dedup` end to end on datatrove."""

from __future__ import annotations

import gzip
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from vikhr.config import DedupConfig
from vikhr.corpus.dedup import (
    EXACT,
    LSH_RECALL,
    NEAR,
    FastMinhashSignature,
    RegexWordTokenizer,
    choose_bands_rows,
    cluster_verdicts,
    jaccard,
    lsh_probability,
    normalise,
    resolve_bands_rows,
    run_dedup,
    shingle_hashes,
    text_hash,
    words,
)
from vikhr.corpus.engine import ExecutorOptions


def test_normalise_russian():
    a = "«Ёлка», — сказал   Пётр_Иванович!!\tЕЩЁ раз…"
    assert normalise(a) == "елка сказал петр иванович еще раз"
    assert normalise("Е\u0308лка") == normalise("ёлка") == "елка"  # decomposed ё folds the same way
    assert normalise("моро\u0301з и\u0306од") == "мороз йод"  # stress mark dropped, decomposed й recomposed
    assert normalise("ＡＢＣ　１２") == "abc 12"  # NFKC folds full-width forms
    assert normalise("Глава 1") != normalise("Глава 2")  # digits are kept
    assert text_hash(normalise("Он пришёл.")) == text_hash(normalise("он ПРИШЕЛ"))
    assert text_hash(normalise("Он пришёл.")) != text_hash(normalise("Она пришла."))


def test_regex_tokenizer_on_russian_and_pickles():
    tok = RegexWordTokenizer()
    text = "Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный?"
    assert tok.word_tokenize(text) == words(text) == [
        "мороз", "и", "солнце", "день", "чудесный", "еще", "ты", "дремлешь", "друг", "прелестный",
    ]  # fmt: skip
    assert tok.sent_tokenize(text) == ["Мороз и солнце; день чудесный!", "Ещё ты дремлешь, друг прелестный?"]
    assert [text[a:b].strip() for a, b in tok.span_tokenize(text)] == tok.sent_tokenize(text)
    assert pickle.loads(pickle.dumps(tok)).word_tokenize(text) == tok.word_tokenize(text)


def test_minhash_step_uses_regex_words_and_skips_short(tmp_path):
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    step = FastMinhashSignature(
        tmp_path, MinhashConfig(n_grams=3, num_buckets=4, hashes_per_bucket=2), min_words=5
    )
    step = pickle.loads(pickle.dumps(step))  # forkserver workers get a pickled copy
    assert isinstance(step.word_tokenizer, RegexWordTokenizer)
    assert step.get_shingles("Мороз и солнце, день.").size == 0  # 4 words: exact dedup only
    sh = step.get_shingles("Мороз и солнце; день чудесный! Ещё ты дремлешь")
    assert sh.shape == (6, 1) and np.array_equal(
        sh[:, 0], shingle_hashes(words("мороз и солнце день чудесный еще ты дремлешь"), 3)
    )


def test_jaccard_of_shingles():
    w = [f"слово{i}" for i in range(30)]
    a = set(shingle_hashes(w, 3).tolist())
    b = set(shingle_hashes(w[:15] + [f"другое{i}" for i in range(15)], 3).tolist())
    assert jaccard(a, a) == 1.0 and jaccard(a, b) == pytest.approx(13 / 43)


@pytest.mark.parametrize("threshold", [0.7, 0.8, 0.9])
def test_bands_rows_put_the_steep_part_at_the_threshold(threshold):
    b, r = choose_bands_rows(threshold, num_perm_max=128)
    assert b * r <= 128 and (b, r) != (14, 8)
    assert 0.3 <= lsh_probability(threshold, b, r) <= 0.6
    assert lsh_probability(threshold - 0.1, b, r) < 0.15 and lsh_probability(threshold + 0.1, b, r) > 0.85
    assert choose_bands_rows(0.8, 128) == (9, 13)  # datasketch's _optimal_param(0.8, 128) agrees


def test_bands_rows_for_recall():
    b, r = choose_bands_rows(0.8, 128, min_recall=0.99)
    assert lsh_probability(0.8, b, r) >= 0.99 and lsh_probability(0.5, b, r) < 0.5
    # the steepest curve meeting the recall bound: no other b x r <= 128 meeting it has less area below 0.8
    assert resolve_bands_rows(DedupConfig(threshold=0.8)) == (b, r)
    assert lsh_probability(0.8, *resolve_bands_rows(DedupConfig(threshold=0.8))) >= LSH_RECALL
    assert resolve_bands_rows(DedupConfig(bands=5, rows=4)) == (5, 4)
    with pytest.raises(ValueError, match="both"):
        resolve_bands_rows(DedupConfig(bands=5))


def test_cluster_verdicts_verify_candidates_against_kept_members():
    base = frozenset(range(100))
    sets = {
        0: base,
        1: frozenset(range(25, 125)),  # J(0) = 75/125 = 0.6: an LSH false positive, kept
        3: frozenset(range(30, 130)),  # J(0) = 0.54, J(1) = 95/105 = 0.90: near-duplicate of 1
        5: frozenset(range(5, 105)),  # J(0) = 0.90, J(1) = 0.68: near-duplicate of 0
    }
    hashes = [10, 11, 10, 13, 13, 15]  # 2 is identical to 0, 4 to 3
    calls = []
    verdicts = cluster_verdicts(hashes, lambda i: calls.append(i) or sets[i], 0.8)
    assert verdicts == [None, None, (0, "twin"), (1, "near"), (1, "follows"), (0, "near")]
    assert calls == [0, 1, 3, 5]  # twins are never read or compared


# --------------------------------------------------------------------------------------------- end to end

VOCAB = [
    "дом", "лес", "река", "город", "окно", "дорога", "ночь", "утро", "сад", "поле", "небо", "море", "гора", "луна",
    "ветер", "снег", "дождь", "огонь", "книга", "письмо", "слово", "песня", "друг", "брат", "сестра", "мать",
    "отец", "старик", "девушка", "солдат", "купец", "барин", "мужик", "конь", "собака", "кошка", "птица", "рыба",
    "хлеб", "вода", "вино", "чай", "стол", "стул", "дверь", "улица", "площадь", "церковь", "школа", "работа",
    "шёл", "видел", "сказал", "думал", "знал", "любил", "ждал", "пел", "читал", "писал", "спал", "жил", "стоял",
    "тихо", "быстро", "долго", "вдруг", "опять", "снова", "уже", "ещё", "здесь", "там", "всегда", "никогда",
]  # fmt: skip


def para(rng: random.Random, n: int = 30) -> list[str]:
    return [rng.choice(VOCAB) + str(rng.randrange(1000)) for _ in range(n)]


def write_input(folder: Path, shards: list[list[tuple[str, str, int, int]]]) -> None:
    folder.mkdir(parents=True)
    for i, docs in enumerate(shards):
        with gzip.open(folder / f"{i:05d}.jsonl.gz", "wt", encoding="utf-8") as f:
            for doc_id, text, fi, seq in docs:
                meta = {"source": "test", "file_index": fi, "seq": seq}
                f.write(json.dumps({"text": text, "id": doc_id, "metadata": meta}, ensure_ascii=False) + "\n")


def read_output(folder: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                assert d["id"] not in out
                out[d["id"]] = d
    return out


def corpus() -> tuple[list, list]:
    """Two shards: exact, near, half-shared, short exact and short near copies, and a first occurrence that is
    read second (smaller file_index in the second shard)."""
    rng = random.Random(0)
    a, b, c, d, e = (para(rng) for _ in range(5))
    b_near = b[:28] + ["другое"] + b[29:]  # one word changed near the end: J = 26/30
    c_half = c[:15] + para(rng, 15)  # shares half its words: J ~ 0.3, kept
    e_near = e[:14] + ["иное"] + e[15:]  # one word changed in the middle: J = 25/31 ~ 0.806
    sh = lambda x: set(shingle_hashes(x, 3).tolist())  # noqa: E731
    assert (
        jaccard(sh(b), sh(b_near)) > 0.8
        and jaccard(sh(e), sh(e_near)) > 0.8
        and jaccard(sh(c), sh(c_half)) < 0.5
    )
    text = " ".join
    shard0 = [
        ("f0#0", text(a).capitalize() + ".", 0, 0),
        ("f0#1", text(b) + ".", 0, 1),
        ("f0#2", text(c), 0, 2),
        ("f0#3", "Глава первая.", 0, 3),
        ("f0#4", "Он вышел из дома.", 0, 4),
        ("f0#5", text(e), 0, 5),
        ("f0#6", text(b_near), 0, 6),  # near copy in the same task
        ("f5#0", text(d), 5, 0),  # read first, but file_index 5 comes after file_index 2
    ]
    shard1 = [
        ("f2#0", text(d).upper() + "!", 2, 0),  # the first occurrence of d
        ("f2#1", "«" + text(a).upper() + "»", 2, 1),  # exact copy across tasks (case, punctuation)
        ("f2#2", text(c_half), 2, 2),
        ("f2#3", "ГЛАВА  ПЕРВАЯ!", 2, 3),  # short exact copy
        ("f2#4", "Она вышла из дома.", 2, 4),  # short near copy: never reaches MinHash, kept
        ("f2#5", text(e_near), 2, 5),
        ("f2#6", text(b_near) + "!!!", 2, 6),  # exact copy of a near-duplicate: follows it
    ]
    return shard0, shard1


def dedup(tmp_path: Path, opts: DedupConfig, workers: int) -> tuple[dict, dict, dict]:
    """Run `run_dedup` on `corpus()`; check every input lands once; return (result, kept, removed verdicts)."""
    shards = corpus()
    write_input(tmp_path / "in", list(shards))
    result = run_dedup(
        tmp_path / "in", tmp_path / "kept", tmp_path / "removed", tmp_path / "work",
        opts=opts, executor=ExecutorOptions(logging_root=tmp_path / "logs", workers=workers), tasks=2,
    )  # fmt: skip
    kept, removed = read_output(tmp_path / "kept"), read_output(tmp_path / "removed")
    assert set(kept) | set(removed) == {x[0] for s in shards for x in s} and not set(kept) & set(removed)
    assert result["input"] == len(kept) + len(removed) == 15 and result["kept"] == len(kept)
    verdicts = {i: (r["metadata"]["reason"], r["metadata"]["duplicate_of"]) for i, r in removed.items()}
    assert all(dup in kept for _, dup in verdicts.values())
    return result, kept, verdicts


def test_run_dedup_end_to_end(tmp_path):
    result, kept, verdicts = dedup(tmp_path, DedupConfig(), workers=2)  # worker processes: steps must pickle
    assert verdicts == {
        "f5#0": (EXACT, "f2#0"),
        "f2#1": (EXACT, "f0#0"),
        "f2#3": (EXACT, "f0#3"),
        "f0#6": (NEAR, "f0#1"),
        "f2#5": (NEAR, "f0#5"),
        "f2#6": (NEAR, "f0#1"),
    }
    assert kept["f0#0"]["metadata"] == {"source": "test", "file_index": 0, "seq": 0}  # same fields out as in
    assert kept["f2#2"]["text"] and "f2#4" in kept and "f0#4" in kept
    assert result[EXACT] == 3 and result[NEAR] == 3 and result["verification"]["candidates"] >= 4
    assert (result["bands"], result["rows"]) == resolve_bands_rows(DedupConfig())
    assert set(result["seconds"]) == {"signatures", "exact", "buckets", "clusters", "verify", "filter"}


def test_run_dedup_exact_only_and_near_only(tmp_path):
    _, _, verdicts = dedup(tmp_path / "exact", DedupConfig(near=False), workers=1)
    assert verdicts == {"f5#0": (EXACT, "f2#0"), "f2#1": (EXACT, "f0#0"), "f2#3": (EXACT, "f0#3"),
                        "f2#6": (EXACT, "f0#6")}  # fmt: skip
    _, _, verdicts = dedup(tmp_path / "near", DedupConfig(exact=False), workers=1)
    assert verdicts == {"f5#0": (NEAR, "f2#0"), "f2#1": (NEAR, "f0#0"), "f0#6": (NEAR, "f0#1"),
                        "f2#5": (NEAR, "f0#5"), "f2#6": (NEAR, "f0#1")}  # fmt: skip


def test_run_dedup_rejects_bad_metadata(tmp_path):
    (tmp_path / "in").mkdir()
    with gzip.open(tmp_path / "in" / "00000.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "без метаданных", "id": "x#0", "metadata": {"source": "t"}}) + "\n")
    with pytest.raises(Exception, match="file_index"):
        run_dedup(tmp_path / "in", tmp_path / "k", tmp_path / "r", tmp_path / "w", opts=DedupConfig(),
                  executor=ExecutorOptions(logging_root=tmp_path / "logs", workers=1), tasks=1)  # fmt: skip


def test_run_dedup_refuses_empty_input_and_a_foreign_work_folder(tmp_path):
    ex = ExecutorOptions(logging_root=tmp_path / "logs", workers=1)
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="no \\*.jsonl.gz"):
        run_dedup(
            tmp_path / "in",
            tmp_path / "k",
            tmp_path / "r",
            tmp_path / "w",
            opts=DedupConfig(),
            executor=ex,
            tasks=1,
        )
    write_input(tmp_path / "in2", [corpus()[0]])
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "leftover.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not empty"):
        run_dedup(
            tmp_path / "in2",
            tmp_path / "k",
            tmp_path / "r",
            tmp_path / "w",
            opts=DedupConfig(),
            executor=ex,
            tasks=1,
        )
