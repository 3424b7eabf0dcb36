"""framework.loops: a whole-step XLA loop is instantiated without Grappler, and only it."""
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

    loop = loops._grouped_loop(one_step, lambda: None, lambda i: i, _Policy(), group, micro)
    iterator = iter(tf.data.Dataset.range(1000))
    assert int(loop(iterator, tf.constant(num_steps, tf.int64))) == num_steps
    assert int(loop(iterator, tf.constant(1, tf.int64))) == 1  # another count, the same trace
    taken = (num_steps + 1) * micro
    assert seen.numpy()[:taken].tolist() == list(range(taken))
    assert (seen.numpy()[taken:] == -1).all()
    assert int(next(iterator)) == taken  # the data position is exact
    assert loop.experimental_get_tracing_count() == 1
