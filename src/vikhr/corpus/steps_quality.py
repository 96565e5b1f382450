"""The datatrove step that scores documents with a trained quality classifier and, optionally, filters them."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.batching import batched
from datatrove.utils.typeshelper import StatHints

from vikhr.corpus.quality import QualityClassifier, load_classifier

LOW_QUALITY = "low_quality"


class QualityScorer(PipelineStep):
    """Set `doc.metadata[key]` to the classifier's probability of `good`; with `threshold`, drop lower scores.

    Dropped documents get `metadata["reason"] = "low_quality"` and go to `exclusion_writer` when one is given.
    The classifier is loaded once per task, on first use (the step pickles without it, so executors can ship
    it to workers). Stats: total, forwarded, dropped, dropped_low_quality, and the distribution of `quality`.
    """

    name = "🎯 Quality classifier"
    type = "🔻 - FILTER"

    def __init__(
        self,
        classifier: str | Path,
        *,
        threshold: float | None = None,
        exclusion_writer: DiskWriter | None = None,
        batch_size: int = 256,
        key: str = "quality",
    ) -> None:
        super().__init__()
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        self.classifier = str(classifier)
        self.threshold = threshold
        self.exclusion_writer = exclusion_writer
        self.batch_size = batch_size
        self.key = key
        self._model: QualityClassifier | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        return state

    @property
    def model(self) -> QualityClassifier:
        if self._model is None:
            self._model = load_classifier(self.classifier)
        return self._model

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data is None:
            return
        writer_ctx = self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext()
        with writer_ctx as writer:
            for batch in batched(data, self.batch_size):
                with self.track_time("batch"):
                    probs = self.model.predict_proba_good([doc.text for doc in batch])
                for doc, p in zip(batch, probs, strict=True):
                    p = float(p)
                    doc.metadata[self.key] = p
                    self.stat_update(StatHints.total)
                    self.stat_update("quality", value=p)
                    if self.threshold is not None and p < self.threshold:
                        self.stat_update(StatHints.dropped, f"dropped_{LOW_QUALITY}")
                        doc.metadata["reason"] = LOW_QUALITY
                        if writer is not None:
                            writer.write(doc, rank)
                        continue
                    self.stat_update(StatHints.forwarded)
                    self.update_doc_stats(doc)
                    yield doc
