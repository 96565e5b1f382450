"""Continued pre-training throughput on one GPU: plain HF `Trainer` against vikhr's `KLTrainer`, CE and CE+KL.

    .venv/bin/python benchmarks/pretrain_throughput.py [--steps 20] [--warmup 5] [--variants ...] [--tf32]
    .venv/bin/python benchmarks/pretrain_throughput.py --smoke --out /tmp/smoke.json   # tiny model, CPU

A randomly initialised ~1.1B Mistral-shape model (hidden 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632,
vocabulary 32000, untied head, SDPA) trains on synthetic rows of 1024 random tokens packed from 1-4 documents
(`make_sequence`, no padding), 8 rows per step, fp32 master weights with bf16 autocast (`bf16=True`), fused
AdamW. Four variants, each on a fresh model with the same seed and identical `TrainingArguments`:

- `hf_ce`: plain `Trainer`, the model's own loss (full logits + CE);
- `hf_ce_kl`: a `Trainer` subclass adding the naive full-vocabulary KL(P_model ‖ P_ref) (float32 log-softmax
  of both full logits) against a frozen bf16 copy of the model;
- `vikhr_ce`: `KLTrainer(reference="none")`; `vikhr_ce_kl`: `KLTrainer(reference="init", kl_weight=1.0)`.

Step time: a callback synchronises CUDA and reads the clock at `on_step_begin` / `on_step_end` (forward,
backward, clipping, optimizer step; the batch is already fetched); the first `--warmup` steps are dropped,
median and p10 / p90 of the rest are reported. Tokens/s = non-padding tokens per step / median step time.
MFU = tokens/s × FLOPs per token / the card's peak dense bf16 FLOP/s, with FLOPs per trained token
6·N + 12·L·H·T (N = parameters without the input embedding, LM head included; L layers, H hidden, T the row
length: dense attention over the whole row, as SDPA with a block-diagonal mask computes it). CE+KL variants
also report the figure with the reference forward added, 2·N + 4·L·H·T per token.

Goals (the issue's): vikhr_ce_kl tokens/s >= 1.5x hf_ce_kl's, and vikhr_ce_kl step time <= 1.15x vikhr_ce's
(plain HF with SDPA measured 46.8k tokens/s CE-only and 35.1k CE+KL on an H200). Writes
benchmarks/results/pretrain_throughput_<card>.json (machine, config, raw step times). Exit status: 2 when it
cannot run (no CUDA, several GPUs visible, unknown peak FLOP/s), 1 when a variant failed or a goal is missed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    MistralConfig,
    MistralForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback

from vikhr.eval.speed import machine_info
from vikhr.log import get_logger, setup_logging
from vikhr.train import IGNORE_INDEX
from vikhr.train.packing import PackedSequence, PackingCollator, make_sequence
from vikhr.train.trainer import KLTrainer

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("hf_ce", "hf_ce_kl", "vikhr_ce", "vikhr_ce_kl")
WITH_KL = ("hf_ce_kl", "vikhr_ce_kl")
KL_SPEEDUP_GOAL = 1.5
"""vikhr_ce_kl tokens/s over hf_ce_kl tokens/s, at least."""
KL_OVERHEAD_GOAL = 1.15
"""vikhr_ce_kl step time over vikhr_ce step time, at most."""
ISSUE_H200_TOKENS_PER_S = {"hf_ce": 46_800, "hf_ce_kl": 35_100}
"""Plain HF with SDPA on an H200, as the issue reports it."""
PEAK_BF16_DENSE = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h200 nvl", 835e12),
    ("h100", 989e12),
    ("h200", 989e12),
    ("a100", 312e12),
)
"""Peak dense bf16 FLOP/s by a substring of the lower-cased device name, first match wins."""
DEFAULTS = {
    "real": {"steps": 20, "warmup": 5, "seq_len": 1024, "batch": 8},
    "smoke": {"steps": 3, "warmup": 2, "seq_len": 64, "batch": 2},
}

log = get_logger("vikhr.bench.pretrain_throughput")


def model_config(smoke: bool) -> MistralConfig:
    """The ~1.1B Mistral shape of the issue, or a tiny one for `--smoke`."""
    size = (
        {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 128, "vocab_size": 512}
        if smoke else
        {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
         "intermediate_size": 5632, "vocab_size": 32000}
    )  # fmt: skip
    return MistralConfig(
        **size,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )


def new_model(cfg: MistralConfig, seed: int, device: torch.device) -> MistralForCausalLM:
    """A randomly initialised model built directly on `device` (same weights for the same seed and device)."""
    torch.manual_seed(seed)
    with device:
        model = MistralForCausalLM(cfg)
    model.config.use_cache = False
    return model


def param_counts(cfg: MistralConfig) -> dict[str, int]:
    """Parameter counts of the model (built on the meta device): total, input embedding, the rest."""
    with torch.device("meta"):
        model = MistralForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "input_embedding": embedding, "non_embedding_with_head": total - embedding}


def synthetic_rows(n: int, seq_len: int, vocab: int, seed: int) -> list[PackedSequence]:
    """`n` rows of random tokens, row i packed from 1 + i % 4 documents cut at random points (seeded)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        docs = 1 + i % 4
        cuts = sorted((torch.randperm(seq_len - 1, generator=g)[: docs - 1] + 1).tolist())
        lens = [b - a for a, b in zip([0, *cuts], [*cuts, seq_len], strict=True)]
        ids = torch.randint(vocab, (seq_len,), generator=g).tolist()
        rows.append(make_sequence(ids, lens, seq_len, pad_id=0))
    return rows


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    """Peak dense bf16 FLOP/s: `--peak-tflops` when given, else looked up by device name (None: unknown)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    name = device_name.lower()
    return next((peak for key, peak in PEAK_BF16_DENSE if key in name), None)


def card_slug(device_name: str) -> str:
    """`NVIDIA H100 80GB HBM3` -> `nvidia-h100-80gb-hbm3`."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, from `on_step_begin` to `on_step_end`, CUDA synchronised."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.times: list[float] = []
        self._start = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = self._now()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.times.append(self._now() - self._start)


