"""The compute plan of a config: tokens, optimizer steps, FLOPs, GPU-hours and per-GPU memory per stage.

`vikhr run --dry-run` prints it, so that a user sees what a config asks for (a week on eight cards? does it fit
in 80 GB?) before a single weight is downloaded. Everything here is read from configuration files and file sizes:
the model's shape comes from a local `config.json`, a small built-in table of well-known models, or the hub's
`config.json` (never the weights); corpus and instruction sizes are estimated from the files' sizes and a sample of
their head. What cannot be planned that way is a `ConfigError` naming the key to change.

- `model_shape(cfg)`: the adapted model's shape (the new vocabulary) and its parameter count.
- `compute_plan(cfg, rundir)`: per stage tokens, steps, FLOPs (with the formula), wall hours and GPU-hours, and the
  memory of one GPU for the training stages; every assumption is written into the plan itself.
- `format_plan(plan)`: the plan as fixed-width tables and a few lines of formulas and assumptions.

See docs/compute.md for the formulas and where each assumption comes from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vikhr.config import Config, ConfigError, TrainConfig, resolve_path

# ---------------------------------------------------------------------------------------------------- constants

DEFAULT_CHARS_PER_TOKEN = 3.5
"""Characters per token of the new vocabulary when neither `compute.chars_per_token` nor a tokenizer report says
(the 40k RusLit tokenizer measures 3.95 on FLORES Russian; 3.5 leaves room for noisier web text)."""
BYTES_PER_CHAR = 1.9
"""UTF-8 bytes per character of Russian prose (Cyrillic letters take 2 bytes, spaces and punctuation 1), used
where a file's head cannot be sampled (parquet, `datasets` folders)."""
SAMPLE_BYTES = 1 << 18
"""Bytes read from the head of each sampled file to measure its characters (and records) per byte."""
MAX_SAMPLED_FILES = 64
"""At most this many files (spread over the list) are sampled; the rest get the sampled files' mean ratio."""
EXTEND_OVERLAP = 0.07
"""`tokenizer.mode: extend` on a SentencePiece base: share of the trained pieces the base already has (or the
Cyrillic filter drops). Measured: 40k RusLit pieces on Mistral-7B gave 37,326 new ones (README, `extend`)."""
RUNTIME_FIXED_GB = 2.0
"""Per-GPU memory the estimate adds for the CUDA context, cuBLAS workspaces and NCCL buffers."""
RUNTIME_SLACK = 0.10
"""Share added on top of the counted tensors for allocator fragmentation and short-lived temporaries."""
ACT_BYTES_PER_LAYER = 34
"""Korthikanti et al. (2022): one transformer layer keeps about 34·b·s·h bytes of 16-bit activations for its
backward (plus 5·heads·s²·b for the attention matrix, which flash / memory-efficient attention does not keep)."""
PAPER_REFERENCE = "Vikhr paper: about 1,000 A100-hours for continued pre-training on 11B tokens"
"""The paper's own figure, printed beside the plan as a reference point only."""
METADATA_KEYS = frozenset({"id", "name", "source", "language", "lang", "url", "license", "orig_instruction"})
"""JSON keys whose string values are not training text (left out of the instruction and preference estimates)."""
FLASH_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3")
"""Attention kernels that do not keep the s×s attention matrix for the backward (on a GPU)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?$")


def _decoder(
    model_type: str, h: int, layers: int, heads: int, kv: int, inter: int, vocab: int, tied: bool, tok: str
) -> dict[str, Any]:
    return {
        "model_type": model_type, "hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": vocab, "tie_word_embeddings": tied,
        "_tokenizer_kind": tok,
    }  # fmt: skip


def _encoder(model_type: str, h: int, layers: int, heads: int, inter: int, vocab: int, pos: int, types: int):
    return {
        "model_type": model_type, "hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": inter, "vocab_size": vocab, "max_position_embeddings": pos, "type_vocab_size": types,
    }  # fmt: skip


_MISTRAL_7B = _decoder("mistral", 4096, 32, 32, 8, 14336, 32000, False, "sentencepiece")
_SMOLLM2_135M = _decoder("llama", 576, 30, 9, 3, 1536, 49152, True, "bytelevel")
_MINILM = _encoder("bert", 384, 6, 12, 1536, 30522, 512, 2)
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "mistralai/Mistral-7B-v0.1": _MISTRAL_7B,
    "mistralai/Mistral-7B-Instruct-v0.1": _MISTRAL_7B,
    "mistralai/Mistral-7B-Instruct-v0.2": _MISTRAL_7B,
    "meta-llama/Llama-2-7b-hf": _decoder("llama", 4096, 32, 32, 32, 11008, 32000, False, "sentencepiece"),
    "meta-llama/Meta-Llama-3-8B": _decoder("llama", 4096, 32, 32, 8, 14336, 128256, False, "bytelevel"),
    "smollm2-135m-instruct": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M": _SMOLLM2_135M,
    "intfloat/multilingual-e5-large": _encoder("xlm-roberta", 1024, 24, 16, 4096, 250002, 514, 1),
    "all-minilm-l6-v2": _MINILM,
    "sentence-transformers/all-MiniLM-L6-v2": _MINILM,
}
"""Shapes of well-known models, so that the shipped configs plan without a hub: the config.json numbers of each
(Mistral-7B-v0.1: 7.24B parameters), the aliases of `vikhr.models` included. Looked up case-insensitively."""
_KNOWN_LOWER = {k.lower(): v for k, v in KNOWN_MODELS.items()}

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "deberta-v2", "electra")
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2", "granite")


# ------------------------------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs and memory of a model depend on, read from its config (never from its weights)."""

    name: str
    """The model spec it was read for."""
    origin: str
    """Where the numbers come from: a config.json path, `built-in table`, or `hub config.json`."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    """Rows of the embedding matrix (for the adapted model: the new, padded vocabulary)."""
    tied: bool
    """Input embedding and LM head share one matrix."""
    arch: Literal["decoder", "encoder"] = "decoder"
    head_dim: int = 0
    """Per-head width when the config sets it (0: hidden // heads)."""
    qkv_bias: bool = False
    qk_norm: bool = False
    max_positions: int = 0
    """Encoders: learned position embeddings."""
    type_vocab: int = 0
    """Encoders: token-type embeddings."""
    tokenizer_kind: str = ""
    """`sentencepiece` or `bytelevel` when known (how `tokenizer.mode: extend` grows the vocabulary)."""
    vocab_note: str = ""
    """How `vocab` was obtained (exact, or the approximation used)."""

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        """Parameters of one block. Decoder (Llama/Mistral): attention h·(h + 2·kv·h/heads) + h·h, MLP 3·h·i, two
        RMSNorms 2·h. Encoder (BERT): attention 4·(h² + h), MLP 2·h·i + i + h, two LayerNorms 4·h."""
        h, i, d = self.hidden, self.intermediate, self.dim_head
        if self.arch == "encoder":
            return 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
        q, kv = self.heads * d, self.kv_heads * d
        attn = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * d
        return attn + 3 * h * i + 2 * h

    @property
    def embedding_params(self) -> int:
        """Input embeddings (and an untied LM head); encoders: token, position and type embeddings."""
        if self.arch == "encoder":
            return (self.vocab + self.max_positions + self.type_vocab) * self.hidden
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        """All parameters, each shared matrix counted once. Decoder: embeddings + layers + final norm h. Encoder:
        embeddings + their LayerNorm 2·h + layers + a scalar head (BERT's pooler h² + h and classifier h + 1; the
        same count as XLM-R's dense + out_proj)."""
        if self.arch == "encoder":
            h = self.hidden
            return self.embedding_params + 2 * h + self.layers * self.layer_params + h * h + h + h + 1
        return self.embedding_params + self.layers * self.layer_params + self.hidden

    @property
    def non_embedding_params(self) -> int:
        return self.params - self.embedding_params

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(
            params=self.params,
            non_embedding_params=self.non_embedding_params,
            embedding_params=self.embedding_params,
        )
        return out


def _shape_from_config(d: dict[str, Any], name: str, origin: str, key: str) -> ModelShape:
    """A `ModelShape` from config.json data; a config this module cannot count is a ConfigError naming `key`."""
    mt = str(d.get("model_type", "")).lower()
    if any(d.get(k) for k in ("num_local_experts", "num_experts", "n_routed_experts")):
        raise ConfigError(
            f"{key}: {name!r} is a mixture-of-experts model ({mt}); the compute plan counts dense models only"
        )
    text = d.get("text_config")
    if isinstance(text, dict) and "hidden_size" not in d:
        d = {**text, "model_type": text.get("model_type", mt)}
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in need if not isinstance(d.get(k), int)]
    if missing:
        raise ConfigError(
            f"{key}: the config of {name!r} ({origin}) lacks {', '.join(missing)}; the compute plan needs a "
            "Llama/Mistral-style decoder or a BERT-style encoder config"
        )
    common = dict(
        name=name, origin=origin, hidden=d["hidden_size"], layers=d["num_hidden_layers"],
        heads=d["num_attention_heads"], intermediate=d["intermediate_size"], vocab=d["vocab_size"],
    )  # fmt: skip
    if mt in ENCODER_TYPES:
        return ModelShape(
            **common, kv_heads=d["num_attention_heads"], tied=True, arch="encoder",
            max_positions=int(d.get("max_position_embeddings") or 0), type_vocab=int(d.get("type_vocab_size") or 0),
        )  # fmt: skip
    return ModelShape(
        **common,
        kv_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
        tied=bool(d.get("tie_word_embeddings", False)),
        head_dim=int(d.get("head_dim") or 0),
        qkv_bias=mt == "qwen2" or bool(d.get("attention_bias", False)),
        qk_norm=mt == "qwen3",
        tokenizer_kind=str(d.get("_tokenizer_kind", "")),
    )


