"""The model's outputs as heads: each output's loss, weight, metrics and checks, by output name.

A model with one output has one head whose key is None (logged names `loss`, `<metric>`). A
model with a dict (or list) of outputs has one head per output name; `task.loss` then maps
every output to its loss section, `task.loss_weights` weights them (default 1), `task.metrics`
is a list (applied to every classification output) or {output: [metrics]}, and the logged
names are `loss` (the weighted total), `<output>/loss` and `<output>/<metric>`.

An output whose loss is binary cross-entropy and that has several units is multi-label
(multi-hot labels [B, L]): its metrics follow scikit-learn's multilabel definitions.
All checks raise "<key>: expected X; got Y" before anything is traced.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import keras
import tensorflow as tf

from framework import losses as losses_lib
from framework import metrics as metrics_lib
from framework import registry
from framework.config import own_keys


@dataclasses.dataclass
class Head:
    """One model output and how it is trained and measured."""

    key: str | None  # output name; None for a single-output model
    loss_name: str
    loss_fn: Any
    units: int
    weight: float = 1.0
    from_logits: bool = True
    multilabel: bool = False
    # The labels the loss reads (`losses.label_kind`, from the built loss's type).
    label_kind: str = "regression"

    @property
    def classification(self) -> bool:
        """Whether this output's loss trains a classifier (its labels are classes)."""
        return self.label_kind != "regression"

    @property
    def sparse(self) -> bool:
        """Whether this output's labels are integer class ids (checked against `units`)."""
        return self.label_kind == "sparse"

    @property
    def prefix(self) -> str:
        """`<output>/` for a model with several outputs, else empty: the prefix of its logged names."""
        return "" if self.key is None else f"{self.key}/"


def output_keys(model: keras.Model, out: Any) -> list[str | None]:
    """Output names of a model from its output structure: [None] for a single tensor."""
    if isinstance(out, Mapping):
        return list(out)
    if isinstance(out, (list, tuple)):
        names = list(getattr(model, "output_names", None) or [])
        return names if len(names) == len(out) else [f"output_{i}" for i in range(len(out))]
    return [None]


def _units(t: Any) -> int:
    shape = t.shape
    return int(shape[-1]) if shape.rank else 1


def build_heads(task: Any, model: keras.Model, out: Any, label_spec: Any) -> list[Head]:
    """One head per model output (call inside the strategy scope).

    Args:
      task: the `task` config section.
      model: the built model.
      out: the model's output on a dummy batch.
      label_spec: the training dataset's label element spec.

    Raises:
      ValueError: a loss mapping for one output or one loss for several, a loss, weight or
        metric mapping naming no output, an output with no loss, labels not keyed by output.
    """
    keys = output_keys(model, out)
    name = getattr(model, "name", "model")
    if keys == [None]:
        if isinstance(task.loss, dict):
            raise ValueError(f"task.loss: expected one loss section for model {name!r} (it has one output); "
                             f"got a mapping for outputs {sorted(task.loss)}")
        if isinstance(task.metrics, dict):
            raise ValueError(f"task.metrics: expected a list for model {name!r} (it has one output); "
                             f"got a mapping for outputs {sorted(task.metrics)}")
        loss_fn = registry.build(registry.LOSSES, task.loss.name, task.loss.kwargs, section="task.loss",
                                 section_keys=own_keys(task.loss))
        kind = losses_lib.label_kind(loss_fn, name=task.loss.name)
        return [Head(key=None, loss_name=task.loss.name, loss_fn=loss_fn, units=_units(out),
                     from_logits=losses_lib.loss_from_logits(loss_fn),
                     multilabel=_is_multilabel(kind, out, label_spec), label_kind=kind)]
    if not isinstance(task.loss, dict):
        raise ValueError(f"task.loss: expected {{output: loss section}} for the outputs {keys} of model {name!r}; "
                         f"got one loss {task.loss.name!r}")
    _check_names("task.loss", task.loss, keys)
    _check_names("task.loss_weights", task.loss_weights, keys)
    if isinstance(task.metrics, dict):
        _check_names("task.metrics", task.metrics, keys)
    missing = [k for k in keys if k not in task.loss]
    if missing:
        raise ValueError(f"task.loss: expected a loss section for every output {keys}; got none for {missing}")
    if isinstance(label_spec, Mapping):
        absent = [k for k in keys if k not in label_spec]
        if absent:
            raise ValueError(f"task.train_data: expected labels keyed by output name {keys}; got label keys "
                             f"{sorted(label_spec)} (missing {absent})")
    elif not (isinstance(label_spec, (list, tuple)) and len(label_spec) == len(keys)):
        raise ValueError(f"task.train_data: expected labels as a dict keyed by output name {keys}; got {label_spec}")
    heads = []
    for i, k in enumerate(keys):
        section = task.loss[k]
        o = out[k] if isinstance(out, Mapping) else out[i]
        spec = label_spec[k] if isinstance(label_spec, Mapping) else label_spec[i]
        loss_fn = registry.build(registry.LOSSES, section.name, section.kwargs, section=f"task.loss.{k}",
                                 section_keys=own_keys(section))
        kind = losses_lib.label_kind(loss_fn, name=section.name)
        heads.append(Head(key=k, loss_name=section.name, loss_fn=loss_fn, units=_units(o),
                          weight=float(task.loss_weights.get(k, 1.0)),
                          from_logits=losses_lib.loss_from_logits(loss_fn),
                          multilabel=_is_multilabel(kind, o, spec), label_kind=kind))
    return heads


