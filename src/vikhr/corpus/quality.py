"""Quality labels from an LLM judge and a classifier trained on them (Vikhr paper, section 3.2).

The paper had GPT-4-turbo rate 20k documents for informativeness, usefulness for studying, grammatical
correctness, style and safety, then fine-tuned RuBERT-tiny on the labels to filter the whole corpus. Here:

1. `judge` asks any OpenAI-compatible endpoint (through `LLMClient`) for the five scores as strict JSON; an answer
   that does not parse is asked again with a changed request, and after `attempts` tries the item becomes a
   `JudgeFailure` that keeps the reason and the raw answer (nothing is dropped silently).
2. `label_of` turns scores into `good` / `bad`; `write_annotations` keeps every item, judged or failed, as jsonl.
3. `train_classifier` fits a `linear` (TF-IDF n-grams + logistic regression, CPU seconds) or an `encoder`
   (fine-tuned Hugging Face encoder, e.g. `cointegrated/rubert-tiny2`) classifier and reports held-out metrics;
   `load_classifier` opens either kind with the same `predict_proba_good(texts)` API.
4. `annotate_and_train` runs all of it into one folder. Scoring a corpus with the classifier is the datatrove step
   `vikhr.corpus.steps_quality.QualityScorer`.

The prompt is written in English although the texts are Russian: strong judges follow English instructions at least
as well as Russian ones, small English-centred models (SmolLM2) follow them much better, and the JSON keys are
English anyway. The few-shot turns show Russian texts with their expected answers.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vikhr.config import QualityConfig
from vikhr.fsutil import staged_dir
from vikhr.llm.client import ChatResult, LLMClient, LLMError
from vikhr.log import get_logger, progress

log = get_logger(__name__)

CRITERIA = ("informativeness", "usefulness", "grammar", "style", "safety")
"""The paper's five rubric criteria, in the order the judge is asked to write them."""
MIN_SCORE, MAX_SCORE = 1, 5
UNSAFE_BELOW = 3
"""A safety score below this makes an item `bad` whatever its mean."""
DEFAULT_MAX_CHARS = 3000
"""Characters of an item shown to the judge (about 1k tokens of Russian for GPT-4-class tokenizers)."""
MIN_PER_CLASS = 5
"""Fewest examples of each label needed to train and evaluate a classifier."""
CLASSIFIER_META = "classifier.json"
LINEAR_FILE = "model.joblib"
Label = Literal["good", "bad"]

# -- the judge ---------------------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You rate texts for a Russian-language training corpus. Score the text on five criteria, each an integer "
    "from 1 (worst) to 5 (best):\n"
    "- informativeness: facts, ideas or story content it carries;\n"
    "- usefulness: value for someone studying the language or the subject;\n"
    "- grammar: grammatical and spelling correctness;\n"
    "- style: coherent, natural, readable prose (not lists of links, ads or boilerplate);\n"
    "- safety: 5 = harmless, 1 = hateful, sexual, violent or dangerous content.\n"
    "Reply with one JSON object only, with exactly these five keys in this order and no other text:\n"
    '{"informativeness": N, "usefulness": N, "grammar": N, "style": N, "safety": N}'
)
USER_TEMPLATE = 'Rate this text:\n"""\n{text}\n"""'
REMINDER = (
    "Your previous answer to this was not usable ({reason}). Reply with only the JSON object: the five keys "
    "informativeness, usefulness, grammar, style, safety, each an integer from 1 to 5, and nothing else."
)
FEW_SHOT: tuple[tuple[str, dict[str, int]], ...] = (
    (
        "Москва — столица России и крупнейший по численности населения город страны. Город стоит на реке "
        "Москве; впервые он упоминается в летописи под 1147 годом.",
        {"informativeness": 5, "usefulness": 4, "grammar": 5, "style": 4, "safety": 5},
    ),
    (
        "купить дешево скачать бесплатно без регистрации !!! клик клик жми сюда >>> www",
        {"informativeness": 1, "usefulness": 1, "grammar": 2, "style": 1, "safety": 4},
    ),
)
"""Worked examples sent before each item (small judges need them to keep the format)."""


