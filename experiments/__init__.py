"""Experiment modules; each registers components and an experiment config (imported automatically)."""
