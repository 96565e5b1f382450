"""Turn a trained SentencePiece model into the stage's Hugging Face tokenizer: `replace` or `extend` a base.

`replace` keeps only the new vocabulary; the base's special tokens (bos, eos, pad, unk, chat markers) were trained
into it as control symbols and keep their roles, and the base's chat template is copied. `extend` keeps the base
vocabulary with identical ids and appends new pieces: for SentencePiece bases by extending the SentencePiece model
itself, for byte-level BPE bases by learning new merges (`bytelevel.py`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from vikhr.log import get_logger
from vikhr.scripts import has_cyrillic
from vikhr.tokenizer import spm
from vikhr.tokenizer.surface import is_bytelevel

log = get_logger(__name__)

SP_MODEL_NAME = "sentencepiece.model"
ORIGIN_FILE = "vikhr_tokenizer.json"
"""Written beside the tokenizer: which base it was built for, so a later stage can refuse a mismatched model."""


def vocab_digest(tok) -> str:
    """A hash of a tokenizer's full vocabulary (token -> id, added tokens included)."""
    from vikhr.manifest import digest

    return digest(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))


def write_origin(out_dir: Path, mode: str, source_model: str, base_tok) -> None:
    """Record the base a tokenizer was made for (None for a tokenizer trained without one)."""
    info = {
        "mode": mode,
        "source_model": source_model,
        "base_vocab_size": len(base_tok) if base_tok is not None else None,
        "base_vocab_digest": vocab_digest(base_tok) if base_tok is not None else None,
    }
    (Path(out_dir) / ORIGIN_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens of a tokenizer by role, plus every other special token in id order."""

    bos: str | None = None
    eos: str | None = None
    pad: str | None = None
    unk: str | None = None
    others: tuple[str, ...] = ()
    add_bos: bool = False
    add_eos: bool = False

    def ordered(self) -> list[str]:
        """All special tokens, roles first, without duplicates (unk excluded: it has its own slot)."""
        seq = [self.bos, self.eos, self.pad, *self.others]
        out: list[str] = []
        for t in seq:
            if t and t != self.unk and t not in out:
                out.append(t)
        return out


DEFAULT_SPECIALS = SpecialTokens(bos="<s>", eos="</s>", unk="<unk>")
"""Special tokens of a tokenizer trained without a base."""


def special_tokens_of(tok) -> SpecialTokens:
    """Roles and special tokens of a loaded tokenizer, and whether it adds bos/eos when encoding."""
    others = []
    for tid in sorted(tok.added_tokens_decoder):
        added = tok.added_tokens_decoder[tid]
        if added.special:
            others.append(added.content)
    ids = tok("a", add_special_tokens=True)["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    add_bos = tok.bos_token_id is not None and len(ids) > len(plain) and ids[0] == tok.bos_token_id
    add_eos = tok.eos_token_id is not None and len(ids) > len(plain) and ids[-1] == tok.eos_token_id
    return SpecialTokens(
        bos=tok.bos_token, eos=tok.eos_token, pad=tok.pad_token, unk=tok.unk_token,
        others=tuple(others), add_bos=add_bos, add_eos=add_eos,
    )  # fmt: skip


def _post_processor(tok, specials: SpecialTokens):
    from tokenizers import processors

    single, pair, toks = "$A", "$A $B", []
    if specials.add_bos and specials.bos:
        single, pair = f"{specials.bos} {single}", f"{specials.bos} $A {specials.bos} $B"
        toks.append((specials.bos, tok.token_to_id(specials.bos)))
    if specials.add_eos and specials.eos:
        single, pair = f"{single} {specials.eos}", f"{pair} {specials.eos}"
        toks.append((specials.eos, tok.token_to_id(specials.eos)))
    if toks:
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=toks)


def save_hf_tokenizer(tok, out_dir: Path, specials: SpecialTokens, chat_template: str | None):
    """Wrap a `tokenizers.Tokenizer` with its special-token roles and chat template and save it as a folder.

    Returns the tokenizer loaded back with `AutoTokenizer`, after checking that nothing was lost on the way
    (transformers can silently rebuild a tokenizer from the wrong files).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    _post_processor(tok, specials)
    kwargs = {k: getattr(specials, k) for k in ("bos", "eos", "pad", "unk") if getattr(specials, k)}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **{f"{k}_token": v for k, v in kwargs.items()})
    if chat_template:
        fast.chat_template = chat_template
    out_dir = Path(out_dir)
    fast.save_pretrained(out_dir)
    loaded = AutoTokenizer.from_pretrained(out_dir)
    if len(loaded) != tok.get_vocab_size(with_added_tokens=True):
        raise RuntimeError(
            f"{out_dir}: saved tokenizer reloads with {len(loaded)} tokens, expected "
            f"{tok.get_vocab_size(with_added_tokens=True)}"
        )
    return loaded


