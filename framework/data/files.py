"""Loaders for users' own data on disk: image folders, TFRecord, CSV and NumPy `.npz` files.

Each is a registered dataset factory `(split, **kwargs)` returning unbatched (features, label)
elements. Paths that do not exist, folders without images and missing columns are reported
with the kwarg, the value received and what was expected.
"""
from __future__ import annotations

import csv
import glob
import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from framework import registry

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _split_rows(n: int, split: str, validation_fraction: float, seed: int) -> np.ndarray:
    """Indices of `split` when one source is divided into train and eval by a seeded permutation."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval'; got {split!r}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction: expected a number in [0, 1); got {validation_fraction!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_eval = int(round(n * validation_fraction))
    return np.sort(order[:n_eval] if split == "eval" else order[n_eval:])


def list_images(directory: str, *, class_names: Sequence[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """(file paths, label ids, class names) of a folder with one subfolder per class."""
    if not os.path.isdir(directory):
        raise ValueError(f"image_folder.directory: not a directory; got {directory!r}")
    classes = list(class_names) if class_names else sorted(
        d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    if not classes:
        raise ValueError(f"image_folder.directory: expected one subfolder per class; got none in {directory!r}")
    paths, labels = [], []
    for i, c in enumerate(classes):
        sub = os.path.join(directory, c)
        if not os.path.isdir(sub):
            raise ValueError(f"image_folder.class_names: no subfolder {c!r} in {directory!r}; got {classes!r}")
        for f in sorted(os.listdir(sub)):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(sub, f))
                labels.append(i)
    if not paths:
        raise ValueError(f"image_folder.directory: no images ({', '.join(IMAGE_EXTENSIONS)}) under {directory!r}")
    return paths, labels, classes


@registry.register_dataset("image_folder")
def image_folder(split: str, directory: str = "", eval_directory: str | None = None,
                 image_size: Sequence[int] = (32, 32), channels: int = 3, validation_fraction: float = 0.0,
                 seed: int = 0, class_names: Sequence[str] | None = None) -> tf.data.Dataset:
    """Images decoded (PNG/JPEG/BMP/GIF), resized to `image_size`, float32 in [0, 1]; labels by folder.

    Eval data comes from `eval_directory`, or from `validation_fraction` of `directory`.
    """
    if channels not in (1, 3):
        raise ValueError(f"image_folder.channels: expected 1 or 3; got {channels!r}")
    if split == "eval" and eval_directory:
        directory, validation_fraction = eval_directory, 0.0
        split_for_rows = "train"
    else:
        split_for_rows = split
        if split == "eval" and validation_fraction == 0.0:
            raise ValueError("image_folder: the eval split needs eval_directory or validation_fraction > 0; "
                             f"got eval_directory={eval_directory!r}, validation_fraction={validation_fraction!r}")
    paths, labels, _ = list_images(directory, class_names=class_names)
    idx = _split_rows(len(paths), split_for_rows, validation_fraction, seed)
    size = [int(s) for s in image_size]

    def load(path: tf.Tensor, label: tf.Tensor):
        img = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        img = tf.image.resize(tf.image.convert_image_dtype(img, tf.float32), size)
        img.set_shape([*size, channels])
        return img, label

    ds = tf.data.Dataset.from_tensor_slices((np.array(paths)[idx], np.array(labels, np.int32)[idx]))
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def write_tfrecord(path: str, x: np.ndarray, y: np.ndarray, *, feature_key: str = "x", label_key: str = "y") -> None:
    """Writes arrays as tf.train.Example records (float features, int64 or float label)."""
    with tf.io.TFRecordWriter(path) as w:
        for xi, yi in zip(x, y):
            feats = {feature_key: tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(xi).tolist()))}
            yv = np.ravel(yi)
            if np.issubdtype(yv.dtype, np.integer):
                feats[label_key] = tf.train.Feature(int64_list=tf.train.Int64List(value=yv.tolist()))
            else:
                feats[label_key] = tf.train.Feature(float_list=tf.train.FloatList(value=yv.tolist()))
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())


def _files(spec: Any, key: str) -> list[str]:
    pattern = [spec] if isinstance(spec, str) else list(spec or [])
    files = sorted(f for p in pattern for f in glob.glob(p))
    if not files:
        raise ValueError(f"tfrecord.{key}: no file matches; got {spec!r}")
    return files


@registry.register_dataset("tfrecord")
def tfrecord(split: str, files: Any = None, eval_files: Any = None, features: dict | None = None,
             feature_key: str = "x", label_key: str = "y") -> tf.data.Dataset:
    """tf.train.Example records; `features` maps names to {shape, dtype} (float32 / int64)."""
    if split == "eval" and eval_files is None:
        raise ValueError(f"tfrecord.eval_files: required for the eval split; got {eval_files!r}")
    paths = _files(eval_files if split == "eval" else files, "eval_files" if split == "eval" else "files")
    if not features or feature_key not in features or label_key not in features:
        raise ValueError(f"tfrecord.features: expected specs for {feature_key!r} and {label_key!r}, e.g. "
                         f"{{x: {{shape: [4], dtype: float32}}, y: {{shape: [], dtype: int64}}}}; got {features!r}")
    spec = {}
    for name, f in features.items():
        dtype = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}.get(f.get("dtype", "float32"))
        if dtype is None:
            raise ValueError(f"tfrecord.features.{name}.dtype: expected float32 | int64 | string; got {f!r}")
        spec[name] = tf.io.FixedLenFeature(list(f.get("shape", [])), dtype)

    def parse(record: tf.Tensor):
        ex = tf.io.parse_single_example(record, spec)
        y = ex[label_key]
        return ex[feature_key], tf.cast(y, tf.int32) if y.dtype == tf.int64 else y

    return tf.data.TFRecordDataset(paths).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _select(x: np.ndarray, y: np.ndarray, *, split: str, eval_path: str | None, validation_fraction: float,
            seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `split`: everything from an eval file, else the seeded train/eval division of one file."""
    if split == "eval" and eval_path:
        return x, y
    if split == "eval" and validation_fraction == 0.0:
        raise ValueError(f"{name}: the eval split needs eval_path or validation_fraction > 0; "
                         f"got eval_path={eval_path!r}, validation_fraction={validation_fraction!r}")
    idx = _split_rows(len(x), split, validation_fraction, seed)
    return x[idx], y[idx]


