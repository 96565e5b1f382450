"""Write a Hugging Face Llama-architecture model folder as one GGUF file: `vikhr export gguf MODEL OUT.gguf`.

Everything GGUF-specific comes from the `gguf` package itself: the tensor names (`gguf.TensorNameMap` for
`MODEL_ARCH.LLAMA`), the metadata keys (`GGUFWriter.add_*`), the Q8_0 quantiser (`gguf.quants`) and the merges
reader (`gguf.SpecialVocab`). What the package does not have is the row order llama.cpp expects for the query and
key projections of the `llama` architecture (it applies rotary embeddings to adjacent pairs, Hugging Face to the two
halves of each head), so `permute_qk` reorders those rows; transformers' GGUF loader undoes exactly this.

Covered: `LlamaForCausalLM` and `MistralForCausalLM` (llama.cpp's own converter maps both to the `llama` GGUF
architecture), tied (no `output.weight`: llama.cpp reuses the embedding) and untied heads, and the two tokenizer
families the toolkit makes:

- SentencePiece BPE (`tokenizer.mode: replace`, Mistral/Llama-2 bases): `tokenizer.ggml.model = "llama"` with the
  SentencePiece model's own pieces, scores and piece types (read from `tokenizer.model` or `sentencepiece.model`,
  checked piece by piece against the HF tokenizer), `add_space_prefix` from the model's dummy-prefix flag.
- byte-level BPE (SmolLM2, `tokenizer.mode: extend` of it): `tokenizer.ggml.model = "gpt2"` with the merges and a
  pre-tokenizer name that selects the same split regex as the folder's `tokenizer.json` (see `bytelevel_pre_name`).

The output file is written to a temporary file beside OUT and renamed into place; every check on the input (its
architecture, config, weights, tokenizer) and on OUT's folder runs before that file is created.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.log import get_logger

log = get_logger(__name__)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
"""HF architectures written as GGUF `llama` (llama.cpp's convert_hf_to_gguf registers both under its LlamaModel)."""
OUT_TYPES = ("f16", "q8_0")
SP_MODEL_FILES = ("tokenizer.model", "sentencepiece.model")
"""Where a SentencePiece model sits in a folder: the HF name, and the name the toolkit's tokenizer stage uses."""
PROBE_TEXT = "В 2024 году  было   3 кота.\nThe   year 1999 had  12 months."
"""Russian and English, digits, runs of spaces, a newline: where two tokenizer implementations usually part ways."""
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Llama-3's split regex, as its tokenizer.json spells it (llama.cpp and transformers call it `llama-bpe`)."""
PAD_SCORE = -1000.0
"""Score of tokens that are not SentencePiece pieces (added tokens, padding rows), as llama.cpp's converter uses."""


class GGUFExportError(ValueError):
    """The model folder cannot be written as GGUF by this exporter."""


class UnsupportedArchitectureError(GGUFExportError):
    """An architecture, config setting or tensor that the `llama` GGUF writer does not cover."""


class UnsupportedTokenizerError(GGUFExportError):
    """A tokenizer that is neither SentencePiece BPE nor byte-level BPE with a known split regex."""


class ModelFolderError(FileNotFoundError):
    """The model folder, its config.json or its safetensors weights are missing."""


class OutputPathError(FileNotFoundError):
    """OUT cannot be created: its folder does not exist, or OUT is a folder."""


# ------------------------------------------------------------------------------------------------- the plan


@dataclass
class GGUFVocab:
    """The tokenizer as GGUF stores it: one token string, score and type per embedding row, plus its settings."""

    model: str
    """`tokenizer.ggml.model`: "llama" (SentencePiece) or "gpt2" (byte-level BPE)."""
    pre: str
    """`tokenizer.ggml.pre`: the split regex llama.cpp and transformers apply before BPE."""
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]
    """bos / eos / unk / pad -> id (roles the tokenizer does not have are left out)."""
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    """SentencePiece only: whether a `▁` is put before the text (the model's add_dummy_prefix)."""
    chat_template: str | list[dict[str, str]] | None
    source: str
    """The file the vocabulary came from, for messages."""
    padded: int = 0
    """Rows of the embedding past the tokenizer, written as unused `[PAD<id>]` tokens."""


