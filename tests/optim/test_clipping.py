"""Clipping modes on NumPy-checked values, stats, and non-finite inputs."""
import numpy as np
import pytest
import tensorflow as tf

from framework.config import ClipConfig
from framework.optim.clipping import clip_gradients

G = [np.array([3.0, 4.0], np.float32), np.array([[12.0]], np.float32), None]
GROUPS = [0, 1, 1]


def _clip(**kw):
    out, stats = clip_gradients([None if g is None else tf.constant(g) for g in G], groups=GROUPS,
                                clip=ClipConfig(**kw))
    return [None if g is None else g.numpy() for g in out], {k: float(v) for k, v in stats.items()}


def test_global_norm_and_stats():
    out, st = _clip(global_norm=6.5)
    assert st["grad_norm"] == pytest.approx(13.0) and st["grad_norm_clipped"] == pytest.approx(6.5)
    np.testing.assert_allclose(out[0], G[0] * 0.5, rtol=1e-6)
    assert out[2] is None and st["clipped"] == 1.0
    assert st["grad_norm/0"] == pytest.approx(5.0) and st["grad_norm/1"] == pytest.approx(12.0)


def test_no_clip_when_under_threshold():
    out, st = _clip(global_norm=100.0)
    np.testing.assert_array_equal(out[0], G[0])
    assert st["clipped"] == 0.0


def test_per_variable_per_group_and_value():
    out, _ = _clip(per_variable_norm=1.0)
    np.testing.assert_allclose(out[0], G[0] / 5.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], [[1.0]], rtol=1e-6)
    out, _ = _clip(per_group_norm=2.5)
    np.testing.assert_allclose(out[0], G[0] / 2.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], [[2.5]], rtol=1e-6)
    out, st = _clip(value=3.5)
    np.testing.assert_allclose(out[0], [3.0, 3.5])
    np.testing.assert_allclose(out[1], [[3.5]])
    assert st["clipped"] == 1.0


def test_non_finite_gradients_do_not_crash():
    grads = [tf.constant([np.inf, 1.0]), tf.constant([[np.nan]])]
    _, st = clip_gradients(grads, groups=[0, 0], clip=ClipConfig(global_norm=1.0))
    assert not np.isfinite(float(st["grad_norm"]))
