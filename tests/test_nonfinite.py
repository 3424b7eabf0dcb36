"""trainer.nonfinite policies with a non-finite loss injected at a chosen step."""
import os

import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import trainer as trainer_lib
from tests import _components as C


def _build(policy, tmp_path, inject=7, steps=12, **trainer_kw):
    x, y = C.toy_classification(n=64)
    C.set_arrays("nan", x, y)
    cfg = C.make_config(task={"train_data": {"key": "nan"}, "eval_data": {"name": ""}},
                        trainer={"train_steps": steps, "steps_per_loop": 4, "checkpoint_interval": 4,
                                 "nonfinite": policy, **trainer_kw})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy(), inject_nonfinite_at=inject)
    return t, controller_lib.Controller(trainer=t, model_dir=str(tmp_path))


def test_terminate_names_step_and_keeps_last_good_checkpoint(tmp_path):
    t, ctl = _build("terminate", tmp_path)
    with pytest.raises(controller_lib.NonFiniteError, match=r"non-finite loss at step 7"):
        ctl.train(evaluate=False)
    # Steps 0-6 applied, step 7 not: the checkpoint holds step 7's starting state.
    assert int(t.global_step.numpy()) == 7
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-7")
    assert any(f.startswith("ckpt-4") for f in os.listdir(tmp_path))


def test_skip_leaves_weights_untouched_on_that_step_and_counts_it(tmp_path):
    t, ctl = _build("skip", tmp_path, steps=8)
    ctl.train(evaluate=False)
    assert int(t.steps.nonfinite_steps.numpy()) == 1
    assert int(t.global_step.numpy()) == 8
    # The skipped step did not count as an optimizer iteration.
    assert int(t.optimizer.iterations.numpy()) == 7


def test_skipped_step_changes_nothing(tmp_path):
    t, _ = _build("skip", tmp_path, inject=0)
    before = [v.numpy().copy() for v in t.model.trainable_variables]
    active = list(range(len(t.groups.variables)))
    t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, active)
    for v, b in zip(t.model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_restore_goes_back_then_terminates_after_max_restores(tmp_path):
    t, ctl = _build("restore", tmp_path, max_restores=2)
    with pytest.raises(controller_lib.NonFiniteError):
        ctl.train(evaluate=False)
    assert ctl._restores == 2  # went back to ckpt-4 twice, the injected step failed each time