@dataclass
class PlannedTensor:
    """One tensor to write: where it is read from, its GGUF name and type, and whether its rows are reordered."""

    hf_name: str
    file: Path
    gguf_name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    permute_heads: tuple[int, int] | None = None
    """(n_head, n_head_kv) for attention query / key weights and biases."""


@dataclass
class ExportPlan:
    """Everything `export_gguf` will write, worked out (and checked) before any output exists."""

    model_dir: Path
    out_path: Path
    out_type: str
    architecture: str
    name: str
    hparams: dict[str, Any]
    tensors: list[PlannedTensor]
    vocab: GGUFVocab


@dataclass(frozen=True)
class ExportResult:
    """What `export_gguf` wrote."""

    path: Path
    size_bytes: int
    n_tensors: int
    vocab_size: int
    tokenizer_model: str
    tokenizer_pre: str
    out_type: str
    tensor_types: dict[str, int]
    seconds: float

    def summary(self) -> str:
        """A short report for the command line."""
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.tensor_types.items()))
        return (
            f"wrote {self.path}\n"
            f"  size      {self.size_bytes / 1e6:.1f} MB ({self.size_bytes} bytes), --type {self.out_type}\n"
            f"  tensors   {self.n_tensors} ({types})\n"
            f"  vocab     {self.vocab_size} tokens, tokenizer {self.tokenizer_model} / pre {self.tokenizer_pre}\n"
            f"  time      {self.seconds:.1f} s\n"
        )


# --------------------------------------------------------------------------------------------- input checks


