"""Evaluation: generate on held-out examples and score."""
