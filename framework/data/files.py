"""Loaders for users' own data on disk: image folders, TFRecord, CSV and NumPy `.npz` files.

Each is a registered dataset factory `(split, **kwargs)` returning an unbatched dataset of
(features, label) with static shapes. The eval split comes from a separate source
(`eval_directory`, `eval_files`, `eval_path`) or, where a loader offers it, from a seeded
`validation_fraction` of the train source (the same seed always gives the same disjoint parts).
A path that does not exist, a folder without images, a missing column or array and a bad
feature spec are reported with the kwarg, the value received and what was expected.

`write_tfrecord` writes arrays as `tf.train.Example` records that the "tfrecord" loader reads.
"""
from __future__ import annotations

import csv
import numbers
import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from framework import registry
from framework.data.bundled import check_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TFRECORD_DTYPES = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}


def _check_fraction(validation_fraction: Any, name: str) -> float:
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, numbers.Real) \
            or not 0.0 <= float(validation_fraction) < 1.0:
        raise ValueError(f"{name}.validation_fraction: expected a number in [0, 1); got {validation_fraction!r}")
    return float(validation_fraction)


def _split_rows(n: int, split: str, validation_fraction: float, seed: int, name: str = "dataset") -> np.ndarray:
    """Indices of `split` when one source of `n` rows is divided by a seeded permutation.

    Args:
      n: number of rows of the source.
      split: "train" (the rows not held out) or "eval" (the held-out rows).
      validation_fraction: part held out for eval, in [0, 1).
      seed: seed of the permutation.
      name: the dataset's name, for messages.

    Returns:
      The split's row indices in ascending order.
    """
    check_split(split, name)
    validation_fraction = _check_fraction(validation_fraction, name)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{name}.seed: expected a non-negative integer; got {seed!r}")
    order = np.random.default_rng(int(seed)).permutation(n)
    n_eval = int(round(n * validation_fraction))
    if validation_fraction > 0 and not 0 < n_eval < n:
        raise ValueError(f"{name}.validation_fraction: holding out {validation_fraction!r} of {n} examples leaves "
                         f"{n_eval} for eval and {n - n_eval} for training; expected both non-empty; "
                         f"got validation_fraction={validation_fraction!r}")
    return np.sort(order[:n_eval] if split == "eval" else order[n_eval:])


def _eval_needs_source(name: str, eval_key: str, eval_value: Any, validation_fraction: float) -> None:
    raise ValueError(f"{name}: the eval split needs {eval_key} or validation_fraction > 0; "
                     f"got {eval_key}={eval_value!r}, validation_fraction={validation_fraction!r}")


# ----------------------------------------------------------------------------------------------
# Image folders


def list_images(directory: str, *, class_names: Sequence[str] | None = None,
                require_all: bool = True, allow_extra: bool = True,
                key: str = "directory") -> tuple[list[str], list[int], list[str]]:
    """(file paths, label ids, class names) of a folder with one subfolder per class.

    Labels are positions in `class_names`, by default the sorted subfolder names (string order:
    "10" sorts before "2"). Files are listed in sorted order; only `IMAGE_EXTENSIONS` count.

    Args:
      directory: the folder.
      class_names: the classes in label order; default: the sorted subfolders of `directory`.
      require_all: every class must have a subfolder (else a class without one has no images).
      allow_extra: subfolders with images that are not among `class_names` are ignored (else an
        error: an eval folder must not hold classes the training folder lacks).
      key: the kwarg `directory` came from, for messages.

    Raises:
      ValueError: `directory` is not a folder, has no class subfolders or no images, or a
        subfolder does not belong to `class_names`.
    """
    if not isinstance(directory, str) or not directory or not os.path.isdir(directory):
        raise ValueError(f"image_folder.{key}: not a directory (expected a folder with one subfolder per "
                         f"class); got {directory!r}")
    present = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    if class_names is not None:
        if isinstance(class_names, str) or not all(isinstance(c, str) and c for c in class_names) \
                or len(set(class_names)) != len(class_names) or not class_names:
            raise ValueError(f"image_folder.class_names: expected a list of distinct subfolder names; "
                             f"got {class_names!r}")
        classes = list(class_names)
    else:
        classes = present
    if not classes:
        raise ValueError(f"image_folder.{key}: expected one subfolder per class; got no subfolder in {directory!r}")
    unknown = [d for d in present if d not in classes and _has_images(os.path.join(directory, d))]
    if unknown and not allow_extra:
        raise ValueError(f"image_folder.{key}: subfolder(s) {unknown} of {directory!r} are not among the "
                         f"classes {classes}; got subfolders {present}")
    paths, labels = [], []
    for i, c in enumerate(classes):
        sub = os.path.join(directory, c)
        if not os.path.isdir(sub):
            if require_all:
                raise ValueError(f"image_folder.class_names: expected a subfolder {c!r} in {directory!r}; "
                                 f"got subfolders {present}")
            continue
        for f in sorted(os.listdir(sub)):
            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(sub, f)):
                paths.append(os.path.join(sub, f))
                labels.append(i)
    if not paths:
        raise ValueError(f"image_folder.{key}: expected image files ({', '.join(IMAGE_EXTENSIONS)}) in the class "
                         f"subfolders; got none under {directory!r} (subfolders {present})")
    return paths, labels, classes


