"""Digits CNN practices: augmentation + regularization, and separable convolutions.

digits_augment: Keras augmentation layers (rotation, zoom, translation, contrast; each factor a
    model kwarg, 0 drops the layer) in front of a CNN with batch norm, dropout and L2.
    `task.model.augment=false` is the control.
    Run: python -m framework.main --experiment=digits_augment --model_dir=runs/aug \
         --sweep='task.model.augment=false,true'
    Expected: both runs reach eval accuracy >= 0.98 with a train/eval accuracy gap <= 0.02 (train
    accuracy of the final weights in inference mode - eval accuracy; measured 0.0044 without and
    0.0059 with augmentation). On 8x8 digits augmentation does not shrink the gap: the
    regularized CNN barely overfits, and rotating or zooming 8x8 images mostly blurs them (also
    tried with 150 and 300 training images: eval accuracy unchanged, eval loss higher).
digits_separable: separable convolutions + global average pooling.
    Run: python -m framework.main --experiment=digits_separable --model_dir=runs/sep
    Expected: eval accuracy >= 0.95 with several times fewer parameters than digits_cnn (measured
    0.9889 with 4,186 parameters vs 29,098: 7x fewer).
"""
from __future__ import annotations

import keras

from framework import registry


@registry.register_model("digits_augment_cnn")
def digits_augment_cnn(augment: bool = True, l2: float = 1e-4, dropout: float = 0.3, width: int = 32,
                       rotation: float = 0.05, zoom: float = 0.1, translation: float = 0.1,
                       contrast: float = 0.2) -> keras.Model:
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((8, 8, 1), name="image")
    x = inputs
    if augment:
        # Active only with training=True; evaluation sees the raw images. A factor of 0 drops a layer.
        if rotation:
            x = keras.layers.RandomRotation(rotation, fill_mode="constant", name="rotate")(x)
        if zoom:
            x = keras.layers.RandomZoom(zoom, fill_mode="constant", name="zoom")(x)
        if translation:
            x = keras.layers.RandomTranslation(translation, translation, fill_mode="constant", name="translate")(x)
        if contrast:
            x = keras.layers.RandomContrast(contrast, value_range=(0, 1), name="contrast")(x)
    for i, filters in enumerate([width, 2 * width], start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    out = keras.layers.Dense(10, kernel_regularizer=reg, name="head")(x)
    return keras.Model(inputs, out, name="digits_augment_cnn")


@registry.register_model("digits_separable_net")
def digits_separable_net(width: int = 32) -> keras.Model:
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(width // 2, 3, padding="same", activation="relu", name="stem")(inputs)
    for i, filters in enumerate([width, 2 * width], start=1):
        x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"sep{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        if i == 1:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="digits_separable_net")


def _digits(model: dict, steps: int) -> dict:
    return {"task": {"model": model, "train_data": {"name": "digits", "batch_size": 64},
                     "eval_data": {"name": "digits", "batch_size": 150}, "metrics": ["accuracy"]},
            "trainer": {"train_steps": steps, "steps_per_loop": 100, "eval_interval": steps // 4,
                        "checkpoint_interval": steps // 2},
            "optimizer": {"name": "adam", "learning_rate": 3e-3, "schedule": {"name": "cosine"}, "warmup_steps": 50}}


@registry.register_experiment("digits_augment")
def digits_augment() -> dict:
    return _digits({"name": "digits_augment_cnn", "augment": True}, 1600)


@registry.register_experiment("digits_separable")
def digits_separable() -> dict:
    return _digits({"name": "digits_separable_net"}, 1600)
