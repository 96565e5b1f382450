"""Tokenizer efficiency report: characters per token on parallel text, and how one sentence is split.

The numbers behind the Vikhr paper's Table 1 and Figure 1: for each tokenizer and language, the text measured in
characters, words, UTF-8 bytes and tokens (no special tokens), written as JSON, Markdown and a bar chart.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from vikhr.log import get_logger
from vikhr.paths import shared_data_dir
from vikhr.tokenizer.surface import is_bytelevel, unicode_to_bytes

logger = get_logger(__name__)

DEFAULT_EXAMPLE = "Машинное обучение изменяет мир"
FLORES_FILES = {"ru": "flores200.devtest.rus_Cyrl", "en": "flores200.devtest.eng_Latn"}
# Files whose presence makes a folder a tokenizer folder.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_tokenizer(spec: str | Path) -> Any:
    """Load a tokenizer from a local folder (or its `tokenizer.json`), or from a hub id.

    A local folder with `tokenizer.json` loads through `TokenizersBackend`, which keeps the pipeline exactly as
    the file writes it. `AutoTokenizer` would use the class named in `tokenizer_config.json`, and in transformers
    5 some classes rebuild parts of the pipeline: `GPT2Tokenizer` replaces GPT-4o's o200k split regex with GPT-2's
    (FLORES chars/token 3.71 / 4.87 instead of 3.72 / 4.91). Other folders and hub ids go to `AutoTokenizer`.
    """
    from transformers import AutoTokenizer, TokenizersBackend

    path = Path(spec).expanduser()
    if path.is_file():
        if path.name != "tokenizer.json":
            raise ValueError(f"{path}: expected a tokenizer folder or a tokenizer.json file")
        tok = TokenizersBackend(tokenizer_file=str(path))
    elif path.is_dir():
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ValueError(f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
        if (path / "tokenizer.json").is_file():
            tok = TokenizersBackend.from_pretrained(path)
        else:
            tok = AutoTokenizer.from_pretrained(path)
    elif _looks_local(spec):
        raise FileNotFoundError(f"tokenizer path does not exist: {path}")
    else:
        try:
            tok = AutoTokenizer.from_pretrained(str(spec))
        except OSError as e:
            raise OSError(f"{spec!r} is not a local folder and could not be loaded as a hub id: {e}") from e
    if len(tok) <= len(set(tok.all_special_ids)):
        raise ValueError(
            f"{spec}: loaded tokenizer has only {len(tok)} (special) tokens; broken tokenizer files?"
        )
    return tok


def _looks_local(spec: str | Path) -> bool:
    """A Path object, or a string that cannot be a hub id (`name` or `org/name`)."""
    if isinstance(spec, Path):
        return True
    s = str(spec)
    return s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1 or s.endswith(TOKENIZER_FILES)


def default_tokenizers() -> dict[str, Path]:
    """Name -> folder for every tokenizer in the shared data folder (empty when there is no shared data)."""
    root = shared_data_dir()
    if root is None or not (root / "tokenizers").is_dir():
        return {}
    return {p.name: p for p in sorted((root / "tokenizers").iterdir()) if p.is_dir()}


def bundled_heldout_texts() -> dict[str, list[str]]:
    """Paragraphs the bundled training text leaves out (a Chekhov story, the end of an English novel)."""
    from vikhr.paths import BUNDLED_DATA

    folder = BUNDLED_DATA / "heldout"
    return {
        lang: [x for x in (folder / f"{lang}.txt").read_text(encoding="utf-8").split("\n") if x.strip()]
        for lang in ("ru", "en")
    }


def default_texts() -> dict[str, list[str]]:
    """FLORES-200 devtest lines from the shared data folder: {"ru": [...], "en": [...]}; without it, the
    bundled held-out text."""
    root = shared_data_dir()
    if root is None:
        logger.warning(
            "no shared data folder (VIKHR_SHARED_DATA, ../shared/data): using the bundled held-out text"
        )
        return bundled_heldout_texts()
    texts = {}
    for lang, name in FLORES_FILES.items():
        path = root / "parallel" / name
        if not path.is_file():
            raise FileNotFoundError(f"FLORES file missing: {path}")
        try:
            texts[lang] = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 at byte {e.start}") from e
    return texts


def measure(tokenizer: Any, lines: list[str], batch_size: int = 1024) -> dict[str, float | int | None]:
    """Size of `lines` in characters, whitespace words, UTF-8 bytes and tokens, and the ratios between them.

    Ratios are totals over all lines (not means of per-line ratios). Special tokens are not added.
    `unk_rate` is the share of tokens equal to the unknown-token id, None when the tokenizer has none.
    """
    if not lines:
        raise ValueError("measure() needs at least one line of text")
    ids: list[list[int]] = []
    for start in range(0, len(lines), batch_size):
        batch = lines[start : start + batch_size]
        ids += tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
    chars = sum(len(line) for line in lines)
    words = sum(len(line.split()) for line in lines)
    n_bytes = sum(len(line.encode("utf-8")) for line in lines)
    tokens = sum(len(x) for x in ids)
    if tokens == 0 or words == 0:
        raise ValueError(
            f"text of {len(lines)} lines has {words} words and {tokens} tokens; nothing to measure"
        )
    unk_id = tokenizer.unk_token_id
    unk = sum(x.count(unk_id) for x in ids) if unk_id is not None else None
    return {
        "lines": len(lines),
        "chars": chars,
        "words": words,
        "bytes": n_bytes,
        "tokens": tokens,
        "chars_per_token": chars / tokens,
        "tokens_per_word": tokens / words,
        "bytes_per_token": n_bytes / tokens,
        "unk_rate": None if unk is None else unk / tokens,
    }


def _readable_bytes(data: bytes) -> str:
    """UTF-8 text where the bytes form whole characters, `<0xD0>` for each byte that does not."""
    out, i = [], 0
    while i < len(data):
        try:
            out.append(data[i:].decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out.append(data[i : i + e.start].decode("utf-8"))
            i += e.start
            out.append(f"<0x{data[i]:02X}>")
            i += 1
    return "".join(out)


def split_example(tokenizer: Any, sentence: str) -> list[str]:
    """The tokens of `sentence` as readable strings, one per token id.

    Decoding each id on its own garbles byte-level BPE, whose tokens can hold part of a UTF-8 character. So for
    byte-level tokenizers each token's byte-alphabet string is mapped back to bytes and shown as text where the
    bytes form whole characters, and as `<0xD0>` per byte where they do not (spaces stay spaces). Other tokenizers
    show their vocabulary pieces as they are: SentencePiece's `▁` word marks and `<0xD0>` byte-fallback pieces.
    """
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    if not is_bytelevel(tokenizer):
        return list(pieces)
    decoder, added = unicode_to_bytes(), tokenizer.added_tokens_decoder
    out = []
    for i, piece in zip(ids, pieces, strict=True):
        if i in added or any(c not in decoder for c in piece):
            out.append(piece)
        else:
            out.append(_readable_bytes(bytes(decoder[c] for c in piece)))
    return out


def vocabulary_signature(tokenizer: Any) -> str:
    """A hash of a tokenizer's vocabulary (pieces and ids, or pieces and scores) and merges.

    Two folders holding the same tokenizer under different names (the run's base model and a shared copy of it, a
    model and its instruct variant) measure identically and would show up twice in the comparison; their
    signatures are equal. Normalizer, pre-tokenizer and added tokens are left out on purpose: the same vocabulary
    saved by another tool (a GGUF import, an older transformers) differs there but not in what it splits.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        vocab = model.get("vocab")
        vocab = sorted(vocab.items()) if isinstance(vocab, dict) else vocab
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
        data = {"type": model.get("type"), "vocab": vocab, "merges": merges}
    else:
        data = {"type": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items())}
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def _plain_name(name: str) -> str:
    """A display name without the `base: ` prefix and case: the run's `base: smollm2-135m-instruct` and a shared
    folder `smollm2-135m-instruct` are the same name."""
    return name.removeprefix("base: ").strip().lower()


