"""The input pipeline: exact resume position, epoch permutations, eval padding, replica slices, checks."""
import numpy as np
import pytest
import tensorflow as tf

from framework.data import pipeline


def _source(n=10):
    return pipeline.with_weights(tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.float32)[:, None],
                                                                     np.arange(n, dtype=np.int32))))


def _stream(n=10, **kw):
    args = dict(global_batch=4, seed=3, shuffle_buffer=100, cache=True)
    return pipeline.train_stream(_source(n), **{**args, **kw})


def _batches(ds, k):
    return [b[1].numpy().tolist() for b in ds.take(k)]


def _mirrored():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs 2 logical CPU devices (tests/conftest.py)")
    return tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])


@pytest.fixture(params=["indexed", "element"])
def batching(request, monkeypatch):
    """Both train-stream paths: in-memory batching by index, and per-example tf.data batching."""
    if request.param == "element":
        monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 0)
    return request.param


def test_resume_position_is_exact_across_epoch_boundaries(batching):
    # 10 examples, batches of 4: batch 2 spans epochs 0 and 1, batch 7 spans epochs 2 and 3.
    full = _batches(_stream(), 10)
    for start in (1, 2, 3, 5, 7):
        assert _batches(_stream(start_batch=start), 10 - start) == full[start:], start
    # The same with a shuffle buffer smaller than the source and without the cache.
    part = _batches(_stream(shuffle_buffer=3, cache=False), 8)
    assert _batches(_stream(shuffle_buffer=3, cache=False, start_batch=4), 4) == part[4:]


def test_each_epoch_is_a_permutation_and_epochs_differ(batching):
    flat = sum(_batches(_stream(global_batch=5, seed=1), 6), [])
    epochs = [flat[i:i + 10] for i in range(0, 30, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert epochs[0] != list(range(10))  # shuffled at all
    other = sum(_batches(_stream(global_batch=5, seed=2), 2), [])
    assert other != epochs[0]  # the seed matters
    unshuffled = sum(_batches(_stream(global_batch=5, shuffle_buffer=0), 4), [])
    assert unshuffled == list(range(10)) * 2


def test_in_memory_sources_are_batched_by_index(monkeypatch):
    calls = []
    real = pipeline._indexed_stream  # noqa: SLF001

    def spy(*a, **kw):
        calls.append(kw["n"])
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "_indexed_stream", spy)
    ds = _stream(n=10, global_batch=4)
    assert calls == [10]
    assert ds.element_spec[0].shape == (4, 1) and ds.element_spec[1].shape == (4,)  # static: one trace
    # Batches carry whole examples: x, y and w of a row stay together.
    x, y, w = next(iter(ds))
    assert x.numpy().ravel().tolist() == y.numpy().astype(float).tolist() and w.numpy().tolist() == [1.0] * 4
    # The whole epoch is permuted even with a buffer smaller than the source.
    flat = sum(_batches(_stream(n=10, global_batch=5, shuffle_buffer=2), 2), [])
    assert sorted(flat) == list(range(10)) and flat != list(range(10))
    # Not held in memory: uncached, augmented, or larger than IN_MEMORY_BYTES (10 x (4 + 4 + 4) bytes).
    _stream(cache=False)
    pipeline.train_stream(_source(4), global_batch=2, seed=0, shuffle_buffer=0, cache=True,
                          augment=lambda elem, seed: elem)
    monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 119)
    _stream(n=10)
    assert calls == [10, 10]
    monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 120)
    _stream(n=10)
    assert calls == [10, 10, 10]


