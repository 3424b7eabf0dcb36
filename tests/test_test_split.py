"""Train / validation / test: task.test_data is read once at the end on the final model, never by
hooks; task.validation_split carves a stratified, seeded, disjoint eval set from the train source."""
import json
import os

import numpy as np
import pytest
import sklearn.metrics
import tensorflow as tf

from framework import config as config_lib
from framework import controller as controller_lib
from framework import registry
from framework import trainer as trainer_lib
from framework.data import split as split_lib
from tests import _components as C

CALLS: dict[str, int] = {"test": 0}

if "counting_arrays" not in registry.DATASETS:
    @registry.register_dataset("counting_arrays")
    def counting_arrays(split: str, key: str = "default") -> tf.data.Dataset:
        """test_arrays that counts how often it is called per split."""
        CALLS[split] = CALLS.get(split, 0) + 1
        x, y, _ = C._ARRAYS[key]
        return tf.data.Dataset.from_tensor_slices((x, y))


def _logits_metrics(model, x, y):
    logits = np.asarray(model(x, training=False), np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return {"loss": sklearn.metrics.log_loss(y, p, labels=[0, 1, 2]),
            "accuracy": sklearn.metrics.accuracy_score(y, p.argmax(-1))}


@pytest.mark.parametrize("jit", [False, "auto"])
def test_test_data_read_once_at_the_end_on_the_restored_best_model(tmp_path, jit):
    x, y = C.toy_classification(n=64, seed=1)
    xt, yt = C.toy_classification(n=40, seed=2)
    C.set_arrays("tt_train", x, y)
    C.set_arrays("tt_test", xt, yt)
    cfg = C.make_config(
        task={"train_data": {"key": "tt_train"}, "eval_data": {"key": "tt_test"},
              "test_data": {"name": "counting_arrays", "key": "tt_test", "batch_size": 16}},
        trainer={"train_steps": 40, "steps_per_loop": 5, "eval_interval": 5, "jit_compile": jit})
    CALLS["test"] = 0
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    assert CALLS["test"] == 0  # building the run does not read the test set

    seen = []

    def spy(event, ctx):
        seen.append((event, CALLS["test"], dict(ctx.eval_logs)))

    from framework.hooks.early_stopping import EarlyStopping
    # No later evaluation can beat the first by min_delta: training stops at the second evaluation
    # and restores the weights of the first one (different from the last weights).
    es = EarlyStopping(monitor="loss", patience=1, min_delta=1e9, restore_best=True)
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path), hooks=[es, spy])
    step = ctl.train(evaluate=True)

    assert step == 10 and es.stopped_step == 10
    assert all(calls == 0 for _, calls, _ in seen), seen  # never read before the end, "end" hooks included
    assert seen[-1][0] == "end"
    assert CALLS["test"] == 1
    with open(tmp_path / "test_metrics.json", encoding="utf-8") as f:
        test = json.load(f)
    assert test["step"] == 10
    # The final model is the restored best (the first evaluation's weights): its metrics on the test
    # arrays, computed independently, are what test_metrics.json holds.
    ref = _logits_metrics(t.model, xt, yt)
    assert test["loss"] == pytest.approx(ref["loss"], rel=1e-4)
    assert test["accuracy"] == pytest.approx(ref["accuracy"])
    first_eval, last_eval = ctl.eval_history[0], ctl.eval_history[-1]
    assert test["loss"] == pytest.approx(first_eval["loss"], rel=1e-4)  # eval set == test arrays here
    assert test["loss"] != pytest.approx(last_eval["loss"], rel=1e-4)
    # Hooks only ever saw eval logs; metrics.json is still the last evaluation.
    assert all(logs == {} or logs["loss"] in [e["loss"] for e in ctl.eval_history] for _, _, logs in seen)
    with open(tmp_path / "metrics.json", encoding="utf-8") as f:
        assert json.load(f)["loss"] == pytest.approx(last_eval["loss"])
    assert os.listdir(tmp_path / "test")  # TensorBoard test/


