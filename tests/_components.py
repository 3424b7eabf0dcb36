"""Small registered components the tests share (a linear model, toy datasets, a config builder)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from framework import config as config_lib
from framework import registry

_ARRAYS: dict[str, tuple] = {}


def set_arrays(key: str, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> None:
    """Makes arrays available to the `test_arrays` dataset under `key`."""
    _ARRAYS[key] = (x, y, w)


if "test_linear" not in registry.MODELS:
    @registry.register_model("test_linear")
    def test_linear(units: int = 1, inputs: int = 3, zero_init: bool = False, hidden: int = 0,
                    dropout: float = 0.0, batchnorm: bool = False, sync_bn: bool = False,
                    conv: int = 0) -> keras.Model:
        init = "zeros" if zero_init else "glorot_uniform"
        x_in = keras.Input((inputs,), name="x")
        h = x_in
        if conv:  # a convolution: `jit_compile: auto` keeps XLA off its forward and backward pass on CPU
            h = keras.layers.Reshape((inputs, 1))(h)
            h = keras.layers.Conv1D(conv, 2, activation="relu", name="conv")(h)
            h = keras.layers.Flatten()(h)
        if hidden:
            h = keras.layers.Dense(hidden, activation="relu", name="hidden")(h)
            if batchnorm:
                h = keras.layers.BatchNormalization(name="bn", synchronized=sync_bn)(h)
        if dropout:
            h = keras.layers.Dropout(dropout, name="drop")(h)
        out = keras.layers.Dense(units, kernel_initializer=init, name="out")(h)
        return keras.Model(x_in, out, name="test_linear")

    @registry.register_dataset("test_arrays")
    def test_arrays(split: str, key: str = "default", eval_key: str | None = None) -> tf.data.Dataset:
        x, y, w = _ARRAYS[eval_key if (split == "eval" and eval_key) else key]
        if w is None:
            return tf.data.Dataset.from_tensor_slices((x, y))
        return tf.data.Dataset.from_tensor_slices((x, y, w))


def toy_classification(n: int = 96, d: int = 3, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, classes)).astype(np.float32)
    y = np.argmax(x @ w + 0.3 * rng.normal(size=(n, classes)), axis=1).astype(np.int32)
    return x, y


def make_config(**sections) -> config_lib.ExperimentConfig:
    """A small classification config on `test_arrays`, with `sections` merged on top."""
    base = {
        "task": {"model": {"name": "test_linear", "units": 3, "inputs": 3},
                 "train_data": {"name": "test_arrays", "batch_size": 8, "shuffle_buffer": 1000},
                 "eval_data": {"name": "test_arrays", "batch_size": 16},
                 "loss": {"name": "sparse_categorical_crossentropy"},
                 "metrics": ["accuracy"]},
        "trainer": {"train_steps": 20, "steps_per_loop": 5, "eval_interval": 10, "checkpoint_interval": 10,
                    "jit_compile": False},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
    }
    return config_lib.validate(config_lib.merge(config_lib.from_dict(base), sections))
