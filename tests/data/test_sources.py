"""Bundled scikit-learn sets and loaders for files the tests write (image folder, TFRecord, CSV, npz)."""
import os

import numpy as np
import pytest
import tensorflow as tf

from framework.data import bundled, files


def test_digits_split_is_fixed_disjoint_and_complete():
    tr = list(bundled.digits("train"))
    ev = list(bundled.digits("eval"))
    assert len(tr) + len(ev) == 1797 and len(ev) == 450
    x, y = tr[0]
    assert x.shape == (8, 8, 1) and x.dtype == tf.float32 and y.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    a1, _ = bundled.load_arrays("digits", "train")
    a2, _ = bundled.load_arrays("digits", "train")
    np.testing.assert_array_equal(a1, a2)
    with pytest.raises(ValueError, match="split.*'test'"):
        bundled.digits("test")


def test_digits_class_subset_relabels():
    ys = {int(y) for _, y in bundled.digits("train", classes=[5, 6, 7])}
    assert ys == {0, 1, 2}


def test_tabular_sets_shapes():
    x, y = next(iter(bundled.registry.DATASETS.get("breast_cancer")("train")))
    assert x.shape == (30,) and int(y) in (0, 1)
    x, y = next(iter(bundled.registry.DATASETS.get("diabetes")("eval")))
    assert x.shape == (10,) and y.shape == (1,) and y.dtype == tf.float32


def test_arrays_source_checks_lengths():
    with pytest.raises(ValueError, match=r"same length.*'x': 3, 'y': 2"):
        bundled.from_arrays(np.zeros((3, 2)), np.zeros(2))


def test_image_folder_reads_png_and_jpeg(tmp_path):
    for c in ("cat", "dog"):
        os.makedirs(tmp_path / c)
        for i in range(3):
            img = tf.cast(tf.fill([5, 7, 3], 40 * i + (100 if c == "dog" else 0)), tf.uint8)
            data = tf.io.encode_png(img) if i % 2 == 0 else tf.io.encode_jpeg(img)
            tf.io.write_file(str(tmp_path / c / f"{i}.{'png' if i % 2 == 0 else 'jpg'}"), data)
    ds = files.image_folder("train", directory=str(tmp_path), image_size=(4, 4), channels=3)
    items = list(ds)
    assert len(items) == 6 and sorted(int(y) for _, y in items) == [0, 0, 0, 1, 1, 1]
    assert items[0][0].shape == (4, 4, 3) and items[0][0].dtype == tf.float32
    tr = list(files.image_folder("train", directory=str(tmp_path), validation_fraction=0.5, image_size=(4, 4)))
    ev = list(files.image_folder("eval", directory=str(tmp_path), validation_fraction=0.5, image_size=(4, 4)))
    assert len(tr) == 3 and len(ev) == 3
    with pytest.raises(ValueError, match="image_folder.directory: not a directory"):
        files.image_folder("train", directory=str(tmp_path / "nope"))


def test_tfrecord_roundtrip(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.array([0, 2, 1], np.int64)
    files.write_tfrecord(str(tmp_path / "a.tfrecord"), x, y)
    ds = files.tfrecord("train", files=str(tmp_path / "*.tfrecord"),
                        features={"x": {"shape": [4], "dtype": "float32"}, "y": {"shape": [], "dtype": "int64"}})
    got = list(ds)
    np.testing.assert_array_equal(np.stack([a.numpy() for a, _ in got]), x)
    assert [int(b) for _, b in got] == [0, 2, 1] and got[0][1].dtype == tf.int32
    with pytest.raises(ValueError, match="tfrecord.files: no file matches"):
        files.tfrecord("train", files=str(tmp_path / "*.nope"), features={})


def test_csv_and_numpy(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,6,1\n7,8,0\n")
    items = list(files.csv_file("train", path=str(tmp_path / "d.csv")))
    assert len(items) == 4 and items[1][0].numpy().tolist() == [3.0, 4.0] and items[1][1].dtype == tf.int32
    with pytest.raises(ValueError, match="csv.label_column: 'lbl' is not a column"):
        files.csv_file("train", path=str(tmp_path / "d.csv"), label_column="lbl")
    np.savez(tmp_path / "d.npz", x=np.ones((5, 2), np.float64), y=np.arange(5))
    tr = list(files.numpy_file("train", path=str(tmp_path / "d.npz"), validation_fraction=0.4))
    ev = list(files.numpy_file("eval", path=str(tmp_path / "d.npz"), validation_fraction=0.4))
    assert len(tr) == 3 and len(ev) == 2 and tr[0][0].dtype == tf.float32
    with pytest.raises(ValueError, match="numpy.x_key: no array 'z'"):
        files.numpy_file("train", path=str(tmp_path / "d.npz"), x_key="z")
