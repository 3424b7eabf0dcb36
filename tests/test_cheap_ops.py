"""framework.cheap_ops: the same values as the ops they replace (NumPy; TensorFlow's own Sqrt for
the bits), eager and under XLA, and the compiled statistics and clipping emit none of the
ops that lower through MLIR."""
import numpy as np
import pytest
import tensorflow as tf

from framework import cheap_ops
from framework.config import ClipConfig
from framework.optim.clipping import clip_gradients

RNG = np.random.default_rng(0)
F32 = np.finfo(np.float32)
SPECIAL = np.array([0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, F32.max, -F32.max, F32.tiny, -F32.tiny,
                    1e-45, -1e-45, 1e38, -1e38], np.float32)


def _run(fn, *args, jit):
    return tf.function(fn, jit_compile=jit)(*args).numpy()


@pytest.mark.parametrize("jit", [False, True])
def test_sqrt_equals_tensorflow_sqrt_bit_for_bit(jit):
    x = np.concatenate([RNG.uniform(0, 10, 20000), 10.0 ** RNG.uniform(-37, 38, 20000),
                        [0.0, np.inf, F32.max, F32.tiny, 1.0, 4.0]]).astype(np.float32)
    got = _run(cheap_ops.sqrt, tf.constant(x), jit=jit)
    want = _run(tf.sqrt, tf.constant(x), jit=jit)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    normal = x >= F32.tiny
    np.testing.assert_array_equal(got[normal], np.sqrt(x[normal]))


@pytest.mark.parametrize("jit", [False, True])
def test_sqrt_of_nan_and_negative_is_nan_but_of_minus_inf_is_inf(jit):
    got = _run(cheap_ops.sqrt, tf.constant([np.nan, -1.0, -F32.tiny, -np.inf], tf.float32), jit=jit)
    assert np.isnan(got[:3]).all(), got
    assert (got[3] == np.inf) if jit else np.isnan(got[3]), got  # under XLA, pow's rule for -inf


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_is_finite_equals_numpy(jit, dtype):
    big = float(np.finfo(dtype).max)
    with np.errstate(over="ignore"):  # 1e38 is inf in float16, as meant
        special = SPECIAL.astype(dtype)
    x = np.concatenate([special, (RNG.normal(size=100) * big / 4).astype(dtype),
                        np.array([big, -big], dtype)])
    got = _run(cheap_ops.is_finite, tf.constant(x), jit=jit)
    np.testing.assert_array_equal(got, np.isfinite(x))


@pytest.mark.parametrize("jit", [False, True])
def test_max_abs_equals_numpy(jit):
    for x in (RNG.normal(size=(7, 5)), -np.abs(RNG.normal(size=9)), np.abs(RNG.normal(size=9)),
              np.array([3.0, -np.inf, 1.0]), np.zeros(4)):
        x = x.astype(np.float32)
        assert _run(cheap_ops.max_abs, tf.constant(x), jit=jit) == np.max(np.abs(x)), x


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("shape", [(784, 512), (513,), (17, 3, 5), (15,), (3,), (), (0,)])
def test_sum_of_squares_equals_numpy(jit, shape):
    # 513 and 17*3*5 leave a remainder beyond the lanes; 15 and below take the plain sum.
    x = RNG.normal(size=shape).astype(np.float32) * 3.0
    got = _run(cheap_ops.sum_of_squares, tf.constant(x), jit=jit)
    np.testing.assert_allclose(got, np.sum(x.astype(np.float64) ** 2), rtol=2e-6, atol=0)


@pytest.mark.parametrize("jit", [False, True])
def test_sum_of_squares_of_inf_or_nan_anywhere_is_inf_or_nan(jit):
    for where in (0, 7, 400, 1025):  # in a lane, at a lane's end, in the middle, in the remainder
        for bad, check in ((np.inf, np.isposinf), (-np.inf, np.isposinf), (np.nan, np.isnan)):
            x = RNG.normal(size=1026).astype(np.float32)
            x[where] = bad
            got = _run(cheap_ops.sum_of_squares, tf.constant(x), jit=jit)
            assert check(got), (where, bad, got)
    huge = np.full(64, 1e20, np.float32)  # each square overflows float32, as the plain sum's
    assert np.isposinf(_run(cheap_ops.sum_of_squares, tf.constant(huge), jit=jit))


def test_sum_of_squares_of_a_shape_unknown_when_traced():
    fn = tf.function(cheap_ops.sum_of_squares, input_signature=[tf.TensorSpec([None], tf.float32)])
    x = RNG.normal(size=1001).astype(np.float32)
    np.testing.assert_allclose(fn(tf.constant(x)).numpy(), np.sum(x.astype(np.float64) ** 2), rtol=2e-6)


# Ops TensorFlow lowers to XLA through a per-op MLIR legalization (~10 ms each per compile).
MLIR_LOWERED = {"Sqrt", "Abs", "IsFinite", "Rsqrt"}
CLIPS = [ClipConfig(), ClipConfig(value=0.5), ClipConfig(per_variable_norm=1.0),
         ClipConfig(per_group_norm=1.0), ClipConfig(global_norm=1.0)]


@pytest.mark.parametrize("clip", CLIPS, ids=["none", "value", "per_variable", "per_group", "global"])
def test_statistics_and_clipping_emit_no_mlir_lowered_op(clip):
    grads = [tf.constant(RNG.normal(size=(4, 3)), tf.float32), tf.constant(RNG.normal(size=3), tf.float32),
             tf.constant(RNG.normal(size=(2, 2)), tf.float32)]

    @tf.function(jit_compile=True)
    def step(grads):
        clipped, stats = clip_gradients(grads, groups=[0, 0, 1], clip=clip)
        return clipped, stats

    graph = step.get_concrete_function(grads).graph
    ops = {op.type for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:  # the conditional's branches
        ops |= {n.op for n in f.node_def}
    assert not ops & MLIR_LOWERED, sorted(ops & MLIR_LOWERED)
    # and the values are those of a run
    _, stats = step(grads)
    want = np.sqrt(sum(float(np.sum(np.square(g.numpy().astype(np.float64)))) for g in grads))
    np.testing.assert_allclose(float(stats["grad_norm"]), want, rtol=1e-6)