def _check_names(key: str, mapping: Mapping, outputs: list) -> None:
    unknown = [k for k in mapping if k not in outputs]
    if unknown:
        raise ValueError(f"{key}: expected output names of the model {outputs}; got {unknown}")


def _is_multilabel(label_kind: str, out: Any, label_spec: Any) -> bool:
    """A binary loss (`losses.label_kind`) on several units with labels as wide: multi-hot labels."""
    if label_kind != "binary" or _units(out) < 2:
        return False
    shape = getattr(label_spec, "shape", None)
    return shape is not None and shape.rank is not None and shape.rank >= 1 and shape[-1] == _units(out)


@dataclasses.dataclass(frozen=True)
class Report:
    """A per-output report written after each evaluation, with the metric that accumulates it.

    Attributes:
      key: the output (None: a single-output model).
      kind: "per_class" (a [true, predicted] confusion matrix: `eval_per_class.json`) or
        "per_label" (multi-label counts: `eval_per_label.json`).
      metric: `metrics.ConfusionMatrix` or `metrics.MultilabelCounts`.
    """

    key: str | None
    kind: str
    metric: Any

    @property
    def prefix(self) -> str:
        """`<output>/` for a model with several outputs, else empty (as `Head.prefix`)."""
        return "" if self.key is None else f"{self.key}/"


@dataclasses.dataclass(frozen=True)
class HeadMetrics:
    """Every metric of a run's heads.

    Attributes:
      train: training metrics keyed by logged name (`<output>/<metric>` for several outputs).
      eval: eval metrics keyed by logged name.
      reports: one `Report` per classification output (its own metric, not in `eval`).
    """

    train: dict
    eval: dict
    reports: tuple[Report, ...]


def build_metrics(task: Any, heads: list[Head]) -> HeadMetrics:
    """Train and eval metrics keyed by logged name, and the reports (call inside the strategy scope).

    Every classification output has a report: per class (a confusion matrix), or per label for
    a multi-label output.
    """
    train: dict = {}
    evals: dict = {}
    reports: list[Report] = []
    for h in heads:
        if isinstance(task.metrics, dict):
            names = list(task.metrics.get(h.key, []))
        else:
            names = list(task.metrics) if (h.key is None or h.classification) else []
        for target in (train, evals):
            built = metrics_lib.build(names, num_classes=h.units, from_logits=h.from_logits,
                                      multilabel=h.multilabel)
            target.update({f"{h.prefix}{k}": m for k, m in built.items()})
        if h.multilabel:
            reports.append(Report(key=h.key, kind="per_label", metric=metrics_lib.MultilabelCounts(
                num_labels=h.units, from_logits=h.from_logits, name=f"{h.prefix}label_counts")))
        elif h.classification:
            reports.append(Report(key=h.key, kind="per_class", metric=metrics_lib.ConfusionMatrix(
                num_classes=max(h.units, 2), from_logits=h.from_logits, name=f"{h.prefix}confusion_matrix")))
    return HeadMetrics(train=train, eval=evals, reports=tuple(reports))


def dummy_features(x_spec: Any) -> Any:
    """A batch of one zero example for building the model (unknown dimensions of length 2: a
    length of 1 makes attention softmax over one key, which Keras warns about)."""
    return tf.nest.map_structure(lambda s: tf.zeros([1, *[2 if d is None else d for d in s.shape]], s.dtype), x_spec)