def _has_images(folder: str) -> bool:
    return any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(folder))


@registry.register_dataset("image_folder")
def image_folder(split: str, directory: str = "", eval_directory: str | None = None,
                 image_size: Sequence[int] = (32, 32), channels: int = 3, validation_fraction: float = 0.0,
                 seed: int = 0, class_names: Sequence[str] | None = None) -> tf.data.Dataset:
    """Images of a folder with one subfolder per class, decoded, resized, float32 in [0, 1].

    PNG, JPEG, BMP and (first frame of) GIF files are decoded with `tf.io`, converted to
    `channels` channels and resized (bilinear) to `image_size`. The label is the class's position
    in `class_names`, by default the sorted subfolder names of `directory`; `eval_directory` uses
    the same mapping (a class may be missing there).

    Args:
      split: "train" or "eval".
      directory: the training folder (`root/<class>/<image>`).
      eval_directory: a separate eval folder with the same class subfolders.
      image_size: (height, width) of the output images.
      channels: 1 (grayscale) or 3 (RGB).
      validation_fraction: without `eval_directory`, this part of `directory` (seeded) is eval.
      seed: seed of the validation division.
      class_names: the classes in label order (default: sorted subfolder names).

    Returns:
      Unbatched dataset of (image float32 [height, width, channels], label int32).

    Raises:
      ValueError: a bad split, folder, `image_size`, `channels` or `validation_fraction`.
    """
    check_split(split, "image_folder")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"image_folder.channels: expected 1 or 3; got {channels!r}")
    try:
        size = [int(s) for s in image_size]
        ok = len(size) == 2 and all(s > 0 and s == t for s, t in zip(size, image_size))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"image_folder.image_size: expected [height, width], two positive integers; "
                         f"got {image_size!r}")
    validation_fraction = _check_fraction(validation_fraction, "image_folder")
    if split == "eval" and eval_directory:
        classes = class_names
        if classes is None and directory:
            classes = list_images(directory)[2]  # the train folder's mapping
        paths, labels, _ = list_images(eval_directory, class_names=classes, require_all=False,
                                       allow_extra=class_names is not None, key="eval_directory")
        idx = np.arange(len(paths))
    else:
        if split == "eval" and validation_fraction == 0.0:
            _eval_needs_source("image_folder", "eval_directory", eval_directory, validation_fraction)
        paths, labels, _ = list_images(directory, class_names=class_names)
        idx = _split_rows(len(paths), split, validation_fraction, seed, "image_folder")

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        img = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        img = tf.image.resize(tf.image.convert_image_dtype(img, tf.float32), size)
        img = tf.clip_by_value(img, 0.0, 1.0)  # bilinear resizing stays in range; be exact anyway
        img.set_shape([*size, channels])
        return img, label

    ds = tf.data.Dataset.from_tensor_slices((np.array(paths)[idx], np.array(labels, np.int32)[idx]))
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ----------------------------------------------------------------------------------------------
# TFRecord


