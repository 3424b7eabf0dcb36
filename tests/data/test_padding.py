"""Variable-length features: padding to a fixed maximum, length buckets, traces, resume, replicas, masks."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import trainer as trainer_lib
from framework.data import pipeline
from tests import _seq_components as S


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


def _source(n=30, kind="tags", max_len=20, seed=0):
    return pipeline.with_weights(S.seq_tokens("train", n=n, kind=kind, max_len=max_len, seed=seed))


_JIT = [False, "auto"]


@pytest.mark.parametrize("jit", _JIT)
def test_from_generator_lstm_with_mask_zero_matches_keras_fit(tmp_path, jit):
    """The reported failure: TensorSpec([None]) + Embedding(mask_zero) + LSTM. One SGD step equals
    Keras `fit` on the same padded batch (the mask flows through as in fit)."""
    cfg = S.seq_config(task={"train_data": {"shuffle_buffer": 0}}, trainer={"jit_compile": jit})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    x, y, w = next(iter(t.train_dataset(start_step=0)))
    assert x.shape == (8, 20) and np.all(w.numpy() == 1)  # padded to the longest in the source
    ref = S.seq_lstm()
    ref.set_weights(t.model.get_weights())
    t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, list(range(len(t.groups.variables))))
    ref.compile(optimizer=keras.optimizers.SGD(0.1),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ref.fit(x.numpy(), y.numpy(), batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(t.model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Padding does not change a masked model's output: the same sequence padded to 20 or not.
    s = S.sequences(1, seed=3, min_len=5, max_len=5)[0]
    padded = np.zeros([1, 20], np.int32)
    padded[0, :5] = s
    np.testing.assert_allclose(t.model(padded).numpy(), t.model(s[None]).numpy(), rtol=1e-5, atol=1e-6)


def test_masking_layer_on_padded_float_sequences_matches_keras_fit():
    """Variable-length float features [T, D] padded with 0 into a Masking layer: as in fit."""
    cfg = S.seq_config(task={"model": {"name": "seq_masking"}, "train_data": {"kind": "onehot", "shuffle_buffer": 0},
                             "eval_data": {"name": ""}})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    x, y, _ = next(iter(t.train_dataset(start_step=0)))
    assert x.shape == (8, 20, S.VOCAB)
    ref = S.seq_masking()
    ref.set_weights(t.model.get_weights())
    t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, list(range(len(t.groups.variables))))
    ref.compile(optimizer=keras.optimizers.SGD(0.1),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ref.fit(x.numpy(), y.numpy(), batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(t.model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    s = np.eye(S.VOCAB, dtype=np.float32)[S.sequences(1, seed=4, min_len=6, max_len=6)[0]][None]
    np.testing.assert_allclose(t.model(np.pad(s, [(0, 0), (0, 9), (0, 0)])).numpy(), t.model(s).numpy(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("jit", _JIT)
def test_padded_training_traces_once_and_eval_pads_rows(tmp_path, jit):
    cfg = S.seq_config(task={"eval_data": {"n": 13}}, trainer={"jit_compile": jit})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.train(evaluate=True)
    # One train trace (and, under compile-ahead, the first loop's plain graph before it).
    assert t.steps.traces["train"] == 1 + t.steps.first_loop_without_xla and t.steps.traces["eval"] == 1
    assert t.eval_dataset()[1] == 2
    # Eval: 13 examples in 2 batches of 8, padded to the longest eval sequence; 3 weight-0 rows.
    xs = S.sequences(13, seed=1000)
    pred = np.concatenate([np.argmax(t.model(s[None]).numpy(), -1) for s in xs])
    labels = np.array([S.seq_label(s) for s in xs])
    assert ctl.last_eval["accuracy"] == pytest.approx(float(np.mean(pred == labels)), abs=1e-6)
    assert np.isfinite(ctl.last_eval["loss"])


def test_padding_values_and_per_token_weights(batching):
    src = _source(kind="tags")
    pad = pipeline.make_padding(src, pad_value=0, label_pad_value=-1, name="t")
    assert pad.max_length == 20 and pad.shapes[0] == (20,)
    ds = pipeline.train_stream(src, global_batch=4, seed=1, shuffle_buffer=100, cache=True, padding=pad)
    assert ds.element_spec[0].shape == (4, 20) and ds.element_spec[2].shape == (4, 20)  # static: one trace
    seqs = {tuple(s) for s in S.sequences(30)}
    for x, y, w in ds.take(8):
        x, y, w = x.numpy(), y.numpy(), w.numpy()
        for xi, yi, wi in zip(x, y, w):
            n = int((xi != 0).sum())
            assert tuple(xi[:n]) in seqs and np.all(xi[n:] == 0)
            assert np.all(yi[:n] == S.tag_labels(xi[:n])) and np.all(yi[n:] == -1)
            assert np.all(wi[:n] == 1) and np.all(wi[n:] == 0)  # the token mask


@pytest.mark.parametrize("bounds", [[4, 8, 16], [5, 10]])
def test_buckets_bound_shapes_keep_resume_position(batching, bounds):
    src = _source(n=37, kind="tags", max_len=20)
    pad = pipeline.make_padding(src, boundaries=bounds, name="t")
    assert pad.bucket_lengths == [*bounds, 20]

    def batches(start, k):
        ds = pipeline.train_stream(src, global_batch=4, seed=2, shuffle_buffer=100, cache=True, padding=pad,
                                   start_batch=start)
        return [tuple(t.numpy() for t in b) for b in ds.take(k)]

    full = batches(0, 24)
    shapes = {b[0].shape for b in full}
    assert len(shapes) <= len(bounds) + 1 and len(shapes) > 1
    edges = [0, *bounds, 20]
    for x, _y, w in full:
        k = pad.bucket_lengths.index(x.shape[1])
        lengths = w.sum(1)
        assert np.all(lengths > edges[k]) and np.all(lengths <= edges[k + 1])  # one bucket per batch
    # 24 batches of 4 from 37 examples: ~2.6 epochs, every example once per epoch in the stream.
    for start in (1, 5, 11, 17):
        got = batches(start, 24 - start)
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2]) for a, b in zip(got, full[start:]))


@pytest.mark.parametrize("jit", [False, "auto"])
def test_bucketed_training_one_trace_and_two_replicas_match_one(tmp_path, jit):
    kw = dict(task={"model": {"name": "seq_tagger"}, "train_data": {"kind": "tags", "bucket_boundaries": [6, 12]},
                    "eval_data": {"kind": "tags"}, "metrics": ["accuracy"]},
              trainer={"train_steps": 8, "steps_per_loop": 4, "eval_interval": 8, "jit_compile": jit})
    one = trainer_lib.build(S.seq_config(**kw), tf.distribute.get_strategy())
    c1 = controller_lib.Controller(trainer=one, model_dir=str(tmp_path / "one"))
    c1.train(evaluate=True)
    assert one.steps.traces["train"] == 1 and one.steps.xla_group_steps == 1
    if jit == "auto":
        return
    two = trainer_lib.build(S.seq_config(**kw), _mirrored())
    c2 = controller_lib.Controller(trainer=two, model_dir=str(tmp_path / "two"))
    c2.train(evaluate=True)
    for a, b in zip(one.model.get_weights(), two.model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    for k, v in c1.last_eval.items():
        assert c2.last_eval[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_replicas_partition_each_bucketed_global_batch(batching):
    s = _mirrored()
    src = _source(n=37, kind="tags")
    pad = pipeline.make_padding(src, boundaries=[6, 12], name="t")

    def make(start=0):
        return pipeline.train_stream(src, global_batch=4, seed=5, shuffle_buffer=100, cache=True, padding=pad,
                                     start_batch=start)

    expected = [b[0].numpy() for b in make().take(8)]
    it = iter(pipeline.distribute(s, make))
    for k in range(8):
        parts = [t.numpy() for t in s.experimental_local_results(next(it)[0])]
        assert len(parts) == 2 and parts[0].shape[0] == 2
        np.testing.assert_array_equal(np.concatenate(parts), expected[k])
    it = iter(pipeline.distribute(s, lambda: make(5)))
    for k in range(5, 8):
        np.testing.assert_array_equal(np.concatenate([t.numpy() for t in s.experimental_local_results(next(it)[0])]),
                                      expected[k])


def test_trainer_resume_position_with_buckets():
    cfg = S.seq_config(task={"model": {"name": "seq_tagger"}, "train_data": {"kind": "tags",
                                                                             "bucket_boundaries": [6, 12]},
                             "eval_data": {"name": ""}})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    it0 = iter(t.train_dataset(start_step=0))
    seq = [next(it0)[0].numpy() for _ in range(7)]
    it3 = iter(t.train_dataset(start_step=3))
    for k in range(3, 7):
        np.testing.assert_array_equal(next(it3)[0].numpy(), seq[k])


def test_bad_bucket_boundaries_are_named():
    from framework import config as config_lib

    with pytest.raises(config_lib.ConfigError, match=r"task.train_data.bucket_boundaries: expected increasing "
                                                     r"integers > 0; got \[8, 4\]"):
        S.seq_config(task={"train_data": {"bucket_boundaries": [8, 4]}})
    with pytest.raises(ValueError, match="task.train_data.bucket_boundaries: expected elements with a variable-length"):
        pipeline.make_padding(pipeline.with_weights(tf.data.Dataset.from_tensor_slices((np.zeros([4, 3]), np.zeros(4)))),
                              boundaries=[2], name="task.train_data")


def test_export_and_reload_safe_mode(tmp_path):
    t = trainer_lib.build(S.seq_config(), tf.distribute.get_strategy())
    path = str(tmp_path / "m.keras")
    t.model.save(path)
    back = keras.saving.load_model(path, safe_mode=True)
    x = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]], np.int32)
    np.testing.assert_allclose(back(x).numpy(), t.model(x).numpy(), rtol=1e-6)
