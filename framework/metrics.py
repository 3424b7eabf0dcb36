"""Metrics by name (accuracy, top-k, precision/recall/F1, AUC, MSE/RMSE/MAE/R2), replica-correct.

Every metric receives the dataset's labels as they are (sparse class ids of shape [B], one-hot
rows [B, C] whose argmax is the class, as Keras reads them, or [B, 1] binary labels /
regression targets for a one-output model) and the model's raw float32 outputs (logits when
the loss is `from_logits`). All state is sums: Keras metric variables are
`ON_READ` with SUM aggregation, so a result read in cross-replica context is exact over
replicas and workers. `build` must be called inside the caller's `strategy.scope()`.

Binary decisions use `threshold` on the probability scale (default 0.5); with logits the
comparison is made on the logit itself (`logit > log(t / (1 - t))`, i.e. `> 0` for 0.5), so
no rounding in the sigmoid can flip a prediction.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from framework import registry

_AVERAGES = ("binary", "macro", "micro", "weighted")


# ----------------------------------------------------------------------------- helpers


def _raw_threshold(threshold: float | None, from_logits: bool, *, metric: str) -> float:
    """The probability threshold `threshold` on the scale of the model's raw outputs.

    Raises:
      ValueError: with logits, `threshold` is not strictly between 0 and 1.
    """
    t = 0.5 if threshold is None else float(threshold)
    if not from_logits:
        return t
    if not 0.0 < t < 1.0:
        raise ValueError(f"task.metrics.{metric}.threshold: expected a probability in (0, 1) "
                         f"(the model outputs logits); got {threshold!r}")
    return 0.0 if t == 0.5 else math.log(t / (1.0 - t))


def _flat_weights(sample_weight: Any, like: tf.Tensor) -> tf.Tensor:
    if sample_weight is None:
        return tf.ones_like(like, tf.float32)
    return tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)


def _class_ids(y_true: Any, y_pred: tf.Tensor) -> tf.Tensor:
    """Sparse labels as they are; one-hot (or soft) labels [B, C] of a C-output model: the argmax."""
    y_true = tf.convert_to_tensor(y_true)
    c = y_pred.shape[-1]
    if y_true.shape.rank == 2 and y_pred.shape.rank == 2 and c is not None and c > 1 and y_true.shape[-1] == c:
        return tf.argmax(y_true, axis=-1, output_type=tf.int32)
    return y_true


class _ClassIds:
    """Mixin for Keras's sparse metrics: one-hot labels become class ids first (`_class_ids`)."""

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        y_pred = tf.convert_to_tensor(y_pred)
        return super().update_state(_class_ids(y_true, y_pred), y_pred, sample_weight=sample_weight)


class SparseCategoricalAccuracy(_ClassIds, keras.metrics.SparseCategoricalAccuracy):
    """Keras's, also for one-hot labels."""


class SparseTopKCategoricalAccuracy(_ClassIds, keras.metrics.SparseTopKCategoricalAccuracy):
    """Keras's, also for one-hot labels."""


def _predicted_ids(y_pred: tf.Tensor, raw_threshold: float) -> tf.Tensor:
    """Predicted class ids [B]: argmax, or `y_pred > raw_threshold` for a one-output model."""
    if y_pred.shape[-1] == 1:
        return tf.cast(tf.reshape(y_pred, [-1]) > raw_threshold, tf.int32)
    return tf.argmax(y_pred, axis=-1, output_type=tf.int32)


# ----------------------------------------------------------------------------- metric classes