def build_standalone(sp_model: Path, out_dir: Path, specials: SpecialTokens, chat_template: str | None):
    """The new vocabulary alone (`replace`, or no base at all) as a HF tokenizer folder."""
    proto = spm.load_proto(sp_model)
    tok = spm.proto_to_tokenizer_json(proto)
    for t in specials.ordered() + ([specials.unk] if specials.unk else []):
        if tok.token_to_id(t) is None:
            raise ValueError(f"special token {t!r} of the base is missing from the trained vocabulary")
    loaded = save_hf_tokenizer(tok, out_dir, specials, chat_template)
    shutil.copyfile(sp_model, Path(out_dir) / SP_MODEL_NAME)
    return loaded


def _base_sp_model(base_dir: Path) -> Path | None:
    for name in ("tokenizer.model", SP_MODEL_NAME):
        if (base_dir / name).is_file():
            return base_dir / name
    return None


def extend_sentencepiece(
    base_dir: Path, base_tok, sp_model: Path, out_dir: Path, *, max_new: int | None, keep_cyrillic_only: bool
) -> tuple[object, dict]:
    """Extend a SentencePiece base (Mistral, Llama-2): base ids kept, new pieces below every base piece."""
    base_model = _base_sp_model(base_dir)
    if base_model is None:
        raise ValueError(
            f"{base_dir}: extending a SentencePiece-style tokenizer needs its tokenizer.model "
            "(the original SentencePiece file); none found"
        )
    base = spm.load_proto(base_model)
    # Tokens the HF tokenizer added on top of the SentencePiece model keep their ids: put them in the proto first.
    extra = sorted((tid, t) for tid, t in base_tok.added_tokens_decoder.items() if tid >= len(base.pieces))
    for tid, added in extra:
        if tid != len(base.pieces):
            raise ValueError(
                f"{base_dir}: added token {added.content!r} has id {tid}, leaving a gap in the vocabulary"
            )
        p = base.pieces.add()
        p.piece, p.score = added.content, 0.0
        p.type = spm.CONTROL if added.special else spm.USER_DEFINED
    keep = has_cyrillic if keep_cyrillic_only else (lambda s: True)
    ext, stats = spm.extend_sp_proto(base, spm.load_proto(sp_model), keep=keep, max_new=max_new)
    tok = spm.proto_to_tokenizer_json(ext)
    specials = special_tokens_of(base_tok)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = save_hf_tokenizer(tok, out_dir, specials, base_tok.chat_template)
    spm.save_proto(ext, out_dir / SP_MODEL_NAME)
    info = {
        "base_kind": "sentencepiece",
        "base_size": len(base_tok),
        "new": stats.added,
        "shared": stats.shared,
        "dropped": stats.dropped_by_filter,
        "final_size": len(loaded),
    }
    return loaded, info


def extend_bytelevel(
    base_dir: Path, base_tok, texts: list[str], out_dir: Path, *, num_new: int, keep_cyrillic_only: bool
) -> tuple[object, dict]:
    """Extend a byte-level BPE base (SmolLM2, Llama-3, Qwen) with merges learned on the target text."""
    from transformers import AutoTokenizer

    from vikhr.tokenizer.bytelevel import extend_bytelevel_tokenizer

    res = extend_bytelevel_tokenizer(
        base_dir, texts, num_new, out_dir, script="cyrillic" if keep_cyrillic_only else "any"
    )
    loaded = AutoTokenizer.from_pretrained(out_dir)
    info = {
        "base_kind": "bytelevel",
        "base_size": res.base_size,
        "new": res.new_tokens,
        # learned merges whose token the base already had, or that fail the script filter
        "dropped": res.candidates_rejected,
        "final_size": res.final_size,
    }
    return loaded, info


def base_kind(base_dir: Path, base_tok) -> str:
    """`bytelevel` or `sentencepiece`: which extension method applies to this base tokenizer."""
    if is_bytelevel(base_tok):
        return "bytelevel"
    spec = json.loads(base_tok.backend_tokenizer.to_str())
    if spec.get("model", {}).get("type") in ("BPE", "Unigram") or _base_sp_model(base_dir):
        return "sentencepiece"
    raise ValueError(f"{base_dir}: cannot extend a tokenizer of type {spec.get('model', {}).get('type')!r}")
