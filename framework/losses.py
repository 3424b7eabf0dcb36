"""Built-in losses by name; every loss is built to return per-example values (no reduction).

A loss on a sequence output returns one value per position ([B, T]); the step makes it a
token-level mean (see framework/step.py). `label_kind` says which labels a built loss reads
(class ids, one-hot rows, binary / multi-hot, -1/1, or regression targets), from its type.
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


# ----------------------------------------------------------------------------- label kinds

# What a loss reads as labels: "sparse" (integer class ids), "categorical" (one-hot or soft rows),
# "binary" (0/1 per unit: binary or multi-hot), "hinge" (-1/1 or 0/1) or "regression" (targets).
LABEL_KINDS = ("sparse", "categorical", "binary", "hinge", "regression")

# By the built loss's type (checked in order; a subclass counts as its base).
_KIND_BY_TYPE: tuple[tuple[type, str], ...] = (
    (keras.losses.SparseCategoricalCrossentropy, "sparse"),
    (keras.losses.CategoricalCrossentropy, "categorical"),
    (keras.losses.CategoricalFocalCrossentropy, "categorical"),
    (keras.losses.CategoricalHinge, "categorical"),
    (keras.losses.BinaryCrossentropy, "binary"),
    (keras.losses.BinaryFocalCrossentropy, "binary"),
    (WeightedBinaryCrossentropy, "binary"),
    (keras.losses.Hinge, "hinge"),
    (keras.losses.SquaredHinge, "hinge"),
)

# Keras's loss functions, for a factory that returns one of them rather than a loss object.
_KIND_BY_FUNCTION: dict[Any, str] = {
    keras.losses.sparse_categorical_crossentropy: "sparse",
    keras.losses.categorical_crossentropy: "categorical",
    keras.losses.categorical_focal_crossentropy: "categorical",
    keras.losses.categorical_hinge: "categorical",
    keras.losses.binary_crossentropy: "binary",
    keras.losses.binary_focal_crossentropy: "binary",
    keras.losses.hinge: "hinge",
    keras.losses.squared_hinge: "hinge",
}

# Registered loss name -> label kind, for a loss whose type says nothing (a plain function a
# plugin registers): add an entry with `set_label_kind`. Names absent here are regression.
_KIND_BY_NAME: dict[str, str] = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "categorical",
    "binary_crossentropy": "binary",
    "weighted_binary_crossentropy": "binary",
    "mse": "regression",
    "mae": "regression",
    "huber": "regression",
}


def set_label_kind(name: str, kind: str) -> None:
    """Declares the label kind of the registered loss `name` (for a loss returned as a plain function).

    Raises:
      ValueError: `kind` is not one of `LABEL_KINDS`.
    """
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind of loss {name!r}: expected one of {' | '.join(LABEL_KINDS)}; got {kind!r}")
    _KIND_BY_NAME[name] = kind


def label_kind(loss: Any, *, name: str) -> str:
    """The labels the built loss `loss` (registered as `name`) reads: one of `LABEL_KINDS`.

    Decided by the loss object's type, then by the Keras loss function it is or wraps, then by
    the name table (`set_label_kind`) for any other function.
    """
    for cls, kind in _KIND_BY_TYPE:
        if isinstance(loss, cls):
            return kind
    # A Keras loss object wrapping a function (`keras.losses.LossFunctionWrapper`, not exported) holds it as `fn`.
    fn = getattr(loss, "fn", loss) if isinstance(loss, keras.losses.Loss) else loss
    try:
        if fn in _KIND_BY_FUNCTION:
            return _KIND_BY_FUNCTION[fn]
    except TypeError:  # an unhashable callable object
        pass
    return _KIND_BY_NAME.get(name, "regression")


def section_label_kind(section: Any, *, key: str = "task.loss") -> str:
    """`label_kind` of the loss one `task.loss` section builds; "regression" for a mapping over
    several outputs (each output's head has its own kind) or no section."""
    if section is None or isinstance(section, dict) or not getattr(section, "name", ""):
        return "regression"
    loss = registry.build(registry.LOSSES, section.name, section.kwargs, section=key)
    return label_kind(loss, name=section.name)
