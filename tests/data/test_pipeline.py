"""The input pipeline: exact resume position, epoch permutations, eval padding, replica slices."""
import numpy as np
import pytest
import tensorflow as tf

from framework import distribute as dist
from framework.config import RuntimeConfig
from framework.data import pipeline


def _source(n=10):
    return pipeline.with_weights(tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.float32)[:, None],
                                                                     np.arange(n, dtype=np.int32))))


def _batches(ds, k):
    return [b[1].numpy().tolist() for b in ds.take(k)]


def test_resume_position_is_exact_across_epoch_boundaries():
    full = _batches(pipeline.train_stream(_source(), global_batch=4, seed=3, shuffle_buffer=100, cache=True), 9)
    for start in (1, 2, 5):
        resumed = _batches(pipeline.train_stream(_source(), global_batch=4, seed=3, shuffle_buffer=100, cache=True,
                                                 start_batch=start), 9 - start)
        assert resumed == full[start:]


def test_each_epoch_is_a_new_permutation():
    flat = sum(_batches(pipeline.train_stream(_source(), global_batch=5, seed=1, shuffle_buffer=100, cache=False),
                        4), [])
    e0, e1 = flat[:10], flat[10:]
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1


def test_augment_seed_depends_on_epoch_and_position():
    def aug(elem, seed):
        x, y, w = elem
        return x + tf.random.stateless_uniform([1], seed=seed), y, w

    def xs(start):
        ds = pipeline.train_stream(_source(4), global_batch=2, seed=0, shuffle_buffer=0, cache=True,
                                   start_batch=start, augment=aug)
        return [b[0].numpy().ravel().tolist() for b in ds.take(4 - start)]

    a = xs(0)
    assert xs(2) == a[2:]  # resumed runs see the same augmentations
    assert not np.allclose(np.array(a[0]) - [0, 1], np.array(a[2]) - [0, 1])  # epoch 2 differs from epoch 1


def test_eval_batches_pad_with_zero_weight():
    ds, n = pipeline.eval_batches(_source(10), global_batch=4, cache=False)
    assert n == 3
    batches = list(ds)
    assert len(batches) == 3 and all(b[0].shape[0] == 4 for b in batches)
    w = np.concatenate([b[2].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert w.tolist() == [1.0] * 10 + [0.0] * 2 and y[:10].tolist() == list(range(10))


def test_replicas_partition_each_global_batch():
    s = dist.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=2))
    ds = pipeline.distribute(s, lambda: pipeline.train_stream(_source(16), global_batch=8, seed=0,
                                                              shuffle_buffer=0, cache=False))
    it = iter(ds)
    expected = _batches(pipeline.train_stream(_source(16), global_batch=8, seed=0, shuffle_buffer=0, cache=False), 3)
    for k in range(3):
        x, y, w = next(it)
        parts = [t.numpy().tolist() for t in s.experimental_local_results(y)]
        assert parts[0] + parts[1] == expected[k] and len(parts[0]) == 4


def test_label_range_and_empty_dataset_errors():
    with pytest.raises(ValueError, match=r"label 10 at example 1 is outside \[0, 10\)"):
        pipeline.check_sparse_labels(np.array([1, 10, 3]), num_classes=10, name="task.train_data")
    with pytest.raises(ValueError, match="task.eval_data: the dataset is empty"):
        pipeline.count(_source(10).take(0), name="task.eval_data")