def check_out_path(out_path: str | Path) -> Path:
    """OUT as an absolute path; raises `OutputPathError` when its folder does not exist or OUT is a folder (the
    exporter never creates folders: a typo in OUT should fail, not scatter files)."""
    out = Path(out_path).expanduser()
    if out.is_dir():
        raise OutputPathError(f"output {out} is a folder; give a file path such as {out / 'model.gguf'}")
    if not out.parent.is_dir():
        raise OutputPathError(f"the folder of the output file does not exist: {out.parent} (create it first)")
    if out.suffix != ".gguf":
        log.warning("output %s does not end in .gguf; llama.cpp tools and Ollama expect that name", out)
    return out.resolve()


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict, after checking the folder and that the architecture is one this writer covers."""
    if not model_dir.is_dir():
        raise ModelFolderError(f"model folder {model_dir} does not exist")
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{model_dir} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GGUFExportError(f"{path} is not valid JSON: {e}") from e
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES or len(archs) != 1:
        shown = ", ".join(archs) if archs else f"none (model_type {config.get('model_type')!r})"
        raise UnsupportedArchitectureError(
            f"{path}: architecture {shown} is not covered by the GGUF writer; it writes "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} (GGUF architecture 'llama')"
        )
    return config


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of the folder (one file, or the shards its index names)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing or not files:
            raise ModelFolderError(
                f"{index} names shards that are missing: {', '.join(missing) or 'none listed'}"
            )
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    if any(model_dir.glob("pytorch_model*.bin")):
        raise ModelFolderError(
            f"{model_dir} has only pytorch_model*.bin weights; the GGUF writer reads safetensors (load the model and "
            "save_pretrained it again to get them)"
        )
    raise ModelFolderError(f"{model_dir} has no weights (*.safetensors)")


def model_hparams(model_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The shape and settings the `llama` GGUF architecture records, from the HF config; raises for settings it
    cannot express (another activation, rope scaling other than linear)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise UnsupportedArchitectureError(
            f"{model_dir}: hidden_act {act!r}; the llama GGUF architecture is SiLU"
        )
    n_head = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head)
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    legacy = getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise UnsupportedArchitectureError(f"{model_dir}/config.json states no rope_theta")
    if rope_type not in ("default", "linear"):
        raise UnsupportedArchitectureError(
            f"{model_dir}/config.json: rope type {rope_type!r} is not covered (the writer covers 'default' and "
            "'linear' rotary embeddings)"
        )
    window = getattr(cfg, "sliding_window", None)
    if window and window < cfg.max_position_embeddings:
        log.warning(
            "%s: sliding_window=%d; llama.cpp's llama architecture attends to the whole context, so outputs agree "
            "with transformers only up to %d tokens",
            model_dir,
            window,
            window,
        )
    return {
        "n_layer": int(cfg.num_hidden_layers),
        "n_embd": int(cfg.hidden_size),
        "n_ff": int(cfg.intermediate_size),
        "n_head": n_head,
        "n_head_kv": n_kv,
        "head_dim": head_dim,
        "n_ctx": int(cfg.max_position_embeddings),
        "rope_theta": float(theta),
        "rope_linear_factor": float(rope.get("factor") or legacy.get("factor") or 1.0)
        if rope_type == "linear"
        else None,
        "rms_eps": float(cfg.rms_norm_eps),
        "tied": bool(getattr(cfg, "tie_word_embeddings", False)),
        "config_ids": {k: config.get(f"{k}_token_id") for k in ("bos", "eos", "unk", "pad")},
    }


def tensor_qtype(shape: tuple[int, ...], out_type: str):
    """The GGML type of one tensor: 1-D (norms, biases) F32; 2-D F16, or Q8_0 for `q8_0` when its rows split into
    whole 32-value blocks (else F16, as llama.cpp's converter falls back)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import Q8_0

    if len(shape) < 2:
        return GGMLQuantizationType.F32
    if out_type == "q8_0" and shape[-1] % Q8_0.block_size == 0:
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.F16


def plan_tensors(
    model_dir: Path, files: list[Path], hp: dict[str, Any], out_type: str
) -> tuple[list[PlannedTensor], int]:
    """Every tensor to write, named through gguf's `TensorNameMap`, and the embedding's row count (the vocabulary
    size). Raises for a tensor the map does not know, a missing one, or an untied model without `lm_head`."""
    import gguf
    from safetensors import safe_open

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["n_layer"])
    skip = set(gguf.MODEL_TENSOR_SKIP.get(gguf.MODEL_ARCH.LLAMA, ()))
    planned: list[PlannedTensor] = []
    unknown: list[str] = []
    for f in files:
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                if key.endswith("rotary_emb.inv_freq"):
                    continue  # a buffer old transformers versions saved; llama.cpp recomputes it
                if key == "lm_head.weight" and hp["tied"]:
                    continue  # tied: llama.cpp uses token_embd when output.weight is absent
                found = name_map.get_type_and_name(key, try_suffixes=(".weight", ".bias"))
                if found is None:
                    unknown.append(key)
                    continue
                kind, gguf_name = found
                if kind in skip:
                    continue
                shape = tuple(st.get_slice(key).get_shape())
                permute = None
                if kind == gguf.MODEL_TENSOR.ATTN_Q:
                    permute = (hp["n_head"], hp["n_head"])
                elif kind == gguf.MODEL_TENSOR.ATTN_K:
                    permute = (hp["n_head"], hp["n_head_kv"])
                planned.append(
                    PlannedTensor(key, f, gguf_name, shape, tensor_qtype(shape, out_type), permute)
                )
    if unknown:
        raise UnsupportedArchitectureError(
            f"{model_dir}: {len(unknown)} tensor(s) have no place in the llama GGUF architecture, e.g. "
            f"{', '.join(unknown[:5])}"
        )
    names = {t.gguf_name for t in planned}
    parts = (
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    )
    required = ["token_embd.weight", "output_norm.weight"]
    required += [f"blk.{i}.{part}.weight" for i in range(hp["n_layer"]) for part in parts]
    if not hp["tied"]:
        required.append("output.weight")
    missing = [n for n in required if n not in names]
    if missing:
        raise ModelFolderError(
            f"{model_dir}: weights are missing GGUF tensor(s) {', '.join(missing[:5])}"
            + (
                " (tie_word_embeddings is false but there is no lm_head.weight)"
                if "output.weight" in missing
                else ""
            )
        )
    by_name = {t.gguf_name: t for t in planned}
    n_vocab, n_embd = by_name["token_embd.weight"].shape
    if n_embd != hp["n_embd"]:
        raise GGUFExportError(f"{model_dir}: embedding width {n_embd} != hidden_size {hp['n_embd']}")
    if not hp["tied"] and by_name["output.weight"].shape != (n_vocab, n_embd):
        raise GGUFExportError(f"{model_dir}: lm_head shape {by_name['output.weight'].shape} != embedding's")
    planned.sort(key=lambda t: (_block_of(t.gguf_name), t.gguf_name))
    return planned, int(n_vocab)


