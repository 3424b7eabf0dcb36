"""Optimizers by name build and update through the framework's per-variable path; SGD is exact."""
import numpy as np
import pytest
import tensorflow as tf

from framework import registry
from framework.optim import optimizers

NAMES = ["sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "lion", "lamb",
         "adafactor", "ftrl"]


def _build(name, **kw):
    return registry.build(registry.OPTIMIZERS, name, kw, section="optimizer", extra={"learning_rate": 0.1})


def test_all_names_are_registered():
    assert set(NAMES) <= set(registry.OPTIMIZERS.names())


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_updates_a_variable_through_update_step(name):
    opt = _build(name)
    # The framework clips and decays itself: Keras must do neither.
    assert not opt.weight_decay and opt.clipnorm is None and opt.clipvalue is None and opt.global_clipnorm is None
    v = tf.Variable(np.ones((3, 2), np.float32))
    b = tf.Variable(np.zeros((2,), np.float32))
    opt.build([v, b])
    before = v.numpy().copy()
    opt.update_step(tf.constant(np.full((3, 2), 0.5, np.float32)), v, tf.constant(0.1))
    assert np.all(np.isfinite(v.numpy())), name
    assert not np.array_equal(v.numpy(), before), name
    np.testing.assert_array_equal(b.numpy(), 0.0)  # untouched: no update_step for it


@pytest.mark.parametrize("name", NAMES)
def test_framework_path_equals_keras_apply(name):
    """update_step per variable + iterations += 1 (what step.py does) == Keras's own apply.

    Catches optimizer state that Keras advances outside update_step (Nadam's `_u_product`).
    """
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)]
    grads = [[rng.normal(size=x.shape).astype(np.float32) for x in init] for _ in range(4)]
    ours, ref = _build(name), _build(name)
    if name == "nadam":
        import keras
        ref = keras.optimizers.Nadam(learning_rate=0.1)
    vo, vr = [tf.Variable(x) for x in init], [tf.Variable(x) for x in init]
    ours.build(vo)
    ref.build(vr)
    for gs in grads:
        for g, v in zip(gs, vo):
            ours.update_step(tf.constant(g), v, tf.constant(0.1))
        ours.iterations.assign_add(1)
        ref.apply_gradients([(tf.constant(g), v) for g, v in zip(gs, vr)])
    for a, b in zip(vo, vr):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=1e-6, err_msg=name)


def test_sgd_update_is_exactly_v_minus_lr_g_with_the_rate_passed_in():
    opt = optimizers.sgd(learning_rate=0.1)  # the optimizer's own rate must not matter
    v0 = np.array([1.0, 2.0, -3.25], np.float32)
    g = np.array([0.5, -1.0, 0.3], np.float32)
    lr = np.float32(0.3)
    v = tf.Variable(v0)
    opt.build([v])
    opt.update_step(tf.constant(g), v, tf.constant(lr))
    np.testing.assert_array_equal(v.numpy(), v0 - lr * g)


def test_adam_first_step_moves_by_the_rate_passed_in():
    opt = optimizers.adam(learning_rate=1.0)
    v = tf.Variable([1.0, -1.0])
    opt.build([v])
    opt.update_step(tf.constant([0.2, -3.0]), v, tf.constant(0.01))
    # First Adam step: m_hat / sqrt(v_hat) = sign(g) (up to epsilon).
    np.testing.assert_allclose(v.numpy(), [1.0 - 0.01, -1.0 + 0.01], rtol=1e-5)


def test_defaults_and_adamw_weight_decay_is_taken_by_the_framework():
    assert float(optimizers.momentum(learning_rate=0.1).momentum) == pytest.approx(0.9)
    assert float(optimizers.sgd(learning_rate=0.1).momentum) == 0.0
    assert optimizers.default_weight_decay("adamw", {}) == 0.004
    assert optimizers.default_weight_decay("adamw", {"weight_decay": 0.1}) == 0.1
    assert optimizers.default_weight_decay("adam", {}) is None
    assert optimizers.default_weight_decay("sgd", {"weight_decay": 0.01}) == 0.01
    opt = _build("adamw", weight_decay=0.5)
    assert not opt.weight_decay  # Keras must not decay a second time


def test_unknown_kwarg_names_it():
    with pytest.raises(ValueError, match=r"optimizer: unknown key\(s\) momentun"):
        _build("sgd", momentun=0.9)
    with pytest.raises(registry.RegistryError, match=r"unknown optimizer 'adamm'.*adamw"):
        _build("adamm")


def test_nadam_through_the_framework_step_under_mirrored_equals_one_device():
    """Regression: Keras Nadam driven by update_step alone wrote -inf weights on the first step."""
    from framework import trainer as trainer_lib
    from tests import _components as C

    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(cpus) < 2:
        pytest.skip("needs 2 logical CPU devices (tests/conftest.py)")
    x, y = C.toy_classification(n=32)
    C.set_arrays("nadam", x, y)
    cfg = C.make_config(task={"train_data": {"key": "nadam", "batch_size": 8, "shuffle_buffer": 0},
                              "eval_data": {"name": ""}},
                        optimizer={"name": "nadam", "learning_rate": 0.01})
    weights = []
    mirrored = tf.distribute.MirroredStrategy(cpus[:2], cross_device_ops=tf.distribute.ReductionToOneDevice())
    for strategy in (tf.distribute.get_strategy(), mirrored):
        t = trainer_lib.build(cfg, strategy)
        t.steps.train_loop(iter(t.train_dataset(start_step=0)), 3, list(range(len(t.groups.variables))))
        weights.append([v.numpy() for v in t.model.trainable_variables])
    for a, b in zip(*weights):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