class ConfusionMatrix(keras.metrics.Metric):
    """Weighted confusion matrix [true, predicted] from sparse labels and raw outputs.

    `result()` is the [C, C] matrix. A one-output model (binary) gives a 2 x 2 matrix. Besides
    the matrix, `seen` counts how often each class occurs as a label or as a prediction of an
    example with a non-zero weight, so macro averages skip absent classes as scikit-learn does.
    An example of weight 0 (the eval set's padding rows) counts nowhere: a class that occurs
    only there is absent, as in scikit-learn on the data without those rows.
    """

    def __init__(self, *, num_classes: int, from_logits: bool = True, threshold: float | None = None,
                 name: str = "confusion_matrix", **kwargs: Any) -> None:
        """Creates the state.

        Args:
          num_classes: number of classes (1 or 2 both mean binary).
          from_logits: whether predictions are logits (else probabilities).
          threshold: binary probability threshold (default 0.5).
          name: metric name.
          **kwargs: passed to keras.metrics.Metric.
        """
        super().__init__(name=name, **kwargs)
        self.num_classes = max(int(num_classes), 2)
        self.from_logits = from_logits
        self.threshold = threshold
        self._raw_threshold = _raw_threshold(threshold, from_logits, metric=name)
        self.matrix = self.add_variable(shape=(self.num_classes, self.num_classes), initializer="zeros",
                                        dtype="float32", name="matrix", aggregation="sum")
        self.seen = self.add_variable(shape=(self.num_classes,), initializer="zeros", dtype="float32",
                                      name="seen", aggregation="sum")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Adds a batch: labels [B] or [B, 1], raw outputs [B, C] or [B, 1], weights [B]."""
        y_pred = tf.cast(tf.convert_to_tensor(y_pred), tf.float32)
        pred = _predicted_ids(y_pred, self._raw_threshold)
        true = tf.cast(tf.reshape(_class_ids(y_true, y_pred), [-1]), tf.int32)
        w = _flat_weights(sample_weight, true)
        c = self.num_classes
        # One-hot products, not tf.math.confusion_matrix / bincount: those lower to scatter and
        # DenseBincount ops that XLA cannot compile, and metrics run inside the XLA step.
        t1 = tf.one_hot(true, c, dtype=tf.float32)
        p1 = tf.one_hot(pred, c, dtype=tf.float32)
        self.matrix.assign_add(tf.matmul(t1 * w[:, None], p1, transpose_a=True))
        counted = tf.cast(tf.not_equal(w, 0.0), tf.float32)[:, None]  # padding rows have weight 0
        self.seen.assign_add(tf.reduce_sum(t1 * counted, 0) + tf.reduce_sum(p1 * counted, 0))

    def result(self) -> tf.Tensor:
        """The [true, predicted] count matrix (sample-weighted)."""
        return tf.convert_to_tensor(self.matrix)


def _prf(cm: tf.Tensor, seen: tf.Tensor, kind: str, average: str) -> tf.Tensor:
    """Precision, recall or F1 from a confusion matrix, as scikit-learn with zero_division=0."""
    tp = tf.linalg.diag_part(cm)
    pred_pos = tf.reduce_sum(cm, axis=0)
    true_pos = tf.reduce_sum(cm, axis=1)
    present = tf.cast(seen > 0, tf.float32)
    if average == "binary":
        tp, pred_pos, true_pos, present = tp[1:], pred_pos[1:], true_pos[1:], tf.ones([1])
    elif average == "micro":
        tp, pred_pos, true_pos = [tf.reduce_sum(t, keepdims=True) for t in (tp, pred_pos, true_pos)]
        present = tf.ones([1])
    precision = tf.math.divide_no_nan(tp, pred_pos)
    recall = tf.math.divide_no_nan(tp, true_pos)
    if kind == "precision":
        per = precision
    elif kind == "recall":
        per = recall
    else:
        per = tf.math.divide_no_nan(2.0 * precision * recall, precision + recall)
    if average == "weighted":
        return tf.math.divide_no_nan(tf.reduce_sum(per * true_pos), tf.reduce_sum(true_pos))
    return tf.math.divide_no_nan(tf.reduce_sum(per * present), tf.reduce_sum(present))


class PRF(ConfusionMatrix):
    """Precision, recall or F1 (binary positive class; macro, micro or weighted average)."""

    def __init__(self, *, kind: str, average: str | None = None, **kwargs: Any) -> None:
        """Creates the state.

        Args:
          kind: "precision", "recall" or "f1".
          average: "binary" (default for two classes: the positive class 1), "macro" (default
            otherwise), "micro" or "weighted" (by the weighted support of each true class).
          **kwargs: passed to ConfusionMatrix.

        Raises:
          ValueError: unknown `average`, or "binary" with more than two classes.
        """
        super().__init__(name=kwargs.pop("name", kind), **kwargs)
        self.kind = kind
        average = average or ("binary" if self.num_classes == 2 else "macro")
        if average not in _AVERAGES or (average == "binary" and self.num_classes != 2):
            raise ValueError(f"task.metrics.{kind}.average: expected {' | '.join(_AVERAGES)} "
                             f"(binary needs 2 classes, there are {self.num_classes}); got {average!r}")
        self.average = average

    def result(self) -> tf.Tensor:
        """Precision, recall or F1 with the configured averaging, as scikit-learn computes it."""
        return _prf(tf.convert_to_tensor(self.matrix), tf.convert_to_tensor(self.seen), self.kind, self.average)


class AUC(keras.metrics.AUC):
    """ROC/PR AUC from raw outputs: binary (one output) or one-vs-rest macro (sparse labels).

    Keras's AUC is a Riemann/trapezoid sum over `num_thresholds` evenly spaced thresholds on
    probabilities: scores that fall into the same bucket count as ties, so the value differs
    from the exact (scikit-learn) AUC by at most the weight of such pairs.
    """

    def __init__(self, *, num_classes: int | None, from_logits: bool, **kwargs: Any) -> None:
        """Creates the state (eagerly; nothing is built lazily inside a replica).

        Args:
          num_classes: model outputs; > 1 means multiclass (one-vs-rest, macro average).
          from_logits: whether outputs are logits (sigmoid / softmax applied here).
          **kwargs: passed to keras.metrics.AUC (curve, num_thresholds, name, ...).
        """
        self._n = int(num_classes or 1)
        self._logits = from_logits
        if self._n > 1:
            super().__init__(multi_label=True, num_labels=self._n, **kwargs)
        else:
            super().__init__(**kwargs)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Adds a batch: labels [B] or [B, 1], raw outputs [B, C] or [B, 1], weights [B]."""
        y_pred = tf.cast(tf.convert_to_tensor(y_pred), tf.float32)
        if self._n > 1:
            y = tf.one_hot(tf.cast(tf.reshape(_class_ids(y_true, y_pred), [-1]), tf.int32), self._n)
            p = tf.nn.softmax(y_pred) if self._logits else y_pred
        else:
            y = tf.cast(tf.reshape(y_true, [-1, 1]), tf.float32)
            p = tf.reshape(tf.sigmoid(y_pred) if self._logits else y_pred, [-1, 1])
        if sample_weight is not None:
            sample_weight = tf.cast(tf.reshape(sample_weight, [-1, 1]), tf.float32)
        return super().update_state(y, p, sample_weight=sample_weight)


