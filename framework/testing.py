"""Test seams for a built trainer: a non-finite loss at a chosen global step.

Nothing in a production run calls this module; tests use it to exercise `trainer.nonfinite`.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf


def inject_nonfinite(trainer: Any, *, at: int) -> Any:
    """Makes the loss and every gradient of global step `at` NaN on every replica; returns `trainer`.

    The replica step of `trainer.steps` is wrapped (the compiled loops are dropped, so the next
    call traces the wrapped step): the NaN enters before the cross-replica sum, where a
    data-caused one would. Call before `steps.train_loop` or `Controller.train`.
    """
    steps = trainer.steps
    real = steps._replica_grads  # noqa: SLF001 - the seam this module exists for

    def poisoned(batches: Any, active: tuple[int, ...]) -> tuple:
        total_loss, acc, output_losses = real(batches, active)
        bad = tf.equal(steps.global_step.read_value(), at)
        total_loss = tf.where(bad, tf.constant(float("nan")), total_loss)
        acc = [None if g is None else tf.where(bad, tf.fill(tf.shape(g), float("nan")), g) for g in acc]
        return total_loss, acc, output_losses

    steps._replica_grads = poisoned  # noqa: SLF001
    steps.retrace()
    return trainer
