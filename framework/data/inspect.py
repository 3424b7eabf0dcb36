"""Data statistics for `--mode=inspect` and the pre-flight: per-split counts, hashes, warnings.

The statistics are pure functions on NumPy arrays (one row per example); `read_split` is the
one reader that turns an unbatched (features, label, weight) dataset into those arrays.
Duplicates and overlap are counted by a content hash of the features only (labels and
weights excluded), so a relabelled copy of an example still counts as the same example.

Report schema (`data_report.json`):
  {"splits": {<split>: {"examples", "class_counts" | "target", "features", "nonfinite",
                        "duplicates", ...}},
   "overlap": {"train/eval": n, "train/test": n},
   "warnings": [{"severity": "error" | "warning" | "info", "message": ...}]}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from framework import atomic
from framework.data import pipeline

# Above this max/min ratio of class counts the training split is called imbalanced.
IMBALANCE_RATIO = 3.0
# Feature ranges (max - min of a column or feature) differing by more than this factor are unscaled.
UNSCALED_RATIO = 100.0


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    """One split read into memory: the element structures as NumPy arrays, one row per example."""

    x: Any  # an array, or a dict / tuple of arrays, as in the dataset
    y: Any
    w: np.ndarray

    @property
    def features(self) -> dict[str, np.ndarray]:
        """Features by name: dict keys, 'x/<i>' for a tuple, 'x' for a single tensor."""
        return named(self.x, "x")

    @property
    def num_examples(self) -> int:
        """The number of examples read from the split."""
        return len(self.w)


def named(x: Any, prefix: str = "x") -> dict[str, np.ndarray]:
    """Flattens a feature structure into {name: array}: dict features by key ('a/b' when nested),
    a tuple as '<prefix>/<i>', a single tensor as `prefix`."""
    out: dict[str, np.ndarray] = {}

    def walk(v: Any, path: str) -> None:
        if isinstance(v, Mapping):
            for k in sorted(v):
                walk(v[k], f"{path}/{k}" if path else str(k))
        elif isinstance(v, tuple):
            for i, e in enumerate(v):
                walk(e, f"{path}/{i}" if path else str(i))
        else:
            out[path or prefix] = np.asarray(v)

    walk(x, "" if isinstance(x, Mapping) else prefix)
    return out


def read_split(ds: tf.data.Dataset, *, limit: int | None = None, batch: int = 8192) -> SplitArrays:
    """Reads an unbatched (x, y, w) dataset (at most `limit` examples) into `SplitArrays`."""
    if limit is not None:
        ds = ds.take(limit)
    if any(not s.shape.is_fully_defined() for s in tf.nest.flatten(ds.element_spec)):
        # Variable-length elements: one batch padded (with zeros) to the longest, so that every
        # row has one shape; the statistics then include the padding, the checks do not care.
        parts = list(ds.padded_batch(limit or 2**31 - 1).as_numpy_iterator())
    else:
        parts = list(ds.batch(batch).as_numpy_iterator())
    if not parts:
        empty = tf.nest.map_structure(lambda s: np.zeros([0, *s.shape], s.dtype.as_numpy_dtype),
                                      ds.element_spec)
        return SplitArrays(*empty)
    x, y, w = tf.nest.map_structure(lambda *a: np.concatenate(a), *parts)
    return SplitArrays(x=x, y=y, w=w)


# ----------------------------------------------------------------------------- per-example checks


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1)


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating)


def nonfinite_mask(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Per example: True where any float array has a NaN or Inf in that example's row."""
    n = len(arrays[0]) if arrays else 0
    bad = np.zeros(n, bool)
    for a in arrays:
        if _is_float(a) and a.size:
            bad |= ~np.isfinite(_rows(a)).all(axis=1)
    return bad


