"""Regenerate the bundled task data from the shared data folder, deterministically.

    python -m vikhr.eval.tasks.bundle [--shared DIR] [--out DIR]

Copies the four Russian SuperGLUE files unchanged, draws a stratified, seeded subset of MMLU-Pro (per
category) and of its original-MMLU questions (per MMLU subject), copies both licences and writes
PROVENANCE.json (sources, selection, counts, sha256). Running it twice gives byte-identical files."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

from vikhr.log import get_logger, setup_logging
from vikhr.paths import shared_data_dir

logger = get_logger("vikhr.eval.tasks.bundle")

DATA_DIR = Path(__file__).resolve().parent / "data"
RSG_FILES = ("rsg_lidirus.jsonl", "rsg_parus.jsonl", "rsg_rcb.jsonl", "rsg_rwsd.jsonl")
LICENSES = ("LICENSE.russian_superglue", "LICENSE.mmlu_pro")
MMLU_PRO_SOURCE = "mmlu_pro_test.jsonl"
MMLU_PRO_PER_CATEGORY = 50
MMLU_PER_SUBJECT = 10
SEED = 0


def stratified_sample(rows: list[dict], key: str, per_group: int, seed: int) -> list[dict]:
    """Up to `per_group` rows of each value of `key`, drawn with one seeded RNG over the groups in sorted
    order; the chosen rows keep their order in `rows`."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row[key]].append(i)
    rng = random.Random(seed)
    chosen: list[int] = []
    for name in sorted(groups):
        members = groups[name]
        chosen += rng.sample(members, min(per_group, len(members)))
    return [rows[i] for i in sorted(chosen)]


def _eval_dir(shared: Path) -> Path:
    for candidate in (shared / "data" / "eval", shared / "eval", shared):
        if (candidate / MMLU_PRO_SOURCE).is_file():
            return candidate
    raise FileNotFoundError(f"{shared}: no {MMLU_PRO_SOURCE} in data/eval, eval or the folder itself")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundle(shared: Path, out: Path = DATA_DIR) -> dict:
    """Write the bundled files from the shared folder (`shared`, its `data/eval` or `eval`) into `out`;
    returns the provenance record it also writes as PROVENANCE.json."""
    src = _eval_dir(Path(shared))
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    for name in (*RSG_FILES, *LICENSES):
        shutil.copyfile(src / name, out / name)
        files[name] = {"source": f"data/eval/{name}", "selection": "copied unchanged"}
    rows = [
        json.loads(line)
        for line in (src / MMLU_PRO_SOURCE).read_text(encoding="utf-8").split("\n")
        if line.strip()
    ]
    subsets = {
        "mmlu_pro_subset.jsonl": (
            stratified_sample(rows, "category", MMLU_PRO_PER_CATEGORY, SEED),
            f"{MMLU_PRO_PER_CATEGORY} per `category` (all 14), random.Random({SEED}) over the sorted "
            "categories; options kept as they are (up to 10)",
        ),
        "mmlu_subset.jsonl": (
            stratified_sample(
                [r for r in rows if r["src"].startswith("ori_mmlu-")], "src", MMLU_PER_SUBJECT, SEED
            ),
            f"items whose `src` starts with `ori_mmlu-`, {MMLU_PER_SUBJECT} per `src` (MMLU subject), "
            f"random.Random({SEED}) over the sorted subjects; MMLU-Pro's options (up to 10) kept",
        ),
    }
    for name, (subset, how) in subsets.items():
        _write_jsonl(out / name, subset)
        files[name] = {"source": f"data/eval/{MMLU_PRO_SOURCE}", "selection": how}
    for name, record in files.items():
        path = out / name
        if path.suffix == ".jsonl":
            record["items"] = sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
        record["sha256"] = _sha256(path)
        record["source_sha256"] = _sha256(src / record["source"].removeprefix("data/eval/"))
    provenance = {"generator": "python -m vikhr.eval.tasks.bundle", "files": files}
    (out / "PROVENANCE.json").write_text(
        json.dumps(provenance, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    logger.info("bundled %d files from %s into %s", len(files), src, out)
    return provenance


def main(argv: list[str] | None = None) -> None:
    """Command line: regenerate the bundled data."""
    parser = argparse.ArgumentParser(
        prog="python -m vikhr.eval.tasks.bundle", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--shared", type=Path, default=None, help="the shared folder (default: ../shared/data)"
    )
    parser.add_argument("--out", type=Path, default=DATA_DIR, help=f"output folder (default: {DATA_DIR})")
    args = parser.parse_args(argv)
    setup_logging()
    shared = args.shared or shared_data_dir()
    if shared is None:
        parser.error("no shared data folder found; pass --shared DIR")
    bundle(shared, args.out)


if __name__ == "__main__":
    main()
