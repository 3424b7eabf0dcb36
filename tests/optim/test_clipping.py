"""Clipping modes against NumPy, stats, non-finite inputs, and docs/design.md#t1 (clip after the replica sum)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from framework.config import ClipConfig
from framework.optim.clipping import clip_gradients

RNG = np.random.default_rng(0)
G = [RNG.normal(size=(4, 3)).astype(np.float32) * 3, RNG.normal(size=(3,)).astype(np.float32),
     None, RNG.normal(size=(2, 2)).astype(np.float32) * 5]
GROUPS = [0, 0, 1, 2]


def _np_norm(gs):
    return float(np.sqrt(sum(float(np.sum(np.square(g.astype(np.float64)))) for g in gs if g is not None)))


def _np_scale(gs, limit):
    n = _np_norm(gs)
    return [None if g is None else g * (limit / max(n, limit)) for g in gs]


def _np_clip(gs, groups, value=None, per_variable_norm=None, per_group_norm=None, global_norm=None):
    gs = [None if g is None else g.astype(np.float64) for g in gs]
    if value is not None:
        gs = [None if g is None else np.clip(g, -value, value) for g in gs]
    if per_variable_norm is not None:
        gs = [None if g is None else _np_scale([g], per_variable_norm)[0] for g in gs]
    if per_group_norm is not None:
        for gi in set(groups):
            idx = [i for i, x in enumerate(groups) if x == gi]
            for i, g in zip(idx, _np_scale([gs[i] for i in idx], per_group_norm)):
                gs[i] = g
    if global_norm is not None:
        gs = _np_scale(gs, global_norm)
    return gs


def _clip(grads=G, groups=GROUPS, **kw):
    out, stats = clip_gradients([None if g is None else tf.constant(g) for g in grads], groups=groups,
                                clip=ClipConfig(**kw))
    return [None if g is None else g.numpy() for g in out], {k: float(v) for k, v in stats.items()}


@pytest.mark.parametrize("kw", [dict(value=1.0), dict(per_variable_norm=2.0), dict(per_group_norm=4.0),
                                dict(global_norm=5.0), dict(value=2.0, per_variable_norm=3.0, per_group_norm=4.0,
                                                            global_norm=4.5), dict()])
def test_modes_equal_numpy(kw):
    out, st = _clip(**kw)
    ref = _np_clip(G, GROUPS, **kw)
    for a, b in zip(out, ref):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert st["grad_norm"] == pytest.approx(_np_norm(G), rel=1e-6)
    assert st["grad_norm_clipped"] == pytest.approx(_np_norm(ref), rel=1e-5)
    assert st["clipped"] == (1.0 if kw else 0.0)  # every threshold above is hit by G
    for gi in (0, 1, 2):  # every distinct group index, before clipping (group 1 has no gradient)
        assert st[f"grad_norm/{gi}"] == pytest.approx(_np_norm([g for g, x in zip(G, GROUPS) if x == gi]), rel=1e-6)
    # With or without a clipping mode the statistics also say whether every entry is finite.
    assert set(st) == {"grad_norm", "grad_norm_clipped", "clipped", "grad_norm/0", "grad_norm/1", "grad_norm/2",
                       "grads_finite"}
    assert st["grads_finite"] == 1.0


def test_exact_small_case_and_no_clip_under_threshold():
    g = [np.array([3.0, 4.0], np.float32), np.array([[12.0]], np.float32)]
    out, st = _clip(g, [0, 1], global_norm=6.5)
    assert st["grad_norm"] == pytest.approx(13.0) and st["grad_norm_clipped"] == pytest.approx(6.5)
    np.testing.assert_allclose(out[0], [1.5, 2.0], rtol=1e-6)
    out, st = _clip(g, [0, 1], global_norm=100.0, per_variable_norm=50.0, value=20.0, per_group_norm=30.0)
    np.testing.assert_array_equal(out[0], g[0])
    np.testing.assert_array_equal(out[1], g[1])
    assert st["clipped"] == 0.0 and st["grad_norm_clipped"] == pytest.approx(13.0)


def test_value_and_per_variable_agree_with_tf_ops():
    out, _ = _clip(value=0.5)
    np.testing.assert_array_equal(out[0], tf.clip_by_value(G[0], -0.5, 0.5).numpy())
    out, _ = _clip(per_variable_norm=1.0)
    np.testing.assert_allclose(out[3], tf.clip_by_norm(G[3], 1.0).numpy(), rtol=1e-6)


@pytest.mark.parametrize("scale", [1e25, 1e36, 1e-30])
@pytest.mark.parametrize("kw", [dict(global_norm=1.0), dict(per_group_norm=1.0), dict(per_variable_norm=1.0),
                                dict(per_variable_norm=2.0, per_group_norm=1.5, global_norm=1e-32)])
def test_huge_or_tiny_finite_gradients_are_clipped_exactly(kw, scale):
    # Sums of squares of these leave float32 (1e50+ overflows to inf, 1e-60 underflows to 0):
    # a plain norm would give an inf norm and a NaN clip factor, or a zero norm.
    grads = [None if g is None else (g.astype(np.float64) * scale).astype(np.float32) for g in G]
    out, st = _clip(grads, **kw)
    ref = _np_clip(grads, GROUPS, **kw)
    for a, b in zip(out, ref):
        if b is not None:
            assert np.all(np.isfinite(a))
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-45)
    assert st["grad_norm"] == pytest.approx(_np_norm(grads), rel=1e-5)
    assert st["grad_norm_clipped"] == pytest.approx(_np_norm(ref), rel=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("scale", [1.0, 1e25, 1e-30, 1e-21])
def test_statistics_without_clipping_equal_numpy_for_any_scale(scale, jit):
    # No clipping mode (the default): one pass where the sums of squares are normal float32s
    # (scale 1), the scaled form where they overflow (1e25), underflow to 0 (1e-30) or only one
    # group's sum is subnormal (1e-21 on group 2 alone: ~1e-41).
    grads = [None if g is None else (g.astype(np.float64) * (scale if scale != 1e-21 else 1.0)).astype(np.float32)
             for g in G]
    if scale == 1e-21:
        grads[3] = (G[3].astype(np.float64) * scale).astype(np.float32)
    fn = tf.function(lambda gs: clip_gradients(gs, groups=GROUPS, clip=ClipConfig()), jit_compile=True) if jit else \
        (lambda gs: clip_gradients(gs, groups=GROUPS, clip=ClipConfig()))
    out, st = fn([None if g is None else tf.constant(g) for g in grads])
    assert float(st["grad_norm"]) == pytest.approx(_np_norm(grads), rel=1e-5)
    for gi in (0, 1, 2):
        want = _np_norm([g for g, x in zip(grads, GROUPS) if x == gi])
        assert float(st[f"grad_norm/{gi}"]) == pytest.approx(want, rel=1e-5, abs=0.0 if want else 1e-45)
    assert float(st["grad_norm_clipped"]) == float(st["grad_norm"]) and float(st["clipped"]) == 0.0
    assert bool(st["grads_finite"])
    assert out[2] is None and all(np.array_equal(a.numpy(), b) for a, b in zip(out, grads) if b is not None)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_statistics_without_clipping_of_non_finite_or_zero_gradients(jit):
    def stats(gs, groups):
        fn = lambda: clip_gradients([tf.constant(g, tf.float32) for g in gs], groups=groups, clip=ClipConfig())[1]
        return tf.function(fn, jit_compile=True)() if jit else fn()

    nan = stats([[np.nan, 1.0], [2.0]], [0, 1])
    assert np.isnan(float(nan["grad_norm"])) and np.isnan(float(nan["grad_norm/0"]))
    assert float(nan["grad_norm/1"]) == pytest.approx(2.0) and not bool(nan["grads_finite"])
    inf = stats([[np.inf]], [0])
    assert not np.isfinite(float(inf["grad_norm"])) and not bool(inf["grads_finite"])
    neg = stats([[1.0, -np.inf], [1e30]], [0, 0])  # with an overflowing square beside it
    assert not np.isfinite(float(neg["grad_norm"])) and not bool(neg["grads_finite"])
    zero = stats([[0.0, 0.0], [3.0, 4.0]], [0, 1])
    assert float(zero["grad_norm/0"]) == 0.0 and float(zero["grad_norm"]) == pytest.approx(5.0)
    assert bool(zero["grads_finite"])
    beyond = stats([[3e38, 3e38]], [0])
    assert float(beyond["grad_norm"]) == np.inf  # the norm itself (4.2e38) is not a float32
    assert bool(beyond["grads_finite"])  # ... but every entry is finite
    # Two groups whose norms are finite but whose global norm (4.2e38) is not, and a small third.
    two = stats([[3e38], [3e38], [3.0, 4.0]], [0, 1, 2])
    assert float(two["grad_norm/0"]) == pytest.approx(3e38, rel=1e-6) and float(two["grad_norm/2"]) == 5.0
    assert float(two["grad_norm"]) == np.inf and bool(two["grads_finite"])
    # Squares that overflow in one group (norm 2.8e38, a float32), a trusted group beside it.
    over = stats([[2e38, 2e38], [1e-30], [3.0]], [0, 1, 1])
    assert float(over["grad_norm/0"]) == pytest.approx(np.sqrt(8e76), rel=1e-6)
    assert float(over["grad_norm"]) == pytest.approx(np.sqrt(8e76), rel=1e-6)
    assert float(over["grad_norm/1"]) == pytest.approx(3.0) and bool(over["grads_finite"])


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("kw", [dict(value=1.0), dict(per_variable_norm=2.0), dict(per_group_norm=4.0),
                                dict(global_norm=5.0)], ids=["value", "per_variable", "per_group", "global"])
def test_every_clipping_mode_says_whether_the_unclipped_gradients_are_finite(kw, jit):
    # The non-finite policy reads `grads_finite` from the statistics, with or without clipping.
    def finite(gs, groups):
        fn = lambda: clip_gradients([tf.constant(g, tf.float32) for g in gs], groups=groups,
                                    clip=ClipConfig(**kw))[1]["grads_finite"]
        return bool(tf.function(fn, jit_compile=True)() if jit else fn())

    assert not finite([[np.nan, 1.0], [2.0]], [0, 1])
    assert not finite([[3.0], [np.inf]], [0, 1])
    assert not finite([[1.0, -np.inf], [1e30]], [0, 0])
    assert finite([[0.0, 0.0], [3.0, 4.0]], [0, 1])
    assert finite([[3e38, 3e38], [1e-30]], [0, 1])  # a norm beyond float32 of finite entries


def test_norm_beyond_float32_is_inf_but_clipping_stays_finite():
    big = np.full((4,), 3e38, np.float32)  # norm 6e38: not a float32
    out, st = _clip([big], [0], global_norm=2.0)
    assert st["grad_norm"] == np.inf and st["clipped"] == 1.0
    np.testing.assert_allclose(out[0], [1.0] * 4, rtol=1e-6)
    assert st["grad_norm_clipped"] == pytest.approx(2.0, rel=1e-6)


def test_indexed_slices_are_densified():
    # Repeated index 0: the gradient's norm is that of the dense sum [2, 2], not of the slices.
    s = tf.IndexedSlices(tf.constant([[1.0, 1.0], [1.0, 1.0]]), tf.constant([0, 0]), tf.constant([3, 2]))
    out, st = clip_gradients([s], groups=[0], clip=ClipConfig(global_norm=1.0))
    assert st["grad_norm"].numpy() == pytest.approx(np.sqrt(8.0))
    np.testing.assert_allclose(out[0].numpy(), [[0.5 ** 0.5] * 2, [0, 0], [0, 0]], rtol=1e-6)


def test_non_finite_gradients_do_not_crash():
    grads = [tf.constant([np.inf, 1.0]), tf.constant([[np.nan]]), None]
    for kw in (dict(global_norm=1.0), dict(per_group_norm=1.0), dict(per_variable_norm=1.0), dict(value=1.0)):
        out, st = clip_gradients(grads, groups=[0, 0, 1], clip=ClipConfig(**kw))
        assert not np.isfinite(float(st["grad_norm"])) and out[2] is None, kw


def test_inside_tf_function_and_errors():
    f = tf.function(lambda a, b: clip_gradients([a, b], groups=[0, 0], clip=ClipConfig(global_norm=1.0)))
    out, st = f(tf.constant([3.0]), tf.constant([4.0]))
    np.testing.assert_allclose([out[0].numpy(), out[1].numpy()], [[0.6], [0.8]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"optimizer.clip.global_norm.*-1"):
        clip_gradients([tf.constant([1.0])], groups=[0], clip=ClipConfig(global_norm=-1.0))
    with pytest.raises(ValueError, match=r"2 gradients and 1 group"):
        clip_gradients([tf.constant([1.0])] * 2, groups=[0], clip=ClipConfig())


# ----------------------------------------------------------------------------- docs/design.md#t1


def _data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    # The two replicas' halves pull in different directions, so per-replica clipping matters.
    y = np.concatenate([rng.normal(size=(4, 1)) + 4.0, rng.normal(size=(4, 1)) - 1.0]).astype(np.float32)
    return x, y


def _loss(layer, x, y, global_batch):
    per_example = tf.reduce_sum(tf.square(layer(x) - y), axis=-1)
    return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)


def test_clip_after_the_replica_sum_equals_one_device():
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(cpus) < 2:
        pytest.skip("needs 2 logical CPU devices (tests/conftest.py)")
    x, y = _data()
    w0 = np.array([[0.5], [-0.3], [0.2]], np.float32)
    limit, lr = 1.0, 0.1

    # One device, full batch: the reference clipped gradient.
    layer = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(w0))
    layer.build((None, 3))
    with tf.GradientTape() as tape:
        loss = _loss(layer, x, y, 8)
    (g_full,) = tape.gradient(loss, layer.trainable_variables)
    assert float(tf.norm(g_full)) > limit  # clipping is active
    (g_ref,), _ = clip_gradients([g_full], groups=[0], clip=ClipConfig(global_norm=limit))

    strategy = tf.distribute.MirroredStrategy(cpus[:2], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        keras_layer = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(w0))
        keras_layer.build((None, 3))
        ours_layer = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(w0))
        ours_layer.build((None, 3))
        keras_opt = keras.optimizers.SGD(learning_rate=lr, global_clipnorm=limit)
        keras_opt.build(keras_layer.trainable_variables)  # eagerly, in scope (docs/design.md#t2)

    halves = [(x[:4], y[:4]), (x[4:], y[4:])]
    xs = strategy.experimental_distribute_values_from_function(lambda c: halves[c.replica_id_in_sync_group][0])
    ys = strategy.experimental_distribute_values_from_function(lambda c: halves[c.replica_id_in_sync_group][1])

    @tf.function
    def keras_step(xr, yr):
        def fn(a, b):
            with tf.GradientTape() as t:
                loss = _loss(keras_layer, a, b, 8)
            grads = t.gradient(loss, keras_layer.trainable_variables)
            keras_opt.apply_gradients(zip(grads, keras_layer.trainable_variables))
            return grads[0]
        return strategy.run(fn, args=(xr, yr))

    @tf.function
    def framework_step(xr, yr):
        def fn(a, b):
            with tf.GradientTape() as t:
                loss = _loss(ours_layer, a, b, 8)
            grads = t.gradient(loss, ours_layer.trainable_variables)
            ctx = tf.distribute.get_replica_context()
            summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            clipped, _ = clip_gradients(summed, groups=[0], clip=ClipConfig(global_norm=limit))
            return clipped[0]
        return strategy.run(fn, args=(xr, yr))

    local = keras_step(xs, ys)
    local = [g.numpy() for g in strategy.experimental_local_results(local)]
    keras_w = strategy.experimental_local_results(keras_layer.kernel.value)[0].numpy()

    # Keras clipped each replica's partial gradient, then summed: not the one-device update.
    per_replica_clipped = sum(g * min(1.0, limit / np.linalg.norm(g)) for g in local)
    np.testing.assert_allclose(keras_w, w0 - lr * per_replica_clipped, rtol=1e-5, atol=1e-6)
    assert np.abs(keras_w - (w0 - lr * g_ref.numpy())).max() > 1e-3

    # The framework's order (sum, then clip) gives the one-device clipped gradient on every replica.
    for g in strategy.experimental_local_results(framework_step(xs, ys)):
        np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_value_clipping_reports_a_hit_beside_a_nan_entry(jit):
    """`clipped` is 1 when a finite entry exceeds the value, whatever a NaN entry beside it."""
    g = [tf.constant([np.nan, 5.0, 0.1], tf.float32), tf.constant([0.1, -0.2], tf.float32)]
    _, stats = tf.function(lambda g: clip_gradients(g, groups=[0, 0], clip=ClipConfig(value=1.0)),
                           jit_compile=jit)(g)
    assert float(stats["clipped"]) == 1.0
    _, stats = tf.function(lambda g: clip_gradients(g, groups=[0, 0], clip=ClipConfig(value=10.0)),
                           jit_compile=jit)(g)
    assert float(stats["clipped"]) == 0.0