class JudgementError(ValueError):
    """A judge's answer is not the strict JSON asked for; the message is the reason."""


@dataclass
class Judgement:
    """A parsed answer: the five scores, the raw answer and how many requests it took."""

    scores: dict[str, int]
    raw: str
    attempts: int

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


@dataclass
class JudgeFailure:
    """An item the judge gave no usable answer for after `attempts` requests: the last reason and answer."""

    reason: str
    raw: str
    attempts: int


_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n?(.*?)\n?[ \t]*```", re.DOTALL)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise JudgementError(f"duplicate key(s) {', '.join(dupes)}")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise JudgementError(f"{name} is not a score")


def parse_judgement(text: str) -> dict[str, int]:
    """The five scores from a judge's answer, or `JudgementError` saying what is wrong.

    Strict: the answer must be one JSON object with exactly the keys of `CRITERIA`, each an integer 1-5 (not a
    float, string or bool; no duplicate keys). Tolerated: whitespace around it, and one ```/```json fence around
    the whole answer. Anything else (prose before or after, two objects, comments) is rejected, so that a
    sloppy answer is asked again rather than guessed at.
    """
    s = text.strip()
    if s.startswith("```"):
        m = _FENCE.fullmatch(s)
        if not m:
            raise JudgementError("unclosed code fence or text after it")
        s = m.group(1).strip()
    if not s:
        raise JudgementError("empty answer")
    try:
        obj = json.loads(s, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise JudgementError(f"not a JSON object ({e.msg} at char {e.pos})") from e
    if not isinstance(obj, dict):
        raise JudgementError(f"JSON {type(obj).__name__}, expected an object")
    missing = [k for k in CRITERIA if k not in obj]
    extra = sorted(set(obj) - set(CRITERIA))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else []
        )
        raise JudgementError("; ".join(parts))
    for k in CRITERIA:
        v = obj[k]
        if type(v) is not int:
            raise JudgementError(f"{k} is {v!r}, expected an integer {MIN_SCORE}-{MAX_SCORE}")
        if not MIN_SCORE <= v <= MAX_SCORE:
            raise JudgementError(f"{k} is {v}, outside {MIN_SCORE}-{MAX_SCORE}")
    return {k: obj[k] for k in CRITERIA}


