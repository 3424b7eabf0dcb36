"""Metrics by name equal scikit-learn on the same predictions (weights, 2 batches, reset, 2 replicas)."""
import numpy as np
import pytest
import sklearn.metrics as skm
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from framework import metrics as metrics_lib
from framework import registry
from framework import trainer as trainer_lib

C = 6


def _rng(seed=0):
    return np.random.default_rng(seed)


def _weights(rng, n):
    w = rng.uniform(0.1, 2.0, n).astype(np.float32)
    w[rng.choice(n, n // 8, replace=False)] = 0.0  # some examples do not count at all
    return w


def _multi(n=240, c=C, seed=0):
    rng = _rng(seed)
    y = rng.integers(0, c, n)
    logits = (rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]).astype(np.float32)
    return y, logits, _weights(rng, n)


def _binary(n=300, seed=1):
    rng = _rng(seed)
    y = rng.integers(0, 2, n)
    logits = (rng.normal(size=(n, 1)) + 1.2 * (2 * y[:, None] - 1)).astype(np.float32)
    return y, logits, _weights(rng, n)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _update(m, y, p, w, parts=2):
    """Feeds (y, p, w) in `parts` batches; returns result() as a float."""
    for ys, ps, ws in zip(np.array_split(y, parts), np.array_split(p, parts), np.array_split(w, parts)):
        m.update_state(tf.constant(ys), tf.constant(ps), sample_weight=tf.constant(ws))
    return float(m.result())


def _check_all(ms, y, p, w, expected, tol):
    """Two-batch accumulation equals `expected`; after reset_state the second half alone does too."""
    for k, m in ms.items():
        assert _update(m, y, p, w) == pytest.approx(expected(k, y, p, w), abs=tol.get(k, 1e-5)), k
        m.reset_state()
        half = len(y) // 2
        ys, ps, ws = y[half:], p[half:], w[half:]
        assert _update(m, ys, ps, ws, parts=1) == pytest.approx(expected(k, ys, ps, ws), abs=tol.get(k, 1e-5)), \
            f"{k} after reset_state"


# ----------------------------------------------------------------------------- multiclass


def _multi_expected(k, y, logits, w):
    pred = logits.argmax(1)
    prob = _softmax(logits)
    fns = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}
    for kind, fn in fns.items():
        for avg in ("macro", "micro", "weighted"):
            if k == f"{kind}_{avg}":
                return fn(y, pred, average=avg, sample_weight=w, zero_division=0)
    if k in ("accuracy", "sparse_categorical_accuracy"):
        return skm.accuracy_score(y, pred, sample_weight=w)
    if k == "top_k":
        return skm.top_k_accuracy_score(y, prob, k=5, sample_weight=w, labels=np.arange(logits.shape[1]))
    if k == "top_2":
        return skm.top_k_accuracy_score(y, prob, k=2, sample_weight=w, labels=np.arange(logits.shape[1]))
    if k == "auc":
        return skm.roc_auc_score(y, prob, multi_class="ovr", average="macro", sample_weight=w)
    raise AssertionError(k)


MULTI = ["accuracy", "sparse_categorical_accuracy", "top_k", {"name": "top_k", "k": 2, "alias": "top_2"},
         "auc"] + [{"name": kind, "average": avg, "alias": f"{kind}_{avg}"}
                   for kind in ("precision", "recall", "f1") for avg in ("macro", "micro", "weighted")]


def test_multiclass_metrics_equal_sklearn():
    y, logits, w = _multi()
    ms = metrics_lib.build(MULTI, num_classes=C, from_logits=True)
    _check_all(ms, y, logits, w, _multi_expected, tol={"auc": 1e-3})