def _hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    if flag.strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - an old or missing huggingface_hub: not offline by its say
        return False


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP connection to the hub, so that a machine without one gets its error at once instead of after
    the hub client's retries (about half a minute). Behind a proxy the client is left to decide."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(_hub_endpoint())
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_config(spec: str, key: str) -> dict[str, Any]:
    """The hub's config.json for `spec` (the HF cache first; the network only when not offline)."""
    from transformers import AutoConfig

    errors = []
    for local_only in (True, False):
        if not local_only and _hub_offline():
            errors.append("offline mode (HF_HUB_OFFLINE) is on")
            break
        if not local_only and not _hub_reachable():
            errors.append(f"{_hub_endpoint()} cannot be reached")
            break
        try:
            return AutoConfig.from_pretrained(spec, local_files_only=local_only).to_dict()
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear ConfigError below
            errors.append(str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__)
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ConfigError(
        f"{key}: cannot read the configuration of {spec!r} without downloading its weights: it is not a local "
        f"folder, not a known model id ({known}), and the hub config is unavailable: {errors[-1]}. Give a local "
        "model folder "
        f"(with config.json) or one of the known ids in `{key}`."
    )


def _config_of(spec: str, cfg: Config, key: str) -> tuple[dict[str, Any], str]:
    """(config.json data, where it comes from) for a model spec: a local folder, a known id or alias, or the hub."""
    if not spec or not spec.strip():
        raise ConfigError(
            f"{key} is empty: give a model folder, the alias smollm2-135m-instruct, or a hub id"
        )
    spec = spec.strip()
    local = resolve_path(cfg, spec)
    if local.is_dir():
        f = local / "config.json"
        if not f.is_file():
            raise ConfigError(f"{key}: the model folder {local} has no config.json")
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{key}: cannot read {f}: {e}") from None
        d.setdefault(
            "_tokenizer_kind", "sentencepiece" if (local / "tokenizer.model").is_file() else "bytelevel"
        )
        return d, str(f)
    known = _KNOWN_LOWER.get(spec.lower())
    if known is not None:
        return dict(known), "built-in table"
    if spec.startswith(("/", ".", "~")) or not _HUB_ID.match(spec):
        raise ConfigError(
            f"{key}: the model folder {local} does not exist (nor is {spec!r} a known id or alias: "
            f"{', '.join(sorted(KNOWN_MODELS))})"
        )
    return _hub_config(spec, key), "hub config.json"


def shape_of(spec: str, cfg: Config, key: str = "source_model") -> ModelShape:
    """The shape of the model `spec` (a folder, known id or alias, or hub id) as it is, vocabulary included."""
    d, origin = _config_of(spec, cfg, key)
    return _shape_from_config(d, spec.strip(), origin, key)


def source_model_shape(cfg: Config) -> ModelShape:
    """The source model's own shape (its original vocabulary): `source_model`."""
    return shape_of(cfg.source_model, cfg, "source_model")