# ----------------------------------------------------------------------------- factories


@registry.register_metric("accuracy")
def accuracy(*, num_classes: int | None = None, from_logits: bool = True,
             threshold: float | None = None) -> keras.metrics.Metric:
    """Sparse categorical accuracy, or binary accuracy for a one-output model.

    Args:
      num_classes: model outputs (1: binary).
      from_logits: whether outputs are logits.
      threshold: binary probability threshold (default 0.5, i.e. logit 0).
    """
    if num_classes == 1:
        return _binary_accuracy("accuracy", from_logits=from_logits, threshold=threshold)
    return SparseCategoricalAccuracy(name="accuracy")


@registry.register_metric("sparse_categorical_accuracy")
def sparse_categorical_accuracy(*, num_classes: int | None = None, from_logits: bool = True) -> keras.metrics.Metric:
    """Fraction of examples whose argmax equals the sparse label."""
    return SparseCategoricalAccuracy(name="sparse_categorical_accuracy")


@registry.register_metric("binary_accuracy")
def binary_accuracy(*, num_classes: int | None = None, from_logits: bool = True,
                    threshold: float | None = None) -> keras.metrics.Metric:
    """Fraction of examples where (output > threshold) equals the 0/1 label.

    Args:
      num_classes: model outputs (should be 1).
      from_logits: whether outputs are logits.
      threshold: probability threshold (default 0.5, i.e. logit 0).
    """
    return _binary_accuracy("binary_accuracy", from_logits=from_logits, threshold=threshold)