def test_multiclass_from_probabilities():
    y, logits, w = _multi(seed=3)
    prob = _softmax(logits).astype(np.float32)
    ms = metrics_lib.build(["accuracy", "f1", "auc"], num_classes=C, from_logits=False)
    assert _update(ms["accuracy"], y, prob, w) == pytest.approx(skm.accuracy_score(y, prob.argmax(1), sample_weight=w),
                                                                abs=1e-5)
    assert _update(ms["f1"], y, prob, w) == pytest.approx(
        skm.f1_score(y, prob.argmax(1), average="macro", sample_weight=w), abs=1e-5)
    assert _update(ms["auc"], y, prob, w) == pytest.approx(
        skm.roc_auc_score(y, prob, multi_class="ovr", sample_weight=w), abs=1e-3)


def test_macro_average_skips_absent_classes_like_sklearn():
    # Class 4 of 5 is never a label nor a prediction: scikit-learn leaves it out of the macro mean.
    y, logits, w = _multi(c=4, seed=5)
    logits5 = np.concatenate([logits, np.full((len(y), 1), -50.0, np.float32)], axis=1)
    pred = logits5.argmax(1)
    for kind, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        m = metrics_lib.build([kind], num_classes=5, from_logits=True)[kind]
        assert _update(m, y, logits5, w) == pytest.approx(
            fn(y, pred, average="macro", sample_weight=w, zero_division=0), abs=1e-5), kind


# ----------------------------------------------------------------------------- binary


def _binary_expected(k, y, logits, w):
    yb = y[:, 0].astype(int)
    pred = (logits[:, 0] > 0).astype(int)
    prob = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    if k in ("accuracy", "binary_accuracy"):
        return skm.accuracy_score(yb, pred, sample_weight=w)
    if k == "precision":
        return skm.precision_score(yb, pred, sample_weight=w, zero_division=0)
    if k == "recall":
        return skm.recall_score(yb, pred, sample_weight=w, zero_division=0)
    if k == "f1":
        return skm.f1_score(yb, pred, sample_weight=w, zero_division=0)
    if k == "f1_macro":
        return skm.f1_score(yb, pred, average="macro", sample_weight=w, zero_division=0)
    if k == "precision_micro":
        return skm.precision_score(yb, pred, average="micro", sample_weight=w, zero_division=0)
    if k == "auc":
        return skm.roc_auc_score(yb, prob, sample_weight=w)
    raise AssertionError(k)


BINARY = ["accuracy", "binary_accuracy", "precision", "recall", "f1", {"name": "f1", "average": "macro",
          "alias": "f1_macro"}, {"name": "precision", "average": "micro", "alias": "precision_micro"}, "auc"]


def test_binary_metrics_equal_sklearn():
    y, logits, w = _binary()
    ms = metrics_lib.build(BINARY, num_classes=1, from_logits=True)
    _check_all(ms, y[:, None].astype(np.float32), logits, w, _binary_expected, tol={"auc": 1e-3})


def test_binary_from_probabilities_and_threshold():
    y, logits, w = _binary(seed=4)
    prob = (1 / (1 + np.exp(-logits))).astype(np.float32)
    y2 = y[:, None].astype(np.float32)
    ms = metrics_lib.build(["accuracy", "recall", {"name": "accuracy", "threshold": 0.8, "alias": "acc80"},
                            "auc"], num_classes=1, from_logits=False)
    assert _update(ms["accuracy"], y2, prob, w) == pytest.approx(
        skm.accuracy_score(y, prob[:, 0] > 0.5, sample_weight=w), abs=1e-5)
    assert _update(ms["recall"], y2, prob, w) == pytest.approx(
        skm.recall_score(y, prob[:, 0] > 0.5, sample_weight=w), abs=1e-5)
    assert _update(ms["acc80"], y2, prob, w) == pytest.approx(
        skm.accuracy_score(y, prob[:, 0] > 0.8, sample_weight=w), abs=1e-5)
    assert _update(ms["auc"], y2, prob, w) == pytest.approx(skm.roc_auc_score(y, prob[:, 0], sample_weight=w),
                                                            abs=1e-3)
    # With logits the probability threshold is applied as logit > log(t / (1 - t)).
    m = metrics_lib.build([{"name": "binary_accuracy", "threshold": 0.8}], num_classes=1, from_logits=True)
    assert _update(m["binary_accuracy"], y2, logits, w) == pytest.approx(
        skm.accuracy_score(y, logits[:, 0] > np.log(4.0), sample_weight=w), abs=1e-5)


