"""Freezing and gradual unfreezing inside one run: what trains when, retraces, BN mode, resume."""
import numpy as np
import tensorflow as tf

from framework import controller as controller_lib
from framework import trainer as trainer_lib
from tests import _components as C


def _cfg(steps=12, phases=None):
    x, y = C.toy_classification(n=64)
    C.set_arrays("phases", x, y)
    return C.make_config(
        task={"model": {"hidden": 8}, "train_data": {"key": "phases"}, "eval_data": {"key": "phases"}},
        trainer={"train_steps": steps, "steps_per_loop": 2, "eval_interval": 6, "checkpoint_interval": 6,
                 "phases": phases if phases is not None else [
                     {"start_step": 0, "trainable": {"body": False}},
                     {"start_step": 4, "trainable": {"body": True}, "lr_multiplier": {"body": 0.1}},
                     {"start_step": 8, "lr_multiplier": {"body": 1.0}}]},
        optimizer={"name": "adam", "learning_rate": 0.01,
                   "param_groups": [{"pattern": "^hidden/", "name": "body"}]})


def test_phases_freeze_then_unfreeze_with_one_retrace_per_change(tmp_path):
    t = trainer_lib.build(_cfg(), tf.distribute.get_strategy())
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
    # Phases 2 and 3 train the same set (only a multiplier changed): 2 traces in all.
    assert t.steps.traces["train"] == 2
    assert int(t.optimizer.iterations.numpy()) == 12


def test_phase_multiplier_shows_in_learning_rate_of_group(tmp_path):
    t = trainer_lib.build(_cfg(steps=6), tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.train(evaluate=False)
    lrs = t.group_lrs(6)
    assert lrs["body"] == np.float32(0.1) * lrs["default"] or abs(lrs["body"] - 0.1 * lrs["default"]) < 1e-9


def test_unknown_group_in_phase_is_an_error(tmp_path):
    t = trainer_lib.build(_cfg(phases=[{"start_step": 0, "trainable": {"bodyy": False}}]),
                          tf.distribute.get_strategy())
    try:
        controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    except ValueError as e:
        assert "bodyy" in str(e) and "body" in str(e)
    else:
        raise AssertionError("expected a ValueError naming the unknown group")


def test_batchnorm_of_frozen_group_runs_in_inference_mode(tmp_path):
    x, y = C.toy_classification(n=64)
    C.set_arrays("bnf", x, y)

    def run(freeze_bn, d):
        cfg = C.make_config(
            task={"model": {"hidden": 8, "batchnorm": True}, "train_data": {"key": "bnf"}, "eval_data": {"name": ""}},
            trainer={"train_steps": 4, "steps_per_loop": 2, "freeze_bn_in_frozen_groups": freeze_bn,
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
