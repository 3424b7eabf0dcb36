"""Loaders for users' files, on data the tests write: image folders, TFRecord, CSV and .npz."""
import os

import numpy as np
import pytest
import tensorflow as tf

from framework import registry
from framework.data import files, pipeline


def _write_image(path, value, *, size=(5, 7), jpeg=False):
    img = tf.cast(tf.fill([*size, 3], value), tf.uint8)
    tf.io.write_file(str(path), tf.io.encode_jpeg(img, quality=100) if jpeg else tf.io.encode_png(img))


def _image_tree(root, classes=("cat", "dog", "emu"), per_class=4):
    """root/<class>/<i>.png|jpg; every pixel of class k's images is 60 * k (+ 1 per image)."""
    for k, c in enumerate(classes):
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            _write_image(root / c / f"{i}.{'jpg' if i % 2 else 'png'}", 60 * k + i, jpeg=bool(i % 2))
    (root / classes[0] / "notes.txt").write_text("not an image")
    return root


def _items(ds):
    return [(x.numpy(), int(y)) for x, y in ds]


def test_image_folder_decodes_resizes_and_labels_by_sorted_folder(tmp_path):
    root = _image_tree(tmp_path / "train", classes=("dog", "cat", "emu"))  # written out of order
    ds = registry.DATASETS.get("image_folder")("train", directory=str(root), image_size=(4, 6))
    assert ds.element_spec[0].shape == (4, 6, 3) and ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].dtype == tf.int32
    items = _items(ds)
    assert len(items) == 12 and [y for _, y in items] == [0] * 4 + [1] * 4 + [2] * 4  # cat, dog, emu
    for x, y in items:
        assert 0.0 <= x.min() and x.max() <= 1.0
        # cat was written as class index 1 (value 60..63), dog as 0, emu as 2.
        written = {0: 60, 1: 0, 2: 120}[y]
        assert written / 255 - 0.02 <= x.mean() <= (written + 3) / 255 + 0.02
    gray = files.image_folder("train", directory=str(root), image_size=(3, 3), channels=1)
    assert gray.element_spec[0].shape == (3, 3, 1)
    named = _items(files.image_folder("train", directory=str(root), image_size=(2, 2), class_names=["emu", "cat"]))
    assert [y for _, y in named] == [0] * 4 + [1] * 4  # explicit order; dog left out


def test_image_folder_validation_split_is_seeded_disjoint_and_complete(tmp_path):
    root = str(_image_tree(tmp_path / "train", per_class=5))

    def split(s, seed=0):
        ds = files.image_folder(s, directory=root, image_size=(2, 2), validation_fraction=0.2, seed=seed)
        return [(round(float(x.mean()) * 255), y) for x, y in _items(ds)]

    tr, ev = split("train"), split("eval")
    assert len(tr) == 12 and len(ev) == 3
    assert sorted(tr + ev) == sorted(split("train", seed=5) + split("eval", seed=5))  # all 15, once
    assert not set(tr) & set(ev) and split("eval") == ev and split("eval", seed=5) != ev


