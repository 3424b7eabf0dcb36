"""Optimizers and schedules by name, parameter groups and gradient clipping."""
