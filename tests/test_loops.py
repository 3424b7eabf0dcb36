"""framework.loops: a whole-step XLA loop runs without Grappler, and only it; compile-ahead runs a fresh run's first loop without XLA."""
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context

from framework import loops


def _meta_optimizer_off() -> bool:
    config = config_pb2.ConfigProto.FromString(context.context().function_call_options.config_proto_serialized)
    return config.graph_options.rewrite_options.disable_meta_optimizer


def test_the_loop_runs_with_grappler_off_and_the_process_keeps_it():
    seen = []

    @tf.function
    def loop(iterator, num_steps):
        seen.append(_meta_optimizer_off())  # at trace time, inside the first call
        return num_steps + 1

    wrapped = loops._without_grappler(loop)
    assert not _meta_optimizer_off()
    assert int(wrapped(None, tf.constant(2, tf.int64))) == 3
    assert seen == [True]
    assert not _meta_optimizer_off()


def test_the_options_come_back_when_the_loop_raises():
    def loop(iterator, num_steps):
        assert _meta_optimizer_off()
        raise tf.errors.InvalidArgumentError(None, None, "bad batch")

    with pytest.raises(tf.errors.InvalidArgumentError, match="bad batch"):
        loops._without_grappler(loop)(None, tf.constant(1, tf.int64))
    assert not _meta_optimizer_off()


class _Policy:
    """What `_while` reads of a non-finite policy: `halt`."""

    def __init__(self):
        self.halt = tf.Variable(False)


@pytest.mark.parametrize("num_steps", [3, 8, 11, 20])
def test_a_grouped_loop_takes_the_batches_of_its_steps_in_order_and_no_more(num_steps):
    group, micro = 8, 2
    seen = tf.Variable(tf.fill([64], tf.constant(-1, tf.int64)))
    steps = tf.Variable(0, dtype=tf.int64)

    def one_step(batches):  # records the micro-batches of each step at its position
        first = steps * micro
        seen.scatter_nd_update(tf.reshape(first + tf.range(micro, dtype=tf.int64), [-1, 1]), tf.stack(batches))
        steps.assign_add(1)

    loop, _ = loops._grouped_loop(one_step, lambda: None, lambda i: i, _Policy(), group, micro)
    iterator = iter(tf.data.Dataset.range(1000))
    assert int(loop(iterator, tf.constant(num_steps, tf.int64))) == num_steps
    assert int(loop(iterator, tf.constant(1, tf.int64))) == 1  # another count, the same trace
    taken = (num_steps + 1) * micro
    assert seen.numpy()[:taken].tolist() == list(range(taken))
    assert (seen.numpy()[taken:] == -1).all()
    assert int(next(iterator)) == taken  # the data position is exact
    assert loop.experimental_get_tracing_count() == 1


# ----------------------------------------------------------------------------- CompileAhead


def _masked_attention(units: int = 3, inputs: int = 6):
    import keras

    tokens = keras.Input((inputs,), dtype="int32")
    h = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    h = keras.layers.MultiHeadAttention(2, 2)(h, h)
    return keras.Model(tokens, keras.layers.Dense(units)(keras.layers.GlobalAveragePooling1D()(h)))


def _xla_trainer(kind="dense", **trainer):
    """A dense model (a grouped XLA loop at the defaults) or attention under a padding mask
    (one step per XLA call)."""
    import numpy as np

    from framework import registry
    from framework import trainer as trainer_lib
    from tests import _components as C

    trainer = {"jit_compile": "auto", **trainer}  # the default (the test config's is off)
    x, y = C.toy_classification(n=64)
    model = {"hidden": 16}
    if kind == "attention":
        if "test_masked_attention" not in registry.MODELS:
            registry.register_model("test_masked_attention")(_masked_attention)
        rng = np.random.default_rng(0)
        lengths = rng.integers(1, 7, size=64)
        x = np.where(np.arange(6) < lengths[:, None], rng.integers(1, 10, size=(64, 6)), 0).astype(np.int32)
        model = {"name": "test_masked_attention", "inputs": 6}
    C.set_arrays("ahead", x, y)
    cfg = C.make_config(task={"model": model, "train_data": {"key": "ahead"}, "eval_data": {"name": ""}},
                        trainer=trainer, optimizer={"name": "adam", "learning_rate": 0.01})
    return trainer_lib.build(cfg, tf.distribute.get_strategy())


def _state(t):
    return [v.numpy().copy() for v in t.model.variables + t.optimizer.variables]


def _active(t):
    return list(range(len(t.groups.variables)))


