"""The speed paths of the compiled loop keep the semantics of the plain one.

On one device with XLA (`trainer.jit_compile` true, or auto for a model without convolutions)
the whole step is compiled and several steps share one XLA call (a compiled while loop over
fetched batches, `Steps.xla_group_steps`). These tests pin what must not change: K steps in
one call equal K single calls, a non-finite step in the middle of a group halts exactly as
the one-step loop does, and the group is used only where it was measured to pay.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import registry, testing
from framework import trainer as trainer_lib
from framework.optim import optimizers  # noqa: F401  (registers the built-in optimizers)
from tests import _components as C


def _cfg(key, **trainer):
    return C.make_config(task={"model": {"hidden": 16}, "train_data": {"key": key}, "eval_data": {"name": ""}},
                         trainer={"jit_compile": True, **trainer}, optimizer={"name": "adam", "learning_rate": 0.01})


_BUILTIN_OPTIMIZERS = registry.OPTIMIZERS.names()


def _active(t):
    return list(range(len(t.groups.variables)))


def test_xla_group_used_only_on_one_device_without_convolutions():
    x, y = C.toy_classification(n=64)
    C.set_arrays("fp", x, y)
    t = trainer_lib.build(_cfg("fp"), tf.distribute.get_strategy())
    assert t.steps.jit_compile and t.steps.xla_group_steps > 1
    t = trainer_lib.build(_cfg("fp", jit_compile=False), tf.distribute.get_strategy())
    assert not t.steps.jit_compile
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    t = trainer_lib.build(_cfg("fp", jit_compile="auto"), mirrored)
    assert not t.steps.jit_compile  # docs/design.md#t5: no XLA on the replica function under Mirrored


@pytest.mark.parametrize("n", [3, 11, 19])  # a partial group; groups plus a remainder
def test_k_steps_in_one_call_equal_k_single_calls_under_xla(n):
    x, y = C.toy_classification(n=64)
    C.set_arrays("fp", x, y)
    # The XLA loop from the first call (compile-ahead's plain first loop: tests/test_loops.py).
    a = trainer_lib.build(_cfg("fp", xla_compile_ahead=False), tf.distribute.get_strategy())
    b = trainer_lib.build(_cfg("fp", xla_compile_ahead=False), tf.distribute.get_strategy())
    assert a.steps.xla_group_steps == 8
    a.steps.train_loop(iter(a.train_dataset(start_step=0)), n, _active(a))
    it = iter(b.train_dataset(start_step=0))
    for _ in range(n):
        b.steps.train_loop(it, 1, _active(b))
    for va, vb in zip(a.model.variables + a.optimizer.variables, b.model.variables + b.optimizer.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert int(a.global_step.numpy()) == int(b.global_step.numpy()) == n
    assert int(a.optimizer.iterations.numpy()) == n
    assert a.steps.traces["train"] == 1


def test_nonfinite_inside_a_group_halts_like_the_single_step_loop(tmp_path):
    x, y = C.toy_classification(n=64)
    C.set_arrays("fp", x, y)
    bad = 5  # inside the first group of 8
    t = testing.inject_nonfinite(trainer_lib.build(_cfg("fp"), tf.distribute.get_strategy()), at=bad)
    ref = trainer_lib.build(_cfg("fp"), tf.distribute.get_strategy())
    assert t.steps.xla_group_steps == 8
    result = t.steps.train_loop(iter(t.train_dataset(start_step=0)), 12, _active(t))
    ref.steps.train_loop(iter(ref.train_dataset(start_step=0)), bad, _active(ref))
    assert result.halted
    assert int(t.global_step.numpy()) == bad == result.step
    assert result.nonfinite_step == bad
    assert result.nonfinite_loss
    assert result.nonfinite_steps == 1  # the steps after the halt are not counted
    assert int(t.optimizer.iterations.numpy()) == bad
    for va, vb in zip(t.model.variables + t.optimizer.variables, ref.model.variables + ref.optimizer.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())


def test_nonfinite_terminate_through_the_controller_under_xla(tmp_path):
    x, y = C.toy_classification(n=64)
    C.set_arrays("fp", x, y)
    cfg = _cfg("fp", train_steps=16, steps_per_loop=8, checkpoint_interval=8, nonfinite="terminate")
    t = testing.inject_nonfinite(trainer_lib.build(cfg, tf.distribute.get_strategy()), at=10)
    with pytest.raises(controller_lib.NonFiniteError, match=r"non-finite loss at step 10"):
        controller_lib.Controller(trainer=t, model_dir=str(tmp_path)).train(evaluate=False)
    assert int(t.global_step.numpy()) == 10
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-10")


def test_skip_policy_inside_a_group_skips_only_that_step():
    x, y = C.toy_classification(n=64)
    C.set_arrays("fp", x, y)
    t = testing.inject_nonfinite(trainer_lib.build(_cfg("fp", nonfinite="skip"), tf.distribute.get_strategy()), at=2)
    result = t.steps.train_loop(iter(t.train_dataset(start_step=0)), 8, _active(t))
    assert int(t.global_step.numpy()) == 8
    assert result.nonfinite_steps == 1
    assert int(t.optimizer.iterations.numpy()) == 7
    assert not result.halted


def test_conv_model_under_xla_runs_one_step_per_call_and_matches_single_calls():
    from benchmarks import common

    def build():
        cfg = common.tapeline_config("cnn", quick=True, jit=True, batch=8)
        return trainer_lib.build(cfg, tf.distribute.get_strategy())

    a, b = build(), build()
    assert a.steps.jit_compile and a.steps.xla_group_steps == 1  # no XLA loop around convolutions
    a.steps.train_loop(iter(a.train_dataset(start_step=0)), 3, _active(a))
    it = iter(b.train_dataset(start_step=0))
    for _ in range(3):
        b.steps.train_loop(it, 1, _active(b))
    for va, vb in zip(a.model.variables + a.optimizer.variables, b.model.variables + b.optimizer.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert int(a.global_step.numpy()) == 3


def _skipped_step_changes_nothing(t):
    it = iter(t.train_dataset(start_step=0))
    t.steps.train_loop(it, 2, _active(t))
    state = t.model.variables + t.optimizer.variables + (t.steps.ema.weights if t.steps.ema else [])
    before = [v.numpy().copy() for v in state]
    result = t.steps.train_loop(it, 1, _active(t))  # step 2: non-finite, skipped
    for v, b in zip(state, before):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.name)
    assert result.nonfinite_steps == 1 and int(t.global_step.numpy()) == 3
    t.steps.train_loop(it, 1, _active(t))  # and training goes on, finite
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(t.model.trainable_variables, before))
    assert all(np.isfinite(v.numpy()).all() for v in state)


@pytest.mark.parametrize("name", _BUILTIN_OPTIMIZERS)
def test_a_skipped_step_under_xla_changes_no_variable(name):
    # Under whole-step XLA the update is not a conditional but a select in every write (the
    # optimizer's assign methods are gated while tracing): a skipped step must still leave the
    # weights, every optimizer slot, its iteration count and the EMA exactly as they were.
    x, y = C.toy_classification(n=64)
    C.set_arrays("fp", x, y)
    cfg = _cfg("fp", nonfinite="skip", ema_decay=0.9)
    cfg.optimizer.name = name
    t = testing.inject_nonfinite(trainer_lib.build(cfg, tf.distribute.get_strategy()), at=2)
    assert t.steps.gated_update
    _skipped_step_changes_nothing(t)
    assert int(t.optimizer.iterations.numpy()) == 3


def test_an_optimizer_outside_keras_conventions_keeps_the_conditional_update():
    x, y = C.toy_classification(n=64)
    C.set_arrays("fp", x, y)

    class OwnSgd(keras.optimizers.Optimizer):
        def update_step(self, gradient, variable, learning_rate):
            variable.assign_sub(tf.cast(learning_rate, variable.dtype) * gradient)  # not self.assign_sub

    registry.register_optimizer("test_own_sgd")(lambda learning_rate: OwnSgd(learning_rate=learning_rate))
    try:
        cfg = _cfg("fp", nonfinite="skip")
        cfg.optimizer.name = "test_own_sgd"
        t = testing.inject_nonfinite(trainer_lib.build(cfg, tf.distribute.get_strategy()), at=2)
        assert t.steps.jit_compile and not t.steps.gated_update
        _skipped_step_changes_nothing(t)
    finally:
        registry.OPTIMIZERS.unregister("test_own_sgd")


def test_the_text_transformer_gets_whole_step_xla_one_step_per_call_at_the_defaults():
    from benchmarks import common

    t = trainer_lib.build(common.tapeline_config("transformer", quick=True, steps_per_loop=4),
                          tf.distribute.get_strategy())
    assert t.steps.jit_compile and t.steps.xla_group_steps == 1  # attention under mask_zero
    assert "one step per XLA call: attention under a padding mask" in t.jit_reason
    before = [v.numpy().copy() for v in t.model.trainable_variables]
    result = t.steps.train_loop(iter(t.train_dataset(start_step=0)), 4, _active(t))
    assert result.steps_done == 4 and int(t.global_step.numpy()) == 4
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, t.model.trainable_variables))