def test_an_in_memory_stream_batches_the_arrays_it_is_given_without_reading_the_source():
    src = _source(10)
    x, y, w = (a.numpy() for a in next(iter(src.batch(10))))
    shifted = (tf.constant(x + 100), tf.constant(y + 100), tf.constant(w))  # not what the source holds
    for start in (0, 3):  # the same order and resume position as the stream that reads the source
        read = _batches(_stream(start_batch=start), 6)
        given = _batches(_stream(start_batch=start, arrays=shifted), 6)
        assert given == [[v + 100 for v in b] for b in read]
    xb, yb, _ = next(iter(_stream(arrays=shifted)))
    assert (xb.numpy().ravel() == yb.numpy()).all()  # rows stay whole
    with pytest.raises(ValueError, match=r"arrays must be the whole source.*got \[\(tf.float32, \(9, 1\)\)"):
        _stream(arrays=(tf.constant(x[:9]), tf.constant(y[:9]), tf.constant(w[:9])))


def test_with_weights_gives_weight_one_or_the_float32_weight_and_keeps_the_cardinality():
    x, y = np.arange(6, dtype=np.float32)[:, None], np.arange(6, dtype=np.int64)
    two = pipeline.with_weights(tf.data.Dataset.from_tensor_slices((x, y)))
    assert int(two.cardinality()) == 6 and two.element_spec[2] == tf.TensorSpec([], tf.float32)
    xs, ys, ws = (a.numpy() for a in next(iter(two.batch(6))))
    assert (xs == x).all() and (ys == y).all() and ws.tolist() == [1.0] * 6
    w = np.array([0.5, 1, 2, 0, 3, 1], np.float32)
    three = pipeline.with_weights(tf.data.Dataset.from_tensor_slices((x, y, w)))
    assert int(three.cardinality()) == 6
    assert next(iter(three.batch(6)))[2].numpy().tolist() == w.tolist()
    endless = pipeline.with_weights(tf.data.Dataset.from_tensor_slices((x, y)).repeat())
    assert int(endless.cardinality()) == tf.data.INFINITE_CARDINALITY


def test_subset_keeps_the_rows_at_the_indices_in_source_order():
    x = {"a": np.arange(20, dtype=np.float32).reshape(10, 2), "b": np.arange(10, dtype=np.int32) * 7}
    src = pipeline.with_weights(tf.data.Dataset.from_tensor_slices((x, np.arange(10))))
    idx = np.array([0, 3, 4, 9])
    sub = pipeline.subset(src, idx, num_examples=10)
    assert int(sub.cardinality()) == 4
    got = next(iter(sub.batch(10)))
    assert got[0]["a"].numpy().tolist() == x["a"][idx].tolist() and got[0]["b"].numpy().tolist() == [0, 21, 28, 63]
    assert got[1].numpy().tolist() == idx.tolist()


def test_subset_and_labels_of_a_variable_length_source_keep_each_row_whole():
    rows = [[1], [2, 2], [3, 3, 3], [4, 4, 4, 4], [5]]
    gen = tf.data.Dataset.from_generator(
        lambda: ((np.array(r, np.int32), np.array(r, np.int32) * 10) for r in rows),
        output_signature=(tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)))
    src = pipeline.with_weights(gen)
    sub = pipeline.subset(src, np.array([1, 3, 4]), num_examples=5)
    assert int(sub.cardinality()) == 3
    assert [x.numpy().tolist() for x, _y, _w in sub] == [rows[1], rows[3], rows[4]]
    # a variable-length label gives its real positions, flattened, in source order
    labels = pipeline.labels_array(sub)
    assert labels.tolist() == [20, 20, 40, 40, 40, 40, 50]


def test_labels_array_of_dict_labels_gives_a_dict_of_arrays():
    y = {"cls": np.array([0, 2, 1, 1], np.int64), "reg": np.arange(8, dtype=np.float32).reshape(4, 2)}
    src = pipeline.with_weights(tf.data.Dataset.from_tensor_slices((np.zeros([4, 3], np.float32), y)))
    labels = pipeline.labels_array(src)
    assert set(labels) == {"cls", "reg"}
    assert labels["cls"].tolist() == [0, 2, 1, 1] and labels["reg"].tolist() == y["reg"].tolist()
    assert pipeline.labels_array(src, limit=2)["cls"].tolist() == [0, 2]


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


