"""A tiny experiment for the tune tests (imported with --import=tests._tune_experiment)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from framework import registry

if "tune_blobs" not in registry.DATASETS:
    @registry.register_dataset("tune_blobs")
    def tune_blobs(split: str, n: int = 192) -> tf.data.Dataset:
        """Three Gaussian blobs in 4-D (a fixed seed per split): easy to learn in a few steps."""
        rng = np.random.default_rng(0 if split == "train" else 1)
        y = rng.integers(0, 3, size=n).astype(np.int32)
        centers = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], np.float32)
        x = (centers[y] + rng.normal(scale=0.7, size=(n, 4))).astype(np.float32)
        return tf.data.Dataset.from_tensor_slices((x, y))

    @registry.register_model("tune_mlp")
    def tune_mlp(width: int = 8) -> keras.Model:
        x = keras.Input((4,), name="x")
        h = keras.layers.Dense(width, activation="relu", name="fc")(x)
        return keras.Model(x, keras.layers.Dense(3, name="head")(h), name="tune_mlp")

    @registry.register_experiment("tune_test")
    def tune_test() -> dict:
        return {"task": {"model": {"name": "tune_mlp"},
                         "train_data": {"name": "tune_blobs", "batch_size": 32},
                         "eval_data": {"name": "tune_blobs", "batch_size": 64},
                         "metrics": ["accuracy"]},
                "trainer": {"train_steps": 12, "steps_per_loop": 4, "eval_interval": 4, "checkpoint_interval": 4,
                            "jit_compile": False},
                "optimizer": {"name": "sgd", "learning_rate": 0.1},
                "tune": {"metric": "accuracy", "direction": "maximize", "trials": 3, "sampler": "tpe",
                         "pruner": {"name": "median", "n_startup_trials": 2},
                         "space": {"optimizer.learning_rate": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
                                   "optimizer.name": {"type": "categorical", "choices": ["sgd", "adam"]}}}}