def test_image_folder_eval_directory_uses_the_train_mapping(tmp_path):
    root = _image_tree(tmp_path / "train")
    ev = tmp_path / "eval"
    os.makedirs(ev / "emu")
    _write_image(ev / "emu" / "a.png", 1)
    items = _items(files.image_folder("eval", directory=str(root), eval_directory=str(ev), image_size=(2, 2)))
    assert [y for _, y in items] == [2]  # emu is class 2 of the training folder, not 0
    os.makedirs(ev / "yak")
    _write_image(ev / "yak" / "b.png", 1)
    with pytest.raises(ValueError, match=r"image_folder.eval_directory: subfolder\(s\) \['yak'\] .*not among"):
        files.image_folder("eval", directory=str(root), eval_directory=str(ev))


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"image_folder.directory: not a directory .*got '.*nope'"):
        files.image_folder("train", directory=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"image_folder.directory: .*got no subfolder in"):
        files.image_folder("train", directory=str(tmp_path))
    os.makedirs(tmp_path / "a")
    (tmp_path / "a" / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"image_folder.directory: expected image files .*got none under"):
        files.image_folder("train", directory=str(tmp_path))
    _write_image(tmp_path / "a" / "1.png", 3)
    with pytest.raises(ValueError, match=r"image_folder.image_size: .*; got \(0, 4\)"):
        files.image_folder("train", directory=str(tmp_path), image_size=(0, 4))
    with pytest.raises(ValueError, match=r"image_folder.channels: expected 1 or 3; got 4"):
        files.image_folder("train", directory=str(tmp_path), channels=4)
    with pytest.raises(ValueError, match=r"image_folder: the eval split needs eval_directory or "
                                         r"validation_fraction > 0; got eval_directory=None"):
        files.image_folder("eval", directory=str(tmp_path))
    with pytest.raises(ValueError, match=r"image_folder.validation_fraction: .*leaves 0 for eval"
                                         r".*got validation_fraction=0.2"):
        files.image_folder("eval", directory=str(tmp_path), validation_fraction=0.2)  # 1 image: nothing left
    with pytest.raises(ValueError, match=r"image_folder.class_names: expected a subfolder 'b'"):
        files.image_folder("train", directory=str(tmp_path), class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"'image_folder'.*got split='valid'"):
        files.image_folder("valid", directory=str(tmp_path))


FEATURES = {"x": {"shape": [2, 2], "dtype": "float32"}, "y": {"shape": [], "dtype": "int64"}}


def test_tfrecord_roundtrip_files_lists_and_eval(tmp_path):
    x = np.arange(20, dtype=np.float32).reshape(5, 2, 2)
    y = np.array([0, 2, 1, 1, 0], np.int64)
    assert files.write_tfrecord(str(tmp_path / "a.tfrecord"), x[:3], y[:3]) == 3
    files.write_tfrecord(str(tmp_path / "b.tfrecord"), x[3:], y[3:])
    files.write_tfrecord(str(tmp_path / "ev.rec"), x[:1], y[:1])
    ds = registry.DATASETS.get("tfrecord")("train", files=str(tmp_path / "*.tfrecord"), features=FEATURES)
    assert ds.element_spec[0].shape == (2, 2) and ds.element_spec[1].dtype == tf.int32
    got = list(ds)
    np.testing.assert_array_equal(np.stack([a.numpy() for a, _ in got]), x)  # files in sorted order
    assert [int(b) for _, b in got] == y.tolist()
    listed = files.tfrecord("train", files=[str(tmp_path / "b.tfrecord")], features=FEATURES)
    assert len(list(listed)) == 2
    ev = files.tfrecord("eval", files=str(tmp_path / "*.tfrecord"), eval_files=str(tmp_path / "ev.rec"),
                        features=FEATURES)
    assert len(list(ev)) == 1
    # A float target and other key names.
    files.write_tfrecord(str(tmp_path / "r.tfrecord"), x, np.linspace(0, 1, 5), feature_key="img",
                         label_key="t")
    reg = files.tfrecord("train", files=str(tmp_path / "r.tfrecord"), feature_key="img", label_key="t",
                         features={"img": {"shape": [2, 2]}, "t": {"shape": [], "dtype": "float32"}})
    np.testing.assert_allclose([float(t) for _, t in reg], np.linspace(0, 1, 5), rtol=1e-6)


def test_tfrecord_errors(tmp_path):
    files.write_tfrecord(str(tmp_path / "a.tfrecord"), np.zeros((2, 2, 2)), np.zeros(2, np.int64))
    ok = str(tmp_path / "a.tfrecord")
    with pytest.raises(ValueError, match=r"tfrecord.files: no file matches; .*got '.*\*.nope'"):
        files.tfrecord("train", files=str(tmp_path / "*.nope"), features=FEATURES)
    with pytest.raises(ValueError, match=r"tfrecord.eval_files: required for the eval split.*got None"):
        files.tfrecord("eval", files=ok, features=FEATURES)
    with pytest.raises(ValueError, match=r"tfrecord.features: expected an entry for label_key 'label'.*got keys"):
        files.tfrecord("train", files=ok, features=FEATURES, label_key="label")
    with pytest.raises(ValueError, match=r"tfrecord.features.y.dtype: expected one of .*; got 'int32'"):
        files.tfrecord("train", files=ok, features={**FEATURES, "y": {"shape": [], "dtype": "int32"}})
    with pytest.raises(ValueError, match=r"tfrecord.features.x.shape: .*got \[-1\]"):
        files.tfrecord("train", files=ok, features={**FEATURES, "x": {"shape": [-1]}})
    with pytest.raises(ValueError, match=r"tfrecord.features: expected a mapping .*got None"):
        files.tfrecord("train", files=ok)
    with pytest.raises(ValueError, match=r"write_tfrecord: .*got x shape \(3, 2\) and y shape \(2,\)"):
        files.write_tfrecord(str(tmp_path / "c.tfrecord"), np.zeros((3, 2)), np.zeros(2))


