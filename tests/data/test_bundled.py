"""Bundled scikit-learn sets (fixed seeded splits, dtypes, train-only statistics) and the arrays source."""
import numpy as np
import pytest
import tensorflow as tf

from framework import registry
from framework.data import bundled


def _arrays(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.stack(xs), np.stack(ys)


def _rows(x, y):
    """Rows (features + label) sorted lexicographically: a multiset that ignores order."""
    table = np.concatenate([x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), 1)], axis=1)
    return table[np.lexsort(table.T[::-1])]


def test_registered_names_and_info():
    for name in ("digits", "breast_cancer", "iris", "wine", "diabetes", "arrays"):
        assert name in registry.DATASETS
    assert registry.DATASETS.get("digits") is bundled.digits
    assert bundled.INFO["digits"] == {"num_classes": 10, "shape": (8, 8, 1), "examples": 1797}


def test_digits_dtypes_shapes_and_range():
    x, y = _arrays(bundled.digits("train"))
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape[1:] == (8, 8, 1)
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(y.tolist()) == set(range(10))
    spec = bundled.digits("eval", flatten=True).element_spec
    assert spec[0].shape == (64,) and spec[0].dtype == tf.float32 and spec[1].dtype == tf.int32


def test_digits_split_is_disjoint_complete_stratified_and_fixed():
    import sklearn.datasets

    tr_x, tr_y = _arrays(bundled.digits("train"))
    ev_x, ev_y = _arrays(bundled.digits("eval"))
    assert len(tr_y) + len(ev_y) == 1797 and len(ev_y) == 450
    raw = sklearn.datasets.load_digits()
    # Together the splits are exactly the whole set (as a multiset of image + label rows).
    np.testing.assert_array_equal(_rows(np.concatenate([tr_x, ev_x]) * 16, np.concatenate([tr_y, ev_y])),
                                  _rows(raw.data, raw.target))
    tr, ev = bundled.split_indices(raw.target, test_fraction=0.25, seed=0, stratify=True)
    assert not set(tr) & set(ev) and sorted([*tr, *ev]) == list(range(1797))
    np.testing.assert_array_equal(ev_x.reshape(-1, 64) * 16, raw.data[ev])
    # Stratified: each class keeps its share in eval (within one example).
    for c in range(10):
        assert abs((ev_y == c).sum() - 0.25 * (raw.target == c).sum()) <= 1
    # Same seed -> same split (recomputed, not cached); another seed -> another split.
    again, _ = bundled.split_indices(raw.target, test_fraction=0.25, seed=0, stratify=True)
    np.testing.assert_array_equal(tr, again)
    other_x, _ = _arrays(bundled.digits("eval", seed=1))
    assert not np.array_equal(other_x, ev_x)
    small, _ = _arrays(bundled.digits("eval", test_fraction=0.1))
    assert len(small) == 180


def test_split_and_kwarg_errors_name_the_value():
    with pytest.raises(ValueError, match=r"'digits'.*split must be 'train' or 'eval' or 'test'; got split='valid'"):
        bundled.digits("valid")
    with pytest.raises(ValueError, match=r"'iris'.*got split='validation'"):
        bundled.iris("validation")
    with pytest.raises(ValueError, match=r"test_fraction: .*between 0 and 1; got 1.5"):
        bundled.wine("train", test_fraction=1.5)
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer; got 'a'"):
        bundled.digits("train", seed="a")
    with pytest.raises(ValueError, match=r"digits.classes: .*digits 0-9; got \[3, 11\]"):
        bundled.digits("train", classes=[3, 11])
    with pytest.raises(ValueError, match=r"digits.max_examples: .*; got 0"):
        bundled.digits("train", max_examples=0)
    with pytest.raises(ValueError, match=r"name: expected a bundled dataset .*; got 'mnist'"):
        bundled.load_arrays("mnist", "train")


def test_digits_classes_and_max_examples():
    x, y = _arrays(bundled.digits("train", classes=[7, 3]))
    _, full_y = _arrays(bundled.digits("train"))
    assert set(y.tolist()) == {0, 1} and (y == 0).sum() == (full_y == 7).sum()
    assert len(list(bundled.digits("train", max_examples=20))) == 20


