"""Optimizers by name build, update through the framework's per-variable path; SGD is exact."""
import numpy as np
import pytest
import tensorflow as tf

from framework import registry
from framework.optim import optimizers


def test_every_registered_optimizer_updates_a_variable():
    registry.import_builtin_components()
    for name in registry.OPTIMIZERS.names():
        opt = registry.build(registry.OPTIMIZERS, name, {}, section="optimizer", extra={"learning_rate": 0.1})
        v = tf.Variable(np.ones((3, 2), np.float32))
        opt.build([v])
        opt.update_step(tf.constant(np.full((3, 2), 0.5, np.float32)), v, tf.constant(0.1))
        assert not np.allclose(v.numpy(), 1.0), name


def test_sgd_update_is_exact():
    opt = optimizers.sgd(learning_rate=0.1)
    v = tf.Variable([1.0, 2.0])
    opt.build([v])
    opt.update_step(tf.constant([0.5, -1.0]), v, tf.constant(0.3))
    np.testing.assert_allclose(v.numpy(), [1.0 - 0.15, 2.0 + 0.3], rtol=1e-7)


def test_adamw_weight_decay_is_taken_by_the_framework():
    assert optimizers.default_weight_decay("adamw", {}) == 0.004
    assert optimizers.default_weight_decay("adamw", {"weight_decay": 0.1}) == 0.1
    assert optimizers.default_weight_decay("adam", {}) is None
    opt = optimizers.adamw(learning_rate=0.1, weight_decay=0.5)
    assert not opt.weight_decay  # Keras must not decay a second time


def test_unknown_kwarg_names_it():
    with pytest.raises(ValueError, match="momentun"):
        registry.build(registry.OPTIMIZERS, "sgd", {"momentun": 0.9}, section="optimizer",
                       extra={"learning_rate": 0.1})