def _write_csv(path, text):
    path.write_text(text)
    return str(path)


def test_csv_features_labels_and_dtypes(tmp_path):
    p = _write_csv(tmp_path / "d.csv", "a,b,label,c\n1,2,0,9\n3,4,1,8\n5,6,1,7\n7,8,2,6\n")
    items = [(x.numpy().tolist(), y) for x, y in registry.DATASETS.get("csv")("train", path=p)]
    assert [x for x, _ in items] == [[1, 2, 9], [3, 4, 8], [5, 6, 7], [7, 8, 6]]
    assert [int(y) for _, y in items] == [0, 1, 1, 2] and items[0][1].dtype == tf.int32
    sel = files.csv_file("train", path=p, feature_columns=["c", "a"])
    assert next(iter(sel))[0].numpy().tolist() == [9.0, 1.0]
    reg = files.csv_file("train", path=p, label_column="c", feature_columns=["a"])
    assert reg.element_spec[1].dtype == tf.int32  # integer-valued column -> class ids
    fl = _write_csv(tmp_path / "f.csv", "x;t\n1;0.5\n2;1.5\n")
    ds = files.csv_file("train", path=fl, label_column="t", delimiter=";")
    assert ds.element_spec[1].dtype == tf.float32 and [float(t) for _, t in ds] == [0.5, 1.5]
    assert files.csv_file("train", path=p, label_dtype="float32").element_spec[1].dtype == tf.float32


def test_csv_validation_split_and_eval_path(tmp_path):
    rows = "\n".join(f"{i},{i % 3}" for i in range(20))
    p = _write_csv(tmp_path / "d.csv", "v,label\n" + rows + "\n")
    tr = [float(x[0]) for x, _ in files.csv_file("train", path=p, validation_fraction=0.25, seed=3)]
    ev = [float(x[0]) for x, _ in files.csv_file("eval", path=p, validation_fraction=0.25, seed=3)]
    assert len(ev) == 5 and sorted(tr + ev) == list(range(20)) and not set(tr) & set(ev)
    assert ev == [float(x[0]) for x, _ in files.csv_file("eval", path=p, validation_fraction=0.25, seed=3)]
    # A regression target that happens to be integer in the eval file keeps the train file's dtype.
    t = _write_csv(tmp_path / "t.csv", "v,label\n1,0.5\n2,1.0\n")
    e = _write_csv(tmp_path / "e.csv", "v,label\n3,2\n")
    ds = files.csv_file("eval", path=t, eval_path=e)
    assert ds.element_spec[1].dtype == tf.float32 and [float(y) for _, y in ds] == [2.0]


