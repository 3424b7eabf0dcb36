"""Bundled datasets that work offline (scikit-learn's digits, breast_cancer, iris, wine, diabetes) and `arrays`.

Each bundled set is divided once into train and eval by a fixed seeded split (stratified by class
for the classification sets), so every run, process and replica sees the same examples.
Features are float32: digits are scaled to [0, 1]; the tabular sets are standardized with the
statistics of the train split only (no eval information leaks into training). Labels are int32
class ids; the diabetes regression target is float32 of shape (1,).

`arrays` turns a user's in-memory NumPy arrays into a dataset (`from_arrays` is the same thing as a
plain function). Every factory is registered by name and called as `factory(split, **kwargs)`
with `split` either "train" or "eval"; it returns an unbatched `tf.data.Dataset` of
(features, label) or (features, label, sample_weight).
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from framework import registry

SPLITS = ("train", "eval", "test")  # "test" only with holdout_fraction > 0

# Documentation and lookups: classes (None for regression), per-example feature shape (default
# kwargs) and the number of examples over both splits.
INFO: dict[str, dict[str, Any]] = {
    "digits": {"num_classes": 10, "shape": (8, 8, 1), "examples": 1797},
    "breast_cancer": {"num_classes": 2, "shape": (30,), "examples": 569},
    "iris": {"num_classes": 3, "shape": (4,), "examples": 150},
    "wine": {"num_classes": 3, "shape": (13,), "examples": 178},
    "diabetes": {"num_classes": None, "shape": (10,), "examples": 442},
}


def check_split(split: Any, name: str, splits: Sequence[str] = SPLITS) -> None:
    """Raises ValueError unless `split` is one of `splits`.

    Args:
      split: the value received.
      name: the dataset's registered name, for the message.
      splits: the splits the dataset serves.
    """
    if not isinstance(split, str) or split not in splits:
        raise ValueError(f"dataset {name!r}: split must be {' or '.join(repr(s) for s in splits)}; "
                         f"got split={split!r}")


@functools.lru_cache(maxsize=None)
def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets as d

    loader = {"digits": d.load_digits, "breast_cancer": d.load_breast_cancer, "iris": d.load_iris,
              "wine": d.load_wine, "diabetes": d.load_diabetes}[name]
    b = loader()
    x, y = np.asarray(b.data), np.asarray(b.target)
    x.setflags(write=False)  # cached: callers must never modify it in place
    y.setflags(write=False)
    return x, y


def split_indices(y: np.ndarray, *, test_fraction: float, seed: int,
                  stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """A fixed (train, eval) division of `len(y)` examples, each part in ascending index order.

    Args:
      y: the labels (used for stratification; only their number matters otherwise).
      test_fraction: the part of the examples that goes to eval, in (0, 1).
      seed: seed of the division; the same seed always gives the same division.
      stratify: keep the class proportions in both parts.

    Returns:
      (train indices, eval indices): disjoint, together every index once.

    Raises:
      ValueError: `test_fraction` is not in (0, 1) or `seed` is not an integer.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) \
            or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction: expected a number strictly between 0 and 1; got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer; got {seed!r}")
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, ev = train_test_split(idx, test_size=float(test_fraction), random_state=int(seed),
                              stratify=y if stratify else None)
    return np.sort(tr), np.sort(ev)