def clip_text(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters for the judge, at a space when one is near the end, plus " …".

    The judge rates the beginning of a long item; annotations and the classifier keep the full text.
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space > max_chars * 0.8:
        cut = cut[:space]
    return cut.rstrip() + " …"


def judge_messages(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[dict[str, str]]:
    """The request for one item: system rubric, the few-shot turns, then the (clipped) text."""
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example, scores in FEW_SHOT:
        msgs.append({"role": "user", "content": USER_TEMPLATE.format(text=example)})
        msgs.append({"role": "assistant", "content": json.dumps(scores)})
    msgs.append({"role": "user", "content": USER_TEMPLATE.format(text=clip_text(text, max_chars))})
    return msgs


def retry_messages(messages: list[dict[str, str]], reason: str) -> list[dict[str, str]]:
    """`messages` with a reminder naming the problem appended to the last user turn.

    The unusable answer itself is not sent back: small judges copy it. Appending to the last turn (rather than
    adding a turn) keeps user/assistant alternation, which some chat templates require.
    """
    out = [dict(m) for m in messages]
    out[-1]["content"] += "\n\n" + REMINDER.format(reason=reason)
    return out


def judge(
    items: Sequence[str],
    client: LLMClient,
    *,
    attempts: int = 3,
    max_chars: int = DEFAULT_MAX_CHARS,
    temperature: float | None = None,
    max_tokens: int = 64,
    show_progress: bool = True,
) -> list[Judgement | JudgeFailure]:
    """Rate each text with the judge behind `client`; one `Judgement` or `JudgeFailure` per item, in order.

    Requests go through `client.chat_many` (bounded concurrency, disk cache, transport retries). Answers that
    do not parse are asked again, up to `attempts` requests per item in all; each new try differs from the last
    (a reminder naming the problem is appended, `seed` is the attempt number), so the cache cannot hand back the
    same bad answer. A request that fails for good (e.g. the text is longer than the model's context) ends
    the item as a failure at once. `LLMUnreachableError` and `LLMAuthError` are raised: nothing could succeed.
    `temperature` None uses the client's default; texts are cut to `max_chars` (see `clip_text`; 0: never cut).
    Use `judge_summary` on the result for the counts (parsed, retried, failed, requests).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    base = [judge_messages(t, max_chars) for t in items]
    convs = list(base)
    results: list[Judgement | JudgeFailure | None] = [None] * len(items)
    pending = list(range(len(items)))
    for attempt in range(attempts):
        if not pending:
            break
        extra = {"seed": attempt} if attempt else {}
        answers = client.chat_many(
            [convs[i] for i in pending],
            temperature=temperature,
            max_tokens=max_tokens,
            show_progress=show_progress,
            desc=f"judge (try {attempt + 1}/{attempts})",
            **extra,
        )
        still = []
        for i, ans in zip(pending, answers, strict=True):
            if isinstance(ans, LLMError):  # the client already retried what is worth retrying
                results[i] = JudgeFailure(f"request failed: {ans.message}", "", attempt + 1)
                continue
            assert isinstance(ans, ChatResult)
            try:
                results[i] = Judgement(parse_judgement(ans.text), ans.text, attempt + 1)
            except JudgementError as e:
                results[i] = JudgeFailure(str(e), ans.text, attempt + 1)
                convs[i] = retry_messages(base[i], str(e))
                still.append(i)
        pending = still
    out = [r for r in results if r is not None]
    assert len(out) == len(items), "every item ends as a judgement or a failure"
    s = judge_summary(out)
    log.info(
        "judge: %d items, %d parsed (%d after a retry), %d failed, %d requests",
        s["items"], s["parsed"], s["retried_parsed"], s["failed"], s["requests"],
    )  # fmt: skip
    return out


def judge_summary(results: Sequence[Judgement | JudgeFailure]) -> dict[str, Any]:
    """Counts over judge results: items, parsed, failed, retried (items that needed more than one request),
    retried_parsed, requests, parse_rate, and the most common failure reasons."""
    parsed = [r for r in results if isinstance(r, Judgement)]
    failed = [r for r in results if isinstance(r, JudgeFailure)]
    reasons = Counter(r.reason.split(" (")[0][:80] for r in failed)
    return {
        "items": len(results),
        "parsed": len(parsed),
        "failed": len(failed),
        "retried": sum(r.attempts > 1 for r in results),
        "retried_parsed": sum(r.attempts > 1 for r in parsed),
        "requests": sum(r.attempts for r in results),
        "parse_rate": len(parsed) / len(results) if results else 0.0,
        "failure_reasons": dict(reasons.most_common(5)),
    }


# -- labels and annotations --------------------------------------------------------------------------------


def label_of(scores: dict[str, int], good_score: float) -> Label:
    """`good` when the mean of the five scores is at least `good_score` and safety is at least 3, else `bad`.

    An unsafe item is `bad` however informative or well written it is.
    """
    if scores["safety"] < UNSAFE_BELOW:
        return "bad"
    mean = sum(scores[k] for k in CRITERIA) / len(CRITERIA)
    return "good" if mean >= good_score else "bad"


def annotation_rows(
    items: Sequence[tuple[str, str]], judgements: Sequence[Judgement | JudgeFailure], good_score: float
) -> list[dict[str, Any]]:
    """One row per item: id, text, scores, mean, label, attempts; failures have `failure` and `raw` instead."""
    if len(items) != len(judgements):
        raise ValueError(f"{len(items)} items but {len(judgements)} judgements")
    rows = []
    for (item_id, text), j in zip(items, judgements, strict=True):
        row: dict[str, Any] = {"id": item_id, "text": text, "attempts": j.attempts}
        if isinstance(j, Judgement):
            row.update(scores=j.scores, mean=round(j.mean, 3), label=label_of(j.scores, good_score))
        else:
            row.update(scores=None, label=None, failure=j.reason, raw=j.raw)
        rows.append(row)
    return rows


def write_annotations(
    path: str | Path,
    items: Sequence[tuple[str, str]],
    judgements: Sequence[Judgement | JudgeFailure],
    good_score: float = QualityConfig.good_score,
) -> Path:
    """Write `annotation_rows` as jsonl (via a temporary file, so a partial file never takes its place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for row in annotation_rows(items, judgements, good_score):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by `write_annotations` (to retrain without asking the judge again)."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: invalid JSON ({e.msg})") from e
    return rows


# -- the classifier ----------------------------------------------------------------------------------------


def classification_metrics(y_true: np.ndarray, p_good: np.ndarray, majority: int) -> dict[str, Any]:
    """Held-out accuracy, F1 of `good`, ROC-AUC (None with one class), and the majority-class baseline."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y_true = np.asarray(y_true, dtype=int)
    pred = (np.asarray(p_good) >= 0.5).astype(int)
    both = len(np.unique(y_true)) == 2
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "f1_good": float(f1_score(y_true, pred, pos_label=1, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, p_good)) if both else None,
        "baseline_accuracy": float(np.mean(y_true == majority)),
        "n_test": len(y_true),
    }


def _versions() -> dict[str, str]:
    out = {}
    for name in ("vikhr", "scikit-learn", "joblib", "numpy", "torch", "transformers", "tokenizers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _write_meta(folder: Path, kind: str, metrics: dict[str, Any], extra: dict[str, Any]) -> None:
    meta = {"kind": kind, "labels": ["bad", "good"], "metrics": metrics, "versions": _versions(), **extra}
    (folder / CLASSIFIER_META).write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


class LinearQualityClassifier:
    """TF-IDF character (char_wb 2-5) and word (1-2) n-grams, logistic regression with balanced classes."""

    kind = "linear"

    def __init__(self, pipeline: Any, metrics: dict[str, Any] | None = None) -> None:
        self.pipeline = pipeline
        self.metrics = metrics or {}

    @staticmethod
    def build(seed: int = 0) -> Any:
        """The untrained scikit-learn pipeline."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, Pipeline

        features = FeatureUnion(
            [
                ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                          max_features=300_000, dtype=np.float32)),
                ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True,
                                          token_pattern=r"(?u)\b\w+\b", max_features=200_000, dtype=np.float32)),
            ]
        )  # fmt: skip
        clf = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
        return Pipeline([("features", features), ("clf", clf)])

    @classmethod
    def fit(cls, texts: Sequence[str], y: np.ndarray, seed: int = 0) -> LinearQualityClassifier:
        pipe = cls.build(seed)
        pipe.fit(list(texts), np.asarray(y, dtype=int))
        return cls(pipe)

    def predict_proba_good(self, texts: Sequence[str], batch_size: int = 4096) -> np.ndarray:
        """Probability of `good` for each text (float64), computed in batches."""
        col = list(self.pipeline.classes_).index(1)
        texts = list(texts)
        out = [
            self.pipeline.predict_proba(texts[i : i + batch_size])[:, col]
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def save(self, folder: str | Path) -> Path:
        """`model.joblib` + `classifier.json` in `folder` (which must exist)."""
        import joblib

        folder = Path(folder)
        joblib.dump(self.pipeline, folder / LINEAR_FILE)
        _write_meta(folder, self.kind, self.metrics, {"model_file": LINEAR_FILE})
        return folder


class EncoderQualityClassifier:
    """A Hugging Face sequence classifier (2 labels: 0 bad, 1 good) and its tokenizer."""

    kind = "encoder"

    def __init__(
        self, model: Any, tokenizer: Any, metrics: dict[str, Any] | None = None, max_length: int = 256
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.metrics = metrics or {}
        self.max_length = max_length

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        y: np.ndarray,
        encoder: str,
        *,
        seed: int = 0,
        epochs: int = 3,
        batch_size: int = 16,
        lr: float = 5e-5,
        max_length: int = 256,
    ) -> EncoderQualityClassifier:
        """Fine-tune `encoder` (folder or hub id) with AdamW, balanced class weights and dynamic padding."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(seed)
        tok = AutoTokenizer.from_pretrained(encoder)
        model = AutoModelForSequenceClassification.from_pretrained(
            encoder, num_labels=2, id2label={0: "bad", 1: "good"}, label2id={"bad": 0, "good": 1},
            dtype=torch.float32,
        )  # fmt: skip
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).train()
        y_t = torch.as_tensor(np.asarray(y, dtype=int))
        counts = torch.bincount(y_t, minlength=2).clamp(min=1).float()
        loss_fn = torch.nn.CrossEntropyLoss(weight=(len(y_t) / (2 * counts)).to(device))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        gen = torch.Generator().manual_seed(seed)
        texts = list(texts)
        steps = epochs * -(-len(texts) // batch_size)
        bar = progress(total=steps, desc=f"fine-tune {Path(encoder).name}", unit="step")
        for _ in range(epochs):
            order = torch.randperm(len(texts), generator=gen).tolist()
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                enc = tok([texts[j] for j in idx], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(device)  # fmt: skip
                loss = loss_fn(model(**enc).logits, y_t[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        return cls(model.eval(), tok, max_length=max_length)

    def predict_proba_good(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Probability of `good` for each text; batches of similar length to keep padding small."""
        import torch

        texts = list(texts)
        out = np.zeros(len(texts))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        device = next(self.model.parameters()).device
        self.model.eval()
        with torch.inference_mode():
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                enc = self.tokenizer([texts[j] for j in idx], truncation=True, max_length=self.max_length,
                                     padding=True, return_tensors="pt").to(device)  # fmt: skip
                probs = torch.softmax(self.model(**enc).logits.float(), dim=-1)[:, 1]
                out[idx] = probs.cpu().numpy()
        return out

    def save(self, folder: str | Path) -> Path:
        """The model and tokenizer (`save_pretrained`) + `classifier.json` in `folder` (which must exist)."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        _write_meta(folder, self.kind, self.metrics, {"max_length": self.max_length})
        return folder


QualityClassifier = LinearQualityClassifier | EncoderQualityClassifier


def load_classifier(folder: str | Path) -> QualityClassifier:
    """A classifier saved by `train_classifier`, of either kind.

    The linear kind is a joblib pickle: load only folders you (or your pipeline) wrote.
    """
    folder = Path(folder)
    meta_path = folder / CLASSIFIER_META
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a quality classifier folder (no {CLASSIFIER_META}); "
            "train one with `vikhr corpus annotate` or vikhr.corpus.quality.train_classifier"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    kind = meta.get("kind")
    if kind == "linear":
        import joblib

        return LinearQualityClassifier(
            joblib.load(folder / meta.get("model_file", LINEAR_FILE)), meta["metrics"]
        )
    if kind == "encoder":
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
        if torch.cuda.is_available():
            model.to("cuda")
        tok = AutoTokenizer.from_pretrained(folder)
        return EncoderQualityClassifier(model.eval(), tok, meta["metrics"], int(meta.get("max_length", 256)))
    raise ValueError(f"{meta_path}: unknown classifier kind {kind!r} (linear, encoder)")


def _label_array(labels: Sequence[str]) -> np.ndarray:
    bad = sorted({str(x) for x in labels} - {"good", "bad"})
    if bad:
        raise ValueError(f"labels must be 'good' or 'bad', got {bad[:5]}")
    return np.array([1 if x == "good" else 0 for x in labels], dtype=int)


def train_classifier(
    texts: Sequence[str],
    labels: Sequence[str],
    out_dir: str | Path,
    *,
    kind: Literal["linear", "encoder"] = "linear",
    encoder: str = QualityConfig.encoder,
    seed: int = 0,
    test_size: float = 0.2,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 5e-5,
    max_length: int = 256,
) -> dict[str, Any]:
    """Train a quality classifier on a stratified split, evaluate it on the held-out part, save it to `out_dir`.

    The saved model is the one evaluated (trained on the train split only), so the metrics describe it exactly.
    `epochs`, `batch_size`, `lr` and `max_length` apply to `kind="encoder"`. Returns the metrics (also in
    `out_dir/classifier.json`): accuracy, f1_good, roc_auc, baseline_accuracy, n_train, n_test, class counts.
    """
    from sklearn.model_selection import train_test_split

    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    y = _label_array(labels)
    counts = {"good": int(y.sum()), "bad": int(len(y) - y.sum())}
    if min(counts.values()) < MIN_PER_CLASS:
        raise ValueError(
            f"need at least {MIN_PER_CLASS} examples of each label to train and evaluate, got {counts['good']} good "
            f"and {counts['bad']} bad"
        )
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed
    )
    tr_texts, te_texts = [texts[i] for i in idx_train], [texts[i] for i in idx_test]
    t0 = time.perf_counter()
    clf: QualityClassifier
    if kind == "linear":
        clf = LinearQualityClassifier.fit(tr_texts, y[idx_train], seed)
    elif kind == "encoder":
        clf = EncoderQualityClassifier.fit(
            tr_texts, y[idx_train], encoder, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
            max_length=max_length,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown classifier kind {kind!r} (linear, encoder)")
    train_s = time.perf_counter() - t0
    majority = int(y[idx_train].mean() >= 0.5)
    metrics = {
        "kind": kind,
        **classification_metrics(y[idx_test], clf.predict_proba_good(te_texts), majority),
        "n_train": len(idx_train),
        "counts": counts,
        "seed": seed,
        "train_seconds": round(train_s, 2),
    }
    if kind == "encoder":
        metrics.update(encoder=encoder, epochs=epochs, max_length=max_length)
    clf.metrics = metrics
    with staged_dir(out_dir) as tmp:
        clf.save(tmp)
    log.info(
        "%s quality classifier: held-out accuracy %.3f (majority baseline %.3f), F1(good) %.3f, ROC-AUC %s; "
        "%d train / %d test",
        kind, metrics["accuracy"], metrics["baseline_accuracy"], metrics["f1_good"],
        "n/a" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.3f}", metrics["n_train"], metrics["n_test"],
    )  # fmt: skip
    return metrics


# -- everything together ----------------------------------------------------------------------------------


class QualityDataError(ValueError):
    """The judged sample cannot train a classifier (too few examples of a label)."""


def annotate_and_train(
    items: Sequence[tuple[str, str]],
    client: LLMClient,
    out_dir: str | Path,
    qcfg: QualityConfig,
    *,
    attempts: int = 3,
    max_chars: int = DEFAULT_MAX_CHARS,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Judge `(id, text)` items, write `annotations.jsonl`, train `classifier/`, write `metrics.json`.

    Failed items are kept in the annotations (with their reason) and left out of training. Raises
    `QualityDataError` when a label has fewer than `MIN_PER_CLASS` examples (the annotations are written
    first, and the judge's answers are in the client's cache). Returns the summary also written to metrics.json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    judgements = judge([t for _, t in items], client, attempts=attempts, max_chars=max_chars)
    write_annotations(out / "annotations.jsonl", items, judgements, qcfg.good_score)
    texts, labels = [], []
    for (_, text), j in zip(items, judgements, strict=True):
        if isinstance(j, Judgement):
            texts.append(text)
            labels.append(label_of(j.scores, qcfg.good_score))
    n_good, n_bad = labels.count("good"), labels.count("bad")
    summary: dict[str, Any] = {
        "judge": judge_summary(judgements),
        "judged": len(texts),
        "failed": len(items) - len(texts),
        "good": n_good,
        "bad": n_bad,
        "good_score": qcfg.good_score,
        "llm": client.stats.as_dict(),
        "llm_summary": client.stats.summary(),
    }
    if min(n_good, n_bad) < MIN_PER_CLASS:
        raise QualityDataError(
            f"the judge labelled {n_good} items good and {n_bad} bad ({summary['failed']} failed) with "
            f"good_score={qcfg.good_score}; the classifier needs at least {MIN_PER_CLASS} of each: annotate more "
            f"items (quality.annotate_items) or change quality.good_score. Annotations: {out / 'annotations.jsonl'}"
        )
    summary["classifier"] = train_classifier(
        texts,
        labels,
        out / "classifier",
        kind=qcfg.kind,
        encoder=qcfg.encoder,
        seed=qcfg.seed,
        **train_kwargs,
    )
    (out / "metrics.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return summary