def _block_of(gguf_name: str) -> int:
    """Sort key: embeddings first, then blocks in order, then the final norm and the head."""
    if gguf_name.startswith("blk."):
        return int(gguf_name.split(".")[1])
    return -1 if gguf_name.startswith("token_embd") else 1 << 30


# ------------------------------------------------------------------------------------------------ tokenizer


def bytelevel_pre_name(tokenizer_json: dict[str, Any], where: str = "tokenizer.json") -> str:
    """The `tokenizer.ggml.pre` whose split regex equals this byte-level tokenizer's pre-tokenizer.

    The name decides how both llama.cpp and transformers' GGUF loader cut text before BPE, and transformers falls
    back to GPT-2's regex for names it does not list, so a plausible-looking name can silently change token ids.
    Only exact matches are accepted: a plain `ByteLevel(use_regex=True)` is GPT-2's regex (`gpt-2`); `Digits`
    (each digit alone) then that regex is SmolLM2's original (`smollm`); Llama-3's `Split` regex then a regex-free
    `ByteLevel` is `llama-bpe`. Anything else raises `UnsupportedTokenizerError`.
    """
    if tokenizer_json.get("normalizer") is not None:
        raise UnsupportedTokenizerError(
            f"{where}: byte-level tokenizer with a normalizer ({tokenizer_json['normalizer'].get('type')}); GGUF "
            "cannot record one"
        )
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]

    def bytelevel(step: dict, regex: bool) -> bool:
        return (
            step.get("type") == "ByteLevel"
            and not step.get("add_prefix_space", False)
            and bool(step.get("use_regex", True)) == regex
        )

    ignore_merges = bool((tokenizer_json.get("model") or {}).get("ignore_merges", False))
    name = None
    if len(steps) == 1 and bytelevel(steps[0], True):
        name = "gpt-2"
    elif (
        len(steps) == 2
        and kinds[0] == "Digits"
        and steps[0].get("individual_digits")
        and bytelevel(steps[1], True)
    ):
        name = "smollm"
    elif (
        len(steps) == 2
        and kinds[0] == "Split"
        and (steps[0].get("pattern") or {}).get("Regex") == LLAMA3_SPLIT
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert", False)
        and bytelevel(steps[1], False)
    ):
        name = "llama-bpe"
    if name is None:
        raise UnsupportedTokenizerError(
            f"{where}: byte-level pre-tokenizer {json.dumps(pre)[:300]} has no GGUF name with the same split; "
            "covered: ByteLevel (gpt-2), Digits + ByteLevel (smollm), Llama-3 Split + ByteLevel (llama-bpe)"
        )
    if ignore_merges and name != "llama-bpe":
        raise UnsupportedTokenizerError(f"{where}: ignore_merges with the {name} split is not representable")
    return name