def test_csv_errors(tmp_path):
    p = _write_csv(tmp_path / "d.csv", "a,b,label\n1,2,0\n3,x,1\n")
    with pytest.raises(ValueError, match=r"csv.path: expected an existing file; got '.*missing.csv'"):
        files.csv_file("train", path=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match=r"csv.label_column: 'lbl' is not a column; expected one of "
                                         r"\['a', 'b', 'label'\]; got 'lbl'"):
        files.csv_file("train", path=p, label_column="lbl")
    with pytest.raises(ValueError, match=r"csv.path: column 'b', line 3 of .*: expected a number; got 'x'"):
        files.csv_file("train", path=p)
    with pytest.raises(ValueError, match=r"csv.feature_columns: .*got \['a', 'z'\]"):
        files.csv_file("train", path=p, feature_columns=["a", "z"])
    with pytest.raises(ValueError, match=r"csv: the eval split needs eval_path or validation_fraction > 0"):
        files.csv_file("eval", path=p)
    with pytest.raises(ValueError, match=r"csv.validation_fraction: expected a number in \[0, 1\); got 1"):
        files.csv_file("train", path=p, validation_fraction=1)
    f = _write_csv(tmp_path / "f.csv", "a,label\n1,0.5\n")
    with pytest.raises(ValueError, match=r"must hold integer class ids for label_dtype int32; got 0.5"):
        files.csv_file("train", path=f, label_dtype="int32")
    with pytest.raises(ValueError, match=r"csv.path: expected data rows after the header"):
        files.csv_file("train", path=_write_csv(tmp_path / "h.csv", "a,label\n"))


def test_numpy_npz(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.arange(10, dtype=np.float64).reshape(5, 2), y=np.arange(5),
             feats=np.ones((5, 3)), t=np.linspace(0, 1, 5))
    p = str(tmp_path / "d.npz")
    tr = list(registry.DATASETS.get("numpy")("train", path=p, validation_fraction=0.4))
    ev = list(files.numpy_file("eval", path=p, validation_fraction=0.4))
    assert len(tr) == 3 and len(ev) == 2 and tr[0][0].dtype == tf.float32 and tr[0][1].dtype == tf.int32
    assert sorted(int(y) for _, y in tr + ev) == [0, 1, 2, 3, 4]
    other = files.numpy_file("train", path=p, x_key="feats", y_key="t")
    assert other.element_spec[0].shape == (3,) and other.element_spec[1].dtype == tf.float32
    np.savez(tmp_path / "e.npz", x=np.zeros((2, 2)), y=np.array([4, 4]))
    ev = files.numpy_file("eval", path=p, eval_path=str(tmp_path / "e.npz"))
    assert [int(y) for _, y in ev] == [4, 4]


def test_numpy_errors(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 2)), y=np.arange(4))
    p = str(tmp_path / "d.npz")
    with pytest.raises(ValueError, match=r"numpy.x_key: no array 'z' in .*; expected one of \['x', 'y'\]; got 'z'"):
        files.numpy_file("train", path=p, x_key="z")
    with pytest.raises(ValueError, match=r"numpy.path: .*same length; got shapes \(5, 2\) and \(4,\)"):
        files.numpy_file("train", path=p)
    with pytest.raises(ValueError, match=r"numpy.eval_path: expected an existing file; got '.*nope.npz'"):
        files.numpy_file("eval", path=p, eval_path=str(tmp_path / "nope.npz"))
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"numpy.path: expected a .npz archive .*got a single array"):
        files.numpy_file("train", path=str(tmp_path / "single.npy"))


def test_every_loader_feeds_the_pipeline(tmp_path):
    """Static element shapes: each loader's output batches through eval_batches and train_stream."""
    root = _image_tree(tmp_path / "img", per_class=1)
    files.write_tfrecord(str(tmp_path / "a.tfrecord"), np.zeros((3, 2, 2)), np.zeros(3, np.int64))
    csv_path = _write_csv(tmp_path / "d.csv", "a,label\n1,0\n2,1\n3,1\n")
    np.savez(tmp_path / "d.npz", x=np.ones((3, 2)), y=np.arange(3))
    sources = [files.image_folder("train", directory=str(root), image_size=(4, 4)),
               files.tfrecord("train", files=str(tmp_path / "a.tfrecord"), features=FEATURES),
               files.csv_file("train", path=csv_path),
               files.numpy_file("train", path=str(tmp_path / "d.npz"))]
    for ds in sources:
        src = pipeline.with_weights(ds)
        batches, n = pipeline.eval_batches(src, global_batch=2, cache=False)
        assert n == 2 and len(list(batches)) == 2
        first = next(iter(pipeline.train_stream(src, global_batch=2, seed=0, shuffle_buffer=8, cache=True)))
        assert first[0].shape[0] == 2