class NaiveKLTrainer(Trainer):
    """CE + KL(P_model ‖ P_ref) as a user would first write it: the model's own loss plus a full-vocabulary KL
    from the full logits of the model and of a frozen copy (bf16 on CUDA), log-softmax in float32."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dtype = torch.bfloat16 if self.args.device.type == "cuda" else self.model.dtype
        self.ref_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.ref_model.to(device=self.args.device, dtype=dtype)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        ce, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        with torch.no_grad():
            ref_logits = self.ref_model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        logp = F.log_softmax(outputs.logits[:, :-1].float(), dim=-1)
        logq = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
        kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)  # Σ p (log p − log q)
        mask = inputs["labels"][:, 1:] != IGNORE_INDEX
        loss = ce + (kl * mask).sum() / mask.sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss


@dataclass(frozen=True)
class Setup:
    """What every variant shares: model shape, seed, device, training arguments, data, KL chunk."""

    cfg: MistralConfig
    seed: int
    device: torch.device
    args: TrainingArguments
    rows: list[PackedSequence]
    kl_chunk: int


def make_trainer(variant: str, setup: Setup, timer: StepTimer) -> Trainer:
    """A fresh model (same seed for every variant) in the variant's trainer, timed by `timer`."""
    kwargs: dict[str, Any] = {
        "model": new_model(setup.cfg, setup.seed, setup.device),
        "args": setup.args,
        "train_dataset": setup.rows,
        "data_collator": PackingCollator(),
        "callbacks": [timer],
    }
    if variant == "hf_ce":
        trainer = Trainer(**kwargs)
    elif variant == "hf_ce_kl":
        trainer = NaiveKLTrainer(**kwargs)
    else:
        reference = "init" if variant == "vikhr_ce_kl" else "none"
        trainer = KLTrainer(**kwargs, reference=reference, kl_weight=1.0, kl_chunk=setup.kl_chunk)
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_variant(variant: str, setup: Setup, timer: StepTimer) -> float:
    """Train one variant for `max_steps`; the mean training loss. Its model and trainer die on return."""
    trainer = make_trainer(variant, setup, timer)
    try:
        return trainer.train().training_loss
    finally:
        trainer.accelerator.free_memory()


