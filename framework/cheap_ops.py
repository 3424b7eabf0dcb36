"""Square root, |x| maximum, finiteness and sums of squares spelled with ops XLA handles cheaply.

TensorFlow lowers a few ops to XLA through an MLIR legalization of that one op (each instance
builds a graph, imports it to MLIR and legalizes it), among them `Sqrt`, `Abs`, `IsFinite`,
`Relu`, `Exp` and `Softmax`. Measured on the 2-core Xeon (2026-12-03, 50 instances in one
`jit_compile` function, second run of a warm persistent XLA cache): 10-13 ms per `Sqrt`, `Abs`
or `IsFinite` instance against under 1 ms for `Pow`, `Maximum`, comparisons and reductions.
The lowering runs before the cache lookup, so a warm cache pays it too. The framework's own
code inside the compiled step (gradient statistics, clipping, the loss check) uses the
spellings below, which give the same values; the model's and Keras's ops are left as they are.
`sum_of_squares` is there for the XLA CPU run time, not the lowering (see `LANES`).
"""
from __future__ import annotations

import tensorflow as tf


def sqrt(x: tf.Tensor) -> tf.Tensor:
    """`tf.sqrt(x)` as `x ** 0.5`: equal bit for bit for x >= 0 and NaN, with and without XLA.

    -0 may come out as +0, and under XLA -inf gives +inf (pow's rule) where sqrt gives NaN; the
    framework takes it only of sums of squares.
    """
    return tf.pow(x, tf.constant(0.5, x.dtype))


def max_abs(x: tf.Tensor) -> tf.Tensor:
    """`reduce_max(|x|)` as `max(reduce_max(x), -reduce_min(x))`: no elementwise pass either.

    A NaN entry may or may not come out, as with `reduce_max(tf.abs(x))`.
    """
    return tf.maximum(tf.reduce_max(x), -tf.reduce_min(x))


def is_finite(x: tf.Tensor) -> tf.Tensor:
    """`tf.math.is_finite(x)` of floating values: -max <= x <= max of the dtype (NaN compares
    false)."""
    limit = tf.constant(x.dtype.max, x.dtype)
    return (x >= -limit) & (x <= limit)


# Partial sums kept by `sum_of_squares`. XLA on CPU ran a float sum over a whole tensor as one
# sequential loop (the order of a float sum is kept), about 9x slower than `reduce_max` of the
# same tensor; summing LANES interleaved partial sums first lets it vectorize. Measured on the
# 2-core AMD EPYC (2026-12-06, the MLP benchmark's six gradient shapes, 670k values, medians of
# 5 XLA loops of 500): 0.32 ms -> 0.06 ms; 16 or 32 lanes 0.12 ms, 64 0.06 ms; without XLA
# 0.15 -> 0.14 ms.
LANES = 8


def sum_of_squares(x: tf.Tensor) -> tf.Tensor:
    """`reduce_sum(square(x))` of a floating tensor, summed as `LANES` partial sums.

    The same value up to rounding (a different order of the additions); an inf or NaN entry
    gives inf or NaN as the plain sum does. The last partial sums are combined by a dot with
    ones: a second `reduce_sum` was merged back into one reduction (0.09 ms above).
    """
    n = x.shape.num_elements()
    if n is None or n < 2 * LANES:  # shape not known when traced, or nothing to gain
        return tf.reduce_sum(tf.square(x))
    flat = tf.reshape(x, [-1])
    main = n - n % LANES
    lanes = tf.reduce_sum(tf.square(tf.reshape(flat[:main], [-1, LANES])), 0)
    total = tf.tensordot(lanes, tf.ones([LANES], x.dtype), 1)
    if main < n:
        total += tf.reduce_sum(tf.square(flat[main:]))
    return total
