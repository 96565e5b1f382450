"""Reward-model training internals: pairs batched for `transformers.Trainer`, a Bradley–Terry loss, the scalar read.

The model is any `AutoModelForSequenceClassification` with `num_labels=1`: an encoder (BERT, XLM-R, e5: the
score comes from its own pooled head) or a decoder (Llama, Mistral, Qwen: `...ForSequenceClassification` with a
per-position `score` head). For a decoder the reward is read at the last real token of each row, found from the
attention mask — not by the model's own rule (the rightmost token that is not `pad_token_id`), which reads the
token before a final eos whenever the pad token is the eos token. `sequence_rewards` does that with a forward hook
on the `score` head, so the model (possibly DDP/FSDP-wrapped) still runs through its own `forward`.

Batches (`PairCollator`): [2B, T] `input_ids` / `attention_mask`, right-padded, the B chosen rows first, then the B
rejected rows in the same order; and `labels` [B], one entry per pair, whose only use is that `Trainer` counts them.

Normalisation with gradient accumulation (transformers 5.24). `RewardTrainer` sets `model_accepts_loss_kwargs = True`,
so the Trainer counts `num_items_in_batch` = pairs (the `labels` entries) over all micro-batches of one optimizer step
(and over ranks with `average_tokens_across_devices`). A micro-batch then returns the *sum* of its pair losses
divided by that count, i.e. the mean over every pair of the accumulated step, whatever the micro-batch sizes (the
last batch of an epoch is smaller); the Trainer does not divide by the accumulation steps again. Across ranks the
loss is multiplied by the number of processes, as `Trainer.compute_loss` does, to undo DDP's gradient averaging.
Without `num_items_in_batch` (evaluation) the loss is the micro-batch mean.

Logging. Every `compute_loss` call adds (loss sum, correct pairs, pairs) to running sums, kept apart for training
and evaluation; `log()` sums them over ranks and reports `accuracy` beside the Trainer's `loss` (`eval_accuracy`
beside `eval_loss`), then resets them. A tie (equal rewards) counts half.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer

from vikhr.log import get_logger

log = get_logger(__name__)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """`input_ids` and `attention_mask` [rows, longest], right-padded with `pad_id`."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("cannot pad an empty batch or an empty token sequence")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


@dataclass
class PairCollator:
    """`data_collator` for `RewardTrainer`: features {"chosen": ids, "rejected": ids} -> `input_ids` and
    `attention_mask` [2B, longest], right-padded with `pad_id` (chosen rows first), and `labels` [B] (ones)."""

    pad_id: int

    def __call__(self, features: Sequence[dict[str, Sequence[int]]]) -> dict[str, Tensor]:
        if not features:
            raise ValueError("PairCollator got an empty batch")
        ids, mask = pad_rows([f["chosen"] for f in features] + [f["rejected"] for f in features], self.pad_id)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.ones(len(features), dtype=torch.long),
        }


def last_token_head(model: nn.Module) -> nn.Module | None:
    """The per-position `score` head of a decoder's `...ForSequenceClassification` (None for an encoder, whose
    classifier reads its pooled output)."""
    head = getattr(model, "score", None)
    return head if isinstance(head, nn.Linear) else None


def sequence_rewards(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, head: nn.Module | None = None
) -> Tensor:
    """[rows] float32 rewards of a `num_labels=1` model. `head`: `last_token_head` of the unwrapped model (None:
    the model's own pooled logits); when given, its per-position output is read at each row's last real token
    (the last 1 of `attention_mask`, left or right padding alike)."""
    if head is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    seen: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    if len(seen) != 1 or seen[0].dim() != 3:
        raise RuntimeError(
            f"expected one [rows, T, 1] call of the score head, saw {[tuple(s.shape) for s in seen]}"
        )
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask.ne(0)).argmax(-1)
    return seen[0][torch.arange(len(last), device=last.device), last, 0].float()


def bradley_terry(chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair loss -log σ(r_chosen − r_rejected) and correctness (1 right, ½ tie, 0 wrong)."""
    diff = chosen - rejected
    correct = (diff > 0).float() + 0.5 * (diff == 0).float()
    return -F.logsigmoid(diff), correct


class RewardTrainer(Trainer):
    """`transformers.Trainer` for a `num_labels=1` model on `PairCollator` batches, with the Bradley–Terry loss
    mean over pairs of −log σ(r_chosen − r_rejected) (see the module docstring for normalisation and logging).

    `group_by_length=True`: training batches of pairs of similar length (the Trainer's `LengthGroupedSampler` over
    the longer side of each pair: random mega-batches of 50 optimizer steps, sorted inside), which saves most of
    the padding when lengths vary; otherwise the Trainer's random order.
    """

    def __init__(self, *args: Any, group_by_length: bool = False, **kwargs: Any) -> None:
        self.group_by_length = group_by_length
        super().__init__(*args, **kwargs)
        # Have Trainer count pairs (`labels` entries) over every optimizer step (see module docstring).
        self.model_accepts_loss_kwargs = True
        self._sums: dict[str, Tensor] = {}

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length or ds is None:
            return super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        lengths = [max(len(f["chosen"]), len(f["rejected"])) for f in ds]
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=lengths
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Bradley–Terry loss on the batch, normalised by `num_items_in_batch` when given."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        pairs = ids.shape[0] // 2
        if ids.shape[0] != 2 * pairs or pairs == 0:
            raise ValueError(f"a pair batch has an even, positive number of rows; got {ids.shape[0]}")
        head = last_token_head(self.accelerator.unwrap_model(model))
        rewards = sequence_rewards(model, ids, mask, head)
        chosen, rejected = rewards[:pairs], rewards[pairs:]
        losses, correct = bradley_terry(chosen, rejected)
        self._record("train" if model.training else "eval", losses, correct)
        if num_items_in_batch is not None:
            loss = losses.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss = losses.mean()
        outputs = {"chosen": chosen.detach(), "rejected": rejected.detach()}
        return (loss, outputs) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Evaluation: the mean pair loss of the batch (accuracy goes to the running sums)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _record(self, mode: str, losses: Tensor, correct: Tensor) -> None:
        n = torch.tensor(float(len(losses)), dtype=torch.float64, device=losses.device)
        sums = torch.stack([losses.detach().double().sum(), correct.double().sum(), n])
        self._sums[mode] = self._sums[mode] + sums if mode in self._sums else sums

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the pair accuracy since the last log, summed over ranks: `accuracy` beside the training `loss`,
        `eval_accuracy` beside `eval_loss` (`eval_NAME_accuracy` for a named evaluation set)."""
        keys = [("train", "")] if "loss" in logs else []
        keys += [("eval", k[: -len("loss")]) for k in logs if k.startswith("eval_") and k.endswith("_loss")]
        for mode, prefix in keys:
            sums = self._sums.pop(mode, None)
            if sums is None:
                sums = torch.zeros(3, dtype=torch.float64, device=self.args.device)
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum")
            pairs = max(sums[2].item(), 1.0)
            logs[f"{prefix}accuracy"] = sums[1].item() / pairs
            if mode == "eval":
                logs[f"{prefix}loss"] = sums[0].item() / pairs  # pair-weighted, whatever the batch sizes
        super().log(logs, start_time)