# ----------------------------------------------------------------------------- regression


def _regression_expected(k, y, p, w):
    mse = skm.mean_squared_error(y, p, sample_weight=w)
    return {"mse": mse, "rmse": np.sqrt(mse), "mae": skm.mean_absolute_error(y, p, sample_weight=w),
            "r2": skm.r2_score(y, p, sample_weight=w)}[k]


def test_regression_metrics_equal_sklearn():
    rng = _rng(2)
    y = rng.normal(size=(120, 1)).astype(np.float32)
    p = (y + 0.3 * rng.normal(size=(120, 1))).astype(np.float32)
    w = _weights(rng, 120)
    ms = metrics_lib.build(["mse", "rmse", "mae", "r2"], num_classes=1, from_logits=False)
    _check_all(ms, y, p, w, _regression_expected, tol={"r2": 1e-4})


# ----------------------------------------------------------------------------- build


def test_build_errors_name_what_was_given():
    with pytest.raises(registry.RegistryError, match=r"unknown metric 'f2'.*f1.*precision"):
        metrics_lib.build(["f2"], num_classes=4, from_logits=True)
    with pytest.raises(ValueError, match=r"task.metrics\[0\].*averag\b"):
        metrics_lib.build([{"name": "f1", "averag": "macro"}], num_classes=4, from_logits=True)
    with pytest.raises(ValueError, match=r"average.*'binary'"):
        metrics_lib.build([{"name": "f1", "average": "binary"}], num_classes=4, from_logits=True)
    with pytest.raises(ValueError, match=r"duplicate metric name 'f1'"):
        metrics_lib.build(["f1", "f1"], num_classes=4, from_logits=True)
    with pytest.raises(ValueError, match=r"expected a metric name.*got 3"):
        metrics_lib.build([3], num_classes=4, from_logits=True)
    with pytest.raises(ValueError, match=r"threshold.*1.5"):
        metrics_lib.build([{"name": "accuracy", "threshold": 1.5}], num_classes=1, from_logits=True)
    ms = metrics_lib.build(["accuracy", {"name": "f1", "alias": "f1_macro"}], num_classes=4, from_logits=True)
    assert list(ms) == ["accuracy", "f1_macro"]


# ----------------------------------------------------------------------------- replicas


def _mirrored():
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(cpus) < 2:
        pytest.skip("needs 2 logical CPU devices (tests/conftest.py)")
    # ReductionToOneDevice as framework.distribute does for logical CPUs: the default collective
    # all-reduce of several MirroredStrategy objects in one process can mix up instance keys.
    return tf.distribute.MirroredStrategy(cpus[:2], cross_device_ops=tf.distribute.ReductionToOneDevice())


@pytest.mark.parametrize("case", ["multi", "binary", "regression"])
def test_metrics_on_two_replicas_equal_one_device(case):
    if case == "multi":
        y, p, w = _multi(n=64)
        names, n_cls, logits = MULTI, C, True
    elif case == "binary":
        y, p, w = _binary(n=64)
        y = y[:, None].astype(np.float32)
        names, n_cls, logits = BINARY, 1, True
    else:
        rng = _rng(7)
        y = rng.normal(size=(64, 1)).astype(np.float32)
        p = (y + 0.3 * rng.normal(size=(64, 1))).astype(np.float32)
        w = _weights(rng, 64)
        names, n_cls, logits = ["mse", "rmse", "mae", "r2"], 1, False
    s = _mirrored()
    with s.scope():
        ms = metrics_lib.build(names, num_classes=n_cls, from_logits=logits)

    @tf.function
    def run(yr, pr, wr):
        def fn(a, b, c):
            for m in ms.values():
                m.update_state(a, b, sample_weight=c)
        s.run(fn, args=(yr, pr, wr))

    def per_replica(arr):
        halves = np.split(arr, 2)
        return s.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(halves[ctx.replica_id_in_sync_group]))

    run(per_replica(y), per_replica(p), per_replica(w))
    single = metrics_lib.build(names, num_classes=n_cls, from_logits=logits)
    for k, m in single.items():
        m.update_state(tf.constant(y), tf.constant(p), sample_weight=tf.constant(w))
        assert float(ms[k].result()) == pytest.approx(float(m.result()), abs=1e-6), k