@registry.register_dataset("csv")
def csv_file(split: str, path: str = "", eval_path: str | None = None, label_column: str = "label",
             feature_columns: Sequence[str] | None = None, validation_fraction: float = 0.0,
             seed: int = 0) -> tf.data.Dataset:
    """A CSV file with a header: float32 feature vector; int32 label if all labels are integers."""
    source = eval_path if (split == "eval" and eval_path) else path
    if not os.path.isfile(source):
        raise ValueError(f"csv.{'eval_path' if source == eval_path else 'path'}: no such file; got {source!r}")
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"csv.path: no data rows in {source!r}")
    header = list(rows[0])
    if label_column not in header:
        raise ValueError(f"csv.label_column: {label_column!r} is not a column; columns: {header}")
    cols = list(feature_columns) if feature_columns else [c for c in header if c != label_column]
    missing = [c for c in cols if c not in header]
    if missing:
        raise ValueError(f"csv.feature_columns: no column(s) {missing}; columns: {header}")
    try:
        x = np.array([[float(r[c]) for c in cols] for r in rows], np.float32)
        yf = np.array([float(r[label_column]) for r in rows])
    except ValueError as e:
        raise ValueError(f"csv.path: non-numeric value in {source!r} ({e})") from None
    y = yf.astype(np.int32) if np.all(np.equal(np.mod(yf, 1), 0)) else yf.astype(np.float32)
    x, y = _select(x, y, split=split, eval_path=eval_path, validation_fraction=validation_fraction, seed=seed,
                   name="csv")
    return tf.data.Dataset.from_tensor_slices((x, y))


@registry.register_dataset("numpy")
def numpy_file(split: str, path: str = "", eval_path: str | None = None, x_key: str = "x", y_key: str = "y",
               validation_fraction: float = 0.0, seed: int = 0) -> tf.data.Dataset:
    """Arrays `x_key` and `y_key` of an `.npz` file."""
    source = eval_path if (split == "eval" and eval_path) else path
    if not os.path.isfile(source):
        raise ValueError(f"numpy.{'eval_path' if source == eval_path else 'path'}: no such file; got {source!r}")
    with np.load(source, allow_pickle=False) as data:
        for k, name in ((x_key, "x_key"), (y_key, "y_key")):
            if k not in data.files:
                raise ValueError(f"numpy.{name}: no array {k!r} in {source!r}; arrays: {data.files}")
        x, y = data[x_key], data[y_key]
    if len(x) != len(y):
        raise ValueError(f"numpy: {x_key} and {y_key} differ in length; got {len(x)} and {len(y)}")
    x, y = _select(x, y, split=split, eval_path=eval_path, validation_fraction=validation_fraction, seed=seed,
                   name="numpy")
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, y))