def dedupe_tokenizers(
    tokenizers: dict[str, str | Path | Any], protected: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    """The tokenizers loaded (`load_tokenizer` for specs), each distinct one once, and {left-out name: the name it
    duplicates}.

    Earlier entries win, so a caller puts its own labels first (the run's base and new tokenizer before the shared
    folders). A later entry is left out when it has the same vocabulary and merges (`vocabulary_signature`) or the
    same name as an earlier one; names in `protected` are always kept (the stage reads their rows back).
    """
    kept: dict[str, Any] = {}
    same: dict[str, str] = {}
    by_signature: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for name, spec in tokenizers.items():
        tok = load_tokenizer(spec) if isinstance(spec, str | Path) else spec
        sig = vocabulary_signature(tok)
        twin = by_signature.get(sig) or by_name.get(_plain_name(name))
        if twin is not None and name not in protected:
            logger.info("tokenizer report: %s is the same tokenizer as %s; shown once", name, twin)
            same[name] = twin
            continue
        kept[name] = tok
        by_signature.setdefault(sig, name)
        by_name.setdefault(_plain_name(name), name)
    return kept, same


def efficiency_report(
    tokenizers: dict[str, str | Path | Any],
    texts: dict[str, list[str]],
    example: str = DEFAULT_EXAMPLE,
) -> dict[str, Any]:
    """Measure every tokenizer on every language's text and split the example sentence.

    `tokenizers` maps a display name to a tokenizer object or anything `load_tokenizer` accepts.
    """
    if not tokenizers:
        raise ValueError("efficiency_report() needs at least one tokenizer")
    report: dict[str, Any] = {
        "languages": {lang: {} for lang in texts},
        "example": {"text": example, "pieces": {}, "counts": {}},
        "vocab_sizes": {},
    }
    for name, spec in tokenizers.items():
        start = time.perf_counter()
        tok = load_tokenizer(spec) if isinstance(spec, str | Path) else spec
        loaded = time.perf_counter()
        report["vocab_sizes"][name] = len(tok)
        for lang, lines in texts.items():
            report["languages"][lang][name] = measure(tok, lines)
        pieces = split_example(tok, example)
        report["example"]["pieces"][name] = pieces
        report["example"]["counts"][name] = len(pieces)
        logger.info(
            "%s: loaded in %.2f s, measured in %.2f s", name, loaded - start, time.perf_counter() - loaded
        )
    return report


def _visible(piece: str) -> str:
    """A piece with control characters escaped, so that it fits on one line."""
    return "".join(repr(c)[1:-1] if not c.isprintable() and c != " " else c for c in piece)


def markdown_table(report: dict[str, Any]) -> str:
    """One Markdown table per language, then the example sentence split by each tokenizer."""
    parts = []
    vocab = report["vocab_sizes"]
    for lang, rows in report["languages"].items():
        first = next(iter(rows.values()))
        parts.append(
            f"### {lang} ({first['lines']} lines, {first['chars']:,} characters, {first['words']:,} words)"
        )
        parts.append("")
        parts.append("| tokenizer | vocab | chars/token | tokens/word | bytes/token |")
        parts.append("|---|---:|---:|---:|---:|")
        for name, m in rows.items():
            parts.append(
                f"| {name} | {vocab[name]:,} | {m['chars_per_token']:.2f} | "
                f"{m['tokens_per_word']:.2f} | {m['bytes_per_token']:.2f} |"
            )
        parts.append("")
    example = report["example"]
    parts.append(f'### "{example["text"]}"')
    parts.append("")
    width = max(len("tokenizer"), *(len(n) for n in example["pieces"]))
    lines = [f"{'tokenizer':<{width}}  tokens  pieces"]
    for name, pieces in example["pieces"].items():
        joined = " | ".join(_visible(p) for p in pieces)
        lines.append(f"{name:<{width}}  {example['counts'][name]:>6}  {joined}")
    parts += ["```", *lines, "```", ""]
    return "\n".join(parts)


def plot_efficiency(report: dict[str, Any], path: Path, title: str = "Tokenizer efficiency") -> Path:
    """Grouped bars of characters per token: one group per tokenizer, one colour per language."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    langs = list(report["languages"])
    names = list(report["vocab_sizes"])
    width = 0.8 / max(len(langs), 1)
    fig = Figure(figsize=(max(6.0, 1.3 * len(names) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, lang in enumerate(langs):
        xs = [i + (k - (len(langs) - 1) / 2) * width for i in range(len(names))]
        values = [report["languages"][lang][n]["chars_per_token"] for n in names]
        bars = ax.bar(xs, values, width, label=lang, color=f"C{k}")
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("characters per token (higher is better)")
    ax.set_title(title)
    ax.margins(y=0.12)
    ax.legend(title="language")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return path


def _atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` and rename the result into place, so a half-written file never appears."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_report(
    report: dict[str, Any], out_dir: Path, title: str = "Tokenizer efficiency"
) -> dict[str, Path]:
    """Write `report.json`, `report.md` and `efficiency.png` into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "png": out_dir / "efficiency.png",
    }
    text = json.dumps(report, ensure_ascii=False, indent=2) + "\n"
    _atomic_write(paths["json"], lambda tmp: tmp.write_text(text, encoding="utf-8"))
    md = f"# {title}\n\nCharacters per token, tokens per word and bytes per token (no special tokens).\n\n"
    md += markdown_table(report)
    if report.get("duplicates"):
        same = ", ".join(f"{a} (= {b})" for a, b in report["duplicates"].items())
        md += f"\nLeft out as the same vocabulary and merges as a tokenizer above: {same}.\n"
    _atomic_write(paths["markdown"], lambda tmp: tmp.write_text(md, encoding="utf-8"))
    plot_efficiency(report, paths["png"], title)
    logger.info("tokenizer report written to %s", out_dir)
    return paths
