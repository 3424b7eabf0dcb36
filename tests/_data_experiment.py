"""Experiments for the data-protocol tests: 3-class blobs with chosen flipped labels, a model that
breaks in training, and a hook recording the step a run starts at."""
import keras
import numpy as np
import tensorflow as tf

from framework import registry
from tests import _components  # noqa: F401 - registers test_linear

STARTS: list[int] = []  # the step at "begin" of every run with the record_start hook

if "blobs" not in registry.DATASETS:
    @registry.register_dataset("blobs")
    def blobs(split: str, n: int = 150, flip: list | None = None, seed: int = 0) -> tf.data.Dataset:
        """Three well separated Gaussian blobs in 3-D; labels at the indices in `flip` moved to the next class."""
        rng = np.random.default_rng(seed + (split != "train"))
        y = np.arange(n) % 3
        centers = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
        x = (centers[y] + rng.normal(size=(n, 3))).astype(np.float32)
        y = y.astype(np.int32)
        for i in flip or []:
            y[i] = (y[i] + 1) % 3
        return tf.data.Dataset.from_tensor_slices((x, y))

    class _FailsInTraining(keras.layers.Layer):
        def call(self, x, training=False):
            if training:
                raise RuntimeError("deliberately broken in training mode")
            return x

    @registry.register_model("broken_in_training")
    def broken_in_training() -> keras.Model:
        x = keras.Input((3,), name="x")
        return keras.Model(x, keras.layers.Dense(3, name="out")(_FailsInTraining()(x)), name="broken")

    @registry.register_model("lambda_net")
    def lambda_net() -> keras.Model:
        """A Lambda layer: trains, but its model.keras cannot be loaded with safe_mode=True."""
        x = keras.Input((3,), name="x")
        return keras.Model(x, keras.layers.Dense(3, name="out")(keras.layers.Lambda(lambda t: t * 2.0)(x)))

    @registry.register_hook("record_start")
    def record_start():
        def hook(event, ctx):
            if event == "begin":
                STARTS.append(ctx.step)
        return hook

    def _blobs_experiment(model: dict) -> dict:
        return {"task": {"model": model,
                         "train_data": {"name": "blobs", "batch_size": 30},
                         "eval_data": {"name": "blobs", "batch_size": 50},
                         "loss": {"name": "sparse_categorical_crossentropy"}, "metrics": ["accuracy"]},
                "trainer": {"train_steps": 60, "steps_per_loop": 20, "eval_interval": 60, "checkpoint_interval": 20},
                "optimizer": {"name": "adam", "learning_rate": 0.05}}

    @registry.register_experiment("data_blobs")
    def data_blobs() -> dict:
        return _blobs_experiment({"name": "test_linear", "units": 3, "inputs": 3})

    @registry.register_experiment("data_broken")
    def data_broken() -> dict:
        return _blobs_experiment({"name": "broken_in_training"})

    @registry.register_experiment("data_lambda")
    def data_lambda() -> dict:
        return _blobs_experiment({"name": "lambda_net"})
