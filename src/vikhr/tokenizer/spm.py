"""SentencePiece training, extension and exact conversion to a Hugging Face fast tokenizer.

The conversion builds a `tokenizers` BPE model whose merges reproduce SentencePiece's own BPE encoding:
SentencePiece merges the adjacent pair whose *result* has the best score, leftmost first; a `tokenizers` BPE
applies the merge with the lowest rank, leftmost first. Ranking merges by the score of their result makes the two
agree, except for pieces reachable by several splits (periodic pieces such as ``▁▁▁▁``), where SentencePiece
breaks the tie by position and `tokenizers` by rank. `merges_from_pieces` orders those alternatives the way that
matches SentencePiece on the tested corpora (FLORES, Gutenberg), and `check_equivalence` measures the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from vikhr.log import get_logger
from vikhr.scripts import has_cyrillic

log = get_logger(__name__)

SPIECE_UNDERLINE = "▁"
NORMAL = sp_pb2.ModelProto.SentencePiece.NORMAL
UNKNOWN = sp_pb2.ModelProto.SentencePiece.UNKNOWN
CONTROL = sp_pb2.ModelProto.SentencePiece.CONTROL
USER_DEFINED = sp_pb2.ModelProto.SentencePiece.USER_DEFINED
BYTE = sp_pb2.ModelProto.SentencePiece.BYTE
UNUSED = sp_pb2.ModelProto.SentencePiece.UNUSED


class TokenizerTrainingError(ValueError):
    """The training text or the requested vocabulary cannot give a valid tokenizer."""


@dataclass(frozen=True)
class SpmOptions:
    """Plain training options for `train_sentencepiece` (no config objects in pure functions)."""

    vocab_size: int = 40_000
    model_type: str = "bpe"
    character_coverage: float = 0.9999
    special_tokens: tuple[str, ...] = ()
    unk_token: str = "<unk>"
    bos_token: str | None = "<s>"
    eos_token: str | None = "</s>"
    max_sentence_length: int = 1 << 15
    max_piece_length: int = 16
    allow_whitespace_only_pieces: bool = False
    add_dummy_prefix: bool = False
    num_threads: int = os.cpu_count() or 1
    seed: int = 0


def train_sentencepiece(lines: Iterable[str], model_prefix: Path, opts: SpmOptions) -> Path:
    """Train a SentencePiece model on `lines` and return the path of `<model_prefix>.model`.

    Byte fallback is on (no unknown tokens ever), digits are split, whitespace is kept as it is (no NFKC, no
    collapsing of runs of spaces). Special tokens become control symbols right after the unknown token, so
    their ids are 1..k in the order given (`bos_token`/`eos_token` first when they are not already listed).
    """
    if opts.model_type not in ("bpe", "unigram"):
        raise TokenizerTrainingError(
            f"tokenizer.model_type must be 'bpe' or 'unigram', got {opts.model_type!r}"
        )
    specials = [t for t in (opts.bos_token, opts.eos_token) if t] + list(opts.special_tokens)
    specials = [t for i, t in enumerate(specials) if t != opts.unk_token and t not in specials[:i]]
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    # SentencePiece reads sentences one per line; a text with a newline inside would be cut, so feed lines.
    counter = _LineCounter(lines, max_chars=opts.max_sentence_length // 4)
    kwargs = dict(
        sentence_iterator=iter(counter),
        model_prefix=str(model_prefix),
        vocab_size=opts.vocab_size,
        model_type=opts.model_type,
        character_coverage=opts.character_coverage,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        allow_whitespace_only_pieces=opts.allow_whitespace_only_pieces,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=opts.add_dummy_prefix,
        unk_id=0,
        unk_piece=opts.unk_token,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        control_symbols=specials,
        max_sentence_length=opts.max_sentence_length,
        max_sentencepiece_length=opts.max_piece_length,
        num_threads=max(1, opts.num_threads),
        input_sentence_size=0,
        shuffle_input_sentence=False,
        hard_vocab_limit=True,
        minloglevel=2,
    )
    try:
        spm.SentencePieceTrainer.train(**kwargs)
    except RuntimeError as e:
        msg = str(e)
        if "Vocabulary size too high" in msg or "vocab_size" in msg:
            raise TokenizerTrainingError(
                f"too little text for a vocabulary of {opts.vocab_size} pieces "
                f"({counter.lines} lines, {counter.chars} characters): {msg.strip()}. "
                "Give more text or lower tokenizer.vocab_size."
            ) from e
        raise TokenizerTrainingError(f"SentencePiece training failed: {msg.strip()}") from e
    if counter.lines == 0:
        raise TokenizerTrainingError("no training text: every input was empty")
    return model_prefix.with_suffix(".model")


class _LineCounter:
    """Wraps an iterable of texts, yields non-empty lines (long ones cut at spaces) and counts them."""

    def __init__(self, texts: Iterable[str], max_chars: int) -> None:
        self.texts = texts
        self.max_chars = max_chars
        self.lines = 0
        self.chars = 0

    def __iter__(self):
        for text in self.texts:
            for line in text.split("\n"):
                if not line.strip():
                    continue
                for chunk in split_long_line(line, self.max_chars):
                    self.lines += 1
                    self.chars += len(chunk)
                    yield chunk


def split_long_line(line: str, max_chars: int) -> list[str]:
    """Cut a line longer than `max_chars` at spaces (SentencePiece skips over-long sentences silently)."""
    if len(line) <= max_chars:
        return [line]
    out, start = [], 0
    while len(line) - start > max_chars:
        cut = line.rfind(" ", start + 1, start + max_chars)
        cut = cut if cut > start else start + max_chars
        out.append(line[start:cut])
        start = cut
    out.append(line[start:])
    return out


def load_proto(model_file: Path | bytes) -> sp_pb2.ModelProto:
    """Parse a SentencePiece `.model` file (or its bytes)."""
    proto = sp_pb2.ModelProto()
    data = model_file if isinstance(model_file, bytes) else Path(model_file).read_bytes()
    proto.ParseFromString(data)
    return proto


@dataclass(frozen=True)
class SpmExtendStats:
    base_pieces: int
    candidate_pieces: int
    shared: int
    added: int
    dropped_by_filter: int


def extend_sp_proto(
    base: sp_pb2.ModelProto,
    new: sp_pb2.ModelProto,
    keep: Callable[[str], bool] = has_cyrillic,
    max_new: int | None = None,
) -> tuple[sp_pb2.ModelProto, SpmExtendStats]:
    """Append `new`'s learned pieces that the base lacks, below every base piece, in `new`'s own order.

    Base ids and scores are untouched. Appended pieces get scores strictly below the lowest base score, decreasing
    in the order they had in `new`, so a merge into a new piece only fires when no base merge applies. Only pieces
    passing `keep` (by default: containing Cyrillic) are added, which leaves the encoding of text without such
    characters identical to the base.
    """
    out = sp_pb2.ModelProto()
    out.CopyFrom(base)
    existing = {p.piece for p in base.pieces}
    score = min((p.score for p in base.pieces if p.type == NORMAL), default=0.0)
    candidates = [p for p in new.pieces if p.type == NORMAL]
    shared = added = dropped = 0
    for p in candidates:
        if p.piece in existing:
            shared += 1
            continue
        if not keep(p.piece) or (max_new is not None and added >= max_new):
            dropped += 1
            continue
        added += 1
        score = _next_lower_float32(score)
        piece = out.pieces.add()
        piece.piece = p.piece
        piece.score = score
        piece.type = NORMAL
        existing.add(p.piece)
    stats = SpmExtendStats(len(base.pieces), len(candidates), shared, added, dropped)
    return out, stats


def _next_lower_float32(x: float) -> float:
    """A float32 strictly below `x` (scores are stored as float32: -1e9 - 1 == -1e9 there)."""
    import numpy as np

    x32 = np.float32(x)
    y = np.float32(x32 - np.float32(1.0))
    if y >= x32:
        y = np.nextafter(x32, np.float32(-np.inf), dtype=np.float32)
    return float(y)


def merges_from_pieces(pieces: Sequence[tuple[str, float]], mergeable: set[str]) -> list[tuple[str, str]]:
    """BPE merges reproducing SentencePiece's encoding: every split of a piece into two pieces, best score first.

    `pieces` are (piece, score) for the whole vocabulary, `mergeable` the pieces that BPE may produce or use.
    Several splits of one piece (``▁▁▁▁`` = ``▁▁+▁▁`` = ``▁+▁▁▁`` = ``▁▁▁+▁``) are ordered by a longer left part
    first; SentencePiece, which breaks such ties by position, builds runs from the left, so this order agrees
    with it on left-packed runs.
    """
    rank = {p: i for i, (p, _) in enumerate(sorted(pieces, key=lambda x: -x[1]))}
    merges: list[tuple[int, int, str, str]] = []
    for piece in mergeable:
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in mergeable and right in mergeable:
                merges.append((rank[piece], -len(left), left, right))
    merges.sort()
    return [(a, b) for _, _, a, b in merges]


def proto_to_tokenizer_json(proto: sp_pb2.ModelProto):
    """Build a `tokenizers.Tokenizer` that encodes exactly like the SentencePiece model `proto`."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import BPE

    if proto.trainer_spec.model_type not in (sp_pb2.TrainerSpec.BPE, sp_pb2.TrainerSpec.UNIGRAM):
        raise ValueError("only BPE and unigram SentencePiece models can be converted")
    ns = proto.normalizer_spec
    if ns.name not in ("identity", "") and ns.precompiled_charsmap:
        log.warning("SentencePiece normalizer %r is not identity: NFKC-style rules are approximated", ns.name)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    if proto.trainer_spec.model_type == sp_pb2.TrainerSpec.UNIGRAM:
        return _unigram_tokenizer(proto)
    mergeable = {p.piece for p in proto.pieces if p.type == NORMAL}
    merges = merges_from_pieces([(p.piece, p.score) for p in proto.pieces if p.type == NORMAL], mergeable)
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    model = BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None)
    tok = Tokenizer(model)
    _set_spm_pipeline(tok, ns.add_dummy_prefix, ns.remove_extra_whitespaces)
    specials = [p.piece for p in proto.pieces if p.type in (CONTROL, UNKNOWN)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    user = [p.piece for p in proto.pieces if p.type == USER_DEFINED]
    if user:
        tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in user])
    return tok


