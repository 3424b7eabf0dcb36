"""Freezing and gradual unfreezing inside one run: what trains when, retraces, BN mode, resume."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import trainer as trainer_lib
from tests import _components as C

JIT = pytest.mark.parametrize("jit", ["auto", False], ids=["auto", "nojit"])  # the default, and off


def _cfg(steps=12, phases=None, jit=False):
    x, y = C.toy_classification(n=64)
    C.set_arrays("phases", x, y)
    return C.make_config(
        task={"model": {"hidden": 8}, "train_data": {"key": "phases"}, "eval_data": {"key": "phases"}},
        trainer={"train_steps": steps, "steps_per_loop": 2, "eval_interval": 6, "checkpoint_interval": 6,
                 "jit_compile": jit,
                 "phases": phases if phases is not None else [
                     {"start_step": 0, "trainable": {"body": False}},
                     {"start_step": 4, "trainable": {"body": True}, "lr_multiplier": {"body": 0.1}},
                     {"start_step": 8, "lr_multiplier": {"body": 1.0}}]},
        optimizer={"name": "adam", "learning_rate": 0.01,
                   "param_groups": [{"pattern": "^hidden/", "name": "body"}]})


@JIT
def test_phases_freeze_then_unfreeze_with_one_retrace_per_change(tmp_path, jit):
    t = trainer_lib.build(_cfg(jit=jit), tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    body0 = [v.numpy().copy() for v in t.model.get_layer("hidden").trainable_variables]
    # Stop after the first phase to check the body is untouched.
    t.total_steps = 4
    ctl.train(evaluate=False)
    for v, b in zip(t.model.get_layer("hidden").trainable_variables, body0):
        np.testing.assert_array_equal(v.numpy(), b)
    t.total_steps = 12
    ctl.train(evaluate=False)
    assert not np.array_equal(t.model.get_layer("hidden").kernel.numpy(), body0[0])
    # Phases 2 and 3 train the same set (only a multiplier changed): 2 traces in all, and under
    # compile-ahead (auto) the plain graph of the run's first loop (step 0; phase 2 starts at
    # step 4, so its set runs under XLA from its first call).
    assert t.steps.traces["train"] == 2 + (jit == "auto")
    assert t.steps.first_loop_without_xla == (jit == "auto")
    assert int(t.optimizer.iterations.numpy()) == 12


@JIT
def test_phase_multiplier_is_what_the_step_applies(tmp_path, jit):
    """SGD, phase multiplier 0.1 on the body from step 0: the first step moves the body by
    -lr * 0.1 * gradient and the head by -lr * gradient (the gradient taken here, on the batch the
    run consumes)."""
    cfg = _cfg(steps=1, phases=[{"start_step": 0, "lr_multiplier": {"body": 0.1}}], jit=jit)
    cfg.optimizer.name, cfg.optimizer.learning_rate = "sgd", 0.5
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    x, y, w = next(iter(t.train_dataset(start_step=0)))
    w0 = [v.numpy().copy() for v in t.model.trainable_variables]
    with tf.GradientTape() as tape:
        per_example = keras.losses.sparse_categorical_crossentropy(y, t.model(x, training=True), from_logits=True)
        loss = tf.reduce_sum(per_example * w) / cfg.task.train_data.batch_size
    grads = tape.gradient(loss, t.model.trainable_variables)
    controller_lib.Controller(trainer=t, model_dir=str(tmp_path)).train(evaluate=False)
    for v, before, g in zip(t.model.trainable_variables, w0, grads):
        m = 0.1 if v.path.startswith("hidden/") else 1.0
        np.testing.assert_allclose(v.numpy() - before, -0.5 * m * g.numpy(), rtol=1e-4, atol=1e-7, err_msg=v.path)


def test_unknown_group_in_phase_is_an_error(tmp_path):
    t = trainer_lib.build(_cfg(phases=[{"start_step": 0, "trainable": {"bodyy": False}}]),
                          tf.distribute.get_strategy())
    with pytest.raises(ValueError, match=r"bodyy.*groups: body"):
        controller_lib.Controller(trainer=t, model_dir=str(tmp_path))


@JIT
def test_batchnorm_of_frozen_group_runs_in_inference_mode(tmp_path, jit):
    x, y = C.toy_classification(n=64)
    C.set_arrays("bnf", x, y)

    def run(freeze_bn, d):
        cfg = C.make_config(
            task={"model": {"hidden": 8, "batchnorm": True}, "train_data": {"key": "bnf"}, "eval_data": {"name": ""}},
            trainer={"train_steps": 4, "steps_per_loop": 2, "freeze_bn_in_frozen_groups": freeze_bn, "jit_compile": jit,
                     "phases": [{"start_step": 0, "trainable": {"body": False}}]},
            optimizer={"name": "adam", "param_groups": [{"pattern": "^(hidden|bn)/", "name": "body"}]})
        t = trainer_lib.build(cfg, tf.distribute.get_strategy())
        bn = t.model.get_layer("bn")
        before = bn.moving_mean.numpy().copy()
        controller_lib.Controller(trainer=t, model_dir=str(d)).train(evaluate=False)
        return before, bn.moving_mean.numpy()

    before, after = run(True, tmp_path / "a")
    np.testing.assert_array_equal(before, after)  # statistics frozen with the weights
    before, after = run(False, tmp_path / "b")
    assert not np.array_equal(before, after)  # the option off: BN keeps updating its statistics
