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