def load_arrays(name: str, split: str, *, test_fraction: float = 0.25, seed: int = 0,
                standardize_target: bool = False, holdout_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of one split of a bundled set as NumPy arrays (features not reshaped).

    Args:
      name: one of `INFO`'s keys.
      split: "train" or "eval".
      test_fraction: the part of the set that forms the eval split.
      seed: seed of the split.
      holdout_fraction: the part of the set held out first as the "test" split (0: no test split).
      standardize_target: (regression only) standardize the target with train statistics.
      holdout_fraction: the part of the whole set held out first as the "test" split (stratified,
        by `seed`); train and eval are then divided from the rest. 0: no test split.

    Returns:
      (x float32 [n, d], y int32 [n] for classification or float32 [n] for regression).

    Raises:
      ValueError: unknown `name`, bad `split`, `test_fraction` or `seed`.
    """
    if name not in INFO:
        raise ValueError(f"name: expected a bundled dataset ({', '.join(sorted(INFO))}); got {name!r}")
    check_split(split, name)
    x, y = _load(name)
    classification = INFO[name]["num_classes"] is not None
    test = None
    if holdout_fraction:
        rest, test = split_indices(y, test_fraction=holdout_fraction, seed=seed, stratify=classification)
        tr, ev = (rest[i] for i in split_indices(y[rest], test_fraction=test_fraction, seed=seed,
                                                  stratify=classification))
    elif split == "test":
        raise ValueError(f"dataset {name!r}: split 'test' needs holdout_fraction > 0 (the part of the set held "
                         f"out as the test set, e.g. 0.2); got holdout_fraction={holdout_fraction!r}")
    else:
        tr, ev = split_indices(y, test_fraction=test_fraction, seed=seed, stratify=classification)
    idx = {"train": tr, "eval": ev, "test": test}[split]
    if name == "digits":
        xs = (x[idx] / 16.0).astype(np.float32)  # pixel intensities are 0..16
    else:
        mean, std = x[tr].mean(0), x[tr].std(0)  # train statistics only
        xs = ((x[idx] - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    if classification:
        ys = y[idx].astype(np.int32)
    else:
        ys = y[idx].astype(np.float64)
        if standardize_target:
            ys = (ys - y[tr].mean()) / (y[tr].std() or 1.0)
        ys = ys.astype(np.float32)
    return xs, ys


@registry.register_dataset("digits")
def digits(split: str, test_fraction: float = 0.25, seed: int = 0, holdout_fraction: float = 0.0, flatten: bool = False,
           classes: Sequence[int] | None = None, max_examples: int | None = None) -> tf.data.Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits: images float32 in [0, 1], labels int32 0-9.

    Args:
      split: "train" or "eval" (a stratified `test_fraction` of the set, fixed by `seed`).
      test_fraction: the part of the set that forms the eval split (450 images by default).
      seed: seed of the split.
      holdout_fraction: the part of the set held out first as the "test" split (0: no test split).
      flatten: features of shape (64,) instead of (8, 8, 1).
      classes: keep only these digits, relabelled 0..len-1 in the given order (transfer demos).
      max_examples: keep the first N examples of the split (small-label regimes).

    Returns:
      Unbatched dataset of (image float32 (8, 8, 1) or (64,), label int32).

    Raises:
      ValueError: a bad `split`, `test_fraction`, `seed`, `classes` or `max_examples`.
    """
    x, y = load_arrays("digits", split, test_fraction=test_fraction, seed=seed,
        holdout_fraction=holdout_fraction)
    if classes is not None:
        cs = list(classes) if not isinstance(classes, (str, bytes)) else None
        if not cs or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c <= 9 for c in cs) \
                or len(set(cs)) != len(cs):
            raise ValueError(f"digits.classes: expected a non-empty list of distinct digits 0-9; got {classes!r}")
        keep = np.isin(y, cs)
        mapping = np.full(10, -1, np.int32)
        mapping[cs] = np.arange(len(cs), dtype=np.int32)
        x, y = x[keep], mapping[y[keep]]
    if max_examples is not None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, numbers.Integral) or max_examples < 1:
            raise ValueError(f"digits.max_examples: expected a positive integer or null; got {max_examples!r}")
        x, y = x[:max_examples], y[:max_examples]
    x = x.reshape(-1, 64) if flatten else x.reshape(-1, 8, 8, 1)
    return tf.data.Dataset.from_tensor_slices((x, y))


