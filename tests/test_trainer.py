"""Trainer helpers: the number of outputs read from a model before any run (`--mode=inspect`)."""
import keras
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
