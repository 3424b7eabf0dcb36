"""Checkpoints: every optimizer variable saved (docs/design.md#t3), files kept, interrupted saves, bad restores."""
import os

import numpy as np
import pytest
import tensorflow as tf

from framework import checkpoint as ckpt_lib
from framework import controller as controller_lib
from framework import trainer as trainer_lib
from tests import _components as C


def _cfg(steps=12, **kw):
    x, y = C.toy_classification(n=64)
    C.set_arrays("ck", x, y)
    task = {"model": {"hidden": 8}, "train_data": {"key": "ck"}, "eval_data": {"name": ""}}
    task.update(kw.pop("task", {}))
    return C.make_config(task=task, trainer={"train_steps": steps, "steps_per_loop": 2, "checkpoint_interval": 4,
                                             "max_to_keep": 2}, **kw)


def _ctl(cfg, d):
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    return t, controller_lib.Controller(trainer=t, model_dir=str(d))


def test_optimizer_state_of_every_group_is_checkpointed_and_restored(tmp_path):
    # One optimizer with per-variable learning rates (not Keras's MultiOptimizer, whose
    # sub-optimizers' slots a Checkpoint does not hold): all its state is saved, and a fresh
    # build restores every slot and the iteration count.
    cfg = _cfg(4, optimizer={"name": "adam", "param_groups": [{"pattern": "^hidden/", "lr_multiplier": 0.1}]})
    t, ctl = _ctl(cfg, tmp_path / "ours")
    ctl.train(evaluate=False)
    t2, ctl2 = _ctl(cfg, tmp_path / "ours")
    assert ctl2.restore() == 4
    assert len(t2.optimizer.variables) == 2 + 2 * len(t.groups.variables)  # iterations, lr, m and v per var
    for a, b in zip(t.optimizer.variables, t2.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_checkpoint_interval_and_max_to_keep_give_expected_files(tmp_path):
    t, ctl = _ctl(_cfg(12), tmp_path)
    ctl.train(evaluate=False)
    idx = sorted(f for f in os.listdir(tmp_path) if f.endswith(".index"))
    assert idx == ["ckpt-12.index", "ckpt-8.index"]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-12")


def test_interrupted_save_leaves_latest_pointing_at_complete_checkpoint(tmp_path):
    t, ctl = _ctl(_cfg(8), tmp_path)
    ctl.train(evaluate=False)
    # A save killed half-way: data file written, no index, the `checkpoint` file not updated.
    (tmp_path / "ckpt-12.data-00000-of-00001").write_bytes(b"\0" * 100)
    t2, ctl2 = _ctl(_cfg(8), tmp_path)
    assert ctl2.restore() == 8


def test_checkpoint_of_a_different_model_is_refused_listing_errors(tmp_path):
    _, ctl = _ctl(_cfg(4), tmp_path)
    ctl.train(evaluate=False)
    t2, ctl2 = _ctl(_cfg(4, task={"model": {"hidden": 5}}), tmp_path)
    before = [v.numpy().copy() for v in t2.model.variables]
    with pytest.raises(ckpt_lib.CheckpointError, match="none can be restored"):
        ctl2.restore()
    for v, b in zip(t2.model.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)  # no partial load


def test_init_checkpoint_loads_by_path_with_mapping(tmp_path):
    t, ctl = _ctl(_cfg(4), tmp_path / "src")
    ctl.train(evaluate=False)
    src = {v.path: v.numpy() for v in t.model.variables}
    t2 = trainer_lib.build(_cfg(4), tf.distribute.get_strategy())
    loaded = ckpt_lib.load_weights(t2.model, str(tmp_path / "src"), mapping=[{"from": "^out/", "to": "out/"}])
    assert set(loaded) == {"hidden/kernel", "hidden/bias", "out/kernel", "out/bias"}
    for v in t2.model.variables:
        if v.path in src and "seed" not in v.path:
            np.testing.assert_array_equal(v.numpy(), src[v.path])
    with pytest.raises(ValueError, match="no variable of the model matches"):
        ckpt_lib.load_weights(t2.model, str(tmp_path / "src"), mapping=[{"from": ".*", "to": "zzz"}])


@pytest.mark.parametrize("where", ["model", "optimizer", "ema"])
def test_save_refuses_non_finite_variables_and_keeps_previous_latest(tmp_path, where):
    cfg = _cfg(4, optimizer={"name": "adam"})
    cfg.trainer.ema_decay = 0.9
    t, ctl = _ctl(cfg, tmp_path)
    ctl.train(evaluate=False)
    before = sorted(os.listdir(tmp_path))
    var = {"model": t.model.get_layer("out").kernel, "optimizer": t.optimizer.variables[-1],
           "ema": t.steps.ema.weights[0]}[where]
    var.assign(np.where(np.arange(int(np.prod(var.shape))).reshape(var.shape) == 1, np.inf, var.numpy()))
    name = {"model": "out/kernel", "optimizer": t.optimizer.variables[-1].path, "ema": "ema/"}[where]
    with pytest.raises(ckpt_lib.CheckpointError, match=rf"refusing to write checkpoint ckpt-6.*non-finite.*{name}"
                                                         r".*still .*ckpt-4"):
        ctl.checkpointer.save(6)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")