@pytest.mark.parametrize("n,batch", [(10, 4), (8, 4), (3, 8)])
def test_eval_batches_pad_to_full_batches_with_weight_zero(n, batch):
    ds, num = pipeline.eval_batches(_source(n), global_batch=batch, cache=False)
    batches = list(ds)
    assert num == len(batches) == -(-n // batch)
    assert all(b[0].shape[0] == batch for b in batches)
    assert ds.element_spec[0].shape == (batch, 1)  # one static shape: one trace
    w = np.concatenate([b[2].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert w.tolist() == [1.0] * n + [0.0] * (num * batch - n)
    assert sorted(y[w > 0].tolist()) == list(range(n))  # every real example exactly once


def test_sample_weights_pass_through():
    src = pipeline.with_weights(tf.data.Dataset.from_tensor_slices(
        (np.zeros((3, 2), np.float32), np.arange(3), np.array([0.5, 2, 1], np.float64))))
    assert src.element_spec[2].dtype == tf.float32
    ds, _ = pipeline.eval_batches(src, global_batch=2, cache=False)
    assert np.concatenate([b[2].numpy() for b in ds]).tolist() == [0.5, 2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="features, label"):
        pipeline.with_weights(tf.data.Dataset.range(3))


def test_replicas_partition_each_global_batch_in_order():
    s = _mirrored()
    # Shuffled, 10 examples, global batch 4: batches 2 and 7 straddle epoch boundaries.
    ds = pipeline.distribute(s, lambda: _stream())
    expected = _batches(_stream(), 8)
    it = iter(ds)
    for k in range(8):
        x, y, w = next(it)
        parts = [t.numpy().tolist() for t in s.experimental_local_results(y)]
        assert len(parts) == 2 and len(parts[0]) == len(parts[1]) == 2
        assert parts[0] + parts[1] == expected[k]
    # Resumed distributed stream: same batches as the uninterrupted one.
    it = iter(pipeline.distribute(s, lambda: _stream(start_batch=5)))
    for k in range(5, 8):
        parts = [t.numpy().tolist() for t in s.experimental_local_results(next(it)[1])]
        assert parts[0] + parts[1] == expected[k]


def test_distributed_eval_padding_goes_to_the_last_replica_rows():
    s = _mirrored()
    ds = pipeline.distribute(s, lambda: pipeline.eval_batches(_source(5), global_batch=4, cache=False)[0])
    got = [[t.numpy().tolist() for t in s.experimental_local_results(b[2])] for b in ds]
    assert got == [[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]


def test_replica_slices_with_several_input_pipelines():
    """Worker 1 of 2 with 4 replicas in sync yields replicas 2 and 3's rows of each global batch."""
    # Global batches of (x, y) with x = [0..7] then [8..15] and y = 10 x.
    ds = tf.data.Dataset.range(16).map(lambda i: (i, 10 * i)).batch(8, drop_remainder=True)
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4)
    got = [(x.numpy().tolist(), y.numpy().tolist()) for x, y in pipeline.replica_slices(ds, ctx)]
    assert [x for x, _ in got] == [[4, 5], [6, 7], [12, 13], [14, 15]]
    assert all(y == [10 * v for v in x] for x, y in got)
    single = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)
    assert pipeline.replica_slices(ds, single) is ds


def test_check_sparse_labels_names_the_bad_label():
    pipeline.check_sparse_labels(np.array([0, 9, 3]), num_classes=10, name="task.train_data")
    with pytest.raises(ValueError, match=r"task.train_data: label 10 at example 1 is outside \[0, 10\)"):
        pipeline.check_sparse_labels(np.array([1, 10, 3]), num_classes=10, name="task.train_data")
    with pytest.raises(ValueError, match=r"task.eval_data: label -1 at example 2 is outside \[0, 3\) "
                                         r".*\(2 such labels\)"):
        pipeline.check_sparse_labels(np.array([1, 2, -1, 7]), num_classes=3, name="task.eval_data")
    with pytest.raises(ValueError, match=r"task.train_data: sparse labels must be integer class ids; got 1.5"):
        pipeline.check_sparse_labels(np.array([0.0, 1.5]), num_classes=3, name="task.train_data")
    pipeline.check_sparse_labels(np.array([0.0, 2.0]), num_classes=3, name="task.train_data")


def test_count():
    with pytest.raises(ValueError, match="task.eval_data: the dataset is empty"):
        pipeline.count(_source(10).take(0), name="task.eval_data")
    with pytest.raises(ValueError, match="task.train_data: the dataset is empty"):
        pipeline.count(_source(10).filter(lambda x, y, w: y > 100), name="task.train_data")  # unknown size
    assert pipeline.count(_source(10).filter(lambda x, y, w: y % 2 == 0), name="t") == 5
    assert pipeline.count(_source(3).repeat(), name="t") == -1
    with pytest.raises(ValueError, match="task.eval_data: the eval dataset is infinite"):
        pipeline.eval_batches(_source(3).repeat(), global_batch=2, cache=False)


def test_ragged_and_unknown_rank_elements_are_rejected():
    # Unknown dimensions are padded (tests/data/test_padding.py); ragged tensors and unknown
    # ranks cannot be batched densely and are named before anything is built.
    ragged = tf.data.Dataset.range(1, 4).map(lambda i: (tf.RaggedTensor.from_row_lengths(tf.zeros([i]), [i]), i, 1.0))
    with pytest.raises(ValueError, match="task.train_data: expected dense tensors of known rank.*ragged"):
        pipeline.train_stream(ragged, global_batch=2, seed=0, shuffle_buffer=0, cache=False)
    unknown_rank = tf.data.Dataset.from_generator(lambda: iter([(np.zeros(2, np.float32), 1, 1.0)]),
                                                  output_signature=(tf.TensorSpec(None, tf.float32),
                                                                    tf.TensorSpec([], tf.int32),
                                                                    tf.TensorSpec([], tf.float32)))
    with pytest.raises(ValueError, match="task.eval_data: expected dense tensors of known rank"):
        pipeline.eval_batches(unknown_rank, global_batch=2, cache=False, num_examples=1)


def test_the_loops_read_batches_without_tf_data_autotuning_unless_asked():
    # Freeing an autotuned iterator waited for its tuning thread's sleep (docs/design.md#t12).
    ds = pipeline.finalize(tf.data.Dataset.range(3))
    assert ds.options().autotune.enabled is False and ds.options().deterministic is True
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
    assert list(ds.as_numpy_iterator()) == [0, 1, 2]
    assert pipeline.finalize(tf.data.Dataset.range(3), autotune=True).options().autotune.enabled is True


@pytest.mark.parametrize("setting", [None, True])
def test_every_split_of_a_run_follows_runtime_data_autotune(monkeypatch, setting):
    from framework import trainer as trainer_lib
    from tests import _components as C

    x, y = C.toy_classification(n=32)
    C.set_arrays("autotune", x, y)
    seen = []
    real = pipeline.finalize

    def spy(ds, *, autotune=False):
        seen.append(autotune)
        return real(ds, autotune=autotune)

    monkeypatch.setattr(pipeline, "finalize", spy)
    runtime = {} if setting is None else {"data_autotune": setting}
    cfg = C.make_config(task={"train_data": {"key": "autotune"}, "eval_data": {"name": "test_arrays", "key": "autotune"},
                              "test_data": {"name": "test_arrays", "key": "autotune"}}, runtime=runtime)
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    for ds in (t.train_dataset(start_step=0), t.eval_dataset()[0], t.test_dataset()[0]):
        next(iter(ds))
    assert seen == [bool(setting)] * 3
