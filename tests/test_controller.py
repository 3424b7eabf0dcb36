"""The outer loop: resume equals straight training, finished runs return, files a run leaves."""
import json
import os

import numpy as np
import pytest
import sklearn.metrics
import tensorflow as tf

from framework import controller as controller_lib
from framework import trainer as trainer_lib
from tests import _components as C


def _run(cfg, model_dir, hooks=()):
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(model_dir), hooks=hooks)
    step = ctl.train(evaluate=True)
    return t, ctl, step


def _cfg(steps, **kw):
    x, y = C.toy_classification(n=60)
    C.set_arrays("resume", x, y)
    return C.make_config(
        task={"model": {"hidden": 16, "dropout": 0.3}, "train_data": {"key": "resume"},
              "eval_data": {"key": "resume"}},
        trainer={"train_steps": steps, "steps_per_loop": 4, "eval_interval": 8, "checkpoint_interval": 8},
        optimizer={"name": "adam", "learning_rate": 0.01, "schedule": {"name": "cosine"}}, **kw)


def test_resume_equals_straight_run(tmp_path):
    straight, _, step = _run(_cfg(24), tmp_path / "a")
    assert step == 24
    # The same run interrupted at 16 (as a preemption would), then restarted with the same config.
    def stop_at_16(event, ctx):
        if event == "train_loop_end" and ctx.step >= 16:
            ctx.request_stop("test interruption")

    _, _, s1 = _run(_cfg(24), tmp_path / "b", hooks=[stop_at_16])
    assert s1 == 16
    resumed, ctl, s2 = _run(_cfg(24), tmp_path / "b")
    assert s2 == 24
    assert int(resumed.optimizer.iterations.numpy()) == 24
    for va, vb in zip(straight.model.variables, resumed.model.variables):
        # Dropout RNG state included: a plain Checkpoint(model=...) would differ (docs/design.md#t9).
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)
    for va, vb in zip(straight.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())


def test_rng_state_is_in_the_checkpoint(tmp_path):
    t, ctl, _ = _run(_cfg(8), tmp_path)
    reader = tf.train.load_checkpoint(ctl.checkpointer.latest)
    paths = json.loads(reader.get_tensor("model_paths/.ATTRIBUTES/VARIABLE_VALUE").decode())
    i = next(i for i, p in enumerate(paths) if "seed_generator_state" in p)
    rng = [v for v in t.model.variables if "seed_generator_state" in v.path][0]
    np.testing.assert_array_equal(reader.get_tensor(f"model/{i}/.ATTRIBUTES/VARIABLE_VALUE"), rng.numpy())


def test_finished_run_returns_at_once(tmp_path):
    _run(_cfg(8), tmp_path)
    t, ctl, step = _run(_cfg(8), tmp_path)
    assert step == 8
    assert t.steps.traces["train"] == 0  # nothing was compiled, nothing trained


def test_run_leaves_checkpoints_events_and_metrics_json(tmp_path):
    t, ctl, _ = _run(_cfg(16), tmp_path)
    files = os.listdir(tmp_path)
    assert "checkpoint" in files and any(f.startswith("ckpt-16") for f in files)
    assert os.listdir(tmp_path / "train") and os.listdir(tmp_path / "eval")
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["step"] == 16 and set(m) >= {"loss", "accuracy"}
    assert m == {"step": 16, **ctl.last_eval}


