"""Continued pre-training: KL losses, token alignment, reference models, the Trainer subclass, packing."""
