"""Multi-label classification: weighted BCE (pos_weight) and metrics equal to scikit-learn's multilabel ones."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm

from framework import controller as controller_lib
from framework import losses as losses_lib
from framework import metrics as metrics_lib
from framework import trainer as trainer_lib
from tests import _components as C

L = 4
POS_WEIGHT = [1.0, 3.0, 0.5, 2.0]


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    w = rng.normal(size=(5, L)).astype(np.float32)
    y = ((x @ w + rng.normal(size=(n, L))) > 0.7).astype(np.float32)
    return x, y, rng.uniform(0.2, 2.0, size=n).astype(np.float32)


def _sk(y, p, w):
    """scikit-learn's multilabel values (zero_division=0) for predictions p and sample weights w."""
    out = {"accuracy": 1.0 - skm.hamming_loss(y, p, sample_weight=w)}
    for avg in ("micro", "macro", "weighted", "samples"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(y, p, average=avg, sample_weight=w, zero_division=0)
        out.update({f"precision_{avg}": pr, f"recall_{avg}": rc, f"f1_{avg}": f1})
    return out


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_metrics_equal_sklearn_with_weights_and_padding_rows(threshold):
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(50, L)) < 0.35).astype(np.float32)
    y[3] = 0  # a sample with no true label (samples average: zero_division)
    logits = (rng.normal(size=(50, L)) + 1.5 * (y - 0.5)).astype(np.float32)
    w = rng.uniform(0.1, 3.0, size=50).astype(np.float32)
    w[-6:] = 0.0  # padding rows: never counted
    t = 0.5 if threshold is None else threshold
    pred = (1.0 / (1.0 + np.exp(-logits)) > t).astype(int)
    real = w > 0
    want = _sk(y[real], pred[real], w[real])
    names = ["accuracy"] + [{"name": k, "average": a, "alias": f"{k}_{a}", **({"threshold": threshold} if threshold
                                                                               else {})}
                            for k in ("precision", "recall", "f1") for a in ("micro", "macro", "weighted", "samples")]
    if threshold:
        names[0] = {"name": "accuracy", "threshold": threshold}
    built = metrics_lib.build(names + ["auc"], num_classes=L, from_logits=True, multilabel=True)
    for lo, hi in ((0, 20), (20, 50)):  # two updates: state sums
        for m in built.values():
            m.update_state(y[lo:hi], logits[lo:hi], sample_weight=w[lo:hi])
    for k, v in want.items():
        assert float(built[k].result()) == pytest.approx(v, abs=1e-5), k
    auc = skm.roc_auc_score(y[real], logits[real], average="macro", sample_weight=w[real])
    assert float(built["auc"].result()) == pytest.approx(auc, abs=2e-3)
    counts = metrics_lib.MultilabelCounts(num_labels=L, threshold=threshold)
    counts.update_state(y, logits, sample_weight=w)
    pr, _, f1, sup = skm.precision_recall_fscore_support(y[real], pred[real], average=None,
                                                           sample_weight=w[real], zero_division=0)
    rows = metrics_lib.per_label(counts.result().numpy())
    np.testing.assert_allclose([r["f1"] for r in rows], f1, atol=1e-5)
    np.testing.assert_allclose([r["precision"] for r in rows], pr, atol=1e-5)
    np.testing.assert_allclose([r["support"] for r in rows], sup, rtol=1e-5)


def test_weighted_bce_is_the_hand_formula_and_reloads():
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=(6, L)) < 0.5).astype(np.float32)
    z = rng.normal(size=(6, L)).astype(np.float32)
    loss = losses_lib.binary_crossentropy(pos_weight=POS_WEIGHT)
    p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    hand = -(np.array(POS_WEIGHT) * y * np.log(p) + (1 - y) * np.log(1 - p)).mean(-1)
    np.testing.assert_allclose(loss(y, z).numpy(), hand, rtol=1e-5)
    back = keras.losses.deserialize(keras.losses.serialize(loss))
    np.testing.assert_allclose(back(y, z).numpy(), hand, rtol=1e-5)
    with pytest.raises(ValueError, match=r"task.loss.pos_weight: expected a list of finite numbers >= 0.*got 3"):
        losses_lib.binary_crossentropy(pos_weight=3)