def _binary_accuracy(name: str, *, from_logits: bool, threshold: float | None) -> keras.metrics.Metric:
    return keras.metrics.BinaryAccuracy(name=name, threshold=_raw_threshold(threshold, from_logits, metric=name))


@registry.register_metric("top_k")
def top_k(*, num_classes: int | None = None, from_logits: bool = True, k: int = 5) -> keras.metrics.Metric:
    """Fraction of examples whose label is among the k largest outputs.

    Raises:
      ValueError: `k` < 1 or the model has a single output.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"task.metrics.top_k.k: expected an integer >= 1; got {k!r}")
    if num_classes == 1:
        raise ValueError(f"task.metrics.top_k: needs a model with several outputs; got num_classes={num_classes}")
    return SparseTopKCategoricalAccuracy(k=k, name="top_k")


def _prf_factory(kind: str):
    def factory(*, num_classes: int | None = None, from_logits: bool = True, average: str | None = None,
                threshold: float | None = None) -> keras.metrics.Metric:
        return PRF(kind=kind, num_classes=num_classes or 2, from_logits=from_logits, average=average,
                   threshold=threshold)

    factory.__name__ = kind
    factory.__doc__ = f"""{kind} from argmax (or thresholded) predictions and sparse labels.

    Args:
      num_classes: model outputs (1 or 2: binary).
      from_logits: whether outputs are logits.
      average: binary (default for binary: the positive class) | macro (default otherwise) |
        micro | weighted, with scikit-learn's meaning (zero_division=0).
      threshold: binary probability threshold (default 0.5).
    """
    return factory


for _kind in ("precision", "recall", "f1"):
    registry.register_metric(_kind)(_prf_factory(_kind))


@registry.register_metric("confusion_matrix")
def confusion_matrix(*, num_classes: int | None = None, from_logits: bool = True,
                     threshold: float | None = None) -> keras.metrics.Metric:
    """The weighted [true, predicted] confusion matrix (not a scalar; not logged as one)."""
    return ConfusionMatrix(num_classes=num_classes or 2, from_logits=from_logits, threshold=threshold)


@registry.register_metric("auc")
def auc(*, num_classes: int | None = None, from_logits: bool = True, curve: str = "ROC",
        num_thresholds: int = 2000) -> keras.metrics.Metric:
    """Area under the ROC (or PR) curve; one-vs-rest macro average for several classes.

    Args:
      num_classes: model outputs (1: binary).
      from_logits: whether outputs are logits.
      curve: ROC | PR.
      num_thresholds: buckets of the approximation (more: closer to the exact AUC).

    Raises:
      ValueError: bad `curve` or `num_thresholds`.
    """
    if curve not in ("ROC", "PR"):
        raise ValueError(f"task.metrics.auc.curve: expected ROC | PR; got {curve!r}")
    if not isinstance(num_thresholds, int) or num_thresholds < 2:
        raise ValueError(f"task.metrics.auc.num_thresholds: expected an integer >= 2; got {num_thresholds!r}")
    return AUC(num_classes=num_classes, from_logits=from_logits, curve=curve, num_thresholds=num_thresholds,
               name="auc")


@registry.register_metric("mse")
def mse(*, num_classes: int | None = None, from_logits: bool = True) -> keras.metrics.Metric:
    """Weighted mean squared error of the raw outputs."""
    return keras.metrics.MeanSquaredError(name="mse")


@registry.register_metric("rmse")
def rmse(*, num_classes: int | None = None, from_logits: bool = True) -> keras.metrics.Metric:
    """Square root of the weighted mean squared error."""
    return keras.metrics.RootMeanSquaredError(name="rmse")


@registry.register_metric("mae")
def mae(*, num_classes: int | None = None, from_logits: bool = True) -> keras.metrics.Metric:
    """Weighted mean absolute error of the raw outputs."""
    return keras.metrics.MeanAbsoluteError(name="mae")


@registry.register_metric("r2")
def r2(*, num_classes: int | None = None, from_logits: bool = True) -> keras.metrics.Metric:
    """Coefficient of determination (uniform average over outputs).

    Keras builds R2Score's state lazily on the first update, which would create variables
    inside a replica; it is built here for `num_classes` outputs instead.
    """
    m = keras.metrics.R2Score(name="r2")
    if num_classes:
        m._build((None, int(num_classes)), (None, int(num_classes)))  # noqa: SLF001 - no public way to build it
    return m


# ----------------------------------------------------------------------------- build


def build(names: Sequence[Any], *, num_classes: int | None, from_logits: bool,
          multilabel: bool = False) -> dict[str, keras.metrics.Metric]:
    """Builds the metrics `task.metrics` lists; call inside the strategy scope.

    Args:
      names: entries that are a registered name, or a mapping {"name": ..., "alias"?: key,
        **factory kwargs}.
      num_classes: the model's number of outputs (1: binary or regression).
      from_logits: whether the model outputs logits.
      multilabel: multi-hot labels [B, L]: accuracy, precision, recall, f1 and auc are their
        multilabel versions (`MULTILABEL`).

    Returns:
      {alias or name: metric}, in the order given.

    Raises:
      RegistryError: an unknown name (the message lists the registered ones).
      ValueError: a malformed entry, a duplicate key, or a kwarg the factory does not take.
    """
    if isinstance(names, (str, Mapping)):
        names = [names]
    out: dict[str, keras.metrics.Metric] = {}
    for i, entry in enumerate(names):
        if isinstance(entry, str):
            name, kwargs, key = entry, {}, entry
        elif isinstance(entry, Mapping):
            kwargs = dict(entry)
            name = kwargs.pop("name", None)
            if not isinstance(name, str) or not name:
                raise ValueError(f"task.metrics[{i}]: expected a 'name'; got {dict(entry)!r}")
            key = kwargs.pop("alias", None) or name
        else:
            raise ValueError(f"task.metrics[{i}]: expected a metric name or a mapping with 'name'; "
                             f"got {entry!r} ({type(entry).__name__})")
        if key in out or key == "loss":
            raise ValueError(f"task.metrics[{i}]: duplicate metric name {key!r} (give an 'alias'); got {entry!r}")
        if multilabel and name in MULTILABEL:
            factory = MULTILABEL[name]
            registry.check_kwargs(factory, kwargs, section=f"task.metrics[{i}]", reserved=("num_labels", "from_logits"))
            out[key] = factory(**{"num_labels": num_classes, "from_logits": from_logits, **kwargs})
            continue
        out[key] = registry.build(registry.METRICS, name, kwargs, section=f"task.metrics[{i}]",
                                  extra={"num_classes": num_classes, "from_logits": from_logits})
    return out


# ----------------------------------------------------------------------------- multi-label

_ML_AVERAGES = ("micro", "macro", "weighted", "samples")


class MultilabelCounts(keras.metrics.Metric):
    """Weighted per-label counts of multi-hot labels [B, L] against thresholded raw outputs.

    State (sums, exact over replicas): per label `tp`, `fp`, `fn`; per-sample precision,
    recall and F1 summed with the sample weights, and the sum of those weights (for the
    `samples` average). `result()` is the [3, L] matrix (tp, fp, fn): not a scalar, so not
    logged; it feeds the per-label report.
    """

    def __init__(self, *, num_labels: int, from_logits: bool = True, threshold: float | None = None,
                 name: str = "multilabel_counts", **kwargs: Any) -> None:
        """Creates the state.

        Args:
          num_labels: L, the number of labels.
          from_logits: whether outputs are logits.
          threshold: probability threshold of a positive prediction (default 0.5).
          name: metric name.
          **kwargs: passed to keras.metrics.Metric.
        """
        super().__init__(name=name, **kwargs)
        self.num_labels = int(num_labels)
        self.from_logits = from_logits
        self._raw_threshold = _raw_threshold(threshold, from_logits, metric=name)
        self.counts = self.add_variable(shape=(3, self.num_labels), initializer="zeros", dtype="float32",
                                        name="counts", aggregation="sum")
        self.samples = self.add_variable(shape=(4,), initializer="zeros", dtype="float32", name="samples",
                                         aggregation="sum")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Adds a batch: labels [B, L] (0/1), raw outputs [B, L], weights [B]."""
        y = tf.cast(tf.reshape(y_true, [-1, self.num_labels]), tf.float32)
        p = tf.cast(tf.reshape(tf.cast(y_pred, tf.float32), [-1, self.num_labels]) > self._raw_threshold,
                    tf.float32)
        w = _flat_weights(sample_weight, y[:, 0])
        tp, fp, fn = y * p, (1.0 - y) * p, y * (1.0 - p)
        self.counts.assign_add(tf.stack([tf.reduce_sum(c * w[:, None], 0) for c in (tp, fp, fn)]))
        # Per sample, as scikit-learn's `samples` average with zero_division=0.
        stp, sfp, sfn = tf.reduce_sum(tp, 1), tf.reduce_sum(fp, 1), tf.reduce_sum(fn, 1)
        precision = tf.math.divide_no_nan(stp, stp + sfp)
        recall = tf.math.divide_no_nan(stp, stp + sfn)
        f1 = tf.math.divide_no_nan(2.0 * stp, 2.0 * stp + sfp + sfn)
        self.samples.assign_add(tf.stack([tf.reduce_sum(v * w) for v in (precision, recall, f1, tf.ones_like(w))]))

    def result(self) -> tf.Tensor:
        """Per-label [true positives, false positives, false negatives, support] (sample-weighted)."""
        return tf.convert_to_tensor(self.counts)