def _set_spm_pipeline(tok, add_dummy_prefix: bool, remove_extra_whitespaces: bool) -> None:
    from tokenizers import decoders, normalizers

    if remove_extra_whitespaces:
        log.warning("SentencePiece model collapses whitespace; the fast tokenizer keeps runs of spaces")
    steps = []
    if add_dummy_prefix:
        steps.append(normalizers.Prepend(SPIECE_UNDERLINE))
    steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    dec = [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)


def _unigram_tokenizer(proto: sp_pb2.ModelProto):
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import Unigram

    vocab = [(p.piece, p.score if p.type == NORMAL else 0.0) for p in proto.pieces]
    model = Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=True)
    tok = Tokenizer(model)
    _set_spm_pipeline(
        tok, proto.normalizer_spec.add_dummy_prefix, proto.normalizer_spec.remove_extra_whitespaces
    )
    specials = [p.piece for p in proto.pieces if p.type in (CONTROL, UNKNOWN)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def save_proto(proto: sp_pb2.ModelProto, path: Path) -> Path:
    """Write a ModelProto as a `.model` file."""
    path = Path(path)
    path.write_bytes(proto.SerializeToString())
    return path


def processor(model: Path | sp_pb2.ModelProto) -> spm.SentencePieceProcessor:
    """A SentencePieceProcessor for a model file or proto."""
    if isinstance(model, sp_pb2.ModelProto):
        return spm.SentencePieceProcessor(model_proto=model.SerializeToString())
    return spm.SentencePieceProcessor(model_file=str(model))


@dataclass
class EquivalenceResult:
    lines: int
    differing: int
    examples: list[dict]


def check_equivalence(
    sp: spm.SentencePieceProcessor, fast, lines: Sequence[str], max_examples: int = 5
) -> EquivalenceResult:
    """Encode `lines` with SentencePiece and with the fast tokenizer (a `tokenizers.Tokenizer` or a transformers
    tokenizer); count the lines whose ids differ."""
    sp_ids = sp.encode(list(lines))
    if hasattr(fast, "encode_batch"):  # tokenizers.Tokenizer
        fast_ids = [e.ids for e in fast.encode_batch(list(lines), add_special_tokens=False)]
    else:
        fast_ids = fast(list(lines), add_special_tokens=False)["input_ids"]
    diff = []
    for line, a, b in zip(lines, sp_ids, fast_ids, strict=True):
        if list(a) != list(b):
            diff.append({"text": line[:200], "sentencepiece": list(a)[:40], "fast": list(b)[:40]})
    return EquivalenceResult(len(lines), len(diff), diff[:max_examples])
