"""Metrics by name equal scikit-learn on the same predictions (weights, 2 replicas, accumulation)."""
import numpy as np
import pytest
import sklearn.metrics as skm
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from framework import distribute as dist
from framework import metrics as metrics_lib
from framework import trainer as trainer_lib
from framework.config import RuntimeConfig

RNG = np.random.default_rng(0)


def _multi(n=200, c=4):
    y = RNG.integers(0, c, n)
    logits = (RNG.normal(size=(n, c)) + 1.5 * np.eye(c)[y]).astype(np.float32)
    w = RNG.uniform(0, 2, n).astype(np.float32)
    w[:20] = 0.0
    return y, logits, w


def _update(m, y, p, w, parts=2):
    for ys, ps, ws in zip(np.array_split(y, parts), np.array_split(p, parts), np.array_split(w, parts)):
        m.update_state(tf.constant(ys), tf.constant(ps), sample_weight=tf.constant(ws))
    return float(m.result())


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_multiclass_prf_equal_sklearn(average):
    y, logits, w = _multi()
    pred = logits.argmax(1)
    for kind, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        m = metrics_lib.build([{"name": kind, "average": average}], num_classes=4, from_logits=True)[kind]
        assert _update(m, y, logits, w) == pytest.approx(fn(y, pred, average=average, sample_weight=w,
                                                             zero_division=0), abs=1e-5), kind


def test_binary_metrics_equal_sklearn():
    n = 300
    y = RNG.integers(0, 2, n)
    logits = (RNG.normal(size=(n, 1)) + 1.2 * (2 * y[:, None] - 1)).astype(np.float32)
    w = RNG.uniform(0.5, 2, n).astype(np.float32)
    prob = 1 / (1 + np.exp(-logits[:, 0]))
    pred = (prob > 0.5).astype(int)
    ms = metrics_lib.build(["accuracy", "precision", "recall", "f1", {"name": "auc", "num_thresholds": 5000},
                            {"name": "auc", "curve": "PR", "alias": "auc_pr", "num_thresholds": 5000}],
                           num_classes=1, from_logits=True)
    y2 = y[:, None].astype(np.float32)
    got = {k: _update(m, y2, logits, w) for k, m in ms.items()}
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=w), abs=1e-5)
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, sample_weight=w), abs=1e-5)
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, sample_weight=w), abs=1e-5)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, sample_weight=w), abs=1e-5)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, prob, sample_weight=w), abs=2e-3)
    assert got["auc_pr"] == pytest.approx(skm.average_precision_score(y, prob, sample_weight=w), abs=1e-2)


def test_multiclass_auc_accuracy_topk_equal_sklearn():
    y, logits, w = _multi()
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ms = metrics_lib.build(["accuracy", {"name": "top_k", "k": 2}, {"name": "auc", "num_thresholds": 5000}],
                           num_classes=4, from_logits=True)
    got = {k: _update(m, y, logits, w) for k, m in ms.items()}
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, logits.argmax(1), sample_weight=w), abs=1e-5)
    assert got["top_k"] == pytest.approx(skm.top_k_accuracy_score(y, prob, k=2, sample_weight=w), abs=1e-5)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=2e-2)


def test_regression_metrics_equal_sklearn():
    y = RNG.normal(size=(100, 1)).astype(np.float32)
    p = (y + 0.3 * RNG.normal(size=(100, 1))).astype(np.float32)
    w = RNG.uniform(0.5, 2, 100).astype(np.float32)
    ms = metrics_lib.build(["mse", "rmse", "mae", "r2"], num_classes=1, from_logits=False)
    got = {k: _update(m, y, p, w) for k, m in ms.items()}
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, p, sample_weight=w), rel=1e-5)
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p, sample_weight=w)), rel=1e-5)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, p, sample_weight=w), rel=1e-5)
    assert got["r2"] == pytest.approx(skm.r2_score(y, p, sample_weight=w), abs=1e-4)


def test_reset_state_and_unknown_metric_lists_names():
    y, logits, w = _multi()
    m = metrics_lib.build(["f1"], num_classes=4, from_logits=True)["f1"]
    _update(m, y, logits, w)
    m.reset_state()
    assert float(m.result()) == 0.0
    with pytest.raises(KeyError, match="f1"):
        metrics_lib.build(["f2"], num_classes=4, from_logits=True)
    with pytest.raises(ValueError, match="averag"):
        metrics_lib.build([{"name": "f1", "averag": "macro"}], num_classes=4, from_logits=True)


def test_metrics_on_two_replicas_equal_one_device():
    y, logits, w = _multi(n=64)
    s = dist.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=2))
    with s.scope():
        ms = metrics_lib.build(["accuracy", "f1", "auc"], num_classes=4, from_logits=True)

    @tf.function
    def run(yr, pr, wr):
        def fn(a, b, c):
            for m in ms.values():
                m.update_state(a, b, sample_weight=c)
        s.run(fn, args=(yr, pr, wr))

    def per_replica(arr):
        halves = np.split(arr, 2)
        return s.experimental_distribute_values_from_function(lambda ctx: tf.constant(halves[ctx.replica_id_in_sync_group]))

    run(per_replica(y), per_replica(logits), per_replica(w))
    single = metrics_lib.build(["accuracy", "f1", "auc"], num_classes=4, from_logits=True)
    for k, m in single.items():
        m.update_state(y, logits, sample_weight=w)
        assert float(ms[k].result()) == pytest.approx(float(m.result()), abs=1e-6), k


def test_balanced_class_weights_equal_sklearn():
    y = np.array([0] * 50 + [1] * 10 + [2] * 5)
    got = trainer_lib.class_weight_vector("balanced", y, 3)
    np.testing.assert_allclose(got, compute_class_weight("balanced", classes=np.arange(3), y=y), rtol=1e-12)
    assert trainer_lib.class_weight_vector({1: 5.0}, y, 3) == [1.0, 5.0, 1.0]
    with pytest.raises(ValueError, match="class 7"):
        trainer_lib.class_weight_vector({7: 1.0}, y, 3)
