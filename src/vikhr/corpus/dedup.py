"""Paragraph deduplication across the whole corpus on datatrove: exact, then MinHash-LSH with verification.

Input: a folder of JsonlWriter output (`*.jsonl.gz`) of paragraph Documents whose metadata holds `file_index` and
`seq`; the first occurrence of a paragraph is the one with the smallest `(file_index, seq)`. Output: kept Documents
in one folder, removed ones in another with `metadata["reason"]` (`exact_duplicate` or `near_duplicate`) and
`metadata["duplicate_of"]` (the id of the kept paragraph it duplicates). Every input Document lands in exactly one
of the two; `in = kept + removed` is checked.

The chain of datatrove pipelines (`run_dedup`), each built by `make_executor` and depending on the previous one;
everything between them goes through files in the work folder, so no process holds the corpus's texts:

1. `signatures` (one task per input shard): per Document a key record `(file_index, seq, hash, offset)`, its id
   (and, for paragraphs of `min_words`+ words, its normalised text) in a per-task store, an exact signature
   partitioned by hash range and sorted, and — through datatrove's `MinhashDedupSignature` with a regex tokenizer —
   MinHash band signatures for paragraphs of `min_words`+ words (shorter ones get exact dedup only).
2. `exact`: per hash range, a heap merge of the sorted signatures; the first record of each hash, in
   `(file_index, seq)` order, is the first occurrence and every other one is written as its duplicate.
3. `buckets`: datatrove's `MinhashDedupBuckets`: candidate pairs whose band signatures collide.
4. `clusters` (one task, like datatrove's clustering): union-find over the candidate pairs; members of each
   cluster are written in `(file_index, seq)` order, clusters spread over the verify tasks.
5. `verify`: LSH candidates are only candidates. In each cluster, members are taken in order; one is removed as a
   `near_duplicate` only when the true Jaccard of its word-shingle set with a kept earlier member is at least
   `threshold` (that member becomes `duplicate_of`), else it is kept. Precision therefore holds by construction;
   the LSH bands are chosen for recall (`P(candidate | J = threshold) >= LSH_RECALL`) and the verification pays
   for the extra candidates. Members identical after normalisation to an earlier kept member are left to the
   exact step (its first occurrence is that member); identical to a removed one, they follow it.
6. `filter`: each Document is routed to `kept_folder` or `removed_folder` with its reason and `duplicate_of`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import heapq
import itertools
import json
import re
import struct
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fsspec.compression
import numpy as np
import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupSignature,
)
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from vikhr.config import DedupConfig
from vikhr.corpus.engine import ExecutorOptions, auto_tasks, make_executor
from vikhr.log import get_logger

log = get_logger(__name__)

EXACT = "exact_duplicate"
NEAR = "near_duplicate"
NUM_PERM_MAX = 128
"""Most MinHash permutations `choose_bands_rows` may use (bands x rows)."""
_MERSENNE = np.uint64((1 << 61) - 1)  # the modulus of datatrove's MinHash permutations
LSH_RECALL = 0.99
"""`run_dedup` picks bands/rows so that a pair at exactly `threshold` becomes a candidate with this probability."""

# --------------------------------------------------------------------------------------------- pure functions

_MARKS = re.compile("[\u0300-\u036f]")
_WORD = re.compile(r"[^\W_]+")
_SENTENCE = re.compile(r"[^.!?…]+(?:[.!?…]+|$)")


def _prepare(text: str) -> str:
    """NFKC, lower case, ё→е, combining accents (stress marks) dropped: the character-level part of `normalise`."""
    text = unicodedata.normalize("NFKC", text).lower().replace("ё", "е")
    return text if text.isascii() else _MARKS.sub("", text)


def words(text: str) -> list[str]:
    """The words of `text` after normalisation: runs of letters and digits (punctuation, `_` and spaces split)."""
    return list(_words(text))


@functools.lru_cache(maxsize=4)
def _words(text: str) -> tuple[str, ...]:
    """`words` as a tuple, remembered for the last few texts: the exact and MinHash steps see each text in turn."""
    return tuple(_WORD.findall(_prepare(text)))


def normalise(text: str) -> str:
    """The exact-dedup key of a paragraph: its `words` joined by single spaces.

    Unicode NFKC (full-width and compatibility forms folded; й and ё stay composed), lower case, ё→е (printed
    Russian drops the dots at will), combining accents removed (stress marks in textbooks and poems), every run
    of punctuation, symbols, `_` and whitespace turned into one space. Digits are kept: "Глава 1" ≠ "Глава 2".
    """
    return " ".join(words(text))


def text_hash(normalised: str) -> int:
    """64-bit hash (xxh64) of a normalised paragraph: the exact-dedup signature."""
    return xxhash.xxh64_intdigest(normalised.encode("utf-8"))


def shingle_hashes(word_list: list[str] | tuple[str, ...], n: int) -> np.ndarray:
    """64-bit hashes (uint64) of the word n-grams of a paragraph; fewer than `n` words make one shingle."""
    if not word_list:
        return np.empty(0, dtype=np.uint64)
    k = max(1, len(word_list) - n + 1)
    h = xxhash.xxh64_intdigest
    return np.fromiter((h(" ".join(word_list[i : i + n]).encode("utf-8")) for i in range(k)), np.uint64, k)


def jaccard(a: set[int] | frozenset[int], b: set[int] | frozenset[int]) -> float:
    """Jaccard similarity of two shingle sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def lsh_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that a pair of Jaccard similarity `s` shares at least one of `bands` bands of `rows` hashes."""
    return 1.0 - (1.0 - np.asarray(s, dtype=float) ** rows) ** bands


def _areas(threshold: float, bands: int, rows: int) -> tuple[float, float]:
    """(false-positive area below threshold, false-negative area above it) under the LSH S-curve."""
    lo = np.linspace(0.0, threshold, 201)
    hi = np.linspace(threshold, 1.0, 201)
    fp = float(np.trapezoid(lsh_probability(lo, bands, rows), lo))
    fn = float(np.trapezoid(1.0 - lsh_probability(hi, bands, rows), hi))
    return fp, fn


def choose_bands_rows(
    threshold: float, num_perm_max: int = NUM_PERM_MAX, min_recall: float | None = None
) -> tuple[int, int]:
    """LSH bands and rows (bands x rows <= `num_perm_max`) for a Jaccard `threshold`.

    Default: minimise the false-positive plus false-negative area under the S-curve (datasketch's criterion, equal
    weights), which puts the steep part at `threshold` (P ~ 0.4-0.5 there). With `min_recall`: the steepest curve
    (least false-positive area) that still makes a pair at exactly `threshold` a candidate with at least that
    probability — for a pipeline that verifies candidates and so can afford false positives but not misses.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    best: tuple | None = None
    for b in range(1, num_perm_max + 1):
        for r in range(1, num_perm_max // b + 1):
            fp, fn = _areas(threshold, b, r)
            if min_recall is None:
                score = (0.5 * fp + 0.5 * fn, b * r)
            elif lsh_probability(threshold, b, r) >= min_recall:
                score = (fp, b * r)
            else:
                continue
            if best is None or score < best[0]:
                best = (score, b, r)
    if best is None:
        raise ValueError(f"no bands x rows <= {num_perm_max} reach P={min_recall} at Jaccard {threshold}")
    return best[1], best[2]


def resolve_bands_rows(opts: DedupConfig) -> tuple[int, int]:
    """Bands and rows from the config: both given, or chosen for recall at `opts.threshold`."""
    if opts.bands > 0 and opts.rows > 0:
        return opts.bands, opts.rows
    if opts.bands > 0 or opts.rows > 0:
        raise ValueError("corpus.dedup: set both bands and rows, or neither (0: chosen from the threshold)")
    return choose_bands_rows(opts.threshold, NUM_PERM_MAX, min_recall=LSH_RECALL)


def curve_summary(threshold: float, bands: int, rows: int) -> dict[str, float]:
    """P(candidate) at threshold - 0.1, threshold and threshold + 0.1, for logs and results."""
    pts = {
        f"p_candidate_at_{s:.2f}": min(max(s, 0.0), 1.0)
        for s in (threshold - 0.1, threshold, threshold + 0.1)
    }
    return {k: round(float(lsh_probability(s, bands, rows)), 4) for k, s in pts.items()}


TWIN, NEAR_OK, FOLLOWS = "twin", "near", "follows"


def cluster_verdicts(
    hashes: list[int], shingles: Callable[[int], frozenset[int]], threshold: float
) -> list[tuple[int, str] | None]:
    """Verdicts for the members of one LSH candidate cluster, given in first-occurrence order.

    None: kept. `(k, "near")`: its true shingle Jaccard with kept member k (the earliest such) is >= threshold.
    `(k, "twin")`: identical after normalisation (same exact hash) to kept member k. `(k, "follows")`: identical
    to a member removed as a near-duplicate of k. The first member is always kept; `shingles(i)` (member i's
    shingle set) is called only for members that are compared, once each.
    """
    kept: list[tuple[int, frozenset[int]]] = []
    first: dict[int, int] = {}  # exact hash -> first member with it
    out: list[tuple[int, str] | None] = []
    for i, h in enumerate(hashes):
        if h in first:
            twin = out[first[h]]
            out.append((first[h], TWIN) if twin is None else (twin[0], FOLLOWS))
            continue
        first[h] = i
        s = shingles(i)
        keeper = next((k for k, ks in kept if jaccard(s, ks) >= threshold), None)
        if keeper is None:
            kept.append((i, s))
            out.append(None)
        else:
            out.append((keeper, NEAR_OK))
    return out


# ------------------------------------------------------------------------------------------- on-disk records

KEY_DTYPE = np.dtype([("file_index", "<u4"), ("seq", "<u4"), ("hash", "<u8"), ("offset", "<u8")])
"""keys/<rank>.bin, one per Document in read order: its order key, exact hash and offset in the store."""
SIG_DTYPE = np.dtype(
    [
        ("hash", "<u8"),
        ("file_index", "<u4"),
        ("seq", "<u4"),
        ("rank", "<u4"),
        ("doc", "<u4"),
        ("offset", "<u8"),
    ]
)
"""exact_sigs/<part>/<rank>.bin: exact signatures, sorted; records of one hash are in first-occurrence order."""
DUP_DTYPE = np.dtype([("doc", "<u4"), ("keeper_rank", "<u4"), ("keeper_offset", "<u8")])
"""exact_dups/<rank>/*.bin and near/<rank>/*.bin: a removed Document and where its kept original's id is stored."""
MEMBER_DTYPE = np.dtype(
    [("cluster", "<u8"), ("file_index", "<u4"), ("seq", "<u4"), ("hash", "<u8"), ("rank", "<u4"), ("doc", "<u4"),
     ("offset", "<u8")]
)  # fmt: skip
"""clusters/<part>.bin: candidate clusters, each contiguous, members in first-occurrence order."""
_STORE_HEAD = struct.Struct("<II")
_CHUNK_ROWS = 1 << 16


def _folder(f: DataFolderLike | Path):
    """A datatrove DataFolder (Paths accepted too)."""
    return get_datafolder(str(f) if isinstance(f, Path) else f)


def order_key(doc: Document) -> tuple[int, int]:
    """`(file_index, seq)` of a Document: where it first occurs; a clear error when the metadata lacks it."""
    try:
        fi, seq = int(doc.metadata["file_index"]), int(doc.metadata["seq"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"document {doc.id!r}: metadata needs integer `file_index` and `seq` ({e!r})") from e
    if not (0 <= fi < 2**32 and 0 <= seq < 2**32):
        raise ValueError(f"document {doc.id!r}: file_index/seq must be in [0, 2**32), got {fi}, {seq}")
    return fi, seq


def _store_record(doc_id: str, norm: str) -> bytes:
    a, b = doc_id.encode("utf-8"), norm.encode("utf-8")
    return _STORE_HEAD.pack(len(a), len(b)) + a + b


class _Store:
    """Random access to the per-task stores (id, normalised text) written by `DedupSignatures`."""

    def __init__(self, folder: DataFolderLike):
        self.folder = _folder(folder)
        self._files: dict[int, BinaryIO] = {}

    def read(self, rank: int, offset: int) -> tuple[str, str]:
        f = self._files.get(rank)
        if f is None:
            f = self._files[rank] = self.folder.open(f"store/{rank:05d}.bin", "rb")
        f.seek(offset)
        n_id, n_text = _STORE_HEAD.unpack(f.read(_STORE_HEAD.size))
        raw = f.read(n_id + n_text)
        return raw[:n_id].decode("utf-8"), raw[n_id:].decode("utf-8")

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _iter_records(f: BinaryIO, dtype: np.dtype) -> Iterator[tuple]:
    """Records of a binary file as tuples, read in chunks (memory bounded)."""
    with f:
        while chunk := f.read(_CHUNK_ROWS * dtype.itemsize):
            yield from np.frombuffer(chunk, dtype=dtype).tolist()


def _read_all(folder, paths: list[str], dtype: np.dtype) -> np.ndarray:
    parts = [np.frombuffer(f.read(), dtype=dtype) for f in folder.open_files(paths, mode="rb")]
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def _take_rows(f: BinaryIO, dtype: np.dtype, rows: np.ndarray) -> np.ndarray:
    """The records at sorted positions `rows` of a file, read sequentially in chunks."""
    out = np.empty(len(rows), dtype=dtype)
    done, start = 0, 0
    with f:
        while done < len(rows) and (chunk := f.read(_CHUNK_ROWS * dtype.itemsize)):
            arr = np.frombuffer(chunk, dtype=dtype)
            end = done + int(np.searchsorted(rows[done:], start + len(arr)))
            out[done:end] = arr[rows[done:end] - start]
            done, start = end, start + len(arr)
    if done != len(rows):
        raise ValueError(f"{getattr(f, 'path', f)}: rows beyond the end of the file (stale work folder?)")
    return out


class _Buffer:
    """A growable structured numpy array (appends go to a list, compacted every 64k rows)."""

    def __init__(self, dtype: np.dtype):
        self.dtype, self.parts, self.rows = dtype, [], []

    def append(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= _CHUNK_ROWS:
            self.parts.append(np.array(self.rows, dtype=self.dtype))
            self.rows = []

    def array(self) -> np.ndarray:
        if self.rows:
            self.parts.append(np.array(self.rows, dtype=self.dtype))
            self.rows = []
        return np.concatenate(self.parts) if self.parts else np.empty(0, dtype=self.dtype)


# ------------------------------------------------------------------------------------------ datatrove steps


class RegexWordTokenizer(WordTokenizer):
    """datatrove word tokenizer for MinHash: `words` by one regex — fast, picklable, never downloads anything."""

    def __init__(self) -> None:
        super().__init__(language=None)

    def word_tokenize(self, text: str) -> list[str]:
        return list(_words(text))

    def sent_tokenize(self, text: str) -> list[str]:
        return [m.group().strip() for m in _SENTENCE.finditer(text) if m.group().strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]


class FastMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signature step with `RegexWordTokenizer` shingles; paragraphs under `min_words` words
    get no signature (they never reach MinHash)."""

    name = "🎯 MinHash signatures (regex words)"

    def __init__(self, output_folder: DataFolderLike, config: MinhashConfig, *, min_words: int):
        super().__init__(_folder(output_folder), config, language=RegexWordTokenizer())
        self.min_words = min_words

    def get_shingles(self, text: str) -> np.ndarray:
        w = self.word_tokenizer.word_tokenize(text)
        if len(w) < max(1, self.min_words):
            return np.empty((0, 1), dtype=np.uint64)
        return shingle_hashes(w, self.config.n_grams).reshape(-1, 1)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        """datatrove's signature (same values), split into bands by a reshape instead of `np.split`."""
        a, b = self.parameters
        phv = (shingles * a + b) % _MERSENNE
        if self.config.hash_config.precision == 32:
            phv &= np.uint64(self.config.hash_config.max)
        sig = phv.min(axis=0).astype(self.config.hash_config.np_dtype)
        return sig.reshape(self.config.num_buckets, self.config.hashes_per_bucket).tolist()


class DedupSignatures(PipelineStep):
    """Stage 1: per Document a key record, its id (and normalised text when long) in the store, and an exact
    signature in the hash-range partition of the `exact` step; passes the Documents on."""

    type = "🫂 - DEDUP"
    name = "🔑 dedup signatures"

    def __init__(
        self, work_folder: DataFolderLike, *, partitions: int, min_words: int, exact: bool, near: bool
    ):
        super().__init__()
        self.work = _folder(work_folder)
        self.partitions, self.min_words, self.exact, self.near = partitions, min_words, exact, near

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        sigs, keys, store = _Buffer(SIG_DTYPE), _Buffer(KEY_DTYPE), bytearray()
        offset = 0
        with self.work.open(f"store/{rank:05d}.bin", "wb") as store_f:
            doc_idx = -1
            for doc_idx, doc in enumerate(data or ()):
                with self.track_time():
                    fi, seq = order_key(doc)
                    w = _words(doc.text)
                    norm = " ".join(w)
                    h = text_hash(norm)
                    rec = _store_record(doc.id, norm if self.near and len(w) >= self.min_words else "")
                    store += rec
                    keys.append((fi, seq, h, offset))
                    if self.exact:
                        sigs.append((h, fi, seq, rank, doc_idx, offset))
                    offset += len(rec)
                    if len(store) > 1 << 20:
                        store_f.write(bytes(store))
                        store.clear()
                yield doc
            store_f.write(bytes(store))
        self.stat_update("documents", value=doc_idx + 1)
        with self.work.open(f"keys/{rank:05d}.bin", "wb") as f:
            f.write(keys.array().tobytes())
        if self.exact:
            self._write_partitions(sigs.array(), rank)

    def _write_partitions(self, sigs: np.ndarray, rank: int) -> None:
        sigs.sort(order=["hash", "file_index", "seq", "rank", "doc"])
        part = ((sigs["hash"] >> np.uint64(32)) * np.uint64(self.partitions)) >> np.uint64(32)
        bounds = np.searchsorted(part, np.arange(self.partitions + 1))
        for p in range(self.partitions):
            with self.work.open(f"exact_sigs/{p:04d}/{rank:05d}.bin", "wb") as f:
                f.write(sigs[bounds[p] : bounds[p + 1]].tobytes())


class ExactFirstOccurrence(PipelineStep):
    """Stage 2: merge the sorted exact signatures of one hash range; every record after the first of its hash is
    an exact duplicate of that first occurrence."""

    type = "🫂 - DEDUP"
    name = "💥 exact first occurrence"

    def __init__(self, work_folder: DataFolderLike):
        super().__init__()
        self.work = _folder(work_folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        files = self.work.list_files(subdirectory=f"exact_sigs/{rank:04d}")
        readers = [_iter_records(f, SIG_DTYPE) for f in self.work.open_files(files, mode="rb")]
        last_hash, keeper = None, (0, 0)
        with self.track_time(), self.work.get_output_file_manager(mode="wb") as out:
            for h, _fi, _seq, r, doc, off in heapq.merge(*readers):
                if h == last_hash:
                    out.write(f"exact_dups/{r:05d}/{rank:04d}.bin", struct.pack("<IIQ", doc, *keeper))
                    self.stat_update(EXACT)
                else:
                    last_hash, keeper = h, (r, off)
                    self.stat_update("unique")


class NearClusters(PipelineStep):
    """Stage 4 (one task): union-find over datatrove's candidate pairs; writes each cluster's members in
    first-occurrence order to the verify partition `cluster % partitions`."""

    type = "🫂 - DEDUP"
    name = "🧩 near-duplicate clusters"

    def __init__(self, work_folder: DataFolderLike, *, partitions: int):
        super().__init__()
        self.work = _folder(work_folder)
        self.partitions = partitions

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        if world_size != 1:
            raise ValueError("NearClusters runs as one task")
        with self.track_time():
            parent = self._union_pairs()
            members = self._members(parent)
            self.stat_update("clusters", value=int(members["cluster"][-1]) + 1 if len(members) else 0)
            self.stat_update("candidates", value=len(members))
            part = members["cluster"] % np.uint64(self.partitions)
            for p in range(self.partitions):
                with self.work.open(f"clusters/{p:04d}.bin", "wb") as f:
                    f.write(members[part == p].tobytes())

    def _union_pairs(self) -> dict[int, int]:
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        files = self.work.list_files(subdirectory="minhash_dups", glob_pattern="*.dups")
        for f in self.work.open_files(files, mode="rb"):
            for f1, d1, f2, d2 in _iter_records(f, np.dtype("<u4,<u4,<u4,<u4")):
                a, b = find((f1 << 32) | d1), find((f2 << 32) | d2)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        for x in parent:
            find(x)
        return parent

    def _members(self, parent: dict[int, int]) -> np.ndarray:
        nodes = np.fromiter(sorted(parent), dtype=np.uint64, count=len(parent))
        roots = np.fromiter((parent[int(n)] for n in nodes), dtype=np.uint64, count=len(nodes))
        out = np.empty(len(nodes), dtype=MEMBER_DTYPE)
        out["rank"], out["doc"] = nodes >> np.uint64(32), nodes & np.uint64(0xFFFFFFFF)
        for r in np.unique(out["rank"]):
            sel = out["rank"] == r
            keys = _take_rows(
                self.work.open(f"keys/{int(r):05d}.bin", "rb"), KEY_DTYPE, out["doc"][sel].astype(np.int64)
            )
            for name in ("file_index", "seq", "hash", "offset"):
                out[name][sel] = keys[name]
        order = np.lexsort((out["doc"], out["rank"], out["seq"], out["file_index"], roots))
        out, roots = out[order], roots[order]
        new = np.ones(len(out), dtype=bool)
        new[1:] = roots[1:] != roots[:-1]
        out["cluster"] = np.cumsum(new) - 1
        return out


class NearVerify(PipelineStep):
    """Stage 5: `cluster_verdicts` on each candidate cluster; writes the removals (with the kept member whose id
    becomes `duplicate_of`) for the filter step."""

    type = "🫂 - DEDUP"
    name = "🔬 near-duplicate verification"

    def __init__(self, work_folder: DataFolderLike, *, threshold: float, ngram: int, exact: bool):
        super().__init__()
        self.work = _folder(work_folder)
        self.threshold, self.ngram, self.exact = threshold, ngram, exact

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        store = _Store(self.work)
        counts = dict.fromkeys(("candidates", "clusters", "rejected", TWIN, NEAR_OK, FOLLOWS), 0)
        path = f"clusters/{rank:04d}.bin"
        records = (
            _iter_records(self.work.open(path, "rb"), MEMBER_DTYPE) if self.work.exists(path) else iter(())
        )
        with self.track_time(), self.work.get_output_file_manager(mode="wb") as out:
            for _, group in itertools.groupby(records, key=lambda m: m[0]):
                members = list(group)  # (cluster, file_index, seq, hash, rank, doc, offset)

                def shingles(i: int, members: list[tuple] = members) -> frozenset[int]:
                    text = store.read(members[i][4], members[i][6])[1]
                    return frozenset(shingle_hashes(text.split(" "), self.ngram).tolist())

                verdicts = cluster_verdicts([m[3] for m in members], shingles, self.threshold)
                counts["clusters"] += 1
                counts["candidates"] += len(members)
                counts["rejected"] += sum(v is None for v in verdicts) - 1
                for m, v in zip(members, verdicts, strict=True):
                    if v is None:
                        continue
                    counts[v[1]] += 1
                    if v[1] != TWIN or not self.exact:  # a twin of a kept member is the exact step's
                        keeper = members[v[0]]
                        out.write(
                            f"near/{m[4]:05d}/{rank:04d}.bin", struct.pack("<IIQ", m[5], keeper[4], keeper[6])
                        )
        store.close()
        for k, v in counts.items():
            self.stat_update(k, value=v)
        with self.work.open(f"near_stats/{rank:04d}.json", "wt") as f:
            json.dump(counts, f)


class DedupFilter(PipelineStep):
    """Stage 6: route each Document: removed ones (reason, `duplicate_of`) to `exclusion_writer`, kept ones on."""

    type = "🫂 - DEDUP"
    name = "🧹 dedup filter"

    def __init__(self, work_folder: DataFolderLike, exclusion_writer: DiskWriter):
        super().__init__()
        self.work = _folder(work_folder)
        self.exclusion_writer = exclusion_writer

    def _removals(self, rank: int) -> dict[int, tuple[str, int, int]]:
        """doc index -> (reason, keeper rank, keeper offset); a near verdict wins over an exact one."""
        out: dict[int, tuple[str, int, int]] = {}
        for reason, sub in ((EXACT, "exact_dups"), (NEAR, "near")):
            files = (
                self.work.list_files(subdirectory=f"{sub}/{rank:05d}")
                if self.work.exists(f"{sub}/{rank:05d}")
                else []
            )
            for doc, kr, ko in _read_all(self.work, files, DUP_DTYPE).tolist():
                out[doc] = (reason, kr, ko)
        return out

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        removals, store = self._removals(rank), _Store(self.work)
        counts = {"input": 0, "kept": 0, EXACT: 0, NEAR: 0}
        expected = self.work.size(f"keys/{rank:05d}.bin") // KEY_DTYPE.itemsize
        with self.exclusion_writer as writer:
            for idx, doc in enumerate(data or ()):
                counts["input"] += 1
                hit = removals.get(idx)
                if hit is None:
                    counts["kept"] += 1
                    yield doc
                    continue
                reason, kr, ko = hit
                doc.metadata["reason"], doc.metadata["duplicate_of"] = reason, store.read(kr, ko)[0]
                counts[reason] += 1
                writer.write(doc, rank)
        store.close()
        for k, v in counts.items():
            self.stat_update(k, value=v)
        if counts["input"] != expected:
            raise RuntimeError(
                f"task {rank}: read {counts['input']} documents, the signature step saw {expected}"
            )
        with self.work.open(f"counts/{rank:05d}.json", "wt") as f:
            json.dump(counts, f)


# ------------------------------------------------------------------------------------------------ the chain


FAST_GZIP = "gzip-level1"
"""fsspec compression for the outputs: gzip at level 1 (level 9, the default, took a fifth of the run)."""


def _fast_gzip(f: BinaryIO, **kwargs: Any) -> gzip.GzipFile:
    return gzip.GzipFile(fileobj=f, compresslevel=1, **kwargs)


if FAST_GZIP not in fsspec.compression.compr:
    fsspec.compression.register_compression(FAST_GZIP, _fast_gzip, [])


def _jsonl_record(writer: DiskWriter, doc: Document) -> dict:
    """JsonlWriter adapter: the Document's fields as they are (the default adapter deep-copies each one)."""
    out = {"text": doc.text, "id": doc.id, "metadata": doc.metadata}
    if doc.media:
        out["media"] = [dataclasses.asdict(m) | {"media_bytes": None} for m in doc.media]
    return out


def _writer(folder: str | Path) -> DiskWriter:
    """JsonlWriter of `<rank>.jsonl.gz` files (the input's format), fast gzip."""
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(
        str(folder), output_filename="${rank}.jsonl.gz", compression=FAST_GZIP, adapter=_jsonl_record
    )


def _reader(input_folder: str):
    from datatrove.pipeline.readers import JsonlReader

    return JsonlReader(input_folder, glob_pattern="**/*.jsonl.gz", add_file_path=False)


def _sum_json(folder, sub: str) -> dict[str, int] | None:
    """Sum of the per-task JSON counters under `sub` (None when none exist yet)."""
    if not folder.exists(sub):
        return None
    total: dict[str, int] = {}
    for path in folder.list_files(subdirectory=sub, glob_pattern="*.json"):
        with folder.open(path, "rt") as f:
            for k, v in json.load(f).items():
                total[k] = total.get(k, 0) + v
    return total


def dedup_pipelines(
    input_folder: str,
    kept_folder: str,
    removed_folder: str,
    work: str,
    *,
    opts: DedupConfig,
    tasks: int,
    bands: int,
    rows: int,
) -> list[tuple[str, list, int]]:
    """The chain as (name, datatrove pipeline, tasks), in order; `opts.exact` / `opts.near` leave steps out."""
    mh = MinhashConfig(
        n_grams=opts.ngram,
        num_buckets=bands,
        hashes_per_bucket=rows,
        seed=opts.seed,
        hash_config=HashConfig(precision=64, hash_fc="xxhash"),
    )
    sign = [
        _reader(input_folder),
        DedupSignatures(work, partitions=tasks, min_words=opts.min_words, exact=opts.exact, near=opts.near),
    ]
    if opts.near:
        sign.append(FastMinhashSignature(f"{work}/minhash_sigs", mh, min_words=opts.min_words))
    steps = [("signatures", sign, tasks)]
    if opts.exact:
        steps.append(("exact", [ExactFirstOccurrence(work)], tasks))
    if opts.near:
        buckets = MinhashDedupBuckets(f"{work}/minhash_sigs", f"{work}/minhash_dups", config=mh)
        verify = NearVerify(work, threshold=opts.threshold, ngram=opts.ngram, exact=opts.exact)
        steps += [("buckets", [buckets], bands), ("clusters", [NearClusters(work, partitions=tasks)], 1),
                  ("verify", [verify], tasks)]  # fmt: skip
    route = [_reader(input_folder), DedupFilter(work, _writer(removed_folder)), _writer(kept_folder)]
    steps.append(("filter", route, tasks))
    return steps


def _check_work_folder(work: str, executor: ExecutorOptions) -> None:
    """A work folder with files but no record of a started run belongs to another input: refuse it."""
    folder = get_datafolder(work)
    # datatrove writes executor.json into the logging folder before the first task starts
    started = Path(executor.logging_root, "dedup-signatures").is_dir()
    if folder.exists("") and folder.list_files() and not started:
        raise ValueError(f"{work}: work folder is not empty and no dedup run was started under "
                         f"{executor.logging_root}; use a fresh work folder (or the run's logging root to resume)")  # fmt: skip


def run_dedup(
    input_folder: str | Path,
    kept_folder: str | Path,
    removed_folder: str | Path,
    work_folder: str | Path,
    *,
    opts: DedupConfig,
    executor: ExecutorOptions,
    tasks: int,
) -> dict[str, Any]:
    """Deduplicate the paragraphs in `input_folder` (exact, then verified MinHash-LSH) into `kept_folder` and
    `removed_folder`; returns counts, the LSH settings and seconds per step.

    Local runs go step by step (each timed); on Ray the chain runs as one dependent call. Tasks already completed
    under the same logging root are skipped (datatrove's completions), which resumes an interrupted run.
    """
    input_folder, work = str(input_folder), str(work_folder)
    n_files = len(get_datafolder(input_folder).list_files(glob_pattern="**/*.jsonl.gz"))
    if n_files == 0:
        raise ValueError(f"{input_folder}: no *.jsonl.gz files to deduplicate")
    _check_work_folder(work, executor)
    tasks = auto_tasks(n_files, tasks)
    bands, rows = resolve_bands_rows(opts)
    curve = curve_summary(opts.threshold, bands, rows)
    log.info(
        "dedup: %d input files, %d tasks; LSH %d bands x %d rows, %s", n_files, tasks, bands, rows, curve
    )
    steps = dedup_pipelines(input_folder, str(kept_folder), str(removed_folder), work, opts=opts, tasks=tasks,
                            bands=bands, rows=rows)  # fmt: skip
    chain, prev = [], None
    for name, pipeline, n in steps:
        prev = make_executor(pipeline, name=f"dedup-{name}", tasks=n, opts=executor, depends=prev)
        chain.append((name, prev))
    seconds: dict[str, float] = {}
    if executor.kind == "local":
        for name, ex in chain:
            t0 = time.perf_counter()
            ex.run()
            seconds[name] = round(time.perf_counter() - t0, 2)
            log.info("dedup step %s: %.1f s", name, seconds[name])
    else:
        chain[-1][1].run()
    return _summary(get_datafolder(work), tasks, bands, rows, curve, opts, seconds)


def _summary(work, tasks: int, bands: int, rows: int, curve: dict, opts: DedupConfig, seconds: dict) -> dict:
    """Counts from the per-task JSON files, with `in = kept + removed` checked and logged."""
    result: dict[str, Any] = {"tasks": tasks, "threshold": opts.threshold, "ngram": opts.ngram,
                              "min_words": opts.min_words, "bands": bands, "rows": rows,
                              "num_perm": bands * rows, **curve, "seconds": seconds}  # fmt: skip
    counts = _sum_json(work, "counts")
    if counts is None:
        raise RuntimeError(f"dedup finished without writing its counts under {work.path}/counts")
    result.update(counts)
    result["removed"] = counts[EXACT] + counts[NEAR]
    result["verification"] = _sum_json(work, "near_stats") or {}
    if counts["input"] != counts["kept"] + result["removed"]:
        raise RuntimeError(
            f"dedup lost documents: in={counts['input']} kept={counts['kept']} removed={result['removed']}"
        )
    log.info(
        "dedup: in %d = kept %d + exact %d + near %d",
        counts["input"],
        counts["kept"],
        counts[EXACT],
        counts[NEAR],
    )
    return result


def dedup_records(
    records: list[tuple[str, str]], work_folder: str | Path, *, opts: DedupConfig, workers: int = 0
) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    """Deduplicate short in-memory texts (instruction prompts, ...) with the same chain as the corpus:
    `records` are (id, text) in priority order — the first occurrence wins. Returns {removed id: (reason,
    duplicate_of id)} and the chain's summary. The work folder must be empty or absent; it keeps the chain's
    files (input, kept, removed) for inspection."""
    from datatrove.pipeline.writers import JsonlWriter

    work = Path(work_folder)
    if work.exists() and any(work.iterdir()):
        raise ValueError(f"{work}: dedup work folder is not empty")
    ids = [i for i, _ in records]
    if len(set(ids)) != len(ids):
        raise ValueError("dedup_records: ids must be unique")
    with JsonlWriter(str(work / "input"), output_filename="00000.jsonl.gz", compression=FAST_GZIP,
                     adapter=_jsonl_record) as writer:  # fmt: skip
        for seq, (doc_id, text) in enumerate(records):
            writer.write(Document(text=text, id=doc_id, metadata={"file_index": 0, "seq": seq}), 0)
    summary = run_dedup(work / "input", work / "kept", work / "removed", work / "chain", opts=opts,
                        executor=ExecutorOptions("local", work / "logs", workers), tasks=1)  # fmt: skip
    removed: dict[str, tuple[str, str]] = {}
    folder = get_datafolder(str(work / "removed"))
    for path in folder.list_files(glob_pattern="**/*.jsonl.gz"):
        with folder.open(path, "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                removed[rec["id"]] = (rec["metadata"]["reason"], rec["metadata"]["duplicate_of"])
    if summary["removed"] != len(removed):
        raise RuntimeError(f"dedup reported {summary['removed']} removals, {len(removed)} were written")
    return removed, summary
