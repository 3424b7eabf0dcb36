"""Built-in losses by name; every loss is built to return per-example values (no reduction)."""
from __future__ import annotations

from typing import Any

import keras

from framework import registry


@registry.register_loss("sparse_categorical_crossentropy")
def sparse_categorical_crossentropy(from_logits: bool = True, ignore_class: int | None = None) -> Any:
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=from_logits, ignore_class=ignore_class, reduction=None)


@registry.register_loss("categorical_crossentropy")
def categorical_crossentropy(from_logits: bool = True, label_smoothing: float = 0.0) -> Any:
    return keras.losses.CategoricalCrossentropy(
        from_logits=from_logits, label_smoothing=label_smoothing, reduction=None)


@registry.register_loss("binary_crossentropy")
def binary_crossentropy(from_logits: bool = True, label_smoothing: float = 0.0) -> Any:
    return keras.losses.BinaryCrossentropy(
        from_logits=from_logits, label_smoothing=label_smoothing, reduction=None)


@registry.register_loss("mse")
def mse() -> Any:
    return keras.losses.MeanSquaredError(reduction=None)


@registry.register_loss("mae")
def mae() -> Any:
    return keras.losses.MeanAbsoluteError(reduction=None)


@registry.register_loss("huber")
def huber(delta: float = 1.0) -> Any:
    return keras.losses.Huber(delta=delta, reduction=None)


def loss_from_logits(loss: Any) -> bool:
    """Whether a built loss expects logits (used to configure matching metrics)."""
    return bool(getattr(loss, "from_logits", False) or
                getattr(loss, "_fn_kwargs", {}).get("from_logits", False))
