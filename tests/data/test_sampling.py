"""task.train_data.sampling: per-class draw frequencies, exact resume of the sampled stream, and
the frequencies a run reports."""
import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import trainer as trainer_lib
from framework.data import pipeline
from tests import _components as C


def _source(n0=180, n1=20, d=2):
    y = np.repeat([0, 1], [n0, n1]).astype(np.int32)
    x = np.arange(len(y) * d, dtype=np.float32).reshape(len(y), d)  # row i is unique: identifies example i
    return x, y, pipeline.with_weights(tf.data.Dataset.from_tensor_slices((x, y)))


def _batches(ds, k):
    return [tuple(t.numpy() for t in b) for b in ds.take(k)]


@pytest.mark.parametrize("spec, share1", [("balanced", 0.5), ({1: 3}, 60 / 240), ({0: 0.5, 1: 2}, 40 / 130)])
def test_drawn_class_frequencies_follow_the_spec(spec, share1):
    x, y, src = _source()
    w = pipeline.sampling_weights(spec, y)
    ds = pipeline.train_stream(src, global_batch=50, seed=3, shuffle_buffer=1000, cache=True, sample_weights=w)
    ys = np.concatenate([b[1] for b in _batches(ds, 80)])  # 4000 draws (20 epochs)
    assert abs(ys.mean() - share1) < 0.03, ys.mean()
    # Draws come with replacement: the rare class repeats within an epoch (oversampling).
    first_epoch = np.concatenate([b[0][:, 0] for b in _batches(ds, 4)])
    assert len(np.unique(first_epoch)) < len(first_epoch)


@pytest.mark.parametrize("augment", [False, True])
def test_sampled_stream_resumes_exactly(augment):
    x, y, src = _source()
    aug = None
    if augment:
        def aug(elem, seed):
            xx, yy, ww = elem
            return xx + tf.random.stateless_uniform(tf.shape(xx), seed=seed), yy, ww
    w = pipeline.sampling_weights("balanced", y)
    kw = dict(global_batch=32, seed=5, shuffle_buffer=1000, cache=True, sample_weights=w, augment=aug)
    straight = _batches(pipeline.train_stream(src, **kw), 20)  # crosses three epoch boundaries (200/32)
    for k in (1, 6, 13):
        resumed = _batches(pipeline.train_stream(src, start_batch=k, **kw), 20 - k)
        for a, b in zip(straight[k:], resumed):
            for ta, tb in zip(a, b):
                np.testing.assert_array_equal(ta, tb)
    # A different epoch draws differently; the same seed draws the same.
    assert not np.array_equal(straight[0][0], straight[7][0])
    again = _batches(pipeline.train_stream(src, **kw), 3)
    np.testing.assert_array_equal(again[2][0], straight[2][0])


def test_bad_sampling_labels_and_weights():
    with pytest.raises(ValueError, match="task.train_data.sampling: expected class-id labels"):
        pipeline.sampling_weights("balanced", np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="probability 0"):
        pipeline.sampling_weights({0: 0}, np.array([0, 0]))


# Without XLA in the slow suite (31-85 s in CI runs): the sampling does not depend on the step's compiler.
@pytest.mark.parametrize("jit", [pytest.param(False, marks=pytest.mark.slow), "auto"])
def test_training_with_balanced_sampling_resumes_and_reports_frequencies(tmp_path, jit):
    x, y = C.toy_classification(n=90, seed=0)
    y = np.where(np.arange(90) < 80, 0, 1).astype(np.int32)  # 80:10
    C.set_arrays("sampling", x, y)

    def cfg():
        return C.make_config(task={"model": {"units": 2}, "train_data": {"key": "sampling", "sampling": "balanced"},
                                   "eval_data": {"key": "sampling"}},
                             trainer={"train_steps": 20, "jit_compile": jit})

    t = trainer_lib.build(cfg(), tf.distribute.get_strategy())
    assert set(t.sampled_frequencies) == {0, 1} and abs(t.sampled_frequencies[1] - 0.5) < 0.15
    straight = controller_lib.Controller(trainer=t, model_dir=str(tmp_path / "a"))
    straight.train(evaluate=True)

    def stop_at_10(event, ctx):
        if event == "train_loop_end" and ctx.step >= 10:
            ctx.request_stop("test interruption")

    t1 = trainer_lib.build(cfg(), tf.distribute.get_strategy())
    controller_lib.Controller(trainer=t1, model_dir=str(tmp_path / "b"), hooks=[stop_at_10]).train(evaluate=True)
    t2 = trainer_lib.build(cfg(), tf.distribute.get_strategy())
    assert controller_lib.Controller(trainer=t2, model_dir=str(tmp_path / "b")).train(evaluate=True) == 20
    for a, b in zip(t.model.variables, t2.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The drawn frequencies are in TensorBoard as sampling/class_<i>.
    import glob
    tags = set()
    for path in glob.glob(str(tmp_path / "a" / "train" / "events.*")):
        for e in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in e.summary.value}
    assert {"sampling/class_0", "sampling/class_1"} <= tags


def test_sampling_and_validation_split_under_two_replicas_equal_one_device(tmp_path):
    from framework import distribute as dist
    from framework.config import RuntimeConfig

    x, y = C.toy_classification(n=100, seed=6)
    y = np.where(np.arange(100) % 10 == 0, 1, 0).astype(np.int32)
    C.set_arrays("sampling_dist", x, y)
    cfg = C.make_config(task={"model": {"units": 2}, "train_data": {"key": "sampling_dist", "sampling": "balanced"},
                              "eval_data": {"name": ""}, "validation_split": 0.2},
                        trainer={"train_steps": 10, "steps_per_loop": 5, "eval_interval": 10},
                        optimizer={"name": "adam", "learning_rate": 0.01})
    runs = []
    for name, strategy in (("one", tf.distribute.get_strategy()),
                           ("two", dist.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=2)))):
        t = trainer_lib.build(cfg, strategy)
        ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path / name))
        ctl.train(evaluate=True)
        runs.append((t, ctl))
    (one, c1), (two, c2) = runs
    assert two.strategy.num_replicas_in_sync == 2
    np.testing.assert_array_equal(one.eval_indices, two.eval_indices)
    assert one.sampled_frequencies == two.sampled_frequencies
    for a, b in zip(one.model.variables, two.model.variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert c2.last_eval["loss"] == pytest.approx(c1.last_eval["loss"], rel=1e-5)
