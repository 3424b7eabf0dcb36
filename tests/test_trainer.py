"""Trainer helpers: the number of outputs read from a model before any run (`--mode=inspect`)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import registry
from framework import trainer as trainer_lib
from tests import _components as C

if "test_subclassed_bag" not in registry.MODELS:
    @registry.register_model("test_subclassed_bag")
    def _subclassed_bag(units: int = 5, inputs: int | None = None) -> keras.Model:  # noqa: ARG001 - the base config's key
        class Bag(keras.Model):  # subclassed: no symbolic outputs, its width is known only by calling it
            def __init__(self):
                super().__init__()
                self.embed = keras.layers.Embedding(16, 4)
                self.out = keras.layers.Dense(units)

            def call(self, x, training=False):
                return self.out(tf.reduce_mean(self.embed(x), axis=1))

        return Bag()


@pytest.mark.parametrize("length", [7, None], ids=["fixed", "variable"])
def test_output_units_of_a_subclassed_model_fixed_or_variable_length(length):
    cfg = C.make_config(task={"model": {"name": "test_subclassed_bag", "units": 5}})
    assert trainer_lib.output_units(cfg, tf.TensorSpec([length], tf.int32)) == 5


def test_output_units_rejects_a_factory_that_returns_no_keras_model():
    cfg = C.make_config(task={"model": {"name": "test_not_a_model"}})
    with pytest.raises(ValueError, match="task.model: factory 'test_not_a_model' must return a keras.Model; got dict"):
        trainer_lib.output_units(cfg, tf.TensorSpec([3], tf.float32))


if "test_not_a_model" not in registry.MODELS:
    registry.register_model("test_not_a_model")(lambda units=0, inputs=0: {})


_READS = {"n": 0}

if "test_counted_reads" not in registry.MODELS and "test_counted_reads" not in registry.DATASETS:
    @registry.register_dataset("test_counted_reads")
    def _counted_reads(split: str, n: int = 40) -> tf.data.Dataset:  # noqa: ARG001 - every split
        x, y = C.toy_classification(n=n)

        def tick(v):
            _READS["n"] += 1
            return v

        def counted(xe, ye):
            return tf.ensure_shape(tf.py_function(tick, [xe], tf.float32), xe.shape), ye

        return tf.data.Dataset.from_tensor_slices((x, y)).map(counted)


@pytest.mark.parametrize("split", [None, 0.25], ids=["whole", "validation_split"])
def test_an_in_memory_training_source_is_read_once_for_the_preflight_and_the_batches(split):
    cfg = C.make_config(task={"train_data": {"name": "test_counted_reads", "batch_size": 8},
                              "eval_data": {"name": ""}, "validation_split": split})
    _READS["n"] = 0
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    built = _READS["n"]
    batch = next(iter(t.train_dataset(start_step=0)))
    # Each read of a carved part passes the whole source: with a split, the labels for the carve,
    # then the pre-flight of the training and of the eval part. The batches read nothing more.
    assert built == (3 * 40 if split else 40) and _READS["n"] == built
    x, y, w = (a.numpy() for a in batch)
    want_x, want_y = C.toy_classification(n=40)
    rows = [int(np.flatnonzero((want_x == r).all(axis=1))[0]) for r in x]  # whole examples of the source
    assert want_y[rows].tolist() == y.tolist() and (w == 1).all()
