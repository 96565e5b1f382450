"""Continued pre-training: KL losses, token alignment, packing, the Trainer subclass, launching and reports."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the message names the step and the last checkpoint."""
