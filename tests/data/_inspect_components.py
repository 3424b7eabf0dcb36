"""Registered datasets, models and an experiment for tests/data/test_inspect.py (importable by the CLI)."""
import numpy as np
import tensorflow as tf

from framework import registry
from tests import _components as C

# The hand-built classification set (built in `hand_built`; the numbers below hold by construction).
N_TRAIN, N_EVAL = 60, 20
CLASS_COUNTS = {"0": 40, "1": 12, "2": 7, "3": 1}  # class 3 is outside a 3-output model
TRAIN_DUPLICATES = 3  # rows 1 copied to 50 and 51, row 2 copied to 52 with another label
TRAIN_NONFINITE = [30, 33]  # a NaN and an Inf feature
EVAL_OVERLAP = 4  # eval rows 0-3 are train rows 5-8 (one of them relabelled)


def hand_built():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(size=N_TRAIN), 1000.0 * rng.normal(size=N_TRAIN), np.full(N_TRAIN, 5.0)], 1)
    y = np.repeat([0, 1, 2, 3], [40, 12, 7, 1])
    rng.shuffle(y)
    x[50] = x[1]
    x[51] = x[1]
    x[52] = x[2]
    y[52] = (y[2] + 1) % 3
    x[30, 0] = np.nan
    x[33, 1] = np.inf
    ex = np.stack([rng.normal(size=N_EVAL), 1000.0 * rng.normal(size=N_EVAL), np.full(N_EVAL, 5.0)], 1)
    ey = rng.integers(0, 3, size=N_EVAL)
    ex[:EVAL_OVERLAP] = x[5:5 + EVAL_OVERLAP]
    ey[0] = (y[5] + 1) % 3  # a relabelled copy still counts as overlap
    return (x.astype(np.float32), y.astype(np.int32)), (ex.astype(np.float32), ey.astype(np.int32))


if "inspect_hand_built" not in registry.DATASETS:
    @registry.register_dataset("inspect_hand_built")
    def inspect_hand_built(split):
        train, ev = hand_built()
        return tf.data.Dataset.from_tensor_slices(train if split == "train" else ev)

    def _invert_and_flip(elem, seed):
        x, y, w = elem
        return 1.0 - tf.image.flip_left_right(x), y, w

    @registry.register_dataset("inspect_repeat")
    def inspect_repeat(split):
        return C.test_arrays(split, key="inspect_inf").repeat()

    @registry.register_experiment("inspect_hand_built")
    def inspect_hand_built_experiment():
        return {"task": {"model": {"name": "test_linear", "units": 3, "inputs": 3},
                         "train_data": {"name": "inspect_hand_built", "batch_size": 8},
                         "eval_data": {"name": "inspect_hand_built", "batch_size": 8}}}

    @registry.register_model("inspect_broken")
    def inspect_broken():
        raise ValueError("this model needs weights that are not here")

    @registry.register_dataset("inspect_images")
    def inspect_images(split):
        x = np.linspace(0.0, 1.0, 8 * 4 * 4).reshape(8, 4, 4, 1).astype(np.float32) ** 2
        y = np.array([0, 0, 0, 1, 1, 1, 1, 1], np.int32)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        return (ds, _invert_and_flip) if split == "train" else ds