def run_variant(variant: str, setup: Setup) -> dict:
    """Train one variant, catching failures (OOM included); raw step times, loss, peak memory, or the error."""
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer(cuda)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"status": "ok", "error": None, "train_loss": None}
    try:
        record["train_loss"] = train_variant(variant, setup, timer)
    except Exception as e:  # a failed variant (e.g. out of memory) is recorded and the others still run
        record.update(status="error", error=f"{type(e).__name__}: {e}")
    record["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    record["wall_s"] = time.perf_counter() - t0
    record["step_times_s"] = timer.times
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return record


def summarise(
    record: dict,
    variant: str,
    warmup: int,
    steps: int,
    tokens_per_step: float,
    flops: dict,
    peak: float | None,
) -> None:
    """Add median / p10 / p90 step time, tokens/s, FLOPs per token and MFU to a variant's record, in place."""
    timed = record["step_times_s"][warmup:]
    if record["status"] == "ok" and len(timed) != steps:
        record.update(status="error", error=f"expected {steps} timed steps, got {len(timed)}")
    if record["status"] != "ok":
        return
    deciles = statistics.quantiles(timed, n=10, method="inclusive") if len(timed) > 1 else timed * 9
    median = statistics.median(timed)
    tokens_per_s = tokens_per_step / median
    with_ref = flops["train"] + flops["ref_forward"] if variant in WITH_KL else None
    record.update(
        median_step_s=median,
        p10_step_s=deciles[0],
        p90_step_s=deciles[8],
        tokens_per_s=tokens_per_s,
        flops_per_token=flops["train"],
        flops_per_token_with_ref=with_ref,
        mfu=tokens_per_s * flops["train"] / peak if peak else None,
        mfu_with_ref=tokens_per_s * with_ref / peak if peak and with_ref else None,
    )


def goals(variants: dict[str, dict]) -> dict[str, dict]:
    """The issue's two ratios, with whether each holds (None where a variant is missing or failed)."""

    def value(name: str, key: str) -> float | None:
        rec = variants.get(name)
        return rec[key] if rec and rec["status"] == "ok" else None

    kl_tps, hf_tps = value("vikhr_ce_kl", "tokens_per_s"), value("hf_ce_kl", "tokens_per_s")
    kl_step, ce_step = value("vikhr_ce_kl", "median_step_s"), value("vikhr_ce", "median_step_s")
    speedup = kl_tps / hf_tps if kl_tps and hf_tps else None
    overhead = kl_step / ce_step if kl_step and ce_step else None
    return {
        "kl_speedup_vs_hf": {
            "statement": "vikhr_ce_kl tokens/s / hf_ce_kl tokens/s",
            "value": speedup,
            "goal": f">= {KL_SPEEDUP_GOAL}",
            "holds": None if speedup is None else speedup >= KL_SPEEDUP_GOAL,
        },
        "kl_overhead_vs_ce": {
            "statement": "vikhr_ce_kl step time / vikhr_ce step time",
            "value": overhead,
            "goal": f"<= {KL_OVERHEAD_GOAL}",
            "holds": None if overhead is None else overhead <= KL_OVERHEAD_GOAL,
        },
    }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    """The per-variant table and the two goal ratios."""
    lines = [
        "| variant | median step s | p10-p90 s | tokens/s | MFU | MFU incl. ref | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["variants"].items():
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['error'][:120]} | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['median_step_s']:.4f} | {r['p10_step_s']:.4f}-{r['p90_step_s']:.4f} "
            f"| {r['tokens_per_s']:,.0f} | {_fmt(r['mfu'], '.1%')} | {_fmt(r['mfu_with_ref'], '.1%')} "
            f"| {_fmt(r['peak_gib'], '.1f')} |"
        )
    lines.append("")
    for g in result["goals"].values():
        verdict = {None: "n/a", True: "holds", False: "MISSED"}[g["holds"]]
        ratio = "-" if g["value"] is None else f"{g['value']:.3f}x"
        lines.append(f"{g['statement']}: {ratio} (goal {g['goal']}: {verdict})")
    return "\n".join(lines)


def gpu_info() -> dict:
    """Name, compute capability, memory and CUDA version of GPU 0."""
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "capability": list(torch.cuda.get_device_capability(0)),
        "total_memory_gib": round(props.total_memory / 2**30, 1),
        "device_count": torch.cuda.device_count(),
        "cuda_runtime": torch.version.cuda,
    }


