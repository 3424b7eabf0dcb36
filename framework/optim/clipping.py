"""Gradient clipping of the aggregated gradient: value, per variable, per group, global norm.

Runs inside the compiled step AFTER the cross-replica sum (DESIGN.md trap 1: clipping per
replica before the sum, as Keras's `global_clipnorm` does under a strategy, clips the wrong
vector). Pure tensor math; the same on every replica.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from framework.config import ClipConfig


def _global_norm(grads: Sequence[tf.Tensor | None]) -> tf.Tensor:
    gs = [tf.cast(g, tf.float32) for g in grads if g is not None]
    if not gs:
        return tf.constant(0.0)
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in gs]))


def clip_gradients(grads: list[tf.Tensor | None], *, groups: Sequence[int],
                   clip: ClipConfig) -> tuple[list[tf.Tensor | None], dict[str, tf.Tensor]]:
    """Clips `grads` as `clip` says; returns (clipped grads, stats).

    Order: elementwise value, per-variable norm, per-group global norm, global norm.

    Args:
      grads: aggregated gradients (None for variables without one).
      groups: parameter-group index of each gradient.
      clip: `optimizer.clip`.

    Returns:
      Stats (float32 scalars): `grad_norm` (before clipping), `grad_norm_clipped` (after),
      `clipped` (1.0 if clipping changed anything) and `grad_norm/<g>` per group index.
    """
    grads = list(grads)
    norm_before = _global_norm(grads)
    stats = {"grad_norm": norm_before}
    for g in sorted(set(groups)):
        stats[f"grad_norm/{g}"] = _global_norm([x for x, gi in zip(grads, groups) if gi == g])
    clipped = tf.constant(False)
    if clip.value is not None:
        v = float(clip.value)
        new = [None if g is None else tf.clip_by_value(g, -v, v) for g in grads]
        clipped = tf.logical_or(clipped, tf.reduce_any([tf.reduce_any(tf.abs(g) > v) for g in grads
                                                        if g is not None] or [False]))
        grads = new
    if clip.per_variable_norm is not None:
        c = float(clip.per_variable_norm)
        new = []
        for g in grads:
            if g is None:
                new.append(None)
                continue
            n = tf.norm(tf.cast(g, tf.float32))
            clipped = tf.logical_or(clipped, n > c)
            new.append(tf.clip_by_norm(g, c))
        grads = new
    if clip.per_group_norm is not None:
        c = float(clip.per_group_norm)
        for gi in sorted(set(groups)):
            idx = [i for i, x in enumerate(groups) if x == gi and grads[i] is not None]
            if not idx:
                continue
            part, n = tf.clip_by_global_norm([grads[i] for i in idx], c)
            clipped = tf.logical_or(clipped, n > c)
            for i, g in zip(idx, part):
                grads[i] = g
    if clip.global_norm is not None:
        c = float(clip.global_norm)
        idx = [i for i, g in enumerate(grads) if g is not None]
        n = _global_norm(grads)
        part, _ = tf.clip_by_global_norm([grads[i] for i in idx], c, use_norm=n)
        clipped = tf.logical_or(clipped, n > c)
        for i, g in zip(idx, part):
            grads[i] = g
    stats["grad_norm_clipped"] = _global_norm(grads)
    stats["clipped"] = tf.cast(clipped, tf.float32)
    return grads, stats
