"""Learning-rate schedules by name (step -> LR, traceable), linear warmup, and `build` from config.

A schedule factory is `(*, base_lr, total_steps, **kwargs) -> fn(step) -> lr`; `step` is an
int64 tensor read inside the compiled loop, so schedules use tensor math only.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

from framework import registry
from framework.config import OptimizerConfig

Schedule = Callable[[tf.Tensor], tf.Tensor]


def _f(step: tf.Tensor) -> tf.Tensor:
    return tf.cast(step, tf.float32)


def _check(cond: bool, key: str, value: object, want: str) -> None:
    if not cond:
        raise ValueError(f"optimizer.schedule.{key}: expected {want}; got {value!r}")


@registry.register_schedule("constant")
def constant(*, base_lr: float, total_steps: int) -> Schedule:
    return lambda step: tf.constant(base_lr, tf.float32) + 0.0 * _f(step)


@registry.register_schedule("cosine")
def cosine(*, base_lr: float, total_steps: int, decay_steps: int | None = None, alpha: float = 0.0) -> Schedule:
    """Cosine decay from base_lr to alpha*base_lr over decay_steps (default: the whole run)."""
    n = decay_steps or total_steps
    _check(n > 0, "decay_steps", n, "an integer > 0")

    def fn(step):
        p = tf.minimum(_f(step), float(n)) / float(n)
        return base_lr * ((1 - alpha) * 0.5 * (1 + tf.cos(math.pi * p)) + alpha)
    return fn


@registry.register_schedule("cosine_restarts")
def cosine_restarts(*, base_lr: float, total_steps: int, first_decay_steps: int | None = None, t_mul: float = 2.0,
                    m_mul: float = 1.0, alpha: float = 0.0) -> Schedule:
    """SGDR: cosine cycles whose length grows by t_mul and height by m_mul (as Keras CosineDecayRestarts)."""
    first = first_decay_steps or max(total_steps // 4, 1)
    _check(first > 0, "first_decay_steps", first, "an integer > 0")
    import keras

    sched = keras.optimizers.schedules.CosineDecayRestarts(base_lr, first, t_mul=t_mul, m_mul=m_mul, alpha=alpha)
    return lambda step: tf.cast(sched(_f(step)), tf.float32)


@registry.register_schedule("linear")
def linear(*, base_lr: float, total_steps: int, end_fraction: float = 0.0) -> Schedule:
    n = max(total_steps, 1)
    return lambda step: base_lr * (1.0 - (1.0 - end_fraction) * tf.minimum(_f(step), float(n)) / n)


@registry.register_schedule("polynomial")
def polynomial(*, base_lr: float, total_steps: int, decay_steps: int | None = None, end_lr: float = 0.0,
               power: float = 1.0) -> Schedule:
    n = decay_steps or max(total_steps, 1)
    _check(n > 0, "decay_steps", n, "an integer > 0")
    return lambda step: (base_lr - end_lr) * (1 - tf.minimum(_f(step), float(n)) / n) ** power + end_lr


@registry.register_schedule("exponential")
def exponential(*, base_lr: float, total_steps: int, decay_rate: float = 0.96, decay_steps: int = 1000,
                staircase: bool = False) -> Schedule:
    _check(decay_steps > 0, "decay_steps", decay_steps, "an integer > 0")
    _check(0 < decay_rate, "decay_rate", decay_rate, "a number > 0")

    def fn(step):
        p = _f(step) / float(decay_steps)
        if staircase:
            p = tf.floor(p)
        return base_lr * tf.pow(tf.constant(decay_rate, tf.float32), p)
    return fn


@registry.register_schedule("piecewise")
def piecewise(*, base_lr: float, total_steps: int, boundaries: Sequence[int] = (),
              multipliers: Sequence[float] | None = None, values: Sequence[float] | None = None) -> Schedule:
    """Constant pieces: `values` (absolute) or `multipliers` of base_lr, one more than boundaries.

    As Keras PiecewiseConstantDecay: values[i] while step <= boundaries[i].
    """
    b = list(boundaries)
    _check(all(x < y for x, y in zip(b, b[1:])), "boundaries", b, "strictly increasing steps")
    if values is None:
        multipliers = list(multipliers) if multipliers is not None else [0.1 ** i for i in range(len(b) + 1)]
        values = [base_lr * m for m in multipliers]
    values = list(values)
    _check(len(values) == len(b) + 1, "values" if values else "multipliers", values,
           f"{len(b) + 1} entries (one more than boundaries {b})")

    def fn(step):
        idx = tf.searchsorted(tf.constant(b, tf.int64), tf.reshape(tf.cast(step, tf.int64), [1]), side="left")[0] \
            if b else tf.constant(0)
        return tf.gather(tf.constant(values, tf.float32), idx)
    return fn


registry.register_schedule("step")(piecewise)


@registry.register_schedule("one_cycle")
def one_cycle(*, base_lr: float, total_steps: int, max_lr: float | None = None, pct_start: float = 0.3,
              div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
    """1cycle (Smith): cosine up from max_lr/div_factor to max_lr, then down to initial/final_div_factor."""
    top = max_lr or base_lr
    n = max(total_steps, 2)
    up = max(int(pct_start * n), 1)
    start, end = top / div_factor, top / div_factor / final_div_factor

    def fn(step):
        s = _f(step)
        p_up = tf.minimum(s / up, 1.0)
        p_down = tf.clip_by_value((s - up) / max(n - up, 1), 0.0, 1.0)
        lr_up = start + (top - start) * 0.5 * (1 - tf.cos(math.pi * p_up))
        lr_down = end + (top - end) * 0.5 * (1 + tf.cos(math.pi * p_down))
        return tf.where(s < up, lr_up, lr_down)
    return fn


@registry.register_schedule("inverse_sqrt")
def inverse_sqrt(*, base_lr: float, total_steps: int, warmup: int = 1000) -> Schedule:
    return lambda step: base_lr * tf.math.rsqrt(tf.maximum(_f(step) + 1.0, float(warmup)) / float(warmup))


def with_warmup(fn: Schedule, *, warmup_steps: int) -> Schedule:
    """Linear warmup: lr(step) = fn(step) * min(1, (step + 1) / warmup_steps)."""
    if warmup_steps <= 0:
        return fn
    return lambda step: fn(step) * tf.minimum(1.0, (_f(step) + 1.0) / float(warmup_steps))


def build(cfg: OptimizerConfig, *, total_steps: int) -> Schedule:
    """The schedule `optimizer.schedule` names, at base `optimizer.learning_rate`, with warmup."""
    fn = registry.build(registry.SCHEDULES, cfg.schedule.name, cfg.schedule.kwargs, section="optimizer.schedule",
                        extra={"base_lr": float(cfg.learning_rate), "total_steps": int(total_steps)})
    return with_warmup(fn, warmup_steps=cfg.warmup_steps)
