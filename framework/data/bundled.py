"""Real datasets that ship inside scikit-learn (offline): digits, breast_cancer, iris, wine, diabetes.

Each is split once into train and eval with a fixed seed (stratified for classification);
features are float32 (standardized with train statistics for the tabular sets), labels int32
(float32 targets for regression). Also `arrays`: a NumPy source for a user's in-memory data.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import tensorflow as tf

from framework import registry

INFO = {
    "digits": {"num_classes": 10, "shape": (8, 8, 1), "examples": 1797},
    "breast_cancer": {"num_classes": 2, "shape": (30,), "examples": 569},
    "iris": {"num_classes": 3, "shape": (4,), "examples": 150},
    "wine": {"num_classes": 3, "shape": (13,), "examples": 178},
    "diabetes": {"num_classes": None, "shape": (10,), "examples": 442},
}


def _check_split(split: str, name: str) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"dataset {name!r}: split must be 'train' or 'eval'; got {split!r}")


@functools.lru_cache(maxsize=None)
def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets as d

    loader = {"digits": d.load_digits, "breast_cancer": d.load_breast_cancer, "iris": d.load_iris,
              "wine": d.load_wine, "diabetes": d.load_diabetes}[name]
    b = loader()
    return np.asarray(b.data), np.asarray(b.target)


def split_indices(y: np.ndarray, *, test_fraction: float, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, eval) index split; stratified by class when `stratify`."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1); got {test_fraction!r}")
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, ev = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y if stratify else None)
    return np.sort(tr), np.sort(ev)


def load_arrays(name: str, split: str, *, test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a bundled set's split as NumPy arrays (before any reshaping)."""
    _check_split(split, name)
    x, y = _load(name)
    classification = INFO[name]["num_classes"] is not None
    tr, ev = split_indices(y, test_fraction=test_fraction, seed=seed, stratify=classification)
    idx = tr if split == "train" else ev
    if name == "digits":
        xs = (x[idx] / 16.0).astype(np.float32)
    else:
        mean, std = x[tr].mean(0), x[tr].std(0) + 1e-8  # train statistics only
        xs = ((x[idx] - mean) / std).astype(np.float32)
    ys = y[idx].astype(np.int32) if classification else y[idx].astype(np.float32)
    return xs, ys


@registry.register_dataset("digits")
def digits(split: str, test_fraction: float = 0.25, seed: int = 0, flatten: bool = False,
           classes: list | None = None, max_examples: int | None = None) -> tf.data.Dataset:
    """8x8x1 handwritten digits in [0, 1], labels 0-9 (1,797 images; eval 25%).

    Args:
      classes: keep only these digits, relabelled 0..len-1 in the given order (transfer demos).
      max_examples: keep the first N examples of the split (small-label regimes).
    """
    x, y = load_arrays("digits", split, test_fraction=test_fraction, seed=seed)
    if classes is not None:
        keep = np.isin(y, classes)
        mapping = {c: i for i, c in enumerate(classes)}
        x, y = x[keep], np.array([mapping[int(v)] for v in y[keep]], np.int32)
    if max_examples is not None:
        x, y = x[:max_examples], y[:max_examples]
    x = x.reshape(-1, 64) if flatten else x.reshape(-1, 8, 8, 1)
    return tf.data.Dataset.from_tensor_slices((x, y))


def _tabular(name: str):
    def factory(split: str, test_fraction: float = 0.25, seed: int = 0) -> tf.data.Dataset:
        x, y = load_arrays(name, split, test_fraction=test_fraction, seed=seed)
        if name == "diabetes":
            y = y.reshape(-1, 1)
        return tf.data.Dataset.from_tensor_slices((x, y))
    factory.__name__ = name
    factory.__doc__ = f"scikit-learn's bundled {name}, standardized features, fixed seeded split."
    return factory


for _name in ("breast_cancer", "iris", "wine", "diabetes"):
    registry.register_dataset(_name)(_tabular(_name))


def from_arrays(x: Any, y: Any, sample_weight: Any = None) -> tf.data.Dataset:
    """An unbatched dataset of (x, y[, w]) from NumPy arrays (or nested structures of them)."""
    n = len(tf.nest.flatten(x)[0])
    sizes = {"x": n, "y": len(y)}
    if sample_weight is not None:
        sizes["sample_weight"] = len(sample_weight)
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays: x, y and sample_weight must have the same length; got {sizes}")
    parts = (x, y) if sample_weight is None else (x, y, np.asarray(sample_weight, np.float32))
    return tf.data.Dataset.from_tensor_slices(parts)


@registry.register_dataset("arrays")
def arrays(split: str, x: Any = None, y: Any = None, sample_weight: Any = None, eval_x: Any = None,
           eval_y: Any = None) -> tf.data.Dataset:
    """In-memory NumPy source: (x, y[, sample_weight]) for train, (eval_x, eval_y) for eval."""
    _check_split(split, "arrays")
    if split == "eval" and eval_x is not None:
        x, y, sample_weight = eval_x, eval_y, None
    if x is None or y is None:
        raise ValueError(f"dataset 'arrays': x and y are required; got x={type(x).__name__}, y={type(y).__name__}")
    return from_arrays(np.asarray(x), np.asarray(y), sample_weight)