@pytest.mark.parametrize("name", ["breast_cancer", "iris", "wine"])
def test_tabular_sets_are_standardized_with_train_statistics(name):
    import sklearn.datasets

    info = bundled.INFO[name]
    factory = registry.DATASETS.get(name)
    tr_x, tr_y = _arrays(factory("train"))
    ev_x, ev_y = _arrays(factory("eval"))
    assert tr_x.dtype == np.float32 and tr_y.dtype == np.int32 and tr_x.shape[1:] == info["shape"]
    assert len(tr_y) + len(ev_y) == info["examples"]
    assert set(tr_y.tolist()) == set(ev_y.tolist()) == set(range(info["num_classes"]))
    np.testing.assert_allclose(tr_x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(tr_x.std(0), 1.0, atol=1e-4)
    # Eval uses the train mean and deviation, not its own.
    raw = getattr(sklearn.datasets, f"load_{name}")()
    tr, ev = bundled.split_indices(raw.target, test_fraction=0.25, seed=0, stratify=True)
    mean, std = raw.data[tr].mean(0), raw.data[tr].std(0)
    np.testing.assert_allclose(ev_x, (raw.data[ev] - mean) / std, rtol=1e-4, atol=1e-4)
    assert np.abs(ev_x.mean(0)).max() > 1e-3


def test_diabetes_is_regression_with_optional_standard_target():
    x, y = _arrays(bundled.diabetes("train"))
    assert x.shape[1:] == (10,) and y.shape[1:] == (1,) and y.dtype == np.float32 and y.min() > 20
    _, ys = _arrays(bundled.diabetes("train", standardize_target=True))
    assert abs(ys.mean()) < 1e-4 and abs(ys.std() - 1) < 1e-4
    _, ev = _arrays(registry.DATASETS.get("diabetes")("eval", standardize_target=True))
    assert len(ev) + len(ys) == 442 and abs(ev.mean()) > 1e-4  # eval uses the train statistics


def test_from_arrays_lengths_dtypes_and_weights():
    ds = bundled.from_arrays(np.ones((4, 3)), np.arange(4), sample_weight=[1, 2, 3, 4])
    x, y, w = next(iter(ds))
    assert x.dtype == tf.float32 and x.shape == (3,) and y.dtype == tf.int64 and w.dtype == tf.float32
    assert [float(e[2]) for e in ds] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match=r"same length.*got lengths \{'x': 3, 'y': 2\}"):
        bundled.from_arrays(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match=r"'x': 3, 'y': 3, 'sample_weight': 5"):
        bundled.from_arrays(np.zeros((3, 2)), np.zeros(3), sample_weight=np.ones(5))
    with pytest.raises(ValueError, match=r"'x/a': 3, 'x/b': 2, 'y': 3"):
        bundled.from_arrays({"a": np.zeros((3, 2)), "b": np.zeros((2, 1))}, np.zeros(3))
    feats, _ = next(iter(bundled.from_arrays({"a": np.zeros((3, 2)), "b": np.zeros((3, 1))}, np.zeros(3))))
    assert set(feats) == {"a", "b"}


def test_arrays_source_splits():
    x, y = np.arange(10, dtype=np.float32).reshape(5, 2), np.arange(5)
    ex, ey = np.zeros((2, 2), np.float32), np.array([1, 0])
    tr = bundled.arrays("train", x=x, y=y, eval_x=ex, eval_y=ey)
    ev = bundled.arrays("eval", x=x, y=y, eval_x=ex, eval_y=ey)
    assert len(list(tr)) == 5 and [int(b) for _, b in ev] == [1, 0]
    # Without eval_x the eval section's own x / y are the eval data.
    assert len(list(bundled.arrays("eval", x=x, y=y))) == 5
    with pytest.raises(ValueError, match=r"eval_x and eval_y go together; got eval_x=ndarray, eval_y=NoneType"):
        bundled.arrays("eval", x=x, y=y, eval_x=ex)
    with pytest.raises(ValueError, match=r"x and y are required for the train split; got x=NoneType"):
        bundled.arrays("train", y=y)
    with pytest.raises(ValueError, match=r"'arrays'.*got split='test'"):
        bundled.arrays("test", x=x, y=y)


def test_unknown_kwarg_is_rejected_by_the_registry():
    with pytest.raises(ValueError, match=r"unknown key\(s\) flaten .*accepts: .*flatten"):
        registry.build(registry.DATASETS, "digits", {"flaten": True}, section="task.train_data",
                       extra={"split": "train"})


def test_holdout_fraction_gives_a_disjoint_stratified_test_split():
    x_tr, y_tr = bundled.load_arrays("digits", "train", holdout_fraction=0.2)
    x_ev, y_ev = bundled.load_arrays("digits", "eval", holdout_fraction=0.2)
    x_te, y_te = bundled.load_arrays("digits", "test", holdout_fraction=0.2)
    assert len(y_tr) + len(y_ev) + len(y_te) == 1797 and abs(len(y_te) - 0.2 * 1797) <= 1
    rows = [{r.tobytes() for r in a} for a in (x_tr, x_ev, x_te)]
    assert not (rows[0] & rows[2]) and not (rows[1] & rows[2])  # digits has a few duplicate images
    full = np.bincount(bundled._load("digits")[1], minlength=10) / 1797
    assert np.abs(np.bincount(y_te, minlength=10) / len(y_te) - full).max() < 0.02
    with pytest.raises(ValueError, match=r"split 'test' needs holdout_fraction > 0.*got holdout_fraction=0"):
        bundled.load_arrays("digits", "test")
    ds = registry.DATASETS.get("breast_cancer")("test", holdout_fraction=0.25)
    assert sum(1 for _ in ds) == int(np.ceil(0.25 * 569))  # scikit-learn rounds the test part up