def test_eval_metrics_equal_sklearn(tmp_path):
    x, y = C.toy_classification(n=70, seed=3)
    C.set_arrays("skl", x, y)
    cfg = C.make_config(task={"train_data": {"key": "skl"}, "eval_data": {"key": "skl"},
                              "metrics": ["accuracy", {"name": "f1", "average": "macro"}]},
                        trainer={"train_steps": 10})
    t, ctl, _ = _run(cfg, tmp_path)
    pred = np.argmax(t.model(x, training=False).numpy(), axis=1)
    assert ctl.last_eval["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(y, pred), abs=1e-6)
    assert ctl.last_eval["f1"] == pytest.approx(sklearn.metrics.f1_score(y, pred, average="macro"), abs=1e-5)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    _run(_cfg(16), tmp_path)
    for f in os.listdir(tmp_path):
        if f.startswith("ckpt-16") and f.endswith(".index"):
            (tmp_path / f).write_bytes(b"garbage")
    t = trainer_lib.build(_cfg(16), tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    assert ctl.restore() == 8


def test_train_epochs_sets_total_steps(tmp_path):
    cfg = _cfg(100)
    cfg.trainer.train_epochs = 2.0  # 60 examples, batch 8 -> 15 steps
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    assert t.total_steps == 15


def test_eval_mode_restores_and_evaluates(tmp_path):
    from framework import main as main_lib
    _run(_cfg(8), tmp_path)
    out = main_lib.run(_cfg(8), model_dir=str(tmp_path), mode="eval")
    assert out["step"] == 8 and set(out["eval"]) >= {"loss", "accuracy"}
    with pytest.raises(main_lib.UserError, match="no checkpoint"):
        main_lib.run(_cfg(8), model_dir=main_lib.check_model_dir(str(tmp_path / "empty")), mode="eval")


def test_early_stopping_restores_before_other_end_hooks(tmp_path):
    from framework.hooks.early_stopping import EarlyStopping

    seen = {}

    def record_end(event, ctx):  # listed first, as an export hook might be
        if event == "end":
            seen["weights"] = [w.copy() for w in ctx.get_weights()]

    # mode=max on the eval loss: the first eval (step 8) is the best, the second stops the run.
    stopper = EarlyStopping(monitor="loss", mode="max", patience=1, restore_best=True)
    t, _, step = _run(_cfg(24), tmp_path, hooks=[record_end, stopper])
    assert step == 16 and stopper.best_step == 8 and stopper.stopped_step == 16
    with np.load(tmp_path / "early_stopping_best.npz") as best:
        want = [best[f"w{i}"] for i in range(len(best.files))]
    assert len(seen["weights"]) == len(want)
    for got, w in zip(seen["weights"], want):
        np.testing.assert_array_equal(got, w)
    for v, w in zip(t.model.variables, want):
        np.testing.assert_array_equal(v.numpy(), w, err_msg=v.path)


@pytest.mark.parametrize("jit", ["auto", False])
def test_logged_learning_rate_is_the_rate_the_loops_last_step_used(tmp_path, jit):
    # Warmup over 8 steps (lr(s) = 0.1 * (s + 1) / 8 until s = 7); `head` (0.5x) is frozen
    # before step 8. The value logged at the end of a loop is the rate of that loop's last step.
    x, y = C.toy_classification(n=64)
    C.set_arrays("lr", x, y)
    cfg = C.make_config(task={"model": {"hidden": 4}, "train_data": {"key": "lr"}, "eval_data": {"key": "lr"}},
                        trainer={"train_steps": 12, "steps_per_loop": 4, "checkpoint_interval": 12, "eval_interval": 12, "jit_compile": jit,
                                 "phases": [{"start_step": 0, "trainable": {"head": False}},
                                            {"start_step": 8, "trainable": {"head": True}}]},
                        optimizer={"name": "sgd", "learning_rate": 0.1, "warmup_steps": 8,
                                   "param_groups": [{"pattern": "^out/", "name": "head", "lr_multiplier": 0.5}]})
    _run(cfg, tmp_path)
    logged = {}
    for f in os.listdir(tmp_path / "train"):
        for e in tf.compat.v1.train.summary_iterator(str(tmp_path / "train" / f)):
            for v in e.summary.value:
                if v.tag.startswith("learning_rate/"):
                    logged[(v.tag.split("/")[1], e.step)] = float(tf.make_ndarray(v.tensor))
    def warm(s):
        return 0.1 * min(1.0, (s + 1) / 8)

    assert logged[("default", 4)] == pytest.approx(warm(3), rel=1e-6)  # not warm(4): the last step was 3
    assert logged[("default", 8)] == pytest.approx(warm(7), rel=1e-6)
    assert logged[("head", 4)] == 0.0 and logged[("head", 8)] == 0.0  # frozen in the loops before step 8
    assert logged[("head", 12)] == pytest.approx(0.5 * warm(11), rel=1e-6)