def chat_template_for_gguf(template: Any) -> str | list[dict[str, str]] | None:
    """The chat template(s) to store, without TRL's `{% generation %}` markers (llama.cpp's Jinja and other
    runtimes refuse the unknown tag; the rendered text is the same without them)."""
    from vikhr.instruct.masks import strip_generation_markers

    def clean(t: str) -> str:
        out = strip_generation_markers(t)
        if "generation %}" in out or "generation -%}" in out:
            raise GGUFExportError("the chat template still has a {% generation %} marker after stripping")
        if out != t:
            log.info("chat template: removed {%% generation %%} markers for the GGUF")
        return out

    if template is None or template == "":
        return None
    if isinstance(template, str):
        return clean(template)
    if isinstance(template, dict):
        return [{"name": k, "template": clean(v)} for k, v in template.items()]
    raise GGUFExportError(f"chat template of type {type(template).__name__} is not a string or a dict")


def _special_ids(tok, n_vocab: int, config_ids: dict[str, int | None]) -> dict[str, int]:
    """bos / eos / unk / pad ids: the tokenizer's, else config.json's; ids outside the vocabulary are dropped."""
    out: dict[str, int] = {}
    for role in ("bos", "eos", "unk", "pad"):
        tid = getattr(tok, f"{role}_token_id", None)
        if tid is None:
            tid = config_ids.get(role)
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if isinstance(tid, int) and 0 <= tid < n_vocab:
            out[role] = tid
    return out


def _find_sp_model(model_dir: Path) -> Path | None:
    for name in SP_MODEL_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def load_vocab(model_dir: Path, n_vocab: int, config_ids: dict[str, int | None]) -> GGUFVocab:
    """Read the folder's tokenizer into a `GGUFVocab` of exactly `n_vocab` tokens (padding rows past the tokenizer).

    The family decides the GGUF tokenizer: a byte-level BPE `tokenizer.json` is written as `gpt2`; otherwise a
    SentencePiece BPE model file makes it `llama`. Anything else raises `UnsupportedTokenizerError`.
    """
    from transformers import AutoTokenizer

    from vikhr.tokenizer.build import special_tokens_of
    from vikhr.tokenizer.bytelevel import is_bytelevel_bpe

    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # transformers raises many kinds for a folder without a usable tokenizer
        raise UnsupportedTokenizerError(f"{model_dir}: no tokenizer transformers can load ({e})") from e
    if not getattr(tok, "is_fast", False) or not hasattr(tok, "backend_tokenizer"):
        raise UnsupportedTokenizerError(
            f"{model_dir}: tokenizer {type(tok).__name__} has no tokenizers backend"
        )
    if len(tok) > n_vocab:
        raise GGUFExportError(
            f"{model_dir}: the tokenizer has {len(tok)} tokens but the embedding only {n_vocab} rows"
        )
    spec = json.loads(tok.backend_tokenizer.to_str())
    roles = special_tokens_of(tok)
    sp_model = _find_sp_model(model_dir)
    if is_bytelevel_bpe(spec):
        vocab = _bytelevel_vocab(model_dir, tok, spec)
    elif sp_model is not None:
        vocab = _sentencepiece_vocab(model_dir, tok, sp_model)
    else:
        model_type = (spec.get("model") or {}).get("type")
        raise UnsupportedTokenizerError(
            f"{model_dir}: tokenizer ({model_type}, pre-tokenizer "
            f"{(spec.get('pre_tokenizer') or {}).get('type')}) is neither byte-level BPE nor SentencePiece BPE "
            f"with its model file ({' or '.join(SP_MODEL_FILES)})"
        )
    vocab.padded = n_vocab - len(vocab.tokens)
    for i in range(len(vocab.tokens), n_vocab):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.scores.append(PAD_SCORE)
        vocab.types.append(5)  # gguf.TokenType.UNUSED
    vocab.special_ids = _special_ids(tok, n_vocab, config_ids)
    vocab.add_bos, vocab.add_eos = roles.add_bos, roles.add_eos
    if roles.add_bos and "bos" not in vocab.special_ids:
        raise UnsupportedTokenizerError(f"{model_dir}: the tokenizer adds a bos token that has no id")
    vocab.chat_template = chat_template_for_gguf(tok.chat_template)
    return vocab