def test_balanced_class_weights_equal_sklearn():
    y = np.array([0] * 50 + [1] * 10 + [2] * 5)
    got = trainer_lib.class_weight_vector("balanced", y, 3)
    np.testing.assert_allclose(got, compute_class_weight("balanced", classes=np.arange(3), y=y), rtol=1e-12)
    assert trainer_lib.class_weight_vector({1: 5.0}, y, 3) == [1.0, 5.0, 1.0]
    with pytest.raises(ValueError, match="class 7"):
        trainer_lib.class_weight_vector({7: 1.0}, y, 3)


# ----------------------------------------------------------------------------- through the eval loop


@pytest.mark.parametrize("labels", ["sparse", "one_hot"])
def test_eval_loop_padding_and_absent_class_equal_sklearn(tmp_path, labels):
    """21 eval examples in batches of 8 (3 padding rows: label 0, weight 0); class 0 is never a
    label nor a prediction of a real example, while the padding rows are predicted as class 0.
    Macro P/R/F1 from the real eval loop equal scikit-learn on the 21 real examples, for sparse
    labels and for one-hot labels (categorical_crossentropy; the class is the argmax)."""
    from framework import controller as controller_lib
    from tests import _components as comp

    rng = _rng(7)
    y = rng.integers(1, 4, 21).astype(np.int32)
    shown = y.copy()
    shown[[2, 9, 15]] = np.where(y[[2, 9, 15]] == 3, 1, y[[2, 9, 15]] + 1)  # three mistakes
    x = (np.eye(4)[shown] + 0.05 * rng.normal(size=(21, 4))).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 21).astype(np.float32)
    comp.set_arrays("pad_eval", x, np.eye(4, dtype=np.float32)[y] if labels == "one_hot" else y, w)
    metrics = [{"name": k, "average": a, "alias": f"{k}_{a}"} for k in ("precision", "recall", "f1")
               for a in ("macro", "weighted", "micro")] + ["accuracy", {"name": "top_k", "k": 2}]
    loss = "categorical_crossentropy" if labels == "one_hot" else "sparse_categorical_crossentropy"
    cfg = comp.make_config(task={"model": {"units": 4, "inputs": 4}, "train_data": {"key": "pad_eval"},
                                 "eval_data": {"key": "pad_eval", "batch_size": 8}, "metrics": metrics,
                                 "loss": {"name": loss}})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    kernel, bias = 10.0 * np.eye(4, dtype=np.float32), np.array([3.0, 0, 0, 0], np.float32)
    t.model.get_layer("out").set_weights([kernel, bias])
    pred = np.argmax(x @ kernel + bias, axis=1)
    assert 0 not in pred and 0 not in y and np.argmax(bias) == 0  # padding rows: predicted 0
    got = controller_lib.Controller(trainer=t, model_dir=str(tmp_path)).evaluate(step=0)
    fns = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}
    logits = x @ kernel + bias
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=w), abs=1e-6)
    assert got["top_k"] == pytest.approx(skm.top_k_accuracy_score(y, logits, k=2, sample_weight=w,
                                                                  labels=np.arange(4)), abs=1e-6)
    for key, value in got.items():
        if key in ("loss", "accuracy", "top_k"):
            continue
        kind, avg = key.split("_")
        want = fns[kind](y, pred, average=avg, sample_weight=w, zero_division=0)
        assert value == pytest.approx(want, abs=1e-5), key
    assert got["f1_macro"] < 1.0  # the mistakes count (not an all-correct shortcut)