def write_tfrecord(path: str, x: Any, y: Any, *, feature_key: str = "x", label_key: str = "y") -> int:
    """Writes arrays as `tf.train.Example` records: flattened float features, int64 or float label.

    Read them back with the "tfrecord" dataset and `features={feature_key: {"shape": x.shape[1:],
    "dtype": "float32"}, label_key: {"shape": y.shape[1:], "dtype": "int64" (integer y) or
    "float32"}}`.

    Args:
      path: the file to write (overwritten).
      x: features, one row per example.
      y: labels, one per example (integers are stored as int64, others as float).
      feature_key: the features' name in each record.
      label_key: the label's name in each record.

    Returns:
      The number of records written.

    Raises:
      ValueError: `x` and `y` differ in length.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"write_tfrecord: x and y must have one row per example and the same length; "
                         f"got x shape {x.shape} and y shape {y.shape}")
    integer = np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_
    with tf.io.TFRecordWriter(path) as w:
        for xi, yi in zip(x, y):
            feats = {feature_key: tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(xi).tolist()))}
            yv = np.ravel(yi)
            if integer:
                feats[label_key] = tf.train.Feature(int64_list=tf.train.Int64List(value=yv.astype(np.int64).tolist()))
            else:
                feats[label_key] = tf.train.Feature(float_list=tf.train.FloatList(value=yv.tolist()))
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return len(x)


def _match_files(spec: Any, key: str) -> list[str]:
    """Sorted files matching a glob pattern or a list of patterns / paths."""
    if isinstance(spec, (str, os.PathLike)):
        patterns = [os.fspath(spec)]
    elif isinstance(spec, (list, tuple)) and spec and all(isinstance(p, (str, os.PathLike)) for p in spec):
        patterns = [os.fspath(p) for p in spec]
    else:
        raise ValueError(f"tfrecord.{key}: expected a glob pattern or a list of paths / patterns; got {spec!r}")
    found = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    files = [f for f in found if not tf.io.gfile.isdir(f)]
    if not files:
        raise ValueError(f"tfrecord.{key}: no file matches; expected existing TFRecord files (a glob pattern "
                         f"or a list of paths); got {spec!r}")
    return files


def _feature_spec(features: Any, feature_key: str, label_key: str) -> dict[str, tf.io.FixedLenFeature]:
    example = "{x: {shape: [4], dtype: float32}, y: {shape: [], dtype: int64}}"
    if not isinstance(features, dict) or not features:
        raise ValueError(f"tfrecord.features: expected a mapping name -> {{shape, dtype}} such as {example}; "
                         f"got {features!r}")
    for key, what in ((feature_key, "feature_key"), (label_key, "label_key")):
        if key not in features:
            raise ValueError(f"tfrecord.features: expected an entry for {what} {key!r} (e.g. {example}); "
                             f"got keys {sorted(features)}")
    spec = {}
    for name, f in features.items():
        if not isinstance(f, dict) or set(f) - {"shape", "dtype", "default"}:
            raise ValueError(f"tfrecord.features.{name}: expected {{shape: [...], dtype: float32 | int64 | string}}; "
                             f"got {f!r}")
        dtype = TFRECORD_DTYPES.get(f.get("dtype", "float32"))
        if dtype is None:
            raise ValueError(f"tfrecord.features.{name}.dtype: expected one of {', '.join(TFRECORD_DTYPES)}; "
                             f"got {f.get('dtype')!r}")
        shape = f.get("shape", [])
        if isinstance(shape, numbers.Integral):
            shape = [shape]
        if not isinstance(shape, (list, tuple)) or not all(
                isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"tfrecord.features.{name}.shape: expected a list of positive integers (a fixed "
                             f"shape; [] for a scalar); got {shape!r}")
        spec[name] = tf.io.FixedLenFeature([int(s) for s in shape], dtype, default_value=f.get("default"))
    return spec


@registry.register_dataset("tfrecord")
def tfrecord(split: str, files: Any = None, eval_files: Any = None, features: dict | None = None,
             feature_key: str = "x", label_key: str = "y", compression_type: str = "") -> tf.data.Dataset:
    """`tf.train.Example` records parsed with a fixed-shape feature spec.

    Args:
      split: "train" (reads `files`) or "eval" (reads `eval_files`).
      files: a glob pattern or a list of paths / patterns of the training records.
      eval_files: the same for the eval records (required for the eval split).
      features: name -> {shape: [...], dtype: float32 | int64 | string[, default: value]}, e.g.
        {"x": {"shape": [4], "dtype": "float32"}, "y": {"shape": [], "dtype": "int64"}}.
      feature_key: the entry of `features` that is the model's input.
      label_key: the entry that is the label (int64 labels become int32).
      compression_type: "" (none), "GZIP" or "ZLIB".

    Returns:
      Unbatched dataset of (features, label) in file order.

    Raises:
      ValueError: bad split, no matching file, a bad feature spec or compression type.
    """
    check_split(split, "tfrecord")
    key = "eval_files" if split == "eval" else "files"
    source = eval_files if split == "eval" else files
    if source is None:
        raise ValueError(f"tfrecord.{key}: required for the {split} split (a glob pattern or a list of paths); "
                         f"got {source!r}")
    if compression_type not in ("", "GZIP", "ZLIB", None):
        raise ValueError(f"tfrecord.compression_type: expected '', 'GZIP' or 'ZLIB'; got {compression_type!r}")
    paths = _match_files(source, key)
    spec = _feature_spec(features, feature_key, label_key)

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        ex = tf.io.parse_single_example(record, spec)
        y = ex[label_key]
        return ex[feature_key], tf.cast(y, tf.int32) if y.dtype == tf.int64 else y

    return tf.data.TFRecordDataset(paths, compression_type=compression_type or "").map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ----------------------------------------------------------------------------------------------
# CSV and NumPy files


def _select(x: np.ndarray, y: np.ndarray, *, split: str, eval_path: str | None, validation_fraction: float,
            seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `split`: everything from an eval file, else the seeded train/eval division of one file."""
    if split == "eval" and eval_path:
        return x, y
    if split == "eval" and validation_fraction == 0.0:
        _eval_needs_source(name, "eval_path", eval_path, validation_fraction)
    idx = _split_rows(len(x), split, validation_fraction, seed, name)
    return x[idx], y[idx]