def content_hashes(features: Mapping[str, np.ndarray]) -> list[bytes]:
    """A 128-bit content hash per example over all features (in name order); labels excluded."""
    names = sorted(features)
    n = len(features[names[0]]) if names else 0
    numeric, strings = [], []
    for k in names:
        a = features[k]
        if a.dtype == object or a.dtype.kind in "SU":
            strings.append(a.reshape(n, -1))
            continue
        if _is_float(a):
            a = a + np.zeros((), a.dtype)  # -0.0 -> 0.0: equal numbers hash the same
        numeric.append(np.ascontiguousarray(_rows(a)).view(np.uint8))
    rows = np.concatenate(numeric, axis=1) if numeric else np.zeros([n, 0], np.uint8)
    out = []
    for i in range(n):
        h = hashlib.blake2b(rows[i].tobytes(), digest_size=16)
        for s in strings:
            for v in s[i]:
                b = v if isinstance(v, bytes) else str(v).encode()
                h.update(len(b).to_bytes(8, "little") + b)
        out.append(h.digest())
    return out


def duplicate_count(hashes: Sequence[bytes]) -> int:
    """Examples that repeat an earlier example of the same split (n - distinct)."""
    return len(hashes) - len(set(hashes))


def overlap_count(reference: Sequence[bytes], hashes: Sequence[bytes]) -> int:
    """Examples of `hashes` whose content also occurs in `reference` (e.g. eval rows seen in train)."""
    ref = set(reference)
    return sum(h in ref for h in hashes)


# ----------------------------------------------------------------------------- feature statistics


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def feature_stats(a: np.ndarray) -> dict[str, Any]:
    """{shape, dtype, min, max, mean, std, nonfinite, constant, ...} of one feature [n, ...].

    min/max/mean/std are over the finite values; `nonfinite` counts examples with a NaN/Inf;
    `constant` is true when every element takes one value across all examples. Rank-0/1
    features (tabular columns) also get `constant_columns` and `range_ratio` (largest over
    smallest non-zero column range); higher ranks get `constant_elements`.
    """
    out: dict[str, Any] = {"shape": list(a.shape[1:]), "dtype": str(a.dtype)}
    if a.dtype == object or a.dtype.kind in "SUV":
        return {**out, "min": None, "max": None, "mean": None, "std": None, "nonfinite": 0,
                "constant": bool(len(a) and all((r == _rows(a)[0]).all() for r in _rows(a)))}
    rows = _rows(a).astype(np.float64) if a.dtype != np.float64 else _rows(a)
    finite = np.isfinite(rows)
    count = int(finite.sum())
    cmin = np.min(rows, axis=0, where=finite, initial=np.inf) if rows.size else np.zeros(0)
    cmax = np.max(rows, axis=0, where=finite, initial=-np.inf) if rows.size else np.zeros(0)
    mean = float(np.sum(rows, where=finite) / count) if count else math.nan
    std = float(np.sqrt(np.sum((rows - mean) ** 2, where=finite) / count)) if count else math.nan
    col_constant = cmax <= cmin  # one value (or no finite value) in that column
    out.update(min=_num(cmin.min()) if cmin.size else None, max=_num(cmax.max()) if cmax.size else None,
               mean=_num(mean), std=_num(std), nonfinite=int((~finite).any(axis=1).sum()) if rows.size else 0,
               constant=bool(col_constant.all()) if len(a) else False)
    if a.ndim <= 2:
        ranges = np.where(col_constant, 0.0, cmax - cmin)
        nz = ranges[ranges > 0]
        out["constant_columns"] = [int(i) for i in np.nonzero(col_constant)[0]]
        out["range_ratio"] = _num(nz.max() / nz.min()) if nz.size else None
        out["column_ranges"] = {"min": _num(nz.min()) if nz.size else None,
                                "argmin": int(np.argmax(ranges == nz.min())) if nz.size else None,
                                "max": _num(nz.max()) if nz.size else None,
                                "argmax": int(np.argmax(ranges)) if nz.size else None}
    else:
        out["constant_elements"] = int(col_constant.sum())
    return out


# ----------------------------------------------------------------------------- labels