class MultilabelPRF(MultilabelCounts):
    """Precision, recall or F1 of multi-hot labels: micro, macro, weighted or samples average,
    as scikit-learn's multilabel definitions (zero_division=0; macro over all L labels)."""

    def __init__(self, *, kind: str, average: str | None = None, **kwargs: Any) -> None:
        """Creates the state.

        Args:
          kind: "precision", "recall" or "f1".
          average: micro | macro (default) | weighted (by each label's weighted support) |
            samples (mean over examples of the per-example score).
          **kwargs: passed to MultilabelCounts.

        Raises:
          ValueError: unknown `average`.
        """
        super().__init__(name=kwargs.pop("name", kind), **kwargs)
        average = average or "macro"
        if average not in _ML_AVERAGES:
            raise ValueError(f"task.metrics.{kind}.average: expected {' | '.join(_ML_AVERAGES)} "
                             f"(multi-label); got {average!r}")
        self.kind, self.average = kind, average

    def result(self) -> tf.Tensor:
        """Precision, recall or F1 over labels with the configured averaging (scikit-learn's multilabel definitions)."""
        if self.average == "samples":
            i = ("precision", "recall", "f1").index(self.kind)
            return tf.math.divide_no_nan(self.samples[i], self.samples[3])
        tp, fp, fn = tf.unstack(tf.convert_to_tensor(self.counts))
        if self.average == "micro":
            tp, fp, fn = (tf.reduce_sum(t, keepdims=True) for t in (tp, fp, fn))
        per = _multilabel_scores(tp, fp, fn)[self.kind]
        if self.average == "weighted":
            return tf.math.divide_no_nan(tf.reduce_sum(per * (tp + fn)), tf.reduce_sum(tp + fn))
        return tf.reduce_mean(per)