def _bytelevel_vocab(model_dir: Path, tok, spec: dict[str, Any]) -> GGUFVocab:
    import gguf

    pre = bytelevel_pre_name(spec, f"{model_dir}/tokenizer.json")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    size = max(by_id) + 1
    gaps = [i for i in range(size) if i not in by_id]
    if gaps:
        raise UnsupportedTokenizerError(
            f"{model_dir}: token ids {gaps[:5]} have no token (gaps in the vocabulary)"
        )
    added = tok.added_tokens_decoder
    types = []
    for i in range(size):
        a = added.get(i)
        types.append(
            int(gguf.TokenType.NORMAL if a is None else (3 if a.special else 4))
        )  # CONTROL / USER_DEFINED
    merges = gguf.SpecialVocab(model_dir, load_merges=True, special_token_types=()).merges
    if not merges:
        raise UnsupportedTokenizerError(f"{model_dir}: byte-level BPE tokenizer without merges")
    return GGUFVocab(
        model="gpt2", pre=pre, tokens=[by_id[i] for i in range(size)], scores=[0.0] * size, types=types,
        merges=list(merges), special_ids={}, add_bos=False, add_eos=False, add_space_prefix=None,
        chat_template=None, source=f"{model_dir}/tokenizer.json",
    )  # fmt: skip


