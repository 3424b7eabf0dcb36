"""Index splits of a training source: the seeded validation hold-out and cross-validation folds.

Both are pure functions of (labels, seed) computed in NumPy, so every process and replica that
builds the same run derives the same indices without talking to the others. Classification
labels (one integer class id per example) are stratified: each class contributes the same
fraction to every part; other labels (regression, multi-hot) get a seeded random split.
"""
from __future__ import annotations

import numpy as np


def class_ids(labels: np.ndarray) -> np.ndarray | None:
    """The labels as one int64 class id per example, or None if they are not class ids.

    Accepts shapes [N] and [N, 1] with integer values (float dtypes included when every value
    is a whole number); multi-hot [N, L > 1] and continuous targets give None.
    """
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.size == 0:
        return None
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(np.mod(y, 1) != 0):
            return None
    if y.min() < 0:
        return None
    return y.astype(np.int64)


def validation_indices(labels: np.ndarray, *, fraction: float, seed: int,
                       stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, eval indices), disjoint, covering, each sorted ascending.

    Args:
      labels: the training source's labels in source order.
      fraction: the part held out for evaluation, in (0, 1).
      seed: the run's seed (`trainer.seed`).
      stratify: split every class in the same proportion (when the labels are class ids).

    Raises:
      ValueError: the fraction leaves the train or eval part empty.
    """
    n = len(labels)
    rng = np.random.default_rng([int(seed), 0x5EED])
    ids = class_ids(labels) if stratify else None
    if ids is None:
        k = int(round(fraction * n))
        held = rng.permutation(n)[:k]
    else:
        held_parts = []
        for c in np.unique(ids):
            members = np.nonzero(ids == c)[0]
            # Round per class so the eval set keeps the class ratio; a class with a single
            # example stays in training (it cannot be in both parts).
            k = int(round(fraction * len(members))) if len(members) > 1 else 0
            held_parts.append(rng.permutation(members)[:k])
        held = np.concatenate(held_parts) if held_parts else np.zeros([0], np.int64)
    mask = np.zeros(n, bool)
    mask[held] = True
    train, held = np.nonzero(~mask)[0], np.nonzero(mask)[0]
    if len(train) == 0 or len(held) == 0:
        raise ValueError(f"task.validation_split: expected a fraction that leaves examples in both parts of "
                         f"the {n} training examples; got {fraction!r} ({len(train)} train, {len(held)} eval)")
    return train, held


def fold_indices(labels: np.ndarray, *, folds: int, seed: int,
                 stratify: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train indices, held-out indices) pairs: the held-out parts partition the examples.

    Stratified with scikit-learn's `StratifiedKFold` for class ids (`KFold` otherwise), shuffled
    with `seed`.

    Raises:
      ValueError: fewer examples than folds, or (stratified) a class with fewer members than folds.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(labels)
    if n < folds:
        raise ValueError(f"--folds: expected at most the number of training examples ({n}); got {folds}")
    ids = class_ids(labels) if stratify else None
    if ids is None:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=int(seed))
        parts = splitter.split(np.zeros(n))
    else:
        counts = np.bincount(ids)
        smallest = int(counts[counts > 0].min())
        if smallest < folds:
            raise ValueError(f"--folds: stratified folds need every class to have at least K={folds} examples; "
                             f"got a class with {smallest} (class counts {counts.tolist()})")
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed))
        parts = splitter.split(np.zeros(n), ids)
    return [(np.sort(tr), np.sort(ev)) for tr, ev in parts]
