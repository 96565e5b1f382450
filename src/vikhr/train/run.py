"""The training run every training stage shares (continued pre-training today; SFT and the reward model next).

- `training_arguments(...)`: `transformers.TrainingArguments` from plain arguments, mixed precision decided by
  `vikhr.precision` (bf16 only where the device computes it natively).
- `resume_point(work, key, resume)`: the last checkpoint in a stage's work folder, valid only for the exact inputs
  that produced it. `key` is the stage's full fingerprint (config, upstream outputs by content, data, code
  version, world size); a different key, `resume=False` or a forced rerun (the pipeline clears the folder) starts
  from step 0 in a clean folder. Without this a rerun after an upstream change "resumes" a finished run at
  `max_steps`, trains nothing and publishes the old weights.
- `train_and_save(trainer, work, resume_from)`: train, then save the full weights collectively on every rank
  (FSDP / ZeRO-3 gather them) into `work/final`.

Calls into `transformers` internals stay in this package (DESIGN rule 10); stages import only what is here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vikhr.log import get_logger
from vikhr.rundir import keyed_work
from vikhr.train.dist import is_main_process

log = get_logger(__name__)


def use_bf16(setting: str = "auto") -> bool:
    """Mixed precision for `setting` (`auto` / `true` / `false`): `auto` asks `vikhr.precision` for the device the
    Trainer will use (the GPU when there is one, else the CPU)."""
    import torch

    from vikhr.precision import compute_dtype

    if setting not in ("auto", "true", "false"):
        raise ValueError(f"bf16 must be auto, true or false, got {setting!r}")
    if setting != "auto":
        return setting == "true"
    return compute_dtype("cuda" if torch.cuda.is_available() else "cpu") == torch.bfloat16


def training_arguments(
    output_dir: Path,
    *,
    batch_size: int,
    lr: float,
    grad_accum: int = 1,
    epochs: float = 1.0,
    max_steps: int = 0,
    planned_steps: int = 0,
    lr_scheduler: str = "cosine",
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    max_grad_norm: float = 1.0,
    bf16: str = "auto",
    gradient_checkpointing: bool = False,
    logging_steps: int = 10,
    eval_steps: int = 0,
    save_steps: int = 0,
    save_total_limit: int | None = None,
    report_to: Sequence[str] = (),
    seed: int = 0,
    evaluate: bool = True,
):
    """`TrainingArguments` for a run: on the GPU when there is one, else the CPU; evaluation and checkpoints every
    `eval_steps` / `save_steps` (0: five times over `planned_steps`)."""
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    every = max(planned_steps // 5, 1)
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum, num_train_epochs=epochs, max_steps=max_steps or -1,
        learning_rate=lr, lr_scheduler_type=lr_scheduler, warmup_steps=warmup_steps, weight_decay=weight_decay,
        adam_beta1=adam_betas[0], adam_beta2=adam_betas[1], adam_epsilon=adam_eps, max_grad_norm=max_grad_norm,
        bf16=use_bf16(bf16), use_cpu=not cuda, activation_checkpointing=gradient_checkpointing,
        logging_steps=logging_steps, eval_strategy="steps" if evaluate else "no", eval_steps=eval_steps or every,
        save_strategy="steps", save_steps=save_steps or every, save_total_limit=save_total_limit,
        report_to=list(report_to), seed=seed, data_seed=seed, disable_tqdm=not is_main_process(),
        remove_unused_columns=False, ddp_find_unused_parameters=False,
    )  # fmt: skip


def resume_point(work: Path, key: dict[str, Any], resume: bool = True) -> str | None:
    """The last checkpoint in `work` when the folder was made for exactly `key` (`vikhr.rundir.keyed_work`);
    otherwise None, the folder emptied and stamped: the run starts at step 0."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(work)) if keyed_work(work, key, resume) else None
    if last:
        log.info("%s: resuming from %s", work.name, last)
    return last


def train_and_save(trainer, work: Path, resume_from: str | None):
    """Train (from `resume_from` when given) and save the full weights into `work/final` on every rank (FSDP /
    ZeRO-3 gather them collectively); returns the Trainer's `TrainOutput` and the folder."""
    result = trainer.train(resume_from_checkpoint=resume_from)
    final = work / "final"
    trainer.save_model(str(final))
    return result, final
