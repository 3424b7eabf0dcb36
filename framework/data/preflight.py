"""The data pre-flight of every training run: non-finite values are an error, overlap and imbalance warnings.

Runs in `trainer.build` after the sources are counted and before the model is built or any
step is traced, so a NaN in the data stops the run in a second with the split, the count and
the first example, instead of as a non-finite loss many steps later. A source the training
pipeline holds in memory (finite, `cache: true`, up to `pipeline.IN_MEMORY_BYTES`) is checked
whole; a streaming one (infinite, `cache: false` or larger) on its first
`trainer.preflight_batches` batches. What is read here is handed back so the trainer does not
read it a second time: the labels (class weights, the label-range check) and the arrays of a
split checked whole (the in-memory training pipeline batches them by index).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from framework.data import inspect, pipeline


@dataclasses.dataclass(frozen=True)
class Source:
    """One split to check: its config section, its (x, y, w) source and its size (-1: infinite)."""

    key: str  # "task.train_data"
    section: Any  # the DataConfig (batch_size, cache, allow_nonfinite)
    dataset: tf.data.Dataset
    num_examples: int


@dataclasses.dataclass(frozen=True)
class Result:
    """What the pre-flight read: labels and arrays of the splits read whole (in-memory sources), warnings."""

    labels: dict[str, np.ndarray]
    warnings: list[str]
    whole: dict[str, inspect.SplitArrays] = dataclasses.field(default_factory=dict)


def in_memory(source: Source) -> bool:
    """Whether the training pipeline holds this source in memory (then it is checked whole)."""
    n = source.num_examples
    if n <= 0 or not source.section.cache:
        return False
    spec = tf.nest.flatten(source.dataset.element_spec)
    if not all(s.shape.is_fully_defined() for s in spec):
        return False
    return n * sum(int(np.prod(s.shape)) * s.dtype.size for s in spec) <= pipeline.IN_MEMORY_BYTES


def _read(source: Source, batches: int) -> tuple[inspect.SplitArrays | None, bool]:
    """(arrays read, whether they are the whole split); None when nothing is to be read."""
    if in_memory(source):
        return inspect.read_split(source.dataset, batch=max(source.num_examples, 1)), True
    if batches <= 0:
        return None, False
    return inspect.read_split(source.dataset, limit=batches * source.section.batch_size), False


def check_nonfinite(arrays: inspect.SplitArrays, source: Source, *, whole: bool) -> str | None:
    """Raises ValueError on NaN/Inf in features or labels (unless `allow_nonfinite`); else the warning."""
    feats = arrays.features
    labels = inspect.named(arrays.y, "y")
    bad = inspect.nonfinite_mask([*feats.values(), *labels.values()])
    if not bad.any():
        return None
    first = int(np.argmax(bad))
    where = [k for k, a in feats.items() if inspect.nonfinite_mask([a[first:first + 1]]).any()]
    where += [f"label {k!r}" if len(labels) > 1 else "label" for k, a in labels.items()
              if inspect.nonfinite_mask([a[first:first + 1]]).any()]
    scope = "" if whole else f" among its first {arrays.num_examples} examples (a streaming source)"
    text = (f"{source.key}: expected finite features and labels; got {int(bad.sum())} example(s) with NaN/Inf "
            f"values{scope} (first: example {first}, in {', '.join(where)})")
    if not source.section.allow_nonfinite:
        raise ValueError(f"{text}; fix the data or set {source.key}.allow_nonfinite: true")
    return f"{text}; training anyway ({source.key}.allow_nonfinite: true)"


def run(sources: Mapping[str, Source], *, batches: int, label_kind: str,
        compensated_by: str | None = None) -> Result:
    """Checks the splits in `sources` ({"train": ..., "eval": ...}); logs and returns the warnings.

    Args:
      sources: the splits to check by name.
      batches: `trainer.preflight_batches`: batches of a streaming source to check (0: none).
      label_kind: the loss's `losses.label_kind` ("regression": the labels are not classes).
      compensated_by: the config that already counters imbalance (the warning then says so).

    Raises:
      ValueError: non-finite features or labels in a split without `allow_nonfinite`.
    """
    arrays, whole, warnings = {}, {}, []
    for split, src in sources.items():
        a, whole[split] = _read(src, batches)
        if a is None:
            continue
        arrays[split] = a
        w = check_nonfinite(a, src, whole=whole[split])
        if w:
            warnings.append(w)
    train = arrays.get("train")
    if train is not None and label_kind != "regression" and not isinstance(train.y, Mapping):
        w = inspect.imbalance_warning(inspect.class_counts(np.asarray(train.y)), num_classes=None,
                                      compensated_by=compensated_by, split=sources["train"].key)
        if w and w["severity"] == "info":  # already countered by the config: a note, not a warning
            logging.info("pre-flight: %s", w["message"])
        elif w:
            warnings.append(w["message"])
    if train is not None and "eval" in arrays:
        n = inspect.overlap_count(inspect.content_hashes(train.features),
                                  inspect.content_hashes(arrays["eval"].features))
        if n:
            part = "" if whole["train"] and whole["eval"] else " (in the batches checked)"
            warnings.append(f"{sources['eval'].key}: {n} of {arrays['eval'].num_examples} eval examples also occur "
                            f"in the training data{part} (same features): the evaluation is optimistic")
    for w in warnings:
        logging.warning("pre-flight: %s", w)
    labels = {s: np.asarray(a.y) for s, a in arrays.items() if whole[s] and not isinstance(a.y, Mapping)}
    return Result(labels=labels, warnings=warnings, whole={s: a for s, a in arrays.items() if whole[s]})
