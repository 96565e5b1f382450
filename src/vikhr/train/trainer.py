"""Continued pre-training of all weights with loss = CE + λ·KL(P_model ‖ P_ref) (Vikhr eq. 1), as a Trainer subclass.

The loss never builds full [tokens × vocab] logits. For one call of the (possibly DDP/FSDP/DeepSpeed-wrapped)
model, the LM head's `forward` is replaced so that, given the final hidden states, it returns [CE, KL] computed
chunk by chunk by `vikhr.train.kl` from those states and its own weight. The loss is thus computed *inside* the
model's forward, where FSDP and ZeRO-3 have the head's weight gathered, and it is the model's output, so the
wrappers' pre-backward hooks see it. Models that post-process logits (soft-capping, scaling) are refused.

Reference (`reference=`):
- `"init"`: a frozen deep copy of the model taken when the trainer is built, before any step (requires_grad off,
  eval mode, the compute dtype on a GPU, the model's own dtype on a CPU) on the model's device. It is a plain attribute of the
  trainer, not a submodule of `self.model`, so the optimizer, accelerate and DDP never see it; each rank holds a
  whole copy (also under FSDP/ZeRO-3: 2 bytes per parameter per GPU). Exact KL over the full vocabulary.
  Resuming: build the fresh trainer from the same *initial* model (the checkpoint weights are loaded later by
  `train(resume_from_checkpoint=...)`), so the reference stays the start of training.
- `"base"`: the original model with its own tokenizer (`base_model=`, placed like `init`). The batch must carry its
  view of the same text (`PackedDataset(base_tokenizer=...)`); the KL is taken at the aligned position pairs over
  the shared vocabulary, renormalised on both sides (`vikhr.train.align`), and is 0 in a batch with no pair.
- `"none"`: CE only (still chunked); `kl` is logged as 0.

Normalisation with gradient accumulation (transformers 5.24). The trainer sets `model_accepts_loss_kwargs = True`
and `_loss_shifts_labels = True`, so `Trainer` counts `num_items_in_batch` = labelled targets in `labels[..., 1:]`
over all micro-batches of one optimizer step (and over ranks when `average_tokens_across_devices`). A micro-batch
with n labelled targets then returns (ce + λ·kl) · n / num_items_in_batch, i.e. the token sum over the whole
accumulated batch divided once by its token count; `Trainer.training_step` sees `num_items_in_batch` and does
not divide by the accumulation steps again. Across ranks with `average_tokens_across_devices` the loss is
multiplied by the number of processes, as `Trainer.compute_loss` does, to undo DDP's gradient averaging. Without
`num_items_in_batch` (e.g. `prediction_step` on a batch without labels) the loss is the micro-batch mean and the
Trainer divides by the accumulation steps itself.

Logging. Every `compute_loss` call adds ce·n, kl·n and n (n = labelled targets) to running sums, separately for
training and evaluation; `log()` sums them over ranks and reports the token-weighted means as `ce` / `kl` (and
`eval_ce` / `eval_kl`), then resets them — the same window as the Trainer's `loss`, averaged over accumulation
steps and logging steps by tokens.

Guards. `freeze_steps=N`: for the first N optimizer steps only the input embeddings and the LM head learn (the
body's gradients are dropped after every backward; the ruadapt-style warm-up), then everything. A non-finite
gradient norm (NaN/inf loss) stops training with `TrainingDiverged`, naming the step and the last checkpoint,
before the optimizer can write NaN into the weights.
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from vikhr.log import get_logger
from vikhr.precision import compute_dtype
from vikhr.train import IGNORE_INDEX, TrainingDiverged
from vikhr.train.kl import Direction, ce_and_kl, chunked_ce, chunked_kl
from vikhr.train.packing import PackingCollator, check_model_for_packing

log = get_logger(__name__)

Reference = Literal["init", "none", "base"]
BASE_KEYS = ("base_input_ids", "base_position_ids", "align_new", "align_base")
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_scaling")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen (no gradients), eval-mode deep copy of `model`; place it with `place_reference`."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def place_reference(ref: nn.Module, device: torch.device) -> nn.Module:
    """Move a reference to `device`. On a GPU it is stored in the compute dtype (`vikhr.precision`: bf16 where the
    card supports it), which halves its memory; on a CPU it keeps the model's own dtype and computes under the same
    autocast as the trained model, so the KL to `init` is exactly 0 before the first step."""
    own = next(ref.parameters()).dtype
    dtype = compute_dtype(device) if device.type == "cuda" else own
    return ref.to(device=device, dtype=dtype)


def _decoder(model: nn.Module) -> nn.Module:
    """The decoder body whose output is the final normed hidden state (`model.model` for Llama-family)."""
    body = model.base_model
    if body is model:
        raise ValueError(f"{type(model).__name__} has no separate decoder body to take hidden states from")
    return body


def check_head(model: nn.Module) -> None:
    """Refuse models whose forward changes the LM head's output (the loss is computed in the head's place)."""
    for name in LOGIT_POSTPROCESSING:
        v = getattr(model.config, name, None)
        if v not in (None, 1, 1.0):
            raise ValueError(
                f"{type(model).__name__} post-processes its logits ({name}={v}); KLTrainer computes the loss in "
                "place of the LM head and does not support that"
            )
    if getattr(model.get_output_embeddings(), "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: an LM head with a bias is not supported")


def run_head_as_loss(
    model: nn.Module, head: nn.Module, inputs: dict[str, Any], loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """Call `model(**inputs)` with `head` computing `loss_fn(final_hidden [B, T, H], head.weight)` in place of
    logits; return that result (the model's `logits` output). The head still goes through `nn.Module.__call__`,
    so FSDP / DeepSpeed hooks gather its weight around the call."""
    calls: list[int] = []

    def forward(self: nn.Module, hidden: Tensor) -> Tensor:
        calls.append(1)
        return loss_fn(hidden, self.weight)

    head.forward = types.MethodType(forward, head)
    try:
        out = model(**inputs, use_cache=False, logits_to_keep=0)
    finally:
        del head.forward
    if len(calls) != 1:
        raise RuntimeError(f"expected one LM-head call in the model's forward, saw {len(calls)}")
    return out.logits


class KLTrainer(Trainer):
    """`transformers.Trainer` whose loss is CE + kl_weight·KL(P_model ‖ P_ref), computed chunk-wise.

    reference: "init" (frozen copy of the model at construction), "base" (`base_model`, the original model with
    its own tokenizer; the data must carry its view, see `PackedDataset(base_tokenizer=...)`) or "none" (CE only).
    kl_weight: λ. kl_chunk: rows of logits computed at once. kl_direction: "reverse" (the paper's
    KL(P_model ‖ P_ref)) or "forward". shared_ids: (new_ids, base_ids) from `align.shared_vocab_map` for "base".
    freeze_steps: optimizer steps during which only embeddings and LM head learn. Other arguments go to `Trainer`;
    pass data from `PackedDataset` with `PackingCollator`.
    """

    def __init__(
        self,
        *args: Any,
        reference: Reference = "init",
        kl_weight: float = 1.0,
        kl_chunk: int = 1024,
        kl_direction: Direction = "reverse",
        base_model: nn.Module | None = None,
        shared_ids: tuple[Tensor, Tensor] | None = None,
        freeze_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        if reference not in ("init", "none", "base"):
            raise ValueError(f'reference must be "init", "none" or "base", got {reference!r}')
        if reference == "base" and (base_model is None or shared_ids is None):
            raise ValueError('reference="base" needs base_model= and shared_ids= (align.shared_vocab_map)')
        if kl_direction not in ("reverse", "forward"):
            raise ValueError(f"kl_direction must be 'reverse' or 'forward', got {kl_direction!r}")
        if kl_chunk <= 0 or kl_weight < 0 or freeze_steps < 0:
            raise ValueError(
                f"need kl_chunk > 0, kl_weight >= 0, freeze_steps >= 0; got {kl_chunk}, {kl_weight}, {freeze_steps}"
            )
        model = kwargs.get("model", args[0] if args else None)
        if model is None:
            raise ValueError("KLTrainer needs a model")
        check_head(model)
        collator = kwargs.get("data_collator")
        if isinstance(collator, PackingCollator):
            if model.config.use_cache:
                log.info("packed training: setting model.config.use_cache=False")
                model.config.use_cache = False
            check_model_for_packing(model, flash_varlen_kwargs=collator.flash_varlen_kwargs)
        # Copied before Trainer moves or wraps anything: the weights the run starts from.
        ref = frozen_copy(model) if reference == "init" else None
        super().__init__(*args, **kwargs)
        self.reference = reference
        self.kl_weight = float(kl_weight)
        self.kl_chunk = int(kl_chunk)
        self.kl_direction = kl_direction
        self.freeze_steps = int(freeze_steps)
        if self.freeze_steps and self.is_deepspeed_enabled:
            raise ValueError(
                "freeze_steps is not supported under DeepSpeed (its gradients live outside the params)"
            )
        # Plain attributes, not submodules: no optimizer, accelerate or DDP wrapping.
        self.ref_model = place_reference(ref, self.args.device) if ref is not None else None
        self.base_ref = self.base_ids = self.base_weight = None
        if reference == "base":
            self.base_ref = place_reference(frozen_copy(base_model), self.args.device)
            new_ids, base_ids = shared_ids
            self.base_ids = new_ids.to(self.args.device)
            self.base_weight = self.base_ref.get_output_embeddings().weight.index_select(
                0, base_ids.to(self.args.device)
            )
        # Have Trainer count labelled targets over labels[..., 1:] for every optimizer step (see module docstring).
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self._kl_sums: dict[str, Tensor] = {}

    def _loss_fn(self, inputs: dict[str, Any], labels: Tensor, base: dict[str, Tensor]) -> Callable:
        """The function the LM head runs in place of its forward: hidden [B, T, H], weight -> [ce, kl]."""
        y = labels[:, 1:]
        chunk, direction = self.kl_chunk, self.kl_direction
        if self.reference == "init":
            with torch.no_grad(), self.accelerator.autocast():  # the trained model's mixed precision
                ref_h = _decoder(self.ref_model)(**inputs, use_cache=False).last_hidden_state[:, :-1, :]
            ref_w = self.ref_model.get_output_embeddings().weight

            def fn(hidden: Tensor, w: Tensor) -> Tensor:
                return torch.stack(
                    ce_and_kl(hidden[:, :-1, :], w, y, ref_h, ref_w, chunk=chunk, direction=direction)
                )

        elif self.reference == "base":
            with torch.no_grad(), self.accelerator.autocast():  # the trained model's mixed precision
                bh = _decoder(self.base_ref)(
                    input_ids=base["base_input_ids"], position_ids=base["base_position_ids"], use_cache=False
                ).last_hidden_state
                bh = bh.reshape(-1, bh.shape[-1]).index_select(0, base["align_base"])
            rows = base["align_new"]

            def fn(hidden: Tensor, w: Tensor) -> Tensor:
                ce = chunked_ce(hidden[:, :-1, :], w, y, chunk=chunk)
                h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
                kl = chunked_kl(
                    h, w.index_select(0, self.base_ids), ref_hidden=bh, ref_weight=self.base_weight,
                    chunk=chunk, direction=direction,
                )  # fmt: skip
                return torch.stack([ce, kl])

        else:

            def fn(hidden: Tensor, w: Tensor) -> Tensor:
                ce = chunked_ce(hidden[:, :-1, :], w, y, chunk=chunk)
                return torch.stack([ce, torch.zeros_like(ce)])

        return fn

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """CE + kl_weight·KL on the batch, normalised by `num_items_in_batch` when given (see module docstring)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        base = {k: inputs.pop(k) for k in BASE_KEYS if k in inputs}
        if self.reference == "base" and not base:
            raise ValueError(
                'reference="base" needs batches with a base view: PackedDataset(base_tokenizer=...)'
            )
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        ce, kl = run_head_as_loss(model, head, inputs, self._loss_fn(inputs, labels, base)).unbind(0)
        loss = ce + self.kl_weight * kl if self.kl_weight else ce
        n = (labels[:, 1:] != IGNORE_INDEX).sum()
        self._record("train" if model.training else "eval", ce, kl, n)
        if num_items_in_batch is not None:
            loss = loss * n / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, {"ce": ce.detach(), "kl": kl.detach()}) if return_outputs else loss

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Tensor:
        """The Trainer's step; while `freeze_steps` lasts, the body's gradients are dropped after the backward."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.state.global_step < self.freeze_steps:
            keep = {id(p) for p in self._embedding_params(model)}
            for p in model.parameters():
                if id(p) not in keep:
                    p.grad = None
        return loss

    def _embedding_params(self, model: nn.Module) -> list[nn.Parameter]:
        unwrapped = self.accelerator.unwrap_model(model)
        return [unwrapped.get_input_embeddings().weight, unwrapped.get_output_embeddings().weight]

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        """The Trainer's gradient norm (the same on every rank); a non-finite one stops training."""
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if norm is not None and not math.isfinite(float(norm)):
            self._diverged(f"gradient norm {float(norm)}")
        return norm

    def _diverged(self, what: str) -> None:
        last = get_last_checkpoint(self.args.output_dir) if Path(self.args.output_dir).is_dir() else None
        raise TrainingDiverged(
            f"training diverged at optimizer step {self.state.global_step + 1}: {what} (NaN/inf loss); the weights "
            f"were not updated. Last good checkpoint: {last or 'none saved yet'}. Lower the learning rate, check "
            "the data, or resume from that checkpoint."
        )

    def _record(self, mode: str, ce: Tensor, kl: Tensor, n: Tensor) -> None:
        sums = torch.stack([ce.detach().double() * n, kl.detach().double() * n, n.double()])
        self._kl_sums[mode] = self._kl_sums[mode] + sums if mode in self._kl_sums else sums

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add token-weighted `ce` / `kl` since the last log, summed over ranks: `ce`/`kl` beside the training
        `loss`, `eval_ce`/`eval_kl` beside `eval_loss` (`eval_NAME_ce` for a named evaluation set)."""
        keys = [("train", "", "loss")] if "loss" in logs else []
        keys += [
            ("eval", k[: -len("loss")], k) for k in logs if k.startswith("eval_") and k.endswith("_loss")
        ]
        for mode, prefix, _ in keys:
            sums = self._kl_sums.pop(mode, None)
            if sums is None:
                sums = torch.zeros(3, dtype=torch.float64, device=self.args.device)
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum")
            tokens = max(sums[2].item(), 1.0)
            logs[f"{prefix}ce"] = sums[0].item() / tokens
            logs[f"{prefix}kl"] = sums[1].item() / tokens
        super().log(logs, start_time)