@registry.register_dataset("breast_cancer")
def breast_cancer(split: str, test_fraction: float = 0.25, seed: int = 0,
                  holdout_fraction: float = 0.0) -> tf.data.Dataset:
    """scikit-learn's breast cancer set: 30 standardized float32 features, label int32 (0 malignant, 1 benign).

    Args:
      split: "train" or "eval" (a stratified `test_fraction` of the 569 examples, fixed by `seed`).
      test_fraction: the part of the set that forms the eval split.
      seed: seed of the split.
      holdout_fraction: the part of the set held out first as the "test" split (0: no test split).

    Returns:
      Unbatched dataset of (features float32 (30,), label int32).
    """
    return tf.data.Dataset.from_tensor_slices(
        load_arrays("breast_cancer", split, test_fraction=test_fraction, seed=seed,
        holdout_fraction=holdout_fraction))


@registry.register_dataset("iris")
def iris(split: str, test_fraction: float = 0.25, seed: int = 0, holdout_fraction: float = 0.0) -> tf.data.Dataset:
    """scikit-learn's iris set: 4 standardized float32 features, label int32 in 0..2 (150 examples).

    Args:
      split: "train" or "eval" (a stratified `test_fraction` of the set, fixed by `seed`).
      test_fraction: the part of the set that forms the eval split.
      seed: seed of the split.
      holdout_fraction: the part of the set held out first as the "test" split (0: no test split).

    Returns:
      Unbatched dataset of (features float32 (4,), label int32).
    """
    return tf.data.Dataset.from_tensor_slices(load_arrays("iris", split, test_fraction=test_fraction, seed=seed,
        holdout_fraction=holdout_fraction))


@registry.register_dataset("wine")
def wine(split: str, test_fraction: float = 0.25, seed: int = 0, holdout_fraction: float = 0.0) -> tf.data.Dataset:
    """scikit-learn's wine set: 13 standardized float32 features, label int32 in 0..2 (178 examples).

    Args:
      split: "train" or "eval" (a stratified `test_fraction` of the set, fixed by `seed`).
      test_fraction: the part of the set that forms the eval split.
      seed: seed of the split.
      holdout_fraction: the part of the set held out first as the "test" split (0: no test split).

    Returns:
      Unbatched dataset of (features float32 (13,), label int32).
    """
    return tf.data.Dataset.from_tensor_slices(load_arrays("wine", split, test_fraction=test_fraction, seed=seed,
        holdout_fraction=holdout_fraction))


@registry.register_dataset("diabetes")
def diabetes(split: str, test_fraction: float = 0.25, seed: int = 0, holdout_fraction: float = 0.0,
             standardize_target: bool = False) -> tf.data.Dataset:
    """scikit-learn's diabetes regression set: 10 standardized float32 features, float32 target (442 examples).

    Args:
      split: "train" or "eval" (a random `test_fraction` of the set, fixed by `seed`).
      test_fraction: the part of the set that forms the eval split.
      seed: seed of the split.
      holdout_fraction: the part of the set held out first as the "test" split (0: no test split).
      standardize_target: standardize the target with the train split's mean and deviation
        (the raw target is a disease-progression score of about 25..346).

    Returns:
      Unbatched dataset of (features float32 (10,), target float32 (1,)).
    """
    x, y = load_arrays("diabetes", split, test_fraction=test_fraction, seed=seed,
        holdout_fraction=holdout_fraction,
                       standardize_target=standardize_target)
    return tf.data.Dataset.from_tensor_slices((x, y.reshape(-1, 1)))


def _length(a: Any, what: str) -> int:
    try:
        return len(a)
    except TypeError:
        raise ValueError(f"arrays: {what}: expected an array with one row per example; "
                         f"got {type(a).__name__} {a!r:.80}") from None