def _source_path(name: str, split: str, path: Any, eval_path: Any, validation_fraction: float) -> tuple[str, str]:
    """(kwarg name, file) that `split` reads; checks the file exists."""
    check_split(split, name)
    _check_fraction(validation_fraction, name)
    key, source = ("eval_path", eval_path) if (split == "eval" and eval_path) else ("path", path)
    if split == "eval" and not eval_path and validation_fraction == 0.0:
        _eval_needs_source(name, "eval_path", eval_path, validation_fraction)
    if not isinstance(source, (str, os.PathLike)) or not source or not os.path.isfile(source):
        raise ValueError(f"{name}.{key}: expected an existing file; got {source!r}")
    return key, os.fspath(source)


def _read_csv(source: str, key: str, *, label_column: str, feature_columns: Sequence[str] | None,
              delimiter: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 features [n, d], float64 labels [n]) of a CSV file with a header row."""
    with open(source, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        rows = [r for r in reader if r]
    if not header:
        raise ValueError(f"csv.{key}: expected a header row and data rows; got an empty file {source!r}")
    header = [h.strip() for h in header]
    if label_column not in header:
        raise ValueError(f"csv.label_column: {label_column!r} is not a column; expected one of {header}; "
                         f"got {label_column!r}")
    if feature_columns is None:
        cols = [c for c in header if c != label_column]
    else:
        cols = [feature_columns] if isinstance(feature_columns, str) else list(feature_columns)
        missing = [c for c in cols if c not in header]
        if missing or not cols or label_column in cols:
            raise ValueError(f"csv.feature_columns: expected a non-empty list of columns of {header} without the "
                             f"label column {label_column!r}; got {feature_columns!r}")
    if not cols:
        raise ValueError(f"csv.feature_columns: {source!r} has no column besides the label {label_column!r}; "
                         f"got columns {header}")
    if not rows:
        raise ValueError(f"csv.{key}: expected data rows after the header; got none in {source!r}")
    where = {c: header.index(c) for c in [*cols, label_column]}
    x = np.empty((len(rows), len(cols)), np.float32)
    y = np.empty(len(rows), np.float64)
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"csv.{key}: line {i + 2} of {source!r} has {len(row)} fields; expected {len(header)} "
                             f"(the header's); got {row!r:.120}")
        for c in [*cols, label_column]:
            value = row[where[c]].strip()
            try:
                v = float(value)
            except ValueError:
                raise ValueError(f"csv.{key}: column {c!r}, line {i + 2} of {source!r}: expected a number; "
                                 f"got {value!r}") from None
            if c == label_column:
                y[i] = v
            else:
                x[i, cols.index(c)] = v
    return x, y


def _integer_valued(y: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(y)) and np.all(np.equal(np.mod(y, 1), 0)))


@registry.register_dataset("csv")
def csv_file(split: str, path: str = "", eval_path: str | None = None, label_column: str = "label",
             feature_columns: Sequence[str] | None = None, validation_fraction: float = 0.0, seed: int = 0,
             delimiter: str = ",", label_dtype: str | None = None) -> tf.data.Dataset:
    """A CSV file with a header row: a float32 feature vector and a label per line.

    The label is int32 when every label of the training file (`path`) is integer-valued (class
    ids), else float32 (a regression target); `label_dtype` overrides this.

    Args:
      split: "train" or "eval".
      path: the training file.
      eval_path: a separate eval file with the same columns.
      label_column: the label's column name.
      feature_columns: the feature columns in order (default: every other column).
      validation_fraction: without `eval_path`, this part of `path` (seeded) is eval.
      seed: seed of the validation division.
      delimiter: the field separator.
      label_dtype: "int32", "float32" or None (decided from the labels).

    Returns:
      Unbatched dataset of (features float32 [d], label int32 or float32).

    Raises:
      ValueError: bad split, missing file or column, a non-numeric value, bad `label_dtype`.
    """
    if label_dtype not in (None, "int32", "float32"):
        raise ValueError(f"csv.label_dtype: expected int32, float32 or null; got {label_dtype!r}")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"csv.delimiter: expected one character; got {delimiter!r}")
    key, source = _source_path("csv", split, path, eval_path, validation_fraction)
    opts = dict(label_column=label_column, feature_columns=feature_columns, delimiter=delimiter)
    x, yf = _read_csv(source, key, **opts)
    if label_dtype is None:
        integer = _integer_valued(yf)
        if key == "eval_path" and isinstance(path, (str, os.PathLike)) and path and os.path.isfile(path):
            integer = _integer_valued(_read_csv(os.fspath(path), "path", **opts)[1])  # train decides
        label_dtype = "int32" if integer else "float32"
    if label_dtype == "int32" and not _integer_valued(yf):
        bad = yf[~(np.isfinite(yf) & (np.mod(yf, 1) == 0))][0]
        raise ValueError(f"csv.{key}: label column {label_column!r} of {source!r} must hold integer class ids for "
                         f"label_dtype int32; got {float(bad)!r}")
    y = yf.astype(np.int32 if label_dtype == "int32" else np.float32)
    x, y = _select(x, y, split=split, eval_path=eval_path, validation_fraction=validation_fraction, seed=seed,
                   name="csv")
    return tf.data.Dataset.from_tensor_slices((x, y))


@registry.register_dataset("numpy")
def numpy_file(split: str, path: str = "", eval_path: str | None = None, x_key: str = "x", y_key: str = "y",
               validation_fraction: float = 0.0, seed: int = 0) -> tf.data.Dataset:
    """Arrays `x_key` and `y_key` of a NumPy `.npz` file (as written by `np.savez`).

    Floating features become float32; integer labels become int32 and floating labels float32.

    Args:
      split: "train" or "eval".
      path: the training `.npz` file.
      eval_path: a separate eval `.npz` file with the same array names.
      x_key: the features' array name.
      y_key: the labels' array name.
      validation_fraction: without `eval_path`, this part of `path` (seeded) is eval.
      seed: seed of the validation division.

    Returns:
      Unbatched dataset of (features, label), one per row.

    Raises:
      ValueError: bad split, missing file or array, not an `.npz`, arrays of different lengths.
    """
    key, source = _source_path("numpy", split, path, eval_path, validation_fraction)
    try:
        data = np.load(source, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"numpy.{key}: expected a NumPy .npz archive; got {source!r} ({e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"numpy.{key}: expected a .npz archive with arrays {x_key!r} and {y_key!r} (np.savez); "
                         f"got a single array in {source!r}")
    with data:
        for k, what in ((x_key, "x_key"), (y_key, "y_key")):
            if k not in data.files:
                raise ValueError(f"numpy.{what}: no array {k!r} in {source!r}; expected one of {data.files}; "
                                 f"got {k!r}")
        x, y = data[x_key], data[y_key]
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"numpy.{key}: arrays {x_key!r} and {y_key!r} must have one row per example and the same "
                         f"length; got shapes {x.shape} and {y.shape} in {source!r}")
    x, y = _select(x, y, split=split, eval_path=eval_path, validation_fraction=validation_fraction, seed=seed,
                   name="numpy")
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if np.issubdtype(y.dtype, np.integer):
        y = y.astype(np.int32)
    elif np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, y))
