"""Metrics by name (accuracy, top-k, precision/recall/F1, AUC, MSE/RMSE/MAE/R2), replica-correct.

Every metric receives the dataset's labels as they are (sparse class ids, or [B, 1] binary
labels / regression targets for a one-output model) and the model's raw float32 outputs
(logits when the loss is `from_logits`). State variables are sums (Keras metric variables are
`on_read`, aggregated with SUM), so results over replicas and workers are exact.
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from framework import registry


def _probs(y_pred: tf.Tensor, from_logits: bool) -> tf.Tensor:
    if y_pred.shape[-1] == 1:
        return tf.sigmoid(y_pred) if from_logits else y_pred
    return tf.nn.softmax(y_pred) if from_logits else y_pred


def _class_ids(y_pred: tf.Tensor, from_logits: bool, threshold: float | None) -> tf.Tensor:
    if y_pred.shape[-1] == 1:
        t = threshold if threshold is not None else 0.5
        p = tf.sigmoid(y_pred) if from_logits else y_pred
        return tf.cast(tf.reshape(p, [-1]) > t, tf.int32)
    return tf.argmax(y_pred, axis=-1, output_type=tf.int32)


class ConfusionMatrix(keras.metrics.Metric):
    """Weighted confusion matrix [true, predicted]; result() is the matrix."""

    def __init__(self, *, num_classes: int, from_logits: bool = True, threshold: float | None = None,
                 name: str = "confusion_matrix", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = max(int(num_classes), 2)
        self.from_logits = from_logits
        self.threshold = threshold
        self.matrix = self.add_variable(shape=(self.num_classes, self.num_classes), initializer="zeros",
                                        dtype="float32", name="matrix", aggregation="sum")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_pred = tf.convert_to_tensor(y_pred)
        pred = _class_ids(tf.cast(y_pred, tf.float32), self.from_logits, self.threshold)
        true = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        w = tf.ones_like(true, tf.float32) if sample_weight is None else tf.cast(tf.reshape(sample_weight, [-1]),
                                                                                  tf.float32)
        cm = tf.math.confusion_matrix(true, pred, num_classes=self.num_classes, weights=w, dtype=tf.float32)
        self.matrix.assign_add(cm)

    def result(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.matrix)

    def reset_state(self) -> None:
        self.matrix.assign(tf.zeros_like(self.matrix))


def _prf(cm: tf.Tensor, kind: str, average: str, binary: bool) -> tf.Tensor:
    tp = tf.linalg.diag_part(cm)
    pred_pos = tf.reduce_sum(cm, axis=0)
    true_pos = tf.reduce_sum(cm, axis=1)
    if binary and average == "binary":
        tp, pred_pos, true_pos = tp[1:], pred_pos[1:], true_pos[1:]
    if average == "micro":
        tp, pred_pos, true_pos = [tf.reduce_sum(t, keepdims=True) for t in (tp, pred_pos, true_pos)]
    precision = tf.math.divide_no_nan(tp, pred_pos)
    recall = tf.math.divide_no_nan(tp, true_pos)
    if kind == "precision":
        per = precision
    elif kind == "recall":
        per = recall
    else:
        per = tf.math.divide_no_nan(2 * precision * recall, precision + recall)
    if average == "weighted":
        return tf.math.divide_no_nan(tf.reduce_sum(per * true_pos), tf.reduce_sum(true_pos))
    return tf.reduce_mean(per)


class PRF(ConfusionMatrix):
    """Precision, recall or F1 from a confusion matrix (binary, macro, micro or weighted)."""

    def __init__(self, *, kind: str, average: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", kind), **kwargs)
        self.kind = kind
        self.binary = self.num_classes == 2
        average = average or ("binary" if self.binary else "macro")
        if average not in ("binary", "macro", "micro", "weighted"):
            raise ValueError(f"task.metrics.{kind}.average: expected binary | macro | micro | weighted; "
                             f"got {average!r}")
        self.average = average

    def result(self) -> tf.Tensor:
        return _prf(tf.convert_to_tensor(self.matrix), self.kind, self.average, self.binary)


class MulticlassAUC(keras.metrics.AUC):
    """One-vs-rest macro AUC from sparse labels and softmax of the logits."""

    def __init__(self, *, num_classes: int, from_logits: bool, **kwargs: Any) -> None:
        super().__init__(multi_label=True, num_labels=num_classes, **kwargs)
        self._n = num_classes
        self._logits = from_logits

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self._n)
        p = tf.nn.softmax(y_pred) if self._logits else y_pred
        if sample_weight is not None:
            sample_weight = tf.reshape(sample_weight, [-1, 1])
        return super().update_state(y, p, sample_weight=sample_weight)


@registry.register_metric("accuracy")
def accuracy(*, num_classes: int | None = None, from_logits: bool = True, threshold: float | None = None) -> Any:
    if num_classes == 1:
        t = threshold if threshold is not None else (0.0 if from_logits else 0.5)
        return keras.metrics.BinaryAccuracy(name="accuracy", threshold=t)
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


@registry.register_metric("sparse_categorical_accuracy")
def sparse_categorical_accuracy(*, num_classes: int | None = None, from_logits: bool = True) -> Any:
    return keras.metrics.SparseCategoricalAccuracy(name="sparse_categorical_accuracy")


@registry.register_metric("binary_accuracy")
def binary_accuracy(*, num_classes: int | None = None, from_logits: bool = True,
                    threshold: float | None = None) -> Any:
    t = threshold if threshold is not None else (0.0 if from_logits else 0.5)
    return keras.metrics.BinaryAccuracy(name="binary_accuracy", threshold=t)


@registry.register_metric("top_k")
def top_k(*, num_classes: int | None = None, from_logits: bool = True, k: int = 5) -> Any:
    return keras.metrics.SparseTopKCategoricalAccuracy(k=k, name="top_k")


def _prf_factory(kind: str):
    def factory(*, num_classes: int | None = None, from_logits: bool = True, average: str | None = None,
                threshold: float | None = None) -> Any:
        return PRF(kind=kind, num_classes=num_classes or 2, from_logits=from_logits, average=average,
                   threshold=threshold)
    factory.__name__ = kind
    return factory


for _kind in ("precision", "recall", "f1"):
    registry.register_metric(_kind)(_prf_factory(_kind))


@registry.register_metric("confusion_matrix")
def confusion_matrix(*, num_classes: int | None = None, from_logits: bool = True,
                     threshold: float | None = None) -> Any:
    return ConfusionMatrix(num_classes=num_classes or 2, from_logits=from_logits, threshold=threshold)


@registry.register_metric("auc")
def auc(*, num_classes: int | None = None, from_logits: bool = True, curve: str = "ROC",
        num_thresholds: int = 1000) -> Any:
    if curve not in ("ROC", "PR"):
        raise ValueError(f"task.metrics.auc.curve: expected ROC | PR; got {curve!r}")
    if num_classes and num_classes > 1:
        return MulticlassAUC(num_classes=num_classes, from_logits=from_logits, curve=curve,
                             num_thresholds=num_thresholds, name="auc")
    return keras.metrics.AUC(from_logits=from_logits, curve=curve, num_thresholds=num_thresholds, name="auc")


@registry.register_metric("mse")
def mse(*, num_classes: int | None = None, from_logits: bool = True) -> Any:
    return keras.metrics.MeanSquaredError(name="mse")


@registry.register_metric("rmse")
def rmse(*, num_classes: int | None = None, from_logits: bool = True) -> Any:
    return keras.metrics.RootMeanSquaredError(name="rmse")


@registry.register_metric("mae")
def mae(*, num_classes: int | None = None, from_logits: bool = True) -> Any:
    return keras.metrics.MeanAbsoluteError(name="mae")


@registry.register_metric("r2")
def r2(*, num_classes: int | None = None, from_logits: bool = True) -> Any:
    return keras.metrics.R2Score(name="r2")


def build(names: Sequence[Any], *, num_classes: int | None, from_logits: bool) -> dict[str, keras.metrics.Metric]:
    """Builds `task.metrics` entries (a name or {name, alias?, ...kwargs}); call inside the strategy scope."""
    out: dict[str, keras.metrics.Metric] = {}
    for i, entry in enumerate(names):
        if isinstance(entry, str):
            name, kwargs, key = entry, {}, entry
        else:
            kwargs = dict(entry)
            name = kwargs.pop("name", None)
            if not name:
                raise ValueError(f"task.metrics[{i}]: expected a 'name'; got {entry!r}")
            key = kwargs.pop("alias", None) or name
        if key in out or key == "loss":
            raise ValueError(f"task.metrics[{i}]: duplicate metric name {key!r} (use 'alias'); got {entry!r}")
        out[key] = registry.build(registry.METRICS, name, kwargs, section=f"task.metrics[{i}]",
                                  extra={"num_classes": num_classes, "from_logits": from_logits})
    return out


def scalar(value: Any) -> float | None:
    """A metric result as a float, or None for non-scalar results (confusion matrix)."""
    arr = np.asarray(value)
    return float(arr) if arr.ndim == 0 else None