def class_ids(y: np.ndarray) -> np.ndarray | None:
    """Class id per example: the value for scalar / width-1 labels, argmax for one-hot or soft rows.

    Returns None for multi-hot rows (rows that do not sum to 1): those have no single class.
    """
    rows = _rows(y) if y.ndim > 1 else y.reshape(-1, 1)
    if rows.shape[1] == 1:
        v = rows[:, 0]
        return np.rint(v).astype(np.int64) if _is_float(v) else v.astype(np.int64)
    if not np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return None
    return np.argmax(rows, axis=1).astype(np.int64)


def class_counts(y: np.ndarray) -> dict[str, int]:
    """{"<class id>": n} (one-hot -> argmax; multi-hot: positives per label column)."""
    if _is_float(y):  # a NaN/Inf label has no class (the non-finite count reports it)
        y = y[np.isfinite(_rows(y) if y.ndim > 1 else y.reshape(-1, 1)).all(axis=1)]
    ids = class_ids(y)
    if ids is None:
        pos = (_rows(y) > 0.5).sum(axis=0)
        return {str(i): int(c) for i, c in enumerate(pos)}
    values, counts = np.unique(ids, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def target_stats(y: np.ndarray) -> dict[str, float | None]:
    """{min, max, mean, std} of a regression target over its finite values."""
    s = feature_stats(y if y.ndim > 1 else y.reshape(-1, 1))
    return {k: s[k] for k in ("min", "max", "mean", "std")}


def imbalance(counts: Mapping[str, int], num_classes: int | None = None) -> tuple[float, str, str]:
    """(max/min class ratio, the largest class, the smallest class); classes absent count 0.

    `num_classes` adds the model's classes 0..num_classes-1 that have no example at all.
    """
    full = dict(counts)
    for c in range(num_classes or 0):
        full.setdefault(str(c), 0)
    if len(full) < 2:
        return 1.0, "", ""
    big = max(full, key=full.get)
    small = min(full, key=full.get)
    ratio = math.inf if full[small] == 0 else full[big] / full[small]
    return ratio, big, small


def labels_outside(y: np.ndarray, *, kind: str, units: int) -> tuple[int, str]:
    """(examples whose label does not fit a model of `units` outputs, what was expected)."""
    rows = _rows(y) if y.ndim > 1 else y.reshape(-1, 1)
    if kind == "sparse":
        v = rows[:, 0]
        bad = (v < 0) | (v >= units) | (v != np.rint(v) if _is_float(v) else False)
        return int(np.sum(bad)), f"integer class ids in [0, {units})"
    if kind in ("binary", "hinge"):
        if rows.shape[1] != units:
            return len(rows), f"{units} label column(s) per example; got {rows.shape[1]}"
        low = -1 if kind == "hinge" else 0
        return int(np.sum(((rows < low) | (rows > 1)).any(axis=1))), f"labels in [{low}, 1]"
    if rows.shape[1] != units:
        return len(rows), f"{units} value(s) per example (the model's outputs); got {rows.shape[1]}"
    return 0, ""


# ----------------------------------------------------------------------------- images


def image_features(features: Mapping[str, np.ndarray]) -> list[str]:
    """Names of image features: numeric, rank 3 per example (height, width, channels)."""
    return [k for k, a in features.items() if a.ndim == 4 and a.dtype.kind in "fiub"]


def per_class_image_stats(images: np.ndarray, ids: np.ndarray | None) -> dict[str, dict[str, float | None]]:
    """{"<class>": {"mean", "std"}} of the pixel values of each class's images ("all" without classes)."""
    groups = {"all": np.arange(len(images))} if ids is None else \
        {str(int(c)): np.nonzero(ids == c)[0] for c in np.unique(ids)}
    out = {}
    for c, idx in groups.items():
        v = images[idx].astype(np.float64)
        v = v[np.isfinite(v)]
        out[c] = {"mean": _num(v.mean()) if v.size else None, "std": _num(v.std()) if v.size else None}
    return out


def augmented(arrays: SplitArrays, augment: Callable, *, seed: int) -> SplitArrays:
    """The split after the training augmentation of epoch 0, in source order.

    Runs the arrays already read through `pipeline.train_stream` without shuffling, so each
    example gets the augmentation the training pipeline applies (same function, same seeding).
    """
    n = arrays.num_examples
    source = tf.data.Dataset.from_tensor_slices((arrays.x, arrays.y, arrays.w))
    b = min(n, 256)
    stream = pipeline.train_stream(source, global_batch=b, seed=seed, shuffle_buffer=0, cache=False,
                                   num_examples=n, augment=augment)
    parts = list(stream.take(math.ceil(n / b)).as_numpy_iterator())
    x, y, w = tf.nest.map_structure(lambda *a: np.concatenate(a)[:n], *parts)
    return SplitArrays(x=x, y=y, w=w)


def image_grid(images: np.ndarray, *, columns: int = 8, low: float | None = None,
               high: float | None = None) -> np.ndarray:
    """Tiles [k, h, w, c] images into one [1, H, W, c'] float image in [0, 1] (1-pixel gaps).

    `low`/`high` fix the intensity scale (pass the raw images' range for the augmented grid too,
    so a change of brightness shows); channels other than 1, 3 or 4 show the first channel.
    """
    imgs = images.astype(np.float32)
    if imgs.shape[-1] not in (1, 3, 4):
        imgs = imgs[..., :1]
    finite = imgs[np.isfinite(imgs)]
    low = float(finite.min()) if low is None and finite.size else (low or 0.0)
    high = float(finite.max()) if high is None and finite.size else (high if high is not None else 1.0)
    imgs = np.clip(np.nan_to_num((imgs - low) / max(high - low, 1e-12)), 0.0, 1.0)
    k, h, w, c = imgs.shape
    cols = min(columns, k)
    rows = math.ceil(k / cols)
    grid = np.ones([rows * (h + 1) + 1, cols * (w + 1) + 1, c], np.float32)
    for i in range(k):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = imgs[i]
    return grid[None]


# ----------------------------------------------------------------------------- the report


def _label_section(y: Any, kind: str) -> dict[str, Any]:
    if isinstance(y, Mapping):  # one label per output
        return {"outputs": {k: _label_section(v, kind) for k, v in named(y, "y").items()}}
    y = np.asarray(y)
    return {"class_counts": class_counts(y)} if kind != "regression" else {"target": target_stats(y)}


def split_report(arrays: SplitArrays, *, kind: str, examples: int | None = None) -> tuple[dict, list[bytes]]:
    """The report of one split and its per-example content hashes (for overlap).

    Args:
      arrays: the split as read.
      kind: the loss's `losses.label_kind` (sparse, categorical, binary, hinge or regression).
      examples: the split's size when only part of it was read (then `inspected` says how much).
    """
    feats = arrays.features
    n = arrays.num_examples
    rep: dict[str, Any] = {"examples": int(examples if examples is not None and examples >= 0 else n)}
    if examples is not None and examples < 0:
        rep["infinite"] = True  # `examples` then counts the examples read
    if rep["examples"] != n:
        rep["inspected"] = n
    rep.update(_label_section(arrays.y, kind))
    rep["features"] = {k: feature_stats(a) for k, a in feats.items()}
    bad = nonfinite_mask([*feats.values(), *named(arrays.y, "y").values()])
    rep["nonfinite"] = int(bad.sum())
    if bad.any():
        rep["first_nonfinite"] = int(np.argmax(bad))
    hashes = content_hashes(feats)
    rep["duplicates"] = duplicate_count(hashes)
    return rep, hashes


def _warn(severity: str, message: str) -> dict[str, str]:
    return {"severity": severity, "message": message}


def _g(v: float | None) -> str:
    return "?" if v is None else f"{v:.3g}"


def imbalance_warning(counts: Mapping[str, int], *, num_classes: int | None, compensated_by: str | None,
                      split: str = "train") -> dict[str, str] | None:
    """The imbalance warning (max/min class ratio above `IMBALANCE_RATIO`), or None."""
    ratio, big, small = imbalance(counts, num_classes)
    if ratio <= IMBALANCE_RATIO:
        return None
    full = {**{str(c): 0 for c in range(num_classes or 0)}, **counts}
    text = (f"{split}: classes are imbalanced: max/min class ratio {_g(ratio)} (class {big}: {full[big]}, "
            f"class {small}: {full[small]})")
    if compensated_by:
        return _warn("info", f"{text}; compensated by {compensated_by}")
    return _warn("warning", f"{text}; set task.class_weight: balanced or task.train_data.sampling: balanced")


def _feature_warnings(split: str, feats: Mapping[str, dict]) -> list[dict[str, str]]:
    out = []
    tabular = {}
    for name, s in feats.items():
        if s["constant"]:
            out.append(_warn("warning", f"{split}: feature {name!r} is constant (one value, {_g(s['min'])}, "
                                        "in every example): it carries no information"))
        elif s.get("constant_columns"):
            cols = s["constant_columns"]
            out.append(_warn("warning", f"{split}: feature {name!r} has {len(cols)} constant column(s) "
                                        f"{cols[:10]}{' ...' if len(cols) > 10 else ''}"))
        ratio = s.get("range_ratio")
        if ratio is not None and ratio > UNSCALED_RATIO:
            r = s["column_ranges"]
            out.append(_warn("warning", f"{split}: feature {name!r} looks unscaled: column ranges differ by "
                                        f"{_g(ratio)}x (column {r['argmax']}: {_g(r['max'])}, column {r['argmin']}: "
                                        f"{_g(r['min'])}); standardize the columns"))
        if "range_ratio" in s and s["min"] is not None and s["max"] is not None and s["max"] > s["min"]:
            tabular[name] = s["max"] - s["min"]
    if len(tabular) > 1 and max(tabular.values()) / min(tabular.values()) > UNSCALED_RATIO:
        big, small = max(tabular, key=tabular.get), min(tabular, key=tabular.get)
        out.append(_warn("warning", f"{split}: features look unscaled: ranges differ by "
                                    f"{_g(tabular[big] / tabular[small])}x ({big!r}: {_g(tabular[big])}, "
                                    f"{small!r}: {_g(tabular[small])}); standardize them"))
    return out


def build_report(splits: Mapping[str, SplitArrays], *, kind: str, units: int | None = None,
                 units_note: str | None = None, examples: Mapping[str, int] | None = None,
                 compensated_by: str | None = None) -> dict[str, Any]:
    """The whole report over the splits read (train first), with its warnings.

    Args:
      splits: {"train": ..., "eval": ..., "test": ...} (any present).
      kind: the loss's `losses.label_kind` (sparse, categorical, binary, hinge or regression).
      units: the model's outputs (None: the label range is not checked; `units_note` says why).
      units_note: why the label range was not checked.
      examples: the full size of splits of which only a part was read.
      compensated_by: the config that already counters imbalance (e.g. "task.class_weight: balanced").
    """
    report: dict[str, Any] = {"splits": {}, "overlap": {}, "warnings": []}
    warns = report["warnings"]
    hashes = {}
    for split, arrays in splits.items():
        rep, hashes[split] = split_report(arrays, kind=kind, examples=(examples or {}).get(split))
        n = arrays.num_examples
        report["splits"][split] = rep
        if "inspected" in rep or rep.get("infinite"):
            warns.append(_warn("info", f"{split}: statistics of the first {rep.get('inspected', n)} examples only"
                                       f"{' (an infinite source)' if rep.get('infinite') else ''}"))
        if rep["nonfinite"]:
            where = [k for k, f in rep["features"].items() if f["nonfinite"]] or ["labels"]
            warns.append(_warn("error", f"{split}: {rep['nonfinite']} example(s) have NaN/Inf features or labels "
                                        f"(first: example {rep['first_nonfinite']}; in {', '.join(where)}); training "
                                        f"stops at the pre-flight unless task.{split}_data.allow_nonfinite: true"))
        warns.extend(_feature_warnings(split, rep["features"]))
        if rep["duplicates"]:
            warns.append(_warn("info", f"{split}: {rep['duplicates']} example(s) repeat an earlier example "
                                       "(same features)"))
        if units is not None and not isinstance(arrays.y, Mapping):
            bad, expected = labels_outside(np.asarray(arrays.y), kind=kind, units=units)
            rep["labels_outside_outputs"] = bad
            if bad:
                warns.append(_warn("error", f"{split}: {bad} label(s) do not fit the model's {units} output(s): "
                                            f"expected {expected}"))
    if units is None and units_note:
        warns.append(_warn("info", f"label range not checked: {units_note}"))
    train = report["splits"].get("train")
    if train and "class_counts" in train:
        w = imbalance_warning(train["class_counts"], num_classes=units if kind in ("sparse", "categorical") else None,
                              compensated_by=compensated_by)
        if w:
            warns.append(w)
    for other in ("eval", "test"):
        if "train" in hashes and other in hashes:
            n = overlap_count(hashes["train"], hashes[other])
            report["overlap"][f"train/{other}"] = n
            if n:
                warns.append(_warn("warning", f"{other}: {n} of {len(hashes[other])} examples also occur in train "
                                              f"(same features): the {other} result is optimistic"))
    order = {"error": 0, "warning": 1, "info": 2}
    warns.sort(key=lambda w: order.get(w["severity"], 3))
    return report


def image_section(arrays: SplitArrays, *, kind: str, augment: Callable | None, seed: int,
                  grid_examples: int = 32) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-class pixel statistics before/after augmentation, and the image grids, of a split.

    Returns:
      ({feature: {"augmentation": bool, "per_class": {"<c>": {"raw": {mean, std}, "augmented": ...}}}},
       {"<feature>/raw": grid, "<feature>/augmented": grid}).
    """
    names = image_features(arrays.features)
    if not names:
        return {}, {}
    aug = augmented(arrays, augment, seed=seed) if augment is not None else None
    y = np.asarray(arrays.y) if not isinstance(arrays.y, Mapping) else None
    ids = class_ids(y) if (y is not None and kind != "regression") else None
    stats, grids = {}, {}
    # Evenly spaced examples: a source ordered by class still shows every class in the grid.
    pick = np.unique(np.linspace(0, arrays.num_examples - 1, min(grid_examples, arrays.num_examples)).astype(int))
    for name in names:
        raw = arrays.features[name]
        raw_stats = per_class_image_stats(raw, ids)
        entry: dict[str, Any] = {"augmentation": aug is not None, "per_class": {}}
        aug_stats = per_class_image_stats(aug.features[name], ids) if aug is not None else {}
        for c, s in raw_stats.items():
            entry["per_class"][c] = {"raw": s, **({"augmented": aug_stats[c]} if aug is not None else {})}
        stats[name] = entry
        finite = raw[np.isfinite(raw)] if _is_float(raw) else raw
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        grids[f"{name}/raw"] = image_grid(raw[pick], low=low, high=high)
        if aug is not None:
            grids[f"{name}/augmented"] = image_grid(aug.features[name][pick], low=low, high=high)
    return stats, grids


# ----------------------------------------------------------------------------- output


def to_markdown(report: Mapping[str, Any]) -> str:
    """`data_report.md`: a table per split, overlap and the warnings."""
    lines = ["# Data report", "", "| split | examples | non-finite | duplicates | classes / target |",
             "|---|---|---|---|---|"]
    for split, s in report["splits"].items():
        if "class_counts" in s:
            labels = ", ".join(f"{k}: {v}" for k, v in s["class_counts"].items())
        elif "target" in s:
            t = s["target"]
            labels = f"min {_g(t['min'])}, max {_g(t['max'])}, mean {_g(t['mean'])}, std {_g(t['std'])}"
        else:
            labels = "per output"
        seen = f" (first {s['inspected']})" if "inspected" in s else (" (infinite: first)" if s.get("infinite") else "")
        lines.append(f"| {split} | {s['examples']}{seen} | {s['nonfinite']} | {s['duplicates']} | {labels} |")
    if report["overlap"]:
        lines += ["", "Overlap (examples with the same features as a training example): " +
                  ", ".join(f"{k} {v}" for k, v in report["overlap"].items())]
    for split, s in report["splits"].items():
        lines += ["", f"## {split} features", "",
                  "| feature | shape | dtype | min | max | mean | std | non-finite | constant |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, f in s["features"].items():
            const = "yes" if f["constant"] else (f"{len(f['constant_columns'])} columns"
                                                 if f.get("constant_columns") else "no")
            lines.append(f"| {name} | {f['shape']} | {f['dtype']} | {_g(f['min'])} | {_g(f['max'])} | "
                         f"{_g(f['mean'])} | {_g(f['std'])} | {f['nonfinite']} | {const} |")
        for name, img in s.get("images", {}).items():
            title = (f"### {split} images {name!r}: pixel mean / std per class "
                     f"({'raw -> augmented' if img['augmentation'] else 'no augmentation'})")
            lines += ["", title, "",
                      "| class | raw mean | raw std | augmented mean | augmented std |", "|---|---|---|---|---|"]
            for c, v in img["per_class"].items():
                a = v.get("augmented", {})
                lines.append(f"| {c} | {_g(v['raw']['mean'])} | {_g(v['raw']['std'])} | {_g(a.get('mean'))} | "
                             f"{_g(a.get('std'))} |")
    lines += ["", "## Warnings", ""]
    lines += [f"- **{w['severity']}**: {w['message']}" for w in report["warnings"]] or ["- none"]
    return "\n".join(lines) + "\n"


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The short console summary: one line per split, then one per warning."""
    out = []
    for split, s in report["splits"].items():
        labels = ""
        if "class_counts" in s:
            labels = "; classes " + ", ".join(f"{k}: {v}" for k, v in s["class_counts"].items())
        elif "target" in s:
            t = s["target"]
            labels = f"; target mean {_g(t['mean'])}, std {_g(t['std'])}, range [{_g(t['min'])}, {_g(t['max'])}]"
        out.append(f"{split}: {s['examples']} examples, {s['nonfinite']} non-finite, {s['duplicates']} duplicates"
                   f"{labels}")
    if report["overlap"]:
        out.append("overlap: " + ", ".join(f"{k} {v}" for k, v in report["overlap"].items()))
    out += [f"[{w['severity']}] {w['message']}" for w in report["warnings"]]
    return out


def write_images(grids: Mapping[str, np.ndarray], *, logdir: str, split: str = "train",
                 text: str | None = None) -> None:
    """Writes each grid as a TensorBoard image `<split>/<feature>/<raw|augmented>` under `logdir`
    (and `text`, the markdown report, as the text summary `data_report`)."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=0):
        for tag, grid in grids.items():
            tf.summary.image(f"{split}/{tag}", grid, step=0, max_outputs=1)
        if text is not None:
            tf.summary.text("data_report", text, step=0)
    writer.flush()
    writer.close()


def read_limit(spec: Any, num_examples: int, *, batch_size: int, batches: int,
               max_bytes: int = 2 * pipeline.IN_MEMORY_BYTES) -> int | None:
    """How many examples `--mode=inspect` reads of a split: all of a finite one up to `max_bytes`,
    the first `batches` batches (at least one) of an infinite one."""
    if num_examples < 0:
        return max(batches, 1) * batch_size
    shapes = tf.nest.flatten(spec)
    if not all(s.shape.is_fully_defined() for s in shapes):
        return None
    per = max(sum(int(np.prod(s.shape)) * s.dtype.size for s in shapes), 1)
    return None if num_examples * per <= max_bytes else max(max_bytes // per, 1)


def write_report(report: Mapping[str, Any], model_dir: str) -> tuple[str, str]:
    """Writes `data_report.json` and `data_report.md` into `model_dir` (each atomically); returns their paths."""
    paths = []
    for name, text in (("data_report.json", json.dumps(report, indent=2, default=_json_default) + "\n"),
                       ("data_report.md", to_markdown(report))):
        path = os.path.join(model_dir, name)
        atomic.write_text(path, text)
        paths.append(path)
    return paths[0], paths[1]


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")