def _pad(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _run_path(rundir: Any) -> Path | None:
    """A run directory given as a `RunDir`, a path, or None."""
    if rundir is None:
        return None
    return Path(getattr(rundir, "path", rundir))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _new_vocab(cfg: Config, src: ModelShape, run: Path | None) -> tuple[int, bool, str]:
    """(rows of the new embedding matrix, tied, how it was obtained), measured when the run has the stage outputs."""
    t, m = cfg.tokenizer, cfg.transplant.pad_to_multiple
    if run is not None:
        done = _read_json(run / "transplant" / "model" / "config.json")
        if done and isinstance(done.get("vocab_size"), int):
            return done["vocab_size"], bool(done.get("tie_word_embeddings", src.tied)), "transplant/model"
        stats = _read_json(run / "tokenizer" / "stats.json")
        if stats and isinstance(stats.get("vocab_size"), int):
            n = stats["vocab_size"]
            return _pad(n, m), src.tied, f"{n:,} tokens (tokenizer/stats.json) padded to a multiple of {m}"
    if t.mode == "replace":
        return (
            _pad(t.vocab_size, m),
            src.tied,
            f"tokenizer.vocab_size {t.vocab_size:,} padded to a multiple of {m}",
        )
    if src.tokenizer_kind == "bytelevel":
        new = t.max_new_tokens or t.vocab_size
        how = f"base {src.vocab:,} + {new:,} learned byte-level merges"
    else:
        new = round(t.vocab_size * (1 - EXTEND_OVERLAP))
        if t.max_new_tokens:
            new = min(new, t.max_new_tokens)
        how = (
            f"base {src.vocab:,} + ~{new:,} new pieces (approximation: vocab_size minus the ~{EXTEND_OVERLAP:.0%} "
            "the base already has or the Cyrillic filter drops, as measured on Mistral-7B)"
        )
    return _pad(src.vocab + new, m), src.tied, f"{how}, padded to a multiple of {m}"


def model_shape(cfg: Config, rundir: Any = None) -> ModelShape:
    """The adapted model's shape: the source model's body with the new vocabulary after the tokenizer and
    transplant stages (`replace`: tokenizer.vocab_size; `extend`: base + new pieces; padded to
    transplant.pad_to_multiple). Read from the run's transplant/model/config.json or tokenizer/stats.json when
    `rundir` has them, else computed from the config."""
    src = source_model_shape(cfg)
    vocab, tied, note = _new_vocab(cfg, src, _run_path(rundir))
    return dataclasses.replace(src, vocab=vocab, tied=tied, vocab_note=note)


def lora_params(shape: ModelShape, targets: list[str], r: int) -> int:
    """Parameters of LoRA adapters r·(in + out) on the named projections of every layer."""
    h, i, d = shape.hidden, shape.intermediate, shape.dim_head
    q, kv = shape.heads * d, shape.kv_heads * d
    dims = {
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }  # fmt: skip
    unknown = [t for t in targets if t not in dims]
    if unknown:
        raise ConfigError(f"sft.lora_targets: cannot size {', '.join(unknown)} (known: {', '.join(dims)})")
    return shape.layers * sum(r * (a + b) for a, b in (dims[t] for t in targets))


# ------------------------------------------------------------------------------------------- text size estimates


@dataclass
class TextSize:
    """Estimated characters and records (documents, examples, pairs) of some input files."""

    chars: float = 0.0
    records: float = 0.0
    files: int = 0
    bytes: int = 0
    sampled: int = 0
    """Files whose head was read to measure characters (and records) per byte."""


def _input_files(spec: str, cfg: Config, key: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The files of one input spec (`bundled:` name, file or folder, walked recursively), sorted."""
    from vikhr.corpus.readers import InputError, resolve_spec

    try:
        p = resolve_spec(spec, resolve_path(cfg, "."))
    except InputError as e:
        raise ConfigError(f"{key}: {e}") from None
    if p.is_file():
        return [p]
    if p.is_dir():
        if ".json" in suffixes and ((p / "dataset_info.json").is_file() or any(p.glob("*.arrow"))):
            return sorted(p.rglob("*.arrow"))  # a `datasets.save_to_disk` folder
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
        if not found:
            raise ConfigError(f"{key}: the folder {p} has no {', '.join(suffixes)} files")
        return found
    raise ConfigError(f"{key}: input not found: {p}")


def _strings(value: Any, skip: frozenset[str]) -> int:
    """Characters of all string values in a JSON value, keys in `skip` left out."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_strings(v, skip) for k, v in value.items() if k not in skip)
    if isinstance(value, list):
        return sum(_strings(v, skip) for v in value)
    return 0


def _sample(path: Path, text_field: str | None) -> tuple[float, float] | None:
    """(characters of text per byte, records per byte) measured on the head of `path`; None if not sampleable.

    .txt: all characters, one record per file. .jsonl: the `text_field` (or every string value except metadata
    keys) of each complete line. Other JSON: every decoded character (keys and syntax included: an overestimate).
    """
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".json"):
        return None
    size = path.stat().st_size
    if size == 0:
        return 0.0, 0.0
    with open(path, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
    whole = len(head) >= size
    if suffix == ".txt":
        return len(head.decode("utf-8", errors="ignore")) / len(head), 0.0  # one record per file
    if suffix == ".jsonl":
        lines = head.split(b"\n")
        if not whole:
            lines = lines[:-1]  # the last line may be cut
        used = sum(len(x) + 1 for x in lines)
        chars = records = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            records += 1
            if text_field is not None:
                v = rec.get(text_field) if isinstance(rec, dict) else None
                chars += len(v) if isinstance(v, str) else 0
            else:
                chars += _strings(rec, METADATA_KEYS)
        if used and records:
            return chars / used, records / used
    return len(head.decode("utf-8", errors="ignore")) / len(head), 0.0


def _parquet_size(path: Path, text_field: str | None) -> tuple[float, float]:
    """(characters, rows) of a parquet file from its footer: the uncompressed size of the text column (all
    columns without a text field) over BYTES_PER_CHAR. No data page is read."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    total = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            if text_field is None or col.path_in_schema.split(".")[0] == text_field:
                total += col.total_uncompressed_size
    return total / BYTES_PER_CHAR, float(meta.num_rows)


def estimate_text(specs: list[str], cfg: Config, key: str, text_field: str | None) -> TextSize:
    """Characters and records of the input files of `specs`, estimated without reading them whole (see `_sample`,
    `_parquet_size`; `datasets` arrow files: size / BYTES_PER_CHAR). `text_field` None: instruction or preference
    data, all string values count."""
    from vikhr.corpus.readers import SUFFIXES

    suffixes = SUFFIXES if text_field is not None else (*SUFFIXES, ".json")
    files = [f for s in specs for f in _input_files(s, cfg, key, suffixes)]
    out = TextSize(files=len(files))
    if not files:
        return out
    step = max(1, math.ceil(len(files) / MAX_SAMPLED_FILES))
    ratios: dict[str, list[tuple[float, float]]] = {}
    for f in files[::step]:
        r = _sample(f, text_field)
        if r is not None:
            ratios.setdefault(f.suffix.lower(), []).append(r)
            out.sampled += 1
    for f in files:
        size = f.stat().st_size
        out.bytes += size
        suffix = f.suffix.lower()
        if suffix == ".parquet":
            try:
                chars, rows = _parquet_size(f, text_field)
            except Exception as e:  # noqa: BLE001 - an unreadable footer is a config problem to name
                raise ConfigError(f"{key}: cannot read the parquet footer of {f}: {e}") from None
            out.chars += chars
            out.records += rows
        elif suffix in ratios:
            cpb = sum(r[0] for r in ratios[suffix]) / len(ratios[suffix])
            rpb = sum(r[1] for r in ratios[suffix]) / len(ratios[suffix])
            out.chars += size * cpb
            out.records += 1 if suffix == ".txt" else size * rpb
        else:
            out.chars += size / BYTES_PER_CHAR
    return out


# -------------------------------------------------------------------------------------------- chars per token


def chars_per_token(cfg: Config, rundir: Any = None) -> tuple[float, str]:
    """(characters per token of the new vocabulary, where the number comes from): `compute.chars_per_token`, else
    the tokenizer stage's measurement in `rundir`, else DEFAULT_CHARS_PER_TOKEN."""
    if cfg.compute.chars_per_token > 0:
        return cfg.compute.chars_per_token, "compute.chars_per_token"
    measured = _measured_cpt(cfg, _run_path(rundir), f"vikhr-{cfg.tokenizer.mode}")
    if measured is not None:
        return measured
    return DEFAULT_CHARS_PER_TOKEN, "assumed (no tokenizer report in the run directory yet)"


def _measured_cpt(cfg: Config, run: Path | None, name: str, prefix: bool = False) -> tuple[float, str] | None:
    """chars_per_token of the tokenizer `name` (or the first whose name starts with it) on the target language in
    the run's tokenizer report."""
    if run is None:
        return None
    rep = _read_json(run / "tokenizer" / "report" / "report.json")
    langs = (rep or {}).get("languages", {})
    rows = langs.get(cfg.language) or (next(iter(langs.values())) if langs else {})
    for key, row in rows.items():
        if (key.startswith(name) if prefix else key == name) and row.get("chars_per_token"):
            return float(row["chars_per_token"]), f"measured by the tokenizer stage ({key})"
    return None


# ---------------------------------------------------------------------------------------------------- the plan


def _gpu_hours(flops: float, cfg: Config) -> float:
    """GPU-hours at the configured peak and MFU: FLOPs / (peak·1e12 · mfu) / 3600."""
    return flops / (cfg.compute.peak_tflops * 1e12 * cfg.compute.mfu) / 3600


def _stage(
    name: str, cfg: Config, *, tokens: float, steps: int | None, parts: dict[str, float], gpus: int,
    params: int, how: str, notes: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    flops = float(sum(parts.values()))
    gpu_h = _gpu_hours(flops, cfg)
    return {
        "name": name, "tokens": float(tokens), "tokens_from": how, "steps": steps, "flops": flops,
        "flops_parts": {k: float(v) for k, v in parts.items()}, "gpus": gpus, "gpu_hours": gpu_h,
        "wall_hours": gpu_h / gpus, "params": params, "notes": list(notes or []),
    }  # fmt: skip


def _tokens_per_step(p: TrainConfig, gpus: int) -> int:
    return p.seq_len * p.batch_size * p.grad_accum * gpus


def _train_steps(tokens: float, p: TrainConfig, gpus: int) -> int:
    return max(1, math.ceil(tokens / _tokens_per_step(p, gpus)))


def _evals(p: TrainConfig, steps: int) -> int:
    """Held-out evaluations during training: every `eval_steps` (0: five per run, as `training_arguments`)."""
    every = p.eval_steps or max(steps // 5, 1)
    return max(1, steps // every)


def _heldout_tokens(p: TrainConfig, steps: int, train_tokens: float) -> float:
    """Tokens of the in-training held-out evaluations: eval_max_rows rows (0: eval_share of the data) each time."""
    per = p.eval_max_rows * p.seq_len if p.eval_max_rows else train_tokens * p.eval_share
    return _evals(p, steps) * per


def _stage_enabled(cfg: Config, name: str) -> bool:
    return not cfg.stages or name in cfg.stages


def _pretrain(cfg: Config, run: Path | None, shape: ModelShape, src: ModelShape, cpt: float, cpt_base: float):
    p, c = cfg.pretrain, cfg.compute
    tps = _tokens_per_step(p, c.gpus)
    notes: list[str] = []
    if c.pretrain_tokens > 0:
        tokens, how = c.pretrain_tokens, "compute.pretrain_tokens"
        if p.max_steps:
            notes.append(
                f"pretrain.max_steps={p.max_steps} would stop the real run at {p.max_steps * tps:.3g} tokens"
            )
    elif p.max_steps > 0:
        tokens = p.max_steps * tps
        how = (
            f"max_steps {p.max_steps} × seq_len {p.seq_len} × batch {p.batch_size} × accumulation "
            f"{p.grad_accum} × {c.gpus} GPUs"
        )
    else:
        tokens, how = _pretrain_tokens_from_data(cfg, run, cpt, notes)
    steps = _train_steps(tokens, p, c.gpus)
    n = shape.params
    parts = {"train 6·N·D": 6 * n * tokens}
    kl = (
        p.reference != "none"
    )  # the reference forward runs even at kl_weight 0: KL is still measured and logged
    if kl and p.reference == "init":
        parts["KL reference forward 2·N·D"] = 2 * n * tokens
    elif kl:  # `base`: the source model reads the same text under its own tokenizer
        ref_tokens = tokens * cpt / cpt_base
        parts["KL reference forward 2·N_src·D_src"] = 2 * src.params * ref_tokens
        notes.append(
            f"reference `base`: {src.params / 1e9:.2f}B parameters over ~{ref_tokens:.3g} source tokens"
        )
    if p.gradient_checkpointing:
        parts["checkpointing recompute 2·N_layers·D"] = 2 * shape.non_embedding_params * tokens
    held = _heldout_tokens(p, steps, tokens)
    ref_n = (n if p.reference == "init" else src.params * cpt / cpt_base) if kl else 0
    parts["held-out evals 2·(N + N_ref)·D_eval"] = 2 * (n + ref_n) * held
    if p.freeze == "body":
        notes.append("freeze: body steps still compute every gradient (they are dropped): same FLOPs")
    stage = _stage("pretrain", cfg, tokens=tokens, steps=steps, parts=parts, gpus=c.gpus, params=n, how=how,
                   notes=notes)  # fmt: skip
    stage["gpu_hours_6ND"] = _gpu_hours(parts["train 6·N·D"], cfg)
    return stage


def _pretrain_tokens_from_data(
    cfg: Config, run: Path | None, cpt: float, notes: list[str]
) -> tuple[float, str]:
    p = cfg.pretrain
    if p.data:
        specs, key, src = list(p.data), "pretrain.data", "pretrain.data"
    else:
        corpus = run / "corpus" / "data" if run is not None else None
        done = corpus is not None and (run / "manifest.json").is_file() and any(corpus.glob("*.parquet"))
        specs, key, src = ([str(corpus)], "corpus output", "the corpus stage's shards") if done else (
            list(cfg.data.target), "data.target", "data.target")  # fmt: skip
    hint = "; set compute.pretrain_tokens to plan without the data"
    try:
        size = estimate_text(specs, cfg, key, cfg.data.text_field if key != "corpus output" else "text")
    except ConfigError as e:
        raise ConfigError(f"{e}{hint}") from None
    if size.chars <= 0:
        raise ConfigError(
            f"{key}: no text found in {', '.join(specs)} (text field {cfg.data.text_field!r}){hint}"
        )
    chars = size.chars
    if 0 < p.max_documents < size.records:
        chars *= p.max_documents / size.records
        notes.append(f"pretrain.max_documents={p.max_documents} of ~{size.records:,.0f} documents")
    chars *= 1 - p.eval_share
    replay = 0.0
    if p.replay_share > 0:
        avail = estimate_text(p.replay or cfg.data.extra, cfg, "pretrain.replay", cfg.data.text_field).chars
        replay = min(chars * p.replay_share / (1 - p.replay_share), avail)
    tokens = (chars + replay) * p.epochs / cpt
    how = (
        f"estimate: {p.epochs:g} epoch(s) × ~{size.chars / 1e6:,.1f}M characters of {src} ({size.files} files, "
        f"{size.bytes / 1e6:,.1f} MB; chars per byte sampled from {size.sampled} files) less eval_share "
        f"{p.eval_share:g}{f' + {replay / 1e6:,.1f}M replay' if replay else ''} ÷ {cpt:.2f} chars/token"
    )
    return tokens, how


def _sources_size(cfg: Config) -> tuple[float, float, str]:
    """(characters, examples, description) of the instruct stage's sources: caps and weights applied."""
    from vikhr.stages.instruct import instruct_sources

    chars = records = 0.0
    parts = []
    for name, src in instruct_sources(cfg).items():
        size = estimate_text(list(src.path), cfg, f"instruct.sources.{name}.path", None)
        keep = min(1.0, src.cap / size.records) if src.cap and size.records else 1.0
        chars += size.chars * keep * src.weight
        records += size.records * keep * src.weight
        parts.append(f"{name} {size.bytes / 1e6:,.2f} MB")
    return (
        chars,
        records,
        "instruct.sources (" + ", ".join(parts) + "; caps and weights applied, deduplication not",
    )


def _sft_size(cfg: Config, run: Path | None) -> tuple[float, float, str]:
    """(characters, examples, where from) of one pass over the instruction mix, before the held-out split."""
    s, ins = cfg.sft, cfg.instruct
    if s.data:
        size = estimate_text(list(s.data), cfg, "sft.data", None)
        return size.chars, size.records, f"sft.data ({size.files} files, {size.bytes / 1e6:,.2f} MB)"
    mix = run / "instruct" / "data" / "train.jsonl" if run is not None else None
    if mix is not None and mix.is_file():
        size = estimate_text([str(mix)], cfg, "instruct output", None)
        return size.chars, size.records, f"the instruct stage's mix ({size.bytes / 1e6:,.2f} MB)"
    chars, records, how = _sources_size(cfg)
    if ins.reward_model and ins.reward_quantile > 0:
        chars *= 1 - ins.reward_quantile
        records *= 1 - ins.reward_quantile
        how += f", reward_quantile {ins.reward_quantile:g} dropped"
    return chars, records, how + ")"


def _sft(cfg: Config, run: Path | None, shape: ModelShape, src: ModelShape, cpt: float, cpt_base: float):
    s, c = cfg.sft, cfg.compute
    notes: list[str] = []
    model = shape
    if s.model == "source":
        model = src
    elif s.model:
        model = shape_of(s.model, cfg, "sft.model")
    tps = _tokens_per_step(s, c.gpus)
    if c.sft_tokens > 0:
        tokens = c.sft_tokens * s.epochs
        how = f"compute.sft_tokens {c.sft_tokens:.3g} × {s.epochs:g} epochs"
    elif s.max_steps > 0:
        tokens, how = s.max_steps * tps, f"max_steps {s.max_steps} × {tps:,} tokens per step"
    else:
        chars, _, where = _sft_size(cfg, run)
        mcpt = cpt_base if s.model == "source" else cpt
        epoch = chars * (1 - s.eval_share) / mcpt
        tokens = epoch * s.epochs
        how = (
            f"estimate: {s.epochs:g} epochs × ~{epoch:,.0f} tokens ({chars / 1e6:,.2f}M characters of {where}, "
            f"less eval_share {s.eval_share:g}, ÷ {mcpt:.2f} chars/token; chat-template markup not counted)"
        )
    steps = _train_steps(tokens, s, c.gpus)
    n = model.params
    if s.lora:
        nl = lora_params(model, list(s.lora_targets), s.lora_r)
        parts = {"forward + input grads 4·N·D": 4 * n * tokens, "LoRA weights 6·N_lora·D": 6 * nl * tokens}
        notes.append(
            f"LoRA r={s.lora_r}: {nl / 1e6:,.1f}M trained parameters; frozen weights get no weight gradient"
        )
    else:
        parts = {"train 6·N·D": 6 * n * tokens}
    if s.gradient_checkpointing:
        parts["checkpointing recompute 2·N_layers·D"] = 2 * model.non_embedding_params * tokens
    parts["held-out evals 2·N·D_eval"] = 2 * n * _heldout_tokens(s, steps, tokens)
    return _stage("sft", cfg, tokens=tokens, steps=steps, parts=parts, gpus=c.gpus, params=n, how=how,
                  notes=notes), model  # fmt: skip


def _reward(cfg: Config, cpt: float) -> tuple[dict[str, Any], ModelShape]:
    r, c = cfg.reward, cfg.compute
    model = shape_of(r.model, cfg, "reward.model")
    size = estimate_text(list(r.pairs), cfg, "reward.pairs", None)
    chars = size.chars
    notes = ["held-out pairs scored at five in-training evaluations and once at the end"]
    pairs = size.records
    if not pairs:  # parquet / datasets folders without a row count: assume pairs of full length
        pairs = max(1.0, chars / cpt / (2 * r.max_length))
        notes.append("pair count unknown: taken as the text's tokens ÷ (2 × max_length)")
    if 0 < r.max_pairs < pairs:
        chars *= r.max_pairs / pairs
        pairs = float(r.max_pairs)
    tokens_all = min(chars / cpt, pairs * 2 * r.max_length)
    train = tokens_all * (1 - r.eval_share) * r.epochs
    held = tokens_all * r.eval_share
    steps = max(1, math.ceil(pairs * (1 - r.eval_share) * r.epochs / (r.batch_size * r.grad_accum * c.gpus)))
    n = model.params
    parts = {"train 6·N·D": 6 * n * train, "held-out pairs 2·N·D_eval ×(evals+1)": 2 * n * held * 6}
    how = (
        f"estimate: ~{pairs:,.0f} pairs ({size.bytes / 1e6:,.1f} MB) ÷ {cpt:.2f} chars/token (the run's tokenizer "
        f"as a proxy for the reward model's), at most 2 × max_length {r.max_length} per pair, × {r.epochs:g} epochs"
    )
    return _stage("reward", cfg, tokens=train, steps=steps, parts=parts, gpus=c.gpus, params=n, how=how,
                  notes=notes), model  # fmt: skip


def _transplant(cfg: Config, shape: ModelShape, cpt: float) -> dict[str, Any]:
    """The transplant stage: the diagnostics' forwards (base and transplanted model on the held-out lines), and
    for `calibrated` the calibration (one frozen forward, then softmax regression of the new rows)."""
    t = cfg.transplant
    lines = 2 * t.eval_lines * 150 / cpt  # held-out lines of two languages, ~150 characters each
    diagnostics = {"diagnostics 2·N·D (base + transplanted)": 2 * 2 * shape.params * lines}
    notes = ["one process (not distributed); diagnostics assume ~150 characters per held-out line"]
    if t.method != "calibrated":
        how = f"transplant.eval_lines {t.eval_lines} per language (method `{t.method}`: no training)"
        return _stage("transplant", cfg, tokens=lines, steps=None, parts=diagnostics, gpus=1,
                      params=shape.params, how=how, notes=notes)  # fmt: skip
    T, E, vh = t.calibration_tokens, t.calibration_epochs, shape.vocab * shape.hidden
    parts = {
        "frozen body forward 2·N_layers·T": 2 * shape.non_embedding_params * T,
        "fit new rows 4·V·h·0.9T·epochs": 4 * vh * 0.9 * T * E,
        "held-out loss 2·V·h·0.1T·(epochs+1)": 2 * vh * 0.1 * T * (E + 1),
        **diagnostics,
    }
    steps = E * math.ceil(0.9 * T / 2048)
    how = f"transplant.calibration_tokens {T:,} (Adam on the new rows, 2,048 tokens per step)"
    return _stage("transplant (calibrated)", cfg, tokens=T, steps=steps, parts=parts, gpus=1,
                  params=shape.params, how=how, notes=notes)  # fmt: skip


def _instruct_scoring(cfg: Config, reward: ModelShape, cpt: float) -> dict[str, Any]:
    ins = cfg.instruct
    chars, records, where = _sources_size(cfg)
    where += ")"
    tokens = min(chars / cpt, records * ins.reward_max_length) if records else chars / cpt
    parts = {"reward forward 2·N_reward·D": 2 * reward.params * tokens}
    return _stage("instruct (reward filter)", cfg, tokens=tokens, steps=None, parts=parts, gpus=1,
                  params=reward.params, how=f"every example of {where} scored once",
                  notes=["one process"])  # fmt: skip


def _evaluate(cfg: Config, models: dict[str, tuple[ModelShape, float]]) -> dict[str, Any]:
    """Forward passes of the evaluation: task requests (context + each choice), held-out text, generated answers."""
    e = cfg.evaluate
    notes: list[str] = []
    task_chars = 0
    from vikhr.eval.tasks.core import build_items, load_task

    for spec in e.tasks:
        try:
            items, _ = build_items(
                load_task(resolve_path(cfg, spec) if spec.endswith((".yaml", ".yml")) else spec),
                limit=e.limit or None,
            )
        except Exception as ex:  # noqa: BLE001 - a task that cannot be read now is left out of the estimate
            notes.append(f"task {spec} not counted ({str(ex).splitlines()[0][:80]})")
            continue
        task_chars += sum(len(it.context) + len(c) for it in items for c in (it.continuations or [""]))
    try:
        from vikhr.stages.common import held_out_texts, prompt_lines

        files = e.text or cfg.transplant.eval_texts
        key = "evaluate.text" if e.text else "transplant.eval_texts"
        text_chars = sum(sum(map(len, v)) for v in held_out_texts(cfg, files, key, e.text_lines).values())
        prompts = prompt_lines(cfg, e.prompts, e.max_prompts, "evaluate.prompts")
    except (OSError, ValueError) as ex:
        raise ConfigError(f"evaluate: {ex}") from None
    prompt_chars = sum(map(len, prompts))
    parts: dict[str, float] = {}
    tokens_total = 0.0
    for name, (shape, mcpt) in models.items():
        d = (task_chars + text_chars + prompt_chars) / mcpt + len(prompts) * e.max_new_tokens
        parts[f"{name} 2·N·D"] = 2 * shape.params * d
        tokens_total += d
    notes.append("speed measurement not counted; generation counted as one forward per new token (KV cache)")
    how = (
        f"{len(e.tasks)} tasks (context + each choice, limit {e.limit or 'none'}), held-out text, "
        f"{len(prompts)} prompts × {e.max_new_tokens} new tokens, per model: {', '.join(models)}"
    )
    params = max(s.params for s, _ in models.values()) if models else 0
    return _stage("evaluate", cfg, tokens=tokens_total, steps=None, parts=parts, gpus=1, params=params,
                  how=how, notes=notes)  # fmt: skip


# ------------------------------------------------------------------------------------------------------- memory


def _activation_bytes(shape: ModelShape, p: TrainConfig, rows: int, seq: int, checkpointing: bool) -> dict:
    """Activations kept for the backward on one GPU, per Korthikanti et al.; 16-bit unless bf16 is off."""
    b, s, h, L = rows, seq, shape.hidden, shape.layers
    width = 2 if p.bf16 != "false" else 4
    per_layer = ACT_BYTES_PER_LAYER * b * s * h * width / 2
    if p.attn_implementation not in FLASH_ATTENTION:
        per_layer += 5 * shape.heads * s * s * b * width / 2
    if checkpointing:
        # the residual stream is float32 (fp32 weights under autocast), saved at every layer's input
        return {
            "activations: checkpoints L·b·s·h·4 B": L * b * s * h * 4,
            "activations: one layer recomputed": per_layer,
        }
    return {"activations: all layers": L * per_layer}


def _memory_row(
    stage: str, cfg: Config, shape: ModelShape, p: TrainConfig, *, trained: int, frozen: int = 0,
    reference: ModelShape | None = None, rows: int, seq: int, checkpointing: bool, loss_heads: int,
    kl_chunk: int = 1024,
) -> dict[str, Any]:  # fmt: skip
    """Bytes on one GPU while training `shape` (`trained` parameters with AdamW, `frozen` without)."""
    c = cfg.compute
    sharded = c.strategy in ("fsdp", "zero3")
    g = c.gpus if sharded else 1
    share = f"/{c.gpus} GPUs" if sharded and c.gpus > 1 else ""
    items: dict[str, float] = {
        f"weights fp32 4 B/param{share}": 4 * (trained + frozen) / g,
        f"gradients fp32 4 B/param{share}": 4 * trained / g,
        f"AdamW states fp32 8 B/param{share}": 8 * trained / g,
    }
    if sharded and c.gpus > 1:
        layer = shape.layer_params * 4
        root = (shape.params - shape.layers * shape.layer_params) * 4
        items["gathered: root unit + 2 layers (params), root + 1 layer (grads)"] = 2 * root + 3 * layer
    elif c.strategy == "ddp" and c.gpus > 1:
        items["DDP gradient buckets 4 B/param"] = 4 * trained
    if reference is not None:
        items["KL reference bf16 2 B/param, whole copy per GPU"] = 2 * reference.params
    items.update(_activation_bytes(shape, p, rows, seq, checkpointing))
    if loss_heads:
        n = rows * (seq - 1)
        ch = min(kl_chunk, n)
        v, h = shape.vocab, shape.hidden
        items[f"loss: {2 * loss_heads} × chunk {ch} × V logits fp32"] = 2 * loss_heads * ch * v * 4
        items[f"loss: {loss_heads} gradient buffer(s) [n,h] + [V,h] fp32, +[V,h] in backward"] = (
            loss_heads * (n * h + v * h) * 4 + v * h * 4
        )
        if reference is not None:
            items["loss: reference final hidden states bf16"] = n * h * 2
    tensors = sum(items.values())
    items[f"runtime: {RUNTIME_FIXED_GB:g} GB + {RUNTIME_SLACK:.0%} slack"] = (
        RUNTIME_FIXED_GB * 1e9 + RUNTIME_SLACK * tensors
    )
    total = sum(items.values())
    cap = c.gpu_memory_gb * 1e9
    return {
        "stage": stage, "strategy": c.strategy, "gpus": c.gpus, "micro_batch": f"{rows} × {seq}",
        "items": items, "total": total, "capacity": cap, "fits": total <= cap, "headroom": cap - total,
    }  # fmt: skip


def _memory(cfg: Config, stages: dict, shapes: dict[str, ModelShape]) -> list[dict[str, Any]]:
    rows = []
    if "pretrain" in stages:
        p, shape = cfg.pretrain, shapes["pretrain"]
        kl = p.reference != "none"
        ref = (shape if p.reference == "init" else shapes["source"]) if kl else None
        rows.append(_memory_row(
            "pretrain", cfg, shape, p, trained=shape.params, reference=ref, rows=p.batch_size, seq=p.seq_len,
            checkpointing=p.gradient_checkpointing, loss_heads=2 if kl else 1, kl_chunk=p.kl_chunk,
        ))  # fmt: skip
    if "sft" in stages:
        s, shape = cfg.sft, shapes["sft"]
        trained = lora_params(shape, list(s.lora_targets), s.lora_r) if s.lora else shape.params
        frozen = shape.params if s.lora else 0
        rows.append(_memory_row(
            "sft" + (" (LoRA)" if s.lora else ""), cfg, shape, s, trained=trained, frozen=frozen, rows=s.batch_size,
            seq=s.seq_len, checkpointing=s.gradient_checkpointing, loss_heads=1,
        ))  # fmt: skip
    if "reward" in stages:
        r, shape = cfg.reward, shapes["reward"]
        rp = TrainConfig(attn_implementation="sdpa")
        rows.append(_memory_row(
            "reward", cfg, shape, rp, trained=shape.params, rows=2 * r.batch_size, seq=r.max_length,
            checkpointing=False, loss_heads=0,
        ))  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------- compute_plan


FORMULAS = [
    "training FLOPs = 6·N·D (N: all parameters, embeddings and LM head included; D: trained tokens)",
    "KL reference forward = 2·N_ref·D (pretrain.reference init or base, also at kl_weight 0: the KL is still measured)",
    "gradient checkpointing recompute = 2·N_layers·D (the decoder layers; embeddings and LM head are not recomputed)",
    "LoRA: 4·N·D (forward + gradients of the activations) + 6·N_lora·D; evaluation and scoring: 2·N·D",
    "GPU-hours = FLOPs / (peak_tflops·1e12 · mfu) / 3600; wall hours = GPU-hours / GPUs of the stage",
    "steps = ceil(D / (seq_len · batch_size · grad_accum · gpus))",
]


def compute_plan(cfg: Config, rundir: Any = None) -> dict[str, Any]:
    """Tokens, steps, FLOPs, hours and per-GPU memory of every GPU stage the config runs, with the formulas and
    assumptions that produced them. Nothing is downloaded or loaded: shapes come from config files and the
    built-in table, sizes from file sizes. `rundir` (a `RunDir` or a path; optional) supplies what earlier stages
    measured: the tokenizer's chars per token and vocabulary, the corpus stage's shards, the instruct mix."""
    run = _run_path(rundir)
    if run is not None and not run.is_dir():
        run = None
    c = cfg.compute
    src = source_model_shape(cfg)
    shape = model_shape(cfg, run)
    cpt, cpt_from = chars_per_token(cfg, run)
    base = _measured_cpt(cfg, run, "base:", prefix=True)
    cpt_base, cpt_base_from = base if base else (cpt, "not measured: taken equal to the new vocabulary's")
    stages: dict[str, dict[str, Any]] = {}
    shapes: dict[str, ModelShape] = {"pretrain": shape, "source": src}
    skipped: list[str] = []
    if _stage_enabled(cfg, "transplant"):
        stages["transplant"] = _transplant(cfg, shape, cpt)
    if _stage_enabled(cfg, "pretrain"):
        stages["pretrain"] = _pretrain(cfg, run, shape, src, cpt, cpt_base)
    else:
        skipped.append("pretrain")
    reward_shape = None
    if _stage_enabled(cfg, "reward") and cfg.reward.pairs:
        stages["reward"], reward_shape = _reward(cfg, cpt)
        shapes["reward"] = reward_shape
    elif _stage_enabled(cfg, "reward"):
        skipped.append("reward (no reward.pairs)")
    ins = cfg.instruct
    if _stage_enabled(cfg, "instruct") and ins.reward_model and not cfg.sft.data:
        rm = reward_shape if ins.reward_model == "reward" else None
        if rm is None:
            key = "instruct.reward_model" if ins.reward_model != "reward" else "reward.model"
            rm = shape_of(cfg.reward.model if ins.reward_model == "reward" else ins.reward_model, cfg, key)
        stages["instruct"] = _instruct_scoring(cfg, rm, cpt)
    if _stage_enabled(cfg, "sft"):
        stages["sft"], shapes["sft"] = _sft(cfg, run, shape, src, cpt, cpt_base)
    else:
        skipped.append("sft")
    if _stage_enabled(cfg, "evaluate") and cfg.evaluate.models:
        by_name = {"source": (src, cpt_base), "transplant": (shape, cpt), "pretrain": (shape, cpt)}
        by_name["sft"] = (shapes.get("sft", shape), cpt)
        stages["evaluate"] = _evaluate(cfg, {m: by_name[m] for m in cfg.evaluate.models})
    total_flops = sum(s["flops"] for s in stages.values())
    assumptions = [
        f"chars per token {cpt:.2f}: {cpt_from}; the source model's tokenizer {cpt_base:.2f}: {cpt_base_from}",
        "corpus and instruction sizes are estimates: file sizes × characters per byte sampled from the files' heads "
        f"(parquet: uncompressed text column ÷ {BYTES_PER_CHAR} bytes per char)",
        "N counts the input embedding of an untied model too (a lookup, no FLOPs): the usual 6·N·D convention, "
        f"here {shape.vocab * shape.hidden / shape.params:.1%} high for the untied case"
        if not shape.tied
        else "N counts the tied embedding once: it is the LM head's matmul",
        "attention score FLOPs (∝ seq_len²) are not in 6·N·D: +"
        f"{6 * shape.layers * cfg.pretrain.seq_len * shape.hidden * 2 / (6 * shape.params):.1%} at pretrain.seq_len",
        f"the same MFU {c.mfu:g} for every stage (small evaluation batches reach less); "
        f"peak {c.peak_tflops:g} TFLOP/s is the card's dense bf16",
        "memory: weights, gradients and AdamW states in fp32 (the stages load float32 and train under bf16 "
        "autocast); the KL reference is a bf16 copy held whole on every GPU, not sharded (vikhr.train.trainer); the "
        "loss is computed in chunks of pretrain.kl_chunk rows (vikhr.train.kl)",
        "fsdp / zero3: weights, gradients and AdamW states sharded over compute.gpus; the root unit (embeddings, LM "
        "head) stays gathered through forward and backward, plus the current and the prefetched layer; ddp: "
        "everything replicated, plus DDP's gradient buckets",
        "activations: 34·b·s·h bytes per layer (Korthikanti et al., 16-bit)"
        + (
            "; the s² attention term dropped: sdpa / flash attention keep no attention matrix"
            if cfg.pretrain.attn_implementation in FLASH_ATTENTION
            else "; + 5·heads·s²·b for eager attention"
        ),
    ]
    return {
        "config": cfg.config_path or "defaults",
        "model": shape.as_dict(),
        "source_model": src.as_dict(),
        "hardware": dataclasses.asdict(c),
        "chars_per_token": {"value": cpt, "from": cpt_from, "source_tokenizer": cpt_base},
        "stages": stages,
        "not_planned": skipped + ["corpus, tokenizer, report: CPU work, no GPU FLOPs"],
        "total": {
            "flops": total_flops,
            "gpu_hours": _gpu_hours(total_flops, cfg),
            "wall_hours": sum(s["wall_hours"] for s in stages.values()),
        },
        "memory": _memory(cfg, stages, shapes),
        "formulas": FORMULAS,
        "assumptions": assumptions,
        "paper": PAPER_REFERENCE,
    }


# ---------------------------------------------------------------------------------------------------- printing


def _flops(x: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:,.1f} {unit}"
    return f"{x:,.0f} FLOP"


def _count(x: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:,.2f}{unit}"
    return f"{x:,.0f}"


def _duration(hours: float) -> str:
    s = hours * 3600
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} d"


def _hours(h: float) -> str:
    if h >= 100:
        return f"{h:,.0f}"
    if h >= 0.1:
        return f"{h:.2f}"
    return f"{h:.2g}"


def _gb(x: float) -> str:
    return f"{x / 1e9:,.2f} GB"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            x.rjust(w) if i in right else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True))
        )

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text: a table of stages, a memory table per training stage, formulas and assumptions."""
    hw, m = plan["hardware"], plan["model"]
    out = [
        f"Compute plan for {plan['config']}",
        f"model: {m['name']} ({m['origin']}) with a {m['vocab']:,}-row vocabulary ({m['vocab_note']}): "
        f"{m['params'] / 1e9:.3f}B parameters, {m['non_embedding_params'] / 1e9:.3f}B without embeddings, "
        f"{'tied' if m['tied'] else 'untied'}; {m['layers']} layers, hidden {m['hidden']}, {m['heads']} heads "
        f"({m['kv_heads']} kv), MLP {m['intermediate']}",
        f"hardware: {hw['gpus']} × {hw['gpu']} ({hw['gpu_memory_gb']:g} GB, {hw['peak_tflops']:g} TFLOP/s bf16 "
        f"peak) at MFU {hw['mfu']:g}, {hw['strategy']}",
        "",
    ]
    rows = []
    for s in plan["stages"].values():
        steps = f"{s['steps']:,}" if s["steps"] else "-"
        rows.append([s["name"], _count(s["params"]), _count(s["tokens"]), steps, _flops(s["flops"]),
                     str(s["gpus"]), _duration(s["wall_hours"]), _hours(s["gpu_hours"])])  # fmt: skip
    t = plan["total"]
    rows.append(
        ["total", "", "", "", _flops(t["flops"]), "", _duration(t["wall_hours"]), _hours(t["gpu_hours"])]
    )
    header = ["stage", "params", "tokens", "steps", "FLOPs", "GPUs", "wall", f"{hw['gpu']}-hours"]
    out += _table(header, rows, right={1, 2, 3, 4, 5, 6, 7})
    out.append("")
    for s in plan["stages"].values():
        out.append(f"{s['name']}: tokens from {s['tokens_from']}")
        parts = "; ".join(f"{k} = {_flops(v)}" for k, v in s["flops_parts"].items())
        out.append(f"  FLOPs: {parts}")
        out += [f"  note: {n}" for n in s["notes"]]
    if plan["not_planned"]:
        out.append("not planned: " + "; ".join(plan["not_planned"]))
    for mem in plan["memory"]:
        verdict = "fits" if mem["fits"] else "does not fit"
        out += [
            "",
            f"memory per GPU, {mem['stage']} ({mem['strategy']} over {mem['gpus']} GPUs, micro-batch "
            f"{mem['micro_batch']}): {_gb(mem['total'])} of {_gb(mem['capacity'])}: {verdict} "
            f"({'headroom' if mem['fits'] else 'short by'} {_gb(abs(mem['headroom']))})",
        ]
        out += [
            "  " + x for x in _table(["item", "bytes"], [[k, _gb(v)] for k, v in mem["items"].items()], {1})
        ]
    out += ["", "formulas:"] + [f"  {f}" for f in plan["formulas"]]
    out += ["assumptions:"] + [f"  {a}" for a in plan["assumptions"]]
    pre = plan["stages"].get("pretrain")
    out.append("")
    out.append(f"reference: {plan['paper']}.")
    if pre:
        out.append(
            f"this plan: {_hours(pre['gpu_hours'])} {hw['gpu']}-hours for pretrain on {_count(pre['tokens'])} tokens "
            f"at MFU {hw['mfu']:g}, {_hours(pre['gpu_hours_6ND'])} of them for 6·N·D alone"
        )
    return "\n".join(out)
