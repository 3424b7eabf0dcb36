"""Loss scaling and the non-finite policy: which steps are applied, when training halts, and why.

One small object holds the state: the fp16 dynamic loss scale and its run of finite steps, the
count of skipped (non-finite) steps, and the status of the current loop (halted, the step that
failed, whether it was the loss). `record` runs once per step in cross-replica context; the loop
reads `status()` once at its end; `state()` is what the checkpoint keeps.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf

GROWTH_INTERVAL = 2000  # finite fp16 steps before the loss scale doubles (Keras's default)
# A step whose applied gradient has a norm at or above sqrt(float32 max) is not applied: its
# squares overflow in every optimizer that keeps second moments (Adam's `v` would become inf).
MAX_APPLIED_NORM = 1.8e19


class NonFinitePolicy:
    """`trainer.nonfinite` (terminate | skip | restore) and fp16 loss scaling (create in scope).

    Args:
      policy: `trainer.nonfinite`; "skip" never halts, the others halt the loop at the step.
      loss_scaling: dynamic loss scaling (mixed_float16): a gradient overflow is routine, skipped
        and counted, never a policy hit.
      initial_loss_scale: the first scale.
    """

    def __init__(self, *, policy: str = "terminate", loss_scaling: bool = False,
                 initial_loss_scale: float = 32768.0) -> None:
        self.policy = policy
        self.loss_scaling = loss_scaling
        self.halt = tf.Variable(False, trainable=False, name="halt")
        self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_steps")
        self.nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="nonfinite_step")
        self.nonfinite_loss = tf.Variable(False, trainable=False, name="nonfinite_loss")
        self.loss_scale = tf.Variable(initial_loss_scale if loss_scaling else 1.0, dtype=tf.float32,
                                      trainable=False, name="loss_scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")

    def state(self) -> dict[str, tf.Variable]:
        """The variables a checkpoint must hold for an exact resume."""
        return {"nonfinite_steps": self.nonfinite_steps, "loss_scale": self.loss_scale,
                "good_steps": self.good_steps}

    def scale(self) -> Any:
        """The factor the loss is multiplied by before the gradient (1.0 without loss scaling)."""
        return self.loss_scale if self.loss_scaling else 1.0

    def grads_ok(self, stats: dict[str, tf.Tensor]) -> tf.Tensor:
        """Whether the aggregated gradients whose `clipping.clip_gradients` statistics are
        `stats` may be applied.

        The statistics carry the elementwise check (`grads_finite`, from the norms they are
        made of): no pass over the gradients or conditional of its own. The decision is also
        made on what is applied: the clipped gradients' norm must be finite with a square that
        is a float32.
        """
        return tf.logical_and(stats["grads_finite"], stats["grad_norm_clipped"] < MAX_APPLIED_NORM)

    def begin_loop(self) -> None:
        """At the start of a compiled loop: not halted."""
        self.halt.assign(False)

    def live(self) -> tf.Tensor:
        """False only for the remaining steps of an XLA group after a halt: they change no state."""
        return tf.logical_not(self.halt)

    def record(self, *, ok: tf.Tensor, loss_ok: tf.Tensor, live: tf.Tensor, step: tf.Tensor) -> None:
        """After a step's update decision (`ok`: applied if live): the loss scale, the skipped-step
        count and, unless the policy is skip, the halt and the failed step."""
        if self.loss_scaling:
            # Dynamic loss scaling: halve on overflow, double after a run of finite steps.
            grow = tf.logical_and(ok, self.good_steps + 1 >= GROWTH_INTERVAL)
            scale = tf.where(ok, tf.where(grow, self.loss_scale * 2.0, self.loss_scale),
                             tf.maximum(self.loss_scale / 2.0, 1.0))
            good = tf.where(ok, tf.where(grow, tf.constant(0, tf.int64), self.good_steps + 1),
                            tf.constant(0, tf.int64))
            self.loss_scale.assign(tf.where(live, scale, self.loss_scale))
            self.good_steps.assign(tf.where(live, good, self.good_steps))
            # A gradient overflow under fp16 is routine: skipped and counted, never a policy hit.
            policy_hit = tf.logical_not(loss_ok)
        else:
            policy_hit = tf.logical_not(ok)
        self.nonfinite_steps.assign_add(tf.cast(tf.logical_and(tf.logical_not(ok), live), tf.int64))
        if self.policy != "skip":
            hit = tf.logical_and(policy_hit, live)
            self.halt.assign(tf.logical_or(self.halt, hit))
            self.nonfinite_step.assign(tf.where(hit, step, self.nonfinite_step))
            self.nonfinite_loss.assign(tf.where(live, tf.logical_not(loss_ok), self.nonfinite_loss))

    def status(self) -> dict[str, tf.Tensor]:
        """While tracing, at the end of a loop: its status, for `results.LoopResult`."""
        return {"halted": self.halt.read_value(), "nonfinite_step": self.nonfinite_step.read_value(),
                "nonfinite_loss": self.nonfinite_loss.read_value(),
                "nonfinite_steps": self.nonfinite_steps.read_value(), "loss_scale": self.loss_scale.read_value()}