def _multilabel_scores(tp: Any, fp: Any, fn: Any) -> dict[str, Any]:
    precision = tf.math.divide_no_nan(tp, tp + fp)
    recall = tf.math.divide_no_nan(tp, tp + fn)
    return {"precision": precision, "recall": recall, "f1": tf.math.divide_no_nan(2.0 * tp, 2.0 * tp + fp + fn)}


def per_class(cm: np.ndarray) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support from a [true, predicted] confusion matrix."""
    tp = np.diag(cm)
    pred = cm.sum(axis=0)
    true = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred > 0, tp / np.maximum(pred, 1e-30), 0.0)
        recall = np.where(true > 0, tp / np.maximum(true, 1e-30), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-30), 0.0)
    return {"classes": [{"class": i, "precision": float(precision[i]), "recall": float(recall[i]),
                         "f1": float(f1[i]), "support": float(true[i])} for i in range(len(tp))],
            "confusion_matrix": cm.tolist()}


def per_label(counts: np.ndarray) -> list[dict[str, float]]:
    """Per-label precision, recall, F1 and (weighted) support from `MultilabelCounts.result()`."""
    tp, fp, fn = (np.asarray(c, np.float64) for c in counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-30), 0.0)
        r = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1e-30), 0.0)
        f = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-30), 0.0)
    return [{"label": i, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
             "support": float(tp[i] + fn[i])} for i in range(len(tp))]


class MultilabelAUC(keras.metrics.AUC):
    """ROC/PR AUC of multi-hot labels: per label, then the unweighted mean (scikit-learn's
    macro). Keras's bucketed approximation (see `AUC`)."""

    def __init__(self, *, num_labels: int, from_logits: bool, **kwargs: Any) -> None:
        self._logits = from_logits
        self._n = int(num_labels)
        super().__init__(multi_label=True, num_labels=self._n, **kwargs)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Adds a batch: labels [B, L], raw outputs [B, L], weights [B]."""
        y_pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1, self._n])
        p = tf.sigmoid(y_pred) if self._logits else y_pred
        y = tf.cast(tf.reshape(y_true, [-1, self._n]), tf.float32)
        if sample_weight is not None:
            sample_weight = tf.cast(tf.reshape(sample_weight, [-1, 1]), tf.float32)
        return super().update_state(y, p, sample_weight=sample_weight)


def _ml_accuracy(*, num_labels: int, from_logits: bool = True, threshold: float | None = None) -> keras.metrics.Metric:
    """Binary accuracy over all labels (1 - scikit-learn's hamming_loss)."""
    return _binary_accuracy("accuracy", from_logits=from_logits, threshold=threshold)


def _ml_prf(kind: str):
    def factory(*, num_labels: int, from_logits: bool = True, average: str | None = None,
                threshold: float | None = None) -> keras.metrics.Metric:
        return MultilabelPRF(kind=kind, num_labels=num_labels, from_logits=from_logits, average=average,
                             threshold=threshold)
    factory.__name__ = kind
    return factory


def _ml_auc(*, num_labels: int, from_logits: bool = True, curve: str = "ROC",
            num_thresholds: int = 2000) -> keras.metrics.Metric:
    if curve not in ("ROC", "PR"):
        raise ValueError(f"task.metrics.auc.curve: expected ROC | PR; got {curve!r}")
    if not isinstance(num_thresholds, int) or num_thresholds < 2:
        raise ValueError(f"task.metrics.auc.num_thresholds: expected an integer >= 2; got {num_thresholds!r}")
    return MultilabelAUC(num_labels=num_labels, from_logits=from_logits, curve=curve, num_thresholds=num_thresholds,
                         name="auc")


# The multilabel versions `build(..., multilabel=True)` uses for these names.
MULTILABEL = {"accuracy": _ml_accuracy, "binary_accuracy": _ml_accuracy, "precision": _ml_prf("precision"),
              "recall": _ml_prf("recall"), "f1": _ml_prf("f1"), "auc": _ml_auc}
