"""Evaluation: bits per character, greedy continuations and embedding diagnostics."""
