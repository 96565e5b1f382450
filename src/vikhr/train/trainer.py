"""Continued pre-training of all weights with loss = CE + λ·KL(P_model ‖ P_ref) (Vikhr eq. 1), as a Trainer subclass.

The loss never builds full [tokens × vocab] logits: the model is called with `logits_to_keep` set to an empty
index (its LM head then sees zero positions) and the final, normed hidden states are taken from a forward hook on
the decoder body; `vikhr.train.kl.ce_and_kl` then computes CE and KL chunk by chunk from those hidden states and
the LM-head weight. The call still goes through the (possibly DDP-wrapped) model, so DDP's gradient sync works.

Reference (`reference=`):
- `"init"`: a frozen deep copy of the model taken when the trainer is built, before any step (requires_grad off,
  eval mode, bf16 on CUDA, the model's own dtype elsewhere) on the model's device. It is a plain attribute of the
  trainer, not a submodule of `self.model`, so the optimizer, accelerate and DDP never see it. Under DDP each rank
  builds its own trainer and therefore holds its own copy on its own device; no communication is needed because
  the reference is never updated. Resuming: build the fresh trainer from the same *initial* model (the checkpoint
  weights are loaded later by `train(resume_from_checkpoint=...)`), so the reference stays the start of training.
- `"none"`: CE only (still chunked); `kl` is logged as 0.
- `"base"` (the original model with its own tokenizer, KL at aligned positions) is not implemented yet.

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
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import Trainer

from vikhr.log import get_logger
from vikhr.train.kl import IGNORE_INDEX, Direction, ce_and_kl, chunked_ce
from vikhr.train.packing import PackingCollator, check_model_for_packing

log = get_logger(__name__)

Reference = Literal["init", "none", "base"]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen (no gradients), eval-mode deep copy of `model`; place it with `place_reference`."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def place_reference(ref: nn.Module, device: torch.device) -> nn.Module:
    """Move a reference to `device`: bf16 on CUDA, its own dtype elsewhere."""
    dtype = torch.bfloat16 if device.type == "cuda" else next(ref.parameters()).dtype
    return ref.to(device=device, dtype=dtype)


def _decoder(model: nn.Module) -> nn.Module:
    """The decoder body whose output is the final normed hidden state (`model.model` for Llama-family)."""
    body = model.base_model
    if body is model:
        raise ValueError(f"{type(model).__name__} has no separate decoder body to take hidden states from")
    return body


def _last_hidden(out: Any) -> Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


class KLTrainer(Trainer):
    """`transformers.Trainer` whose loss is CE + kl_weight·KL(P_model ‖ P_ref), computed chunk-wise.

    reference: "init" (frozen copy of the model at construction) or "none" (CE only). kl_weight: λ.
    kl_chunk: rows of logits computed at once. kl_direction: "reverse" (the paper's KL(P_model ‖ P_ref)) or
    "forward". Other arguments go to `Trainer`; pass data from `PackedDataset` with `PackingCollator`.
    """

    def __init__(
        self,
        *args: Any,
        reference: Reference = "init",
        kl_weight: float = 1.0,
        kl_chunk: int = 1024,
        kl_direction: Direction = "reverse",
        **kwargs: Any,
    ) -> None:
        if reference == "base":
            raise NotImplementedError(
                'reference="base" (the original model with its own tokenizer, KL at aligned positions) is not '
                'implemented yet; use reference="init" or "none"'
            )
        if reference not in ("init", "none"):
            raise ValueError(f'reference must be "init", "none" or "base", got {reference!r}')
        if kl_direction not in ("reverse", "forward"):
            raise ValueError(f"kl_direction must be 'reverse' or 'forward', got {kl_direction!r}")
        if kl_chunk <= 0 or kl_weight < 0:
            raise ValueError(f"need kl_chunk > 0 and kl_weight >= 0, got {kl_chunk} and {kl_weight}")
        model = kwargs.get("model", args[0] if args else None)
        if model is None:
            raise ValueError("KLTrainer needs a model")
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
        # A plain attribute, not a submodule: no optimizer, accelerate or DDP wrapping.
        self.ref_model = place_reference(ref, self.args.device) if ref is not None else None
        # Have Trainer count labelled targets over labels[..., 1:] for every optimizer step (see module docstring).
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self._kl_sums: dict[str, Tensor] = {}

    def _hidden(self, model: nn.Module, body: nn.Module, inputs: dict[str, Any]) -> Tensor:
        """Final hidden states [B, T, H] of `model` (called through its wrapper) without computing logits."""
        captured: list[Tensor] = []
        handle = body.register_forward_hook(lambda _m, _i, out: captured.append(_last_hidden(out)))
        try:
            empty = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
            model(**inputs, use_cache=False, logits_to_keep=empty)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"expected one decoder call, saw {len(captured)}")
        return captured[0]

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
        unwrapped = self.accelerator.unwrap_model(model)
        h = self._hidden(model, _decoder(unwrapped), inputs)[:, :-1, :]
        y = labels[:, 1:]
        w = unwrapped.get_output_embeddings().weight
        if self.ref_model is None:
            ce = chunked_ce(h, w, y, chunk=self.kl_chunk)
            kl = torch.zeros_like(ce)
        else:
            with torch.no_grad():
                ref_h = _decoder(self.ref_model)(**inputs, use_cache=False).last_hidden_state[:, :-1, :]
            ref_w = self.ref_model.get_output_embeddings().weight
            ce, kl = ce_and_kl(h, w, y, ref_h, ref_w, chunk=self.kl_chunk, direction=self.kl_direction)
        loss = ce + self.kl_weight * kl if self.kl_weight else ce
        n = (y != IGNORE_INDEX).sum()
        self._record("train" if model.training else "eval", ce, kl, n)
        if num_items_in_batch is not None:
            loss = loss * n / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, {"ce": ce.detach(), "kl": kl.detach()}) if return_outputs else loss

    def _record(self, mode: str, ce: Tensor, kl: Tensor, n: Tensor) -> None:
        sums = torch.stack([ce.detach().double() * n, kl.detach().double() * n, n.double()])
        self._kl_sums[mode] = self._kl_sums[mode] + sums if mode in self._kl_sums else sums

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add token-weighted `ce` / `kl` (or `eval_ce` / `eval_kl`) since the last log, summed over ranks."""
        for mode, prefix, key in (("train", "", "loss"), ("eval", "eval_", "eval_loss")):
            if key not in logs:
                continue
            sums = self._kl_sums.pop(mode, None)
            if sums is None:
                sums = torch.zeros(3, dtype=torch.float64, device=self.args.device)
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum")
            tokens = max(sums[2].item(), 1.0)
            logs[f"{prefix}ce"] = sums[0].item() / tokens
            logs[f"{prefix}kl"] = sums[1].item() / tokens
        super().log(logs, start_time)
