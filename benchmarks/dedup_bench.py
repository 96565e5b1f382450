"""Paragraph dedup on real data: RusLit plus 10% planted near-copies, our datatrove pipeline against datasketch.

    .venv/bin/python benchmarks/dedup_bench.py [--limit N] [--tasks 4] [--workers 2] [--datasketch both]

Every RusLit paragraph (one per non-empty line; the one cp1251 file is decoded as such) plus planted copies of 10%
of them, each with 0-3 random word edits (substitute / insert / delete), placed after its original: half within the
next 20 paragraphs, half anywhere later (mostly other shards, so other tasks). The input is written as gzip JSONL
shards in global order (`file_index`, `seq` in metadata), `run_dedup` runs in a child process on the local
executor, and a one-process datasketch MinHashLSH (exact dict + LSH, no verification) runs on the same input in
another child, in first-occurrence order.

Measures: paragraphs/s end to end; recall on planted copies whose true shingle Jaccard with their original is
>= threshold, and on all planted copies (a copy counts as found when it is removed, for any reason); precision
of near-duplicate removals = share whose true shingle Jaccard (string word 3-grams, no hashing) with their
`duplicate_of` is >= threshold; exact removals whose normalised text differs from their `duplicate_of`'s;
`duplicate_of` pointing at a removed or later paragraph; peak RSS of the driving process and the largest worker
(VmHWM sampled from /proc). Prints a table, writes benchmarks/results/dedup_bench.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from vikhr.config import DedupConfig
from vikhr.corpus.dedup import EXACT, NEAR, normalise, resolve_bands_rows, words
from vikhr.paths import shared_data_dir

RESULTS = Path(__file__).resolve().parent / "results"
NEARBY = 20


# ------------------------------------------------------------------------------------------------ the input


def ruslit_paragraphs(root: Path, limit: int) -> list[tuple[str, str]]:
    """(id, text) of RusLit paragraphs (non-empty lines) in file order; `limit` > 0 keeps the first `limit`."""
    out: list[tuple[str, str]] = []
    for f in sorted(root.rglob("*.txt")):
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1251")
        rel = f.relative_to(root.parent).as_posix()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        out.extend((f"{rel}#{i}", ln) for i, ln in enumerate(lines))
    return out[:limit] if limit > 0 else out


def edit(text: str, n: int, rng: random.Random, donor: list[str]) -> str:
    """`text` with `n` random word edits: substitute, insert or delete a whitespace-separated word."""
    toks = text.split()
    for _ in range(n):
        op = rng.choice(("sub", "ins", "del")) if len(toks) > 1 else "ins"
        i = rng.randrange(len(toks) + (op == "ins"))
        if op == "sub":
            toks[i] = rng.choice(donor)
        elif op == "ins":
            toks.insert(i, rng.choice(donor))
        else:
            del toks[i]
    return " ".join(toks)


def plant(
    paras: list[tuple[str, str]], share: float, rng: random.Random
) -> tuple[list[tuple], dict[str, dict]]:
    """Global stream [(id, text, file, seq)] with planted copies after their originals, and the planted truth."""
    n = len(paras)
    donor = [w for _, t in rng.sample(paras, min(n, 2000)) for w in t.split()]
    slots: dict[int, list[tuple[str, str, int]]] = {}
    truth: dict[str, dict] = {}
    for k, g in enumerate(sorted(rng.sample(range(n), int(n * share)))):
        s = rng.randint(g + 1, min(n, g + NEARBY)) if rng.random() < 0.5 else rng.randint(g + 1, n)
        edits = rng.randint(0, 3)
        cid = f"planted/{k}"
        slots.setdefault(s, []).append((cid, edit(paras[g][1], edits, rng, donor), g))
        truth[cid] = {"original": paras[g][0], "edits": edits}
    stream, files, seq = [], {}, {}
    for i in range(n + 1):
        file = paras[min(i, n - 1)][0].split("#")[0]
        fi = files.setdefault(file, len(files))
        for cid, text, _ in slots.get(i, []):
            stream.append((cid, text, fi, seq.setdefault(fi, 0)))
            seq[fi] += 1
        if i < n:
            stream.append((paras[i][0], paras[i][1], fi, seq.setdefault(fi, 0)))
            seq[fi] += 1
    return stream, truth


def write_shards(stream: list[tuple], folder: Path, shards: int) -> None:
    """Contiguous slices of the stream as `<k>.jsonl.gz` (JsonlWriter's format), so shard order = global order."""
    folder.mkdir(parents=True)
    per = -(-len(stream) // shards)
    for k in range(shards):
        with gzip.open(folder / f"{k:05d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as f:
            for doc_id, text, fi, seq in stream[k * per : (k + 1) * per]:
                meta = {"source": "ruslit", "file_index": fi, "seq": seq}
                f.write(json.dumps({"text": text, "id": doc_id, "metadata": meta}, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------- child processes


class PeakSampler(threading.Thread):
    """Polls VmHWM (peak RSS) of this process's descendants every 0.2 s; `peak_kib` is the largest seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kib, self.stop = 0, threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.wait(0.2):
            for p in me.children(recursive=True):
                try:
                    with open(f"/proc/{p.pid}/status") as f:
                        hwm = next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")), 0)
                    self.peak_kib = max(self.peak_kib, hwm)
                except (OSError, StopIteration):
                    pass


def own_peak_mib() -> float:
    """Peak RSS (VmHWM) of this process; unlike ru_maxrss it does not carry the parent's peak over exec."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024


def drive_pipeline(args: dict) -> dict:
    """Child process: run `run_dedup`, return its result with wall time and peak memory."""
    from vikhr.corpus.dedup import run_dedup
    from vikhr.corpus.engine import ExecutorOptions
    from vikhr.log import setup_logging

    setup_logging("INFO")
    work = Path(args["work"])
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    result = run_dedup(
        work / "in", work / "kept", work / "removed", work / "dedup",
        opts=DedupConfig(threshold=args["threshold"], bands=args["bands"], rows=args["rows"]), tasks=args["tasks"],
        executor=ExecutorOptions(logging_root=work / "logs", workers=args["workers"]),
    )  # fmt: skip
    result["wall_s"] = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    result["peak_rss_main_mib"] = own_peak_mib()
    result["peak_rss_worker_mib"] = sampler.peak_kib / 1024
    return result


def drive_datasketch(args: dict) -> dict:
    """Child process: exact dict + datasketch MinHashLSH (no verification) over the input in global order."""
    from datasketch import MinHash, MinHashLSH

    opts = DedupConfig(threshold=args["threshold"])
    num_perm = args["num_perm"]
    params = tuple(args["params"]) if args["params"] else None
    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=opts.threshold, num_perm=num_perm, params=params)
    template = MinHash(num_perm=num_perm, seed=opts.seed)
    seen: dict[str, tuple[str, str]] = {}  # normalised text -> verdict of an exact copy
    order: dict[str, int] = {}  # id of each paragraph in the LSH -> its position
    n, verdicts = 0, {}
    for shard in sorted((Path(args["work"]) / "in").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                n += 1
                w = words(doc["text"])
                norm = " ".join(w)
                if norm in seen:
                    verdicts[doc["id"]] = seen[norm]
                    continue
                seen[norm] = (EXACT, doc["id"])
                if len(w) < opts.min_words:
                    continue
                m = MinHash(
                    num_perm=num_perm,
                    seed=opts.seed,
                    permutations=template.permutations,
                    scheme=template.scheme,
                )
                grams = [" ".join(w[i : i + opts.ngram]) for i in range(max(1, len(w) - opts.ngram + 1))]
                m.update_batch([g.encode("utf-8") for g in grams])
                cands = lsh.query(m)
                if cands:  # a copy of this one duplicates what it duplicates
                    verdicts[doc["id"]] = seen[norm] = (NEAR, min(cands, key=lambda c: order[c]))
                else:
                    order[doc["id"]] = len(order)
                    lsh.insert(doc["id"], m)
    return {
        "input": n,
        "wall_s": time.perf_counter() - t0,
        "bands": lsh.b,
        "rows": lsh.r,
        "peak_rss_main_mib": own_peak_mib(),
        "verdicts": verdicts,
    }


def in_child(mode: str, args: dict) -> dict:
    """Run `mode` in a fresh interpreter (so its peak memory is its own) and return its JSON result."""
    out = Path(args["work"]) / f"{mode}.json"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--child-args",
        json.dumps(args),
        "--child-out",
        str(out),
    ]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------- metrics


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))} if w else set()


def jac(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def score(
    verdicts: dict[str, tuple[str, str]], texts: dict, keys: dict, truth: dict, t: float, n: int
) -> dict:
    """Recall on planted copies, precision of near removals, exact errors and `duplicate_of` errors."""
    sh = lambda i: shingles(texts[i], n)  # noqa: E731
    above = [c for c, v in truth.items() if v["jaccard"] >= t]
    near = [(i, d) for i, (r, d) in verdicts.items() if r == NEAR]
    exact = [(i, d) for i, (r, d) in verdicts.items() if r == EXACT]
    near_ok = sum(jac(sh(i), sh(d)) >= t for i, d in near)
    return {
        "recall_at_threshold": sum(c in verdicts for c in above) / max(1, len(above)),
        "planted_at_threshold": len(above),
        "recall_all_planted": sum(c in verdicts for c in truth) / max(1, len(truth)),
        "near_removed": len(near),
        "near_precision": near_ok / max(1, len(near)),
        "near_below_threshold": len(near) - near_ok,
        "near_removed_planted": sum(i in truth for i, _ in near),
        "exact_removed": len(exact),
        "exact_mismatch": sum(normalise(texts[i]) != normalise(texts[d]) for i, d in exact),
        "dup_of_removed_or_later": sum(d in verdicts or keys[d] >= keys[i] for i, (_, d) in verdicts.items()),
    }


def read_removed(folder: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for p in folder.glob("*.jsonl.gz"):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                out[d["id"]] = (d["metadata"]["reason"], d["metadata"]["duplicate_of"])
    return out


# ---------------------------------------------------------------------------------------------------- main


def machine() -> dict:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    from importlib.metadata import version

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "datatrove": version("datatrove"), "datasketch": version("datasketch")}  # fmt: skip


def table(rows: list[tuple[str, dict]], fields: list[tuple[str, str]]) -> None:
    print(f"{'':34}" + "".join(f"{name:>22}" for name, _ in rows))
    for label, key in fields:
        vals = [r.get(key, "") for _, r in rows]
        print(f"{label:34}" + "".join(f"{v:>22.4g}" if isinstance(v, float) else f"{v!s:>22}" for v in vals))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="first N RusLit paragraphs (0: all)")
    ap.add_argument("--plant", type=float, default=0.1, help="share of paragraphs given a planted near-copy")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bands", type=int, default=0, help="LSH bands (0: chosen by run_dedup, set rows too)")
    ap.add_argument("--rows", type=int, default=0, help="LSH rows per band (0: chosen by run_dedup)")
    ap.add_argument("--datasketch", choices=["both", "default", "same", "none"], default="both",
                    help="datasketch with its own bands/rows for the threshold, with ours, both or none")  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS / "dedup_bench.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = {"pipeline": drive_pipeline, "datasketch": drive_datasketch}[args.child]
        Path(args.child_out).write_text(json.dumps(fn(json.loads(args.child_args))), encoding="utf-8")
        return 0

    shared = shared_data_dir()
    if shared is None:
        sys.exit("needs ../shared/data/ru/ruslit")
    load_before = os.getloadavg()
    rng = random.Random(args.seed)
    paras = ruslit_paragraphs(shared / "ru" / "ruslit", args.limit)
    stream, truth = plant(paras, args.plant, rng)
    texts = {i: t for i, t, _, _ in stream}
    keys = {i: (fi, s) for i, _, fi, s in stream}
    opts = DedupConfig(threshold=args.threshold, bands=args.bands, rows=args.rows)
    for cid, v in truth.items():
        v["jaccard"] = jac(shingles(texts[cid], opts.ngram), shingles(texts[v["original"]], opts.ngram))
    bands, rows = resolve_bands_rows(opts)
    print(f"{len(paras)} RusLit paragraphs + {len(truth)} planted = {len(stream)}; LSH {bands} x {rows}")

    with tempfile.TemporaryDirectory(prefix="dedup_bench_") as tmp:
        write_shards(stream, Path(tmp) / "in", shards=args.tasks)
        child = {"work": tmp, "threshold": args.threshold, "tasks": args.tasks, "workers": args.workers,
                 "bands": args.bands, "rows": args.rows}  # fmt: skip
        ours = in_child("pipeline", child)
        ours |= score(read_removed(Path(tmp) / "removed"), texts, keys, truth, args.threshold, opts.ngram)
        ours["paragraphs_per_s"] = ours["input"] / ours["wall_s"]
        runs = [("ours (datatrove)", ours)]
        variants = {"default": [], "same": [bands, rows]}
        for name in (
            ("default", "same")
            if args.datasketch == "both"
            else [args.datasketch] * (args.datasketch != "none")
        ):
            ds = in_child("datasketch", child | {"num_perm": bands * rows, "params": variants[name]})
            ds |= score(
                {k: tuple(v) for k, v in ds.pop("verdicts").items()},
                texts,
                keys,
                truth,
                args.threshold,
                opts.ngram,
            )
            ds["paragraphs_per_s"] = ds["input"] / ds["wall_s"]
            runs.append((f"datasketch ({'own' if name == 'default' else 'our'} b x r)", ds))

    fields = [
        ("paragraphs", "input"), ("bands x rows", "b_x_r"), ("paragraphs/s end to end", "paragraphs_per_s"),
        ("wall s", "wall_s"), (f"recall, planted J >= {args.threshold}", "recall_at_threshold"),
        ("recall, all planted", "recall_all_planted"), ("near removed", "near_removed"),
        ("near precision (true J >= t)", "near_precision"), ("near removals below t", "near_below_threshold"),
        ("exact removed", "exact_removed"), ("exact mismatches", "exact_mismatch"),
        ("dup_of removed or later", "dup_of_removed_or_later"), ("peak RSS main MiB", "peak_rss_main_mib"),
        ("peak RSS largest worker MiB", "peak_rss_worker_mib"),
    ]  # fmt: skip
    for _, r in runs:
        r["b_x_r"] = f"{r['bands']} x {r['rows']}"
    table(runs, fields)
    print("pipeline seconds per step:", ours["seconds"], "verification:", ours.get("verification"))
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    report = {
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")} | {"out": str(args.out), "planted": len(truth), "ruslit_paragraphs": len(paras),
                                  "nearby_window": NEARBY, "min_words": opts.min_words, "ngram": opts.ngram},
        "machine": machine(), "load_average_before": load_before, "load_average_after": load_after,
        "planted_jaccard_ge_threshold": sum(v["jaccard"] >= args.threshold for v in truth.values()),
        "runs": {name: r for name, r in runs},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