def benchmark(args: argparse.Namespace, device: torch.device, device_name: str, peak: float | None) -> dict:
    """Run the chosen variants; the result record (machine, config, per-variant times, goals)."""
    cfg = model_config(args.smoke)
    params = param_counts(cfg)
    n, layers, hidden = params["non_embedding_with_head"], cfg.num_hidden_layers, cfg.hidden_size
    flops = {
        "train": 6 * n + 12 * layers * hidden * args.seq_len,
        "ref_forward": 2 * n + 4 * layers * hidden * args.seq_len,
    }
    max_steps = args.warmup + args.steps
    rows = synthetic_rows(args.batch * max_steps, args.seq_len, cfg.vocab_size, args.seed)
    tokens_per_step = args.batch * sum(args.seq_len - r.num_pad for r in rows) / len(rows)
    cuda = device.type == "cuda"
    optim = "adamw_torch_fused" if cuda else "adamw_torch"
    print(
        f"{'smoke: ' if args.smoke else ''}Mistral shape, {params['total'] / 1e6:,.1f}M parameters, "
        f"on {device_name}: {args.batch} x {args.seq_len} tokens per step, "
        f"{args.warmup} warmup + {args.steps} timed steps"
    )
    variants: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
            max_steps=max_steps, learning_rate=1e-5, lr_scheduler_type="constant", optim=optim,
            bf16=cuda, use_cpu=not cuda, activation_checkpointing=args.gradient_checkpointing,
            logging_strategy="no", save_strategy="no", report_to=[], dataloader_num_workers=0,
            disable_tqdm=True, seed=args.seed, data_seed=args.seed, tf32=True if args.tf32 and cuda else None,
        )  # fmt: skip
        setup = Setup(cfg, args.seed, device, targs, rows, args.kl_chunk)
        for variant in args.variants:
            log.info("%s: training %d steps", variant, max_steps)
            rec = run_variant(variant, setup)
            summarise(rec, variant, args.warmup, args.steps, tokens_per_step, flops, peak)
            log.info("%s: %s", variant, rec["error"] or f"{rec['tokens_per_s']:,.0f} tokens/s")
            variants[variant] = rec
    model_keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "vocab_size", "tie_word_embeddings")  # fmt: skip
    return {
        "benchmark": "pretrain_throughput",
        "smoke": args.smoke,
        "machine": {**machine_info(), "gpu": gpu_info() if cuda else None},
        "config": {
            "model": {k: getattr(cfg, k) for k in model_keys},
            "attn_implementation": cfg._attn_implementation,
            "params": params,
            "flops_per_token": flops,
            "flops_formula": "train 6N + 12·L·H·T, reference forward 2N + 4·L·H·T, N = non_embedding_with_head",
            "peak_flops": peak,
            "peak_flops_source": "--peak-tflops" if args.peak_tflops else ("table" if peak else None),
            "seq_len": args.seq_len,
            "batch": args.batch,
            "tokens_per_step": tokens_per_step,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "kl_chunk": args.kl_chunk,
            "kl_weight": 1.0,
            "gradient_checkpointing": args.gradient_checkpointing,
            "tf32": args.tf32 and cuda,
            "precision": "fp32 weights, bf16 autocast" if cuda else "fp32",
            "optim": optim,
            "seed": args.seed,
        },
        "issue_h200_plain_hf_tokens_per_s": ISSUE_H200_TOKENS_PER_S,
        "variants": variants,
        "goals": goals(variants),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments, with the real or smoke defaults filled in."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU to check the script; needs --out")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--steps", type=int, help="timed steps (default 20; smoke 3)")
    ap.add_argument("--warmup", type=int, help="untimed first steps (default 5; smoke 2)")
    ap.add_argument("--seq-len", type=int, help="tokens per row (default 1024; smoke 64)")
    ap.add_argument("--batch", type=int, help="rows per step (default 8; smoke 2)")
    ap.add_argument("--kl-chunk", type=int, default=1024, help="KLTrainer: rows of logits per chunk")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument(
        "--tf32", action="store_true", help="TrainingArguments(tf32=True): TF32 in float32 matmuls (CUDA)"
    )
    ap.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s (required for unknown cards)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="JSON path (default: results/pretrain_throughput_<card>.json)")
    args = ap.parse_args(argv)
    for key, default in DEFAULTS["smoke" if args.smoke else "real"].items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.steps < 1 or args.warmup < 0 or args.seq_len < 2 or args.batch < 1 or args.kl_chunk < 1:
        ap.error("need --steps >= 1, --warmup >= 0, --seq-len >= 2, --batch >= 1, --kl-chunk >= 1")
    if args.smoke and args.out is None:
        ap.error("--smoke needs --out (results/ is for real runs)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the JSON, print the table; the exit status (see the module docstring)."""
    args = parse_args(argv)
    setup_logging("INFO")
    if args.smoke:
        device, device_name = torch.device("cpu"), "cpu"
    elif not torch.cuda.is_available():
        print("pretrain_throughput: needs a CUDA GPU (--smoke checks the script on CPU)", file=sys.stderr)
        return 2
    elif torch.cuda.device_count() > 1:
        print("pretrain_throughput: several GPUs visible; set CUDA_VISIBLE_DEVICES to one", file=sys.stderr)
        return 2
    else:
        device, device_name = torch.device("cuda", 0), torch.cuda.get_device_name(0)
    peak = peak_flops(device_name, args.peak_tflops)
    if peak is None and not args.smoke:
        print(
            f"pretrain_throughput: unknown peak FLOP/s of {device_name!r}; pass --peak-tflops",
            file=sys.stderr,
        )
        return 2
    out = args.out or RESULTS / f"pretrain_throughput_{card_slug(device_name)}.json"

    result = benchmark(args, device, device_name, peak)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(result))
    reference = ", ".join(f"{k} {v / 1e3:.1f}k" for k, v in ISSUE_H200_TOKENS_PER_S.items())
    print(f"plain HF on the issue's H200, tokens/s: {reference}\n(results in {out})")
    failed = any(r["status"] != "ok" for r in result["variants"].values())
    missed = not args.smoke and any(g["holds"] is False for g in result["goals"].values())
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