@pytest.mark.parametrize("kind", ["dense", "attention"])
def test_compile_ahead_runs_only_a_fresh_runs_first_loop_without_xla(kind):
    import numpy as np

    a = _xla_trainer(kind)  # jit_compile auto -> whole-step XLA, compile-ahead
    assert a.steps.jit.compile_ahead and a.steps.jit.whole_step
    assert (a.steps.xla_group_steps > 1) == (kind == "dense")  # attention: one step per XLA call
    it = iter(a.train_dataset(start_step=0))
    a.steps.train_loop(it, 5, _active(a))
    assert a.steps.first_loop_without_xla
    after_first = _state(a)
    # The first loop is the step without XLA: as a run with XLA off, value for value.
    off = _xla_trainer(kind, jit_compile=False)
    off.steps.train_loop(iter(off.train_dataset(start_step=0)), 5, _active(off))
    for va, vb in zip(after_first, _state(off)):
        np.testing.assert_array_equal(va, vb)
    a.steps.train_loop(it, 6, _active(a))
    assert a.steps.traces["train"] == 2  # the plain graph, then the XLA loop (no retrace after)
    a.steps.train_loop(it, 3, _active(a))
    assert a.steps.traces["train"] == 2

    # A run resumed at step 5 (its first call after step 0) runs under XLA from its first step and
    # so continues exactly as the uninterrupted run did.
    b = _xla_trainer(kind)
    for v, value in zip(b.model.variables + b.optimizer.variables, after_first):
        v.assign(value)
    b.global_step.assign(5)
    b.steps.train_loop(iter(b.train_dataset(start_step=5)), 9, _active(b))
    assert not b.steps.first_loop_without_xla
    for va, vb in zip(_state(a), _state(b)):
        np.testing.assert_array_equal(va, vb)
    assert int(a.global_step.numpy()) == int(b.global_step.numpy()) == 14


def test_compile_ahead_off_compiles_before_the_first_step():
    t = _xla_trainer(xla_compile_ahead=False)
    assert not t.steps.jit.compile_ahead
    t.steps.train_loop(iter(t.train_dataset(start_step=0)), 3, _active(t))
    assert not t.steps.first_loop_without_xla and t.steps.traces["train"] == 1


def _ahead(compile_xla, dataset, step=0):
    calls = []

    @tf.function(autograph=False)
    def plain(iterator, num_steps):
        return num_steps

    def xla(iterator, num_steps):
        calls.append("xla")
        return num_steps

    ahead = loops.CompileAhead(xla_loop=xla, plain_loop=plain, compile_xla=compile_xla,
                               global_step=tf.Variable(step, dtype=tf.int64), stack=4, micro_batches=2)
    return ahead, iter(dataset), calls


def test_the_background_compile_gets_zeros_of_one_group_for_zero_steps():
    seen = []

    def compile_xla(stacked, count):
        seen.append(([tuple(t.shape) for t in stacked], int(count), float(sum(tf.reduce_sum(t) for t in stacked))))

    ahead, it, calls = _ahead(compile_xla, tf.data.Dataset.range(1, 40).batch(3, drop_remainder=True))
    assert int(ahead(it, tf.constant(2, tf.int64))) == 2 and ahead.ran_plain and calls == []
    ahead.wait()
    assert seen == [([(4, 3), (4, 3)], 0, 0.0)]  # 2 micro-batches of [group 4, batch 3]; nothing runs
    assert int(ahead(it, tf.constant(3, tf.int64))) == 3 and calls == ["xla"]


def test_a_failed_background_compile_is_raised_by_the_next_call():
    def compile_xla(stacked, count):
        raise ValueError("the XLA compile failed")

    ahead, it, calls = _ahead(compile_xla, tf.data.Dataset.range(40).batch(2, drop_remainder=True))
    ahead(it, tf.constant(1, tf.int64))
    with pytest.raises(ValueError, match="the XLA compile failed"):
        ahead(it, tf.constant(1, tf.int64))
    assert calls == []


@pytest.mark.parametrize("case", ["resumed", "unknown_shape"])
def test_no_compile_ahead_after_step_0_or_for_batches_of_unfixed_shape(case):
    def compile_xla(stacked, count):
        raise AssertionError("not called")

    data = tf.data.Dataset.range(40).batch(2, drop_remainder=case == "resumed")
    ahead, it, calls = _ahead(compile_xla, data, step=7 if case == "resumed" else 0)
    ahead(it, tf.constant(1, tf.int64))
    ahead.wait()
    assert not ahead.ran_plain and calls == ["xla"]