def _sentencepiece_vocab(model_dir: Path, tok, sp_model: Path) -> GGUFVocab:
    """Pieces, scores and types of the SentencePiece model, which must agree with the HF tokenizer id by id; tokens
    the HF tokenizer adds past the model's pieces follow as control (special) or user-defined tokens."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    from vikhr.tokenizer import spm

    proto = spm.load_proto(sp_model)
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        kind = sp_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise UnsupportedTokenizerError(
            f"{sp_model}: SentencePiece model type {kind}; GGUF's llama tokenizer is BPE-style (merges by score), "
            "so only BPE SentencePiece models are exported"
        )
    by_id = {i: t for t, i in tok.get_vocab().items()}
    tokens, scores, types = [], [], []
    for i, piece in enumerate(proto.pieces):
        if by_id.get(i) != piece.piece:
            raise UnsupportedTokenizerError(
                f"{sp_model}: piece {i} is {piece.piece!r} but the HF tokenizer has {by_id.get(i)!r} at that id; "
                "the two files describe different vocabularies"
            )
        tokens.append(piece.piece)
        scores.append(float(piece.score))
        types.append(int(piece.type))  # SentencePiece's piece types are numbered like gguf.TokenType
    added = tok.added_tokens_decoder
    for i in range(len(proto.pieces), len(tok)):
        if i not in by_id:
            raise UnsupportedTokenizerError(
                f"{model_dir}: token id {i} has no token (gaps in the vocabulary)"
            )
        tokens.append(by_id[i])
        scores.append(PAD_SCORE)
        types.append(3 if (i in added and added[i].special) else 4)
    ns = proto.normalizer_spec
    if ns.precompiled_charsmap:
        log.warning(
            "%s: normaliser %r is not written to the GGUF (llama.cpp does not normalise)", sp_model, ns.name
        )
    if ns.remove_extra_whitespaces:
        log.warning("%s collapses runs of spaces; llama.cpp's llama tokenizer keeps them", sp_model)
    ids_hf = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    ids_sp = spm.processor(proto).encode(PROBE_TEXT)
    if list(ids_hf) != list(ids_sp):
        log.warning(
            "%s and the HF tokenizer disagree on %r; the GGUF tokenizes like the SentencePiece model",
            sp_model,
            PROBE_TEXT,
        )
    return GGUFVocab(
        model="llama", pre="default", tokens=tokens, scores=scores, types=types, merges=[], special_ids={},
        add_bos=False, add_eos=False, add_space_prefix=bool(ns.add_dummy_prefix), chat_template=None,
        source=str(sp_model),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- export


def plan_export(model: str | Path, out_path: str | Path, out_type: str = "f16") -> ExportPlan:
    """Check the model folder and OUT and work out every tensor and key to write; creates nothing.

    Raises `OutputPathError` / `ModelFolderError` (FileNotFoundError) for missing paths, and
    `UnsupportedArchitectureError` / `UnsupportedTokenizerError` / `GGUFExportError` (ValueError) for input the
    writer does not cover.
    """
    if out_type not in OUT_TYPES:
        raise GGUFExportError(f"--type {out_type!r} is not one of {', '.join(OUT_TYPES)}")
    out = check_out_path(out_path)
    model_dir = Path(model).expanduser().resolve()
    config = read_config(model_dir)
    files = weight_files(model_dir)
    hp = model_hparams(model_dir, config)
    tensors, n_vocab = plan_tensors(model_dir, files, hp, out_type)
    vocab = load_vocab(model_dir, n_vocab, hp["config_ids"])
    if out in {f.resolve() for f in files}:
        raise GGUFExportError(f"output {out} is one of the model's own weight files")
    return ExportPlan(
        model_dir=model_dir, out_path=out, out_type=out_type, architecture=config["architectures"][0],
        name=_model_name(model_dir), hparams=hp | {"n_vocab": n_vocab}, tensors=tensors, vocab=vocab,
    )  # fmt: skip


def _model_name(model_dir: Path) -> str:
    """`general.name`: the folder's name, or for a run's stage output (`runs/demo/sft/model`) "demo-sft"."""
    if model_dir.name in ("model", "hf") and len(model_dir.parts) >= 3:
        return f"{model_dir.parent.parent.name}-{model_dir.parent.name}"
    return model_dir.name


def export_gguf(model: str | Path, out_path: str | Path, out_type: str = "f16") -> ExportResult:
    """Write the model folder `model` as the GGUF file `out_path` (`out_type` "f16" or "q8_0").

    All input checks run first (`plan_export`); the file is then written as `.<name>.<random>.partial` beside
    `out_path` and renamed over it only when complete, so a failure leaves no half-written `.gguf` behind (and an
    existing `out_path` untouched). Tensors are read, converted and written one at a time, so memory stays near the
    largest single tensor in float32.
    """
    t0 = time.perf_counter()
    plan = plan_export(model, out_path, out_type)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{plan.out_path.name}.", suffix=".partial", dir=plan.out_path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write(plan, tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; a finished export gets the usual file mode
        os.replace(tmp, plan.out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    counts = Counter(t.qtype.name for t in plan.tensors)
    result = ExportResult(
        path=plan.out_path, size_bytes=plan.out_path.stat().st_size, n_tensors=len(plan.tensors),
        vocab_size=len(plan.vocab.tokens), tokenizer_model=plan.vocab.model, tokenizer_pre=plan.vocab.pre,
        out_type=out_type, tensor_types=dict(counts), seconds=time.perf_counter() - t0,
    )  # fmt: skip
    log.info("wrote %s (%.1f MB, %d tensors) in %.1f s", result.path, result.size_bytes / 1e6, result.n_tensors,
             result.seconds)  # fmt: skip
    return result


def permute_qk(weights, n_head: int, n_head_kv: int):
    """Reorder the rows of a query (n_head_kv == n_head) or key projection from Hugging Face's rotary layout (each
    head's first half, then its second half) to llama.cpp's (interleaved pairs). Works for weights and biases."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _write_metadata(w, plan: ExportPlan) -> None:
    import gguf

    hp, v = plan.hparams, plan.vocab
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(plan.name)
    w.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if plan.out_type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    )
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(hp["n_vocab"])
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_block_count(hp["n_layer"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_layer_norm_rms_eps(hp["rms_eps"])
    w.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] != hp["n_embd"] // hp["n_head"]:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    if hp["rope_linear_factor"] is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(hp["rope_linear_factor"])

    w.add_tokenizer_model(v.model)
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_scores(v.scores)
    w.add_token_types(v.types)
    if v.merges:
        w.add_token_merges(v.merges)
    for role, tid in v.special_ids.items():
        getattr(w, f"add_{role}_token_id")(tid)
    w.add_add_bos_token(v.add_bos)
    w.add_add_eos_token(v.add_eos)
    if v.add_space_prefix is not None:
        w.add_add_space_prefix(v.add_space_prefix)
    if v.chat_template is not None:
        w.add_chat_template(v.chat_template)


def _write(plan: ExportPlan, path: Path) -> None:
    """Header and metadata first, then the tensors streamed one by one from the safetensors files."""
    import gguf
    import numpy as np
    import torch
    from gguf.quants import quant_shape_to_byte_shape, quantize
    from safetensors import safe_open

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _write_metadata(writer, plan)
        for t in plan.tensors:
            if t.qtype == gguf.GGMLQuantizationType.Q8_0:
                byte_shape = quant_shape_to_byte_shape(t.shape, t.qtype)
                writer.add_tensor_info(
                    t.gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), t.qtype
                )
            else:
                dtype = np.dtype(np.float32 if t.qtype == gguf.GGMLQuantizationType.F32 else np.float16)
                writer.add_tensor_info(t.gguf_name, t.shape, dtype, int(np.prod(t.shape)) * dtype.itemsize)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        handles: dict[Path, Any] = {}
        try:
            for t in plan.tensors:
                if t.file not in handles:
                    handles[t.file] = safe_open(t.file, framework="pt")
                data = handles[t.file].get_tensor(t.hf_name).to(torch.float32).numpy()
                if t.permute_heads is not None:
                    data = permute_qk(data, *t.permute_heads)
                writer.write_tensor_data(np.ascontiguousarray(quantize(data, t.qtype)))
        finally:
            handles.clear()
        writer.flush()
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------------ CLI


