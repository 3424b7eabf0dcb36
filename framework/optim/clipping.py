"""Gradient clipping of the aggregated gradient: value, per variable, per group, global norm.

Runs inside the compiled step AFTER the cross-replica sum, on the true mean gradient.
DESIGN.md trap 1: Keras's `clipnorm` / `global_clipnorm` clip each replica's partial gradient
before the sum, which clips the wrong vector under a strategy. Pure tensor math; it gives the
same result on every replica because every replica holds the same summed gradient.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from framework.config import ClipConfig

Grad = tf.Tensor | None


def _dense(g: tf.Tensor | tf.IndexedSlices | None) -> Grad:
    # An embedding's gradient arrives as IndexedSlices, possibly with repeated indices: its
    # norm is the norm of the dense sum, so densify before measuring.
    if isinstance(g, tf.IndexedSlices):
        return tf.convert_to_tensor(g)
    return g


def _sq(g: Grad) -> tf.Tensor | None:
    return None if g is None else tf.reduce_sum(tf.square(tf.cast(g, tf.float32)))


def _norm(squares: Sequence[tf.Tensor | None]) -> tf.Tensor:
    parts = [s for s in squares if s is not None]
    return tf.sqrt(tf.add_n(parts)) if parts else tf.constant(0.0, tf.float32)


def _scale(g: tf.Tensor, norm: tf.Tensor, limit: float) -> tf.Tensor:
    # As tf.clip_by_global_norm: g * limit / max(norm, limit); NaN everywhere if norm is not finite.
    factor = limit * tf.minimum(1.0 / norm, 1.0 / limit)
    factor = tf.where(tf.math.is_finite(norm), factor, tf.constant(float("nan")))
    return g * tf.cast(factor, g.dtype)


def _threshold(clip: ClipConfig, key: str) -> float | None:
    value = getattr(clip, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"optimizer.clip.{key}: expected a number > 0 or null; got {value!r}")
    return float(value)


def clip_gradients(grads: Sequence[tf.Tensor | tf.IndexedSlices | None], *, groups: Sequence[int],
                   clip: ClipConfig) -> tuple[list[Grad], dict[str, tf.Tensor]]:
    """Clips aggregated gradients as `optimizer.clip` says.

    Order: elementwise value (`clip.value`), per-variable norm (`clip.per_variable_norm`,
    tf.clip_by_norm), per-group global norm (`clip.per_group_norm`), then the global norm over
    all gradients (`clip.global_norm`). Modes left at None are skipped.

    Args:
      grads: the cross-replica-summed gradients; None passes through; IndexedSlices are
        densified.
      groups: parameter-group index of each gradient (same length as `grads`).
      clip: `optimizer.clip`.

    Returns:
      (clipped gradients, stats) where stats holds float32 scalars: `grad_norm` (global norm
      before clipping), `grad_norm_clipped` (after), `clipped` (1.0 if a mode changed
      something, else 0.0) and `grad_norm/<g>` (norm before clipping) for each distinct group
      index g. Non-finite gradients give non-finite norms (and NaN from the norm modes), never
      an error.

    Raises:
      ValueError: `groups` and `grads` differ in length, or a threshold is not > 0.
    """
    grads = [_dense(g) for g in grads]
    groups = list(groups)
    if len(groups) != len(grads):
        raise ValueError(f"clip_gradients: one group index per gradient; got {len(grads)} gradients and "
                         f"{len(groups)} group indices")
    value = _threshold(clip, "value")
    per_variable = _threshold(clip, "per_variable_norm")
    per_group = _threshold(clip, "per_group_norm")
    global_norm = _threshold(clip, "global_norm")
    group_ids = sorted(set(groups))

    squares = [_sq(g) for g in grads]
    stats: dict[str, tf.Tensor] = {"grad_norm": _norm(squares)}
    for gi in group_ids:
        stats[f"grad_norm/{gi}"] = _norm([s for s, x in zip(squares, groups) if x == gi])
    hits: list[tf.Tensor] = []
    changed = False

    if value is not None:
        present = [g for g in grads if g is not None]
        hits += [tf.reduce_any(tf.abs(g) > tf.cast(value, g.dtype)) for g in present]
        grads = [None if g is None else tf.clip_by_value(g, -value, value) for g in grads]
        squares, changed = [_sq(g) for g in grads], True

    if per_variable is not None:
        hits += [tf.sqrt(s) > per_variable for s in squares if s is not None]
        grads = [None if g is None else tf.clip_by_norm(g, per_variable) for g in grads]
        squares, changed = [_sq(g) for g in grads], True

    if per_group is not None:
        for gi in group_ids:
            idx = [i for i, x in enumerate(groups) if x == gi and grads[i] is not None]
            if not idx:
                continue
            n = _norm([squares[i] for i in idx])
            hits.append(n > per_group)
            for i in idx:
                grads[i] = _scale(grads[i], n, per_group)
        squares, changed = [_sq(g) for g in grads], True

    if global_norm is not None:
        n = _norm(squares)
        hits.append(n > global_norm)
        grads = [None if g is None else _scale(g, n, global_norm) for g in grads]
        squares, changed = [_sq(g) for g in grads], True

    stats["grad_norm_clipped"] = _norm(squares) if changed else stats["grad_norm"]
    stats["clipped"] = tf.cast(tf.reduce_any(tf.stack(hits)), tf.float32) if hits else tf.constant(0.0)
    return grads, stats
