"""The compiled step and inner loop: closed-form update, K-in-one equals K-single, trace counts."""
import numpy as np
import pytest
import tensorflow as tf

from framework import results as results_lib
from framework import trainer as trainer_lib
from tests import _components as C


def _build(cfg, strategy=None):
    return trainer_lib.build(cfg, strategy or tf.distribute.get_strategy())


def _iter(t, start=0):
    return iter(t.train_dataset(start_step=start))


def _active(t):
    return list(range(len(t.groups.variables)))


JIT = pytest.mark.parametrize("jit", ["auto", False], ids=["auto", "nojit"])  # the default, and off


@JIT
def test_one_sgd_step_equals_closed_form(jit):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.normal(size=(8,)).astype(np.float32)
    C.set_arrays("sgd", x, y)
    cfg = C.make_config(task={"model": {"units": 1}, "train_data": {"key": "sgd", "batch_size": 8,
                                                                   "shuffle_buffer": 0},
                              "eval_data": {"name": ""}, "loss": {"name": "mse"}, "metrics": []},
                        trainer={"jit_compile": jit}, optimizer={"name": "sgd", "learning_rate": 0.05})
    t = _build(cfg)
    w0 = t.model.get_layer("out").kernel.numpy().copy()
    b0 = t.model.get_layer("out").bias.numpy().copy()
    t.steps.train_loop(_iter(t), 1, _active(t))
    resid = x @ w0[:, 0] + b0[0] - y  # [B]
    grad_w = 2.0 / 8 * x.T @ resid
    grad_b = 2.0 / 8 * resid.sum()
    np.testing.assert_allclose(t.model.get_layer("out").kernel.numpy()[:, 0], w0[:, 0] - 0.05 * grad_w, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(t.model.get_layer("out").bias.numpy()[0], b0[0] - 0.05 * grad_b, rtol=1e-5, atol=1e-6)
    assert int(t.global_step.numpy()) == 1
    assert int(t.optimizer.iterations.numpy()) == 1


@JIT
def test_k_steps_in_one_call_equal_k_single_calls(jit):
    x, y = C.toy_classification(n=64)
    C.set_arrays("k", x, y)
    # The XLA loop from the first call (a fresh run's first loop under compile-ahead runs without
    # XLA: tests/test_loops.py covers it).
    cfg = C.make_config(task={"train_data": {"key": "k"}, "eval_data": {"name": ""}},
                        trainer={"jit_compile": jit, "xla_compile_ahead": False},
                        optimizer={"name": "adam", "learning_rate": 0.01})
    a, b = _build(cfg), _build(cfg)
    np.testing.assert_array_equal(a.model.get_layer("out").kernel.numpy(), b.model.get_layer("out").kernel.numpy())
    a.steps.train_loop(_iter(a), 7, _active(a))
    it = _iter(b)
    for _ in range(7):
        b.steps.train_loop(it, 1, _active(b))
    for va, vb in zip(a.model.variables, b.model.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    for va, vb in zip(a.optimizer.variables, b.optimizer.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert int(a.global_step.numpy()) == int(b.global_step.numpy()) == 7


@JIT
def test_no_retrace_across_loops_short_last_loop_and_partial_eval_batch(jit):
    x, y = C.toy_classification(n=50)  # 50 eval examples at batch 16: a partial last batch
    C.set_arrays("tr", x, y)
    cfg = C.make_config(task={"train_data": {"key": "tr"}, "eval_data": {"key": "tr"}}, trainer={"jit_compile": jit})
    t = _build(cfg)
    it = _iter(t)
    for n in (5, 5, 3):  # the last loop is shorter
        t.steps.train_loop(it, n, _active(t))
    assert int(t.global_step.numpy()) == 13
    # One trace, and under compile-ahead (auto: whole-step XLA) one more: the first loop's plain graph.
    assert t.steps.traces["train"] == 1 + (jit == "auto")
    assert t.steps.first_loop_without_xla == (jit == "auto")
    ds, nb = t.eval_dataset()
    assert nb == 4
    for _ in range(3):
        t.steps.eval_loop(iter(ds), nb)
    assert t.steps.traces["eval"] == 1


@JIT
def test_tracing_the_loops_converts_no_function_with_autograph(jit, monkeypatch):
    # The loops are explicit while loops (framework.loops._while): AutoGraph's conversion of a
    # loop function was a large share of the first trace. Count what it is asked to convert.
    from tensorflow.python.autograph.impl import api as autograph_api

    converted = []
    real = autograph_api._convert_actual
    monkeypatch.setattr(autograph_api, "_convert_actual",
                        lambda entity, *a, **k: converted.append(entity) or real(entity, *a, **k))
    x, y = C.toy_classification(n=48)
    C.set_arrays("tr", x, y)
    cfg = C.make_config(task={"train_data": {"key": "tr"}, "eval_data": {"key": "tr"}}, trainer={"jit_compile": jit})
    t = _build(cfg)
    t.steps.train_loop(_iter(t), 3, _active(t))
    ds, nb = t.eval_dataset()
    t.steps.eval_loop(iter(ds), nb)
    assert (t.steps.traces["train"], t.steps.traces["eval"]) == (1, 1)
    assert converted == []


def test_eval_covers_whole_set_once_padding_excluded():
    x, y = C.toy_classification(n=50)
    C.set_arrays("ev", x, y)
    cfg = C.make_config(task={"train_data": {"key": "ev"}, "eval_data": {"key": "ev"}})
    t = _build(cfg)
    ds, nb = t.eval_dataset()
    result = t.steps.eval_loop(iter(ds), nb)
    logits = t.model(x, training=False).numpy()
    acc = float(np.mean(np.argmax(logits, 1) == y))
    ce = -np.log(np.exp(logits - logits.max(1, keepdims=True))[np.arange(50), y] /
                 np.exp(logits - logits.max(1, keepdims=True)).sum(1))
    assert abs(result.metrics["accuracy"] - acc) < 1e-6
    assert abs(result.loss - ce.mean()) < 1e-5


@JIT
def test_one_hot_balanced_class_weight_trains_like_sparse(jit):
    x, y = C.toy_classification(n=64, seed=4)
    y[:40] = 0  # imbalanced: the balanced weights differ per class
    C.set_arrays("cw_sparse", x, y)
    C.set_arrays("cw_onehot", x, np.eye(3, dtype=np.float32)[y])
    runs = []
    for key, loss in (("cw_sparse", "sparse_categorical_crossentropy"), ("cw_onehot", "categorical_crossentropy")):
        cfg = C.make_config(task={"train_data": {"key": key}, "eval_data": {"name": ""}, "loss": {"name": loss},
                                  "metrics": [], "class_weight": "balanced"},
                            trainer={"jit_compile": jit}, optimizer={"name": "adam", "learning_rate": 0.05})
        t = _build(cfg)
        t.steps.train_loop(_iter(t), 6, _active(t))
        runs.append(t)
    sparse, onehot = runs
    assert onehot.steps.class_weights == pytest.approx(sparse.steps.class_weights, rel=1e-12)
    assert len(set(np.round(sparse.steps.class_weights, 6))) == 3
    for a, b in zip(sparse.model.trainable_variables, onehot.model.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


@JIT
def test_the_loops_return_their_results_once(jit):
    x, y = C.toy_classification(n=48)
    C.set_arrays("res", x, y)
    cfg = C.make_config(task={"train_data": {"key": "res"}, "eval_data": {"key": "res"}},
                        trainer={"jit_compile": jit})
    t = _build(cfg)
    first = t.steps.train_loop(_iter(t), 3, _active(t))
    assert isinstance(first, results_lib.LoopResult)
    assert first.steps_done == 3 and first.step == int(t.global_step.numpy()) == 3
    assert not first.halted and first.nonfinite_steps == 0 and first.loss_scale == 1.0
    assert np.isfinite(first.loss) and first.grad_norm > 0 and set(first.metrics) == {"accuracy"}
    lr = float(t.schedule(tf.constant(2, tf.int64)))  # the rate of the loop's last step (step 2)
    np.testing.assert_allclose(first.learning_rates, [lr] * len(t.groups.variables), rtol=1e-6)
    assert len(first.group_grad_norms) == len(t.groups.groups)
    # The meters restart with every loop: a loop reports its own steps only.
    second = t.steps.train_loop(_iter(t, 3), 1, _active(t))
    assert second.steps_done == 1 and second.step == 4 and second.loss != first.loss
    ds, nb = t.eval_dataset()
    ev = t.steps.eval_loop(iter(ds), nb)
    assert isinstance(ev, results_lib.EvalResult) and ev.batches == nb
    assert set(ev.values()) == {"loss", "accuracy"}  # the per-class report is not a metric
    (report,) = ev.reports
    assert report.report.kind == "per_class" and report.report.key is None
    assert report.value.shape == (3, 3) and report.value.sum() == 48  # every example once