def test_preempted_run_does_not_touch_the_test_set(tmp_path):
    x, y = C.toy_classification(n=32)
    C.set_arrays("tt_pre", x, y)
    cfg = C.make_config(task={"train_data": {"key": "tt_pre"}, "eval_data": {"key": "tt_pre"},
                              "test_data": {"name": "counting_arrays", "key": "tt_pre"}})
    CALLS["test"] = 0
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))

    def preempt(event, ctx):
        if event == "train_loop_end":
            ctl._preempted.set()  # what the SIGTERM handler does

    ctl.hooks.append(preempt)
    assert ctl.train(evaluate=True) == 5
    assert CALLS["test"] == 0 and not os.path.exists(tmp_path / "test_metrics.json")


def test_unknown_test_data_kwarg_fails_at_build_without_calling_the_factory():
    C.set_arrays("tt_k", *C.toy_classification(n=16))
    cfg = C.make_config(task={"train_data": {"key": "tt_k"}, "eval_data": {"key": "tt_k"},
                              "test_data": {"name": "counting_arrays", "key": "tt_k", "colour": 1}})
    CALLS["test"] = 0
    with pytest.raises(ValueError, match="task.test_data.*colour"):
        trainer_lib.build(cfg, tf.distribute.get_strategy())
    assert CALLS["test"] == 0


# ----------------------------------------------------------------------------- validation split


def test_stratified_validation_split_is_disjoint_covering_balanced_and_seeded():
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat([0, 1, 2], [100, 50, 10]))
    tr, ev = split_lib.validation_indices(y, fraction=0.2, seed=42)
    assert len(np.intersect1d(tr, ev)) == 0
    np.testing.assert_array_equal(np.union1d(tr, ev), np.arange(len(y)))
    assert np.bincount(y[ev]).tolist() == [20, 10, 2]  # 20% of every class
    tr2, ev2 = split_lib.validation_indices(y, fraction=0.2, seed=42)
    np.testing.assert_array_equal(ev, ev2)
    _, ev3 = split_lib.validation_indices(y, fraction=0.2, seed=7)
    assert not np.array_equal(ev, ev3)
    # Regression targets: a seeded random split of the same size.
    t = rng.normal(size=50)
    tr, ev = split_lib.validation_indices(t, fraction=0.2, seed=1)
    assert len(ev) == 10 and len(np.union1d(tr, ev)) == 50


def test_validation_split_carves_the_eval_set_identically_in_two_builds():
    x, y = C.toy_classification(n=90, seed=3)
    C.set_arrays("tt_vs", x, y)
    cfg = C.make_config(task={"train_data": {"key": "tt_vs"}, "eval_data": {"name": ""}, "validation_split": 0.2})
    builds = [trainer_lib.build(cfg, tf.distribute.get_strategy()) for _ in range(2)]
    a, b = builds
    np.testing.assert_array_equal(a.eval_indices, b.eval_indices)
    assert a.num_eval_examples == len(a.eval_indices) and a.num_train_examples == 90 - len(a.eval_indices)
    ex, ey, _ = next(iter(a.eval_source.batch(1000)))
    tx, ty, _ = next(iter(a.train_source.batch(1000)))
    np.testing.assert_array_equal(ex.numpy(), x[a.eval_indices])  # the eval rows are those positions
    np.testing.assert_array_equal(ey.numpy(), y[a.eval_indices])
    train_idx = np.setdiff1d(np.arange(90), a.eval_indices)
    np.testing.assert_array_equal(tx.numpy(), x[train_idx])
    counts, held = np.bincount(y, minlength=3), np.bincount(ey.numpy(), minlength=3)
    np.testing.assert_allclose(held, np.round(0.2 * counts))


def test_validation_split_runs_with_eval(tmp_path):
    x, y = C.toy_classification(n=64, seed=4)
    C.set_arrays("tt_run", x, y)
    cfg = C.make_config(task={"train_data": {"key": "tt_run"}, "eval_data": {"name": ""}, "validation_split": 0.25})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.train(evaluate=True)
    ref = _logits_metrics(t.model, x[t.eval_indices], y[t.eval_indices])
    assert ctl.last_eval["accuracy"] == pytest.approx(ref["accuracy"])