def _cfg(jit=False):
    x, y, w = _data(60, 2)
    xe, ye, we = _data(13, 3)  # 13 eval examples, batches of 8: 3 weight-0 padding rows
    C.set_arrays("ml", x, y, w)
    C.set_arrays("ml_eval", xe, ye, we)
    metrics = ["accuracy", "auc"] + [{"name": k, "average": a, "alias": f"{k}_{a}"}
                                     for k in ("precision", "recall", "f1") for a in ("micro", "macro", "weighted",
                                                                                      "samples")]
    return C.make_config(task={"model": {"units": L, "inputs": 5},
                               "train_data": {"key": "ml", "batch_size": 8, "shuffle_buffer": 0},
                               "eval_data": {"key": "ml", "eval_key": "ml_eval", "batch_size": 8},
                               "loss": {"name": "binary_crossentropy", "pos_weight": POS_WEIGHT},
                               "metrics": metrics},
                         trainer={"train_steps": 6, "steps_per_loop": 3, "eval_interval": 6, "jit_compile": jit},
                         optimizer={"name": "sgd", "learning_rate": 0.1})


def _eval_truth(t):
    xe, ye, we = _data(13, 3)
    logits = t.model(xe).numpy()
    return ye, logits, we


@pytest.mark.parametrize("jit", [False, "auto"])
def test_train_loss_is_weighted_bce_mean(jit):
    t = trainer_lib.build(_cfg(jit), tf.distribute.get_strategy())
    x, y, w = (v.numpy() for v in next(iter(t.train_dataset(start_step=0))))
    p = 1.0 / (1.0 + np.exp(-t.model(x).numpy().astype(np.float64)))
    per = -(np.array(POS_WEIGHT) * y * np.log(p) + (1 - y) * np.log(1 - p)).mean(-1)
    result = t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, list(range(len(t.groups.variables))))
    assert result.loss == pytest.approx(float((per * w).sum() / 8), rel=1e-5)


def test_two_replicas_eval_equals_sklearn_and_per_label_report(tmp_path):
    from framework import distribute as dist
    from framework.config import RuntimeConfig

    s = dist.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=2))
    t = trainer_lib.build(_cfg(), s)
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.train(evaluate=True)
    y, logits, w = _eval_truth(t)
    pred = (logits > 0).astype(int)
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        saved = json.load(f)
    for k, v in _sk(y, pred, w).items():
        assert saved[k] == pytest.approx(v, abs=1e-5), k
    assert saved["auc"] == pytest.approx(skm.roc_auc_score(y, logits, average="macro", sample_weight=w), abs=2e-3)
    with open(os.path.join(tmp_path, "eval_per_label.json")) as f:
        report = json.load(f)
    _, _, f1, sup = skm.precision_recall_fscore_support(y, pred, average=None, sample_weight=w, zero_division=0)
    np.testing.assert_allclose([r["f1"] for r in report["labels"]], f1, atol=1e-5)
    np.testing.assert_allclose([r["support"] for r in report["labels"]], sup, rtol=1e-5)
    # One device gives the same numbers.
    one = trainer_lib.build(_cfg(), tf.distribute.get_strategy())
    c1 = controller_lib.Controller(trainer=one, model_dir=str(tmp_path / "one"))
    c1.train(evaluate=True)
    for k, v in c1.last_eval.items():
        assert ctl.last_eval[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    path = str(tmp_path / "m.keras")
    t.model.save(path)
    back = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(back(_data(13, 3)[0]).numpy(), logits, rtol=1e-5, atol=1e-6)