def _leaves(a: Any, path: str) -> list[tuple[str, Any]]:
    """(path, array) of every leaf of a dict / tuple structure (a list is one array, as in tf.data)."""
    if isinstance(a, dict):
        return [p for k in sorted(a) for p in _leaves(a[k], f"{path}/{k}")]
    if isinstance(a, tuple):
        return [p for i, v in enumerate(a) for p in _leaves(v, f"{path}/{i}")]
    return [(path, a)]


def _convert(a: Any) -> Any:
    if isinstance(a, dict):
        return {k: _convert(v) for k, v in a.items()}
    if isinstance(a, tuple):
        return tuple(_convert(v) for v in a)
    return _as_tensor_array(a)


def _as_tensor_array(a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.float64:
        return a.astype(np.float32)
    if a.dtype == object:
        raise ValueError(f"arrays: expected numeric arrays; got an array of Python objects (first: {a.flat[0]!r:.80})")
    return a


def from_arrays(x: Any, y: Any, sample_weight: Any = None) -> tf.data.Dataset:
    """An unbatched dataset of (x, y[, sample_weight]) from NumPy arrays, one row per example.

    float64 arrays become float32; `sample_weight` becomes float32; integer labels keep their type.

    Args:
      x: features: an array (or nested list), or a dict / tuple of arrays (several inputs).
      y: labels: an array.
      sample_weight: optional per-example weights.

    Returns:
      Unbatched dataset of (x, y) or (x, y, sample_weight).

    Raises:
      ValueError: the arrays differ in length (the message gives every length received), or one
        is not an array.
    """
    if x is None or y is None:
        raise ValueError(f"arrays: x and y are both required; got x={type(x).__name__}, y={type(y).__name__}")
    sizes: dict[str, int] = {}
    for path, leaf in _leaves(x, "x"):
        sizes[path] = _length(leaf, path)
    sizes["y"] = _length(y, "y")
    if sample_weight is not None:
        sizes["sample_weight"] = _length(sample_weight, "sample_weight")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays: x, y and sample_weight must have the same length (one row per example); "
                         f"got lengths {sizes}")
    xs = _convert(x)
    ys = _as_tensor_array(y)
    if sample_weight is None:
        return tf.data.Dataset.from_tensor_slices((xs, ys))
    return tf.data.Dataset.from_tensor_slices((xs, ys, np.asarray(sample_weight, np.float32)))


@registry.register_dataset("arrays")
def arrays(split: str, x: Any = None, y: Any = None, sample_weight: Any = None, eval_x: Any = None,
           eval_y: Any = None, eval_sample_weight: Any = None) -> tf.data.Dataset:
    """A user's in-memory arrays (see `from_arrays`).

    The train split is (x, y[, sample_weight]). The eval split is (eval_x, eval_y[,
    eval_sample_weight]) when `eval_x` is given, else (x, y[, sample_weight]): a config's
    `task.eval_data` section passes its own kwargs, so `{name: arrays, x: ..., y: ...}` there
    describes the eval data directly.

    Args:
      split: "train" or "eval".
      x: features, one row per example.
      y: labels.
      sample_weight: optional per-example weights.
      eval_x: eval features.
      eval_y: eval labels (required with `eval_x`).
      eval_sample_weight: optional eval weights.

    Returns:
      Unbatched dataset of (x, y) or (x, y, sample_weight).

    Raises:
      ValueError: bad `split`, missing arrays, or arrays of different lengths.
    """
    check_split(split, "arrays", ("train", "eval"))
    if split == "eval" and (eval_x is not None or eval_y is not None):
        if eval_x is None or eval_y is None:
            raise ValueError(f"arrays: eval_x and eval_y go together; got eval_x={type(eval_x).__name__}, "
                             f"eval_y={type(eval_y).__name__}")
        return from_arrays(eval_x, eval_y, eval_sample_weight)
    if x is None or y is None:
        raise ValueError(f"arrays: x and y are required for the {split} split; "
                         f"got x={type(x).__name__}, y={type(y).__name__}")
    return from_arrays(x, y, sample_weight)
