"""Training: KL losses, token alignment, packing, the Trainer subclass, the shared training run, launching, reports."""

IGNORE_INDEX = -100
"""Label of a position that is not scored (PyTorch's and transformers' convention)."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the message names the step and the last checkpoint."""
