"""Built-in losses by name; every loss is built to return per-example values (no reduction).

A loss on a sequence output returns one value per position ([B, T]); the step makes it a
token-level mean (see framework/step.py).
"""
from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from framework import registry


@registry.register_loss("sparse_categorical_crossentropy")
def sparse_categorical_crossentropy(from_logits: bool = True, ignore_class: int | None = None) -> Any:
    """Cross-entropy of integer class labels, per example (logits by default)."""
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=from_logits, ignore_class=ignore_class, reduction=None)


@registry.register_loss("categorical_crossentropy")
def categorical_crossentropy(from_logits: bool = True, label_smoothing: float = 0.0) -> Any:
    """Cross-entropy of one-hot (or soft) labels, per example (logits by default)."""
    return keras.losses.CategoricalCrossentropy(
        from_logits=from_logits, label_smoothing=label_smoothing, reduction=None)


@registry.register_loss("binary_crossentropy")
def binary_crossentropy(from_logits: bool = True, label_smoothing: float = 0.0, pos_weight: list | None = None) -> Any:
    """Binary (or multi-label) cross-entropy; `pos_weight` [L] weights each label's positive term."""
    if pos_weight is not None:
        if label_smoothing:
            raise ValueError(f"task.loss.label_smoothing: expected 0 with pos_weight; got {label_smoothing!r}")
        return weighted_binary_crossentropy(pos_weight=pos_weight, from_logits=from_logits)
    return keras.losses.BinaryCrossentropy(
        from_logits=from_logits, label_smoothing=label_smoothing, reduction=None)


@registry.register_loss("mse")
def mse() -> Any:
    """Squared error per example."""
    return keras.losses.MeanSquaredError(reduction=None)


@registry.register_loss("mae")
def mae() -> Any:
    """Absolute error per example."""
    return keras.losses.MeanAbsoluteError(reduction=None)


@registry.register_loss("huber")
def huber(delta: float = 1.0) -> Any:
    """Huber loss per example (quadratic below `delta`, linear above)."""
    return keras.losses.Huber(delta=delta, reduction=None)


def loss_from_logits(loss: Any) -> bool:
    """Whether a built loss expects logits (used to configure matching metrics)."""
    return bool(getattr(loss, "from_logits", False) or
                getattr(loss, "_fn_kwargs", {}).get("from_logits", False))


@keras.saving.register_keras_serializable(package="tapeline")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with a weight on each label's positive term, per example (mean over
    the last axis, as Keras's BinaryCrossentropy): -(pos_weight * y * log p + (1 - y) * log(1 - p))."""

    def __init__(self, *, pos_weight: Any, from_logits: bool = True, name: str = "weighted_binary_crossentropy",
                 **kwargs: Any) -> None:
        super().__init__(name=name, reduction=None, **kwargs)
        self.pos_weight = [float(v) for v in pos_weight]
        self.from_logits = from_logits

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-label binary cross-entropy with the positive terms scaled by `pos_weight`."""
        y_pred = tf.cast(y_pred, tf.float32)
        y = tf.cast(y_true, tf.float32)
        pw = tf.constant(self.pos_weight, tf.float32)
        if self.from_logits:
            per = tf.nn.weighted_cross_entropy_with_logits(labels=y, logits=y_pred, pos_weight=pw)
        else:
            eps = keras.config.epsilon()
            p = tf.clip_by_value(y_pred, eps, 1.0 - eps)
            per = -(pw * y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
        return tf.reduce_mean(per, axis=-1)

    def get_config(self) -> dict:
        """The constructor arguments, so that a saved model reloads with `safe_mode=True`."""
        return {"name": self.name, "pos_weight": self.pos_weight, "from_logits": self.from_logits}


@registry.register_loss("weighted_binary_crossentropy")
def weighted_binary_crossentropy(pos_weight: list, from_logits: bool = True) -> Any:
    """Multi-label binary cross-entropy with per-label positive weights `pos_weight` [L].

    Raises:
      ValueError: `pos_weight` is not a non-empty list of finite numbers >= 0.
    """
    ok = isinstance(pos_weight, (list, tuple)) and pos_weight and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in pos_weight)
    if not ok:
        raise ValueError(f"task.loss.pos_weight: expected a list of finite numbers >= 0 (one per label); "
                         f"got {pos_weight!r}")
    return WeightedBinaryCrossentropy(pos_weight=pos_weight, from_logits=from_logits)