@pytest.mark.parametrize("task, match", [
    ({"eval_data": {"name": "test_arrays"}, "validation_split": 0.2}, "task.validation_split: expected null when"),
    ({"eval_data": {"name": ""}, "validation_split": 0.0}, r"task.validation_split: expected null or a fraction"),
    ({"eval_data": {"name": ""}, "validation_split": 1.5}, r"task.validation_split: expected null or a fraction"),
    ({"train_data": {"sampling": "rare"}}, "task.train_data.sampling: expected null, 'balanced'"),
    ({"eval_data": {"sampling": "balanced"}}, "task.eval_data.sampling: sampling applies to task.train_data"),
])
def test_bad_protocol_config_is_a_config_error(task, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        C.make_config(task=task)


if "strict_split" not in registry.DATASETS:
    @registry.register_dataset("strict_split")
    def strict_split(split: str, key: str = "default", allow_test: bool = False) -> tf.data.Dataset:
        """Rejects split='test' (like a factory that only knows train/eval) unless allow_test."""
        if split == "test" and not allow_test:
            raise ValueError(f"dataset 'strict_split': split must be 'train' or 'eval'; got split={split!r}")
        CALLS[split] = CALLS.get(split, 0) + 1
        x, y, _ = C._ARRAYS[key]
        return tf.data.Dataset.from_tensor_slices((x, y))


def test_a_test_set_that_fails_at_the_end_is_evaluated_on_the_rerun(tmp_path):
    from framework import main as main_lib

    x, y = C.toy_classification(n=64, seed=1)
    C.set_arrays("tt_strict", x, y)

    def cfg(allow):
        return C.make_config(
            task={"train_data": {"key": "tt_strict"}, "eval_data": {"key": "tt_strict"},
                  "test_data": {"name": "strict_split", "key": "tt_strict", "allow_test": allow}})

    with pytest.raises(main_lib.UserError, match="split must be 'train' or 'eval'.*rerun the same command"):
        main_lib.run(cfg(False), model_dir=str(tmp_path), mode="train_and_eval")
    assert not os.path.exists(tmp_path / "test_metrics.json")
    CALLS["test"] = 0
    result = main_lib.run(cfg(True), model_dir=str(tmp_path), mode="train_and_eval")
    assert CALLS["test"] == 1 and result["step"] == 20 and result["controller"].eval_history == []  # no training
    test = json.loads((tmp_path / "test_metrics.json").read_text())
    ref = _logits_metrics(result["controller"].t.model, x, y)  # the final (restored) weights
    assert test["step"] == 20 and test["loss"] == pytest.approx(ref["loss"], rel=1e-4)
    # A further rerun reads nothing: the test set was evaluated once.
    main_lib.run(cfg(True), model_dir=str(tmp_path), mode="train_and_eval")
    assert CALLS["test"] == 1


def test_bundled_test_split_end_to_end_and_a_mismatched_holdout_is_refused(tmp_path):
    hold = {"holdout_fraction": 0.2, "flatten": True}
    cfg = config_lib.resolve({
        "task": {"model": {"name": "test_linear", "units": 10, "inputs": 64},
                 "train_data": {"name": "digits", "batch_size": 64, **hold},
                 "eval_data": {"name": "digits", "batch_size": 64, **hold},
                 "test_data": {"name": "digits", "batch_size": 64, **hold}, "metrics": ["accuracy"]},
        "trainer": {"train_steps": 4, "steps_per_loop": 2, "eval_interval": 4, "checkpoint_interval": 4,
                    "export": False},
        "optimizer": {"name": "adam", "learning_rate": 0.01}})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.train(evaluate=True)
    m = json.loads((tmp_path / "test_metrics.json").read_text())
    assert m["step"] == 4 and 0.0 <= m["accuracy"] <= 1.0
    cfg.task.train_data.kwargs["holdout_fraction"] = 0.0
    with pytest.raises(ValueError, match=r"task.train_data.holdout_fraction: expected 0.2.*got 0.0"):
        trainer_lib.build(cfg, tf.distribute.get_strategy())