def cmd_export_gguf(args: argparse.Namespace) -> int:
    """`vikhr export gguf MODEL OUT [--type]`: export and print what was written."""
    from vikhr.log import setup_logging

    setup_logging(getattr(args, "log_level", "INFO"))
    model = args.model
    if not Path(model).expanduser().is_dir():
        from vikhr.models import resolve_model

        model = resolve_model(model)
        if not Path(model).is_dir():
            raise ModelFolderError(
                f"{args.model!r} is neither a model folder nor an alias (hub ids are not fetched)"
            )
    result = export_gguf(model, args.out, args.out_type)
    sys.stdout.write(result.summary())
    return 0


def add_export_command(sub) -> None:
    """Register `export-gguf` (shown as `vikhr export gguf`) on the main parser's subparsers."""
    p = sub.add_parser(
        "export-gguf",
        prog="vikhr export gguf",
        help="write a Llama/Mistral model folder as one GGUF file (llama.cpp, Ollama, LM Studio)",
        description="Write MODEL (a Hugging Face folder with config.json, safetensors and tokenizer files, or an "
        "alias such as smollm2-135m-instruct) as the GGUF file OUT: GGUF architecture 'llama', tokenizer "
        "'llama' (SentencePiece BPE) or 'gpt2' (byte-level BPE), special tokens and chat template included. "
        "OUT's folder must exist; the file appears only when complete.",
    )
    p.add_argument("model", metavar="MODEL", help="model folder or alias (e.g. runs/x/sft/model)")
    p.add_argument("out", metavar="OUT", help="output file, e.g. model-f16.gguf (its folder must exist)")
    p.add_argument(
        "--type",
        dest="out_type",
        choices=OUT_TYPES,
        default="f16",
        help="f16: 2-D weights as float16, norms float32 (default); q8_0: 2-D weights quantised to Q8_0 "
        "(about half the size; rows not divisible by 32 stay float16)",
    )
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_export_gguf)
