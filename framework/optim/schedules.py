"""Learning-rate schedules by name (step -> LR, traceable), linear warmup, and `build` from config.

A schedule factory is `(*, base_lr, total_steps, **kwargs) -> fn(step) -> lr`: `step` is the
int64 global step read inside the compiled loop and `lr` a float32 scalar, so schedules use
tensor math only (no Python branching on tensors). Decaying schedules span `total_steps`
(the whole run) unless given their own length. Bad values raise ValueError naming
`optimizer.schedule.<key>` and the value received, when the schedule is built (before any trace).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from framework import registry
from framework.config import OptimizerConfig, own_keys

Schedule = Callable[[tf.Tensor], tf.Tensor]


# ----------------------------------------------------------------------------- validation


def _fail(key: str, value: Any, want: str) -> None:
    raise ValueError(f"optimizer.schedule.{key}: expected {want}; got {value!r}")


def _int(key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, value, f"an integer >= {minimum}")
    return value


def _num(key: str, value: Any, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        _fail(key, value, "a finite number" + (f" {lo}" if lo else "") + (" and" if lo and hi else "")
              + (f" {hi}" if hi else ""))
    return float(value)


def _f(step: tf.Tensor) -> tf.Tensor:
    return tf.cast(step, tf.float32)


def _cos_anneal(start: float, end: float, rest: tf.Tensor) -> tf.Tensor:
    """Half a cosine from `start` (rest = 1) to `end` (rest = 0); `rest` is the fraction left.

    Uses (1 + cos(pi p)) / 2 = sin(pi (1 - p) / 2)**2 with 1 - p computed from the steps left,
    which keeps float32 precision near the end (where the rate is smallest).
    """
    return end + (start - end) * tf.square(tf.sin(0.5 * math.pi * rest))


# ----------------------------------------------------------------------------- schedules


@registry.register_schedule("constant")
def constant(*, base_lr: float, total_steps: int) -> Schedule:  # noqa: ARG001 - the factories' common signature
    """lr = base_lr."""
    return lambda step: tf.constant(base_lr, tf.float32) + 0.0 * _f(step)


@registry.register_schedule("cosine")
def cosine(*, base_lr: float, total_steps: int, decay_steps: int | None = None, alpha: float = 0.0) -> Schedule:
    """Cosine decay from base_lr to alpha * base_lr over decay_steps (default: the run), then flat.

    As keras.optimizers.schedules.CosineDecay.

    Args:
      base_lr: initial rate.
      total_steps: steps of the run.
      decay_steps: length of the decay (default total_steps).
      alpha: final rate as a fraction of base_lr.
    """
    n = _int("decay_steps", total_steps if decay_steps is None else decay_steps, minimum=1)
    alpha = _num("alpha", alpha, low=0.0)

    def fn(step):
        return _cos_anneal(base_lr, alpha * base_lr, (float(n) - tf.minimum(_f(step), float(n))) / float(n))
    return fn


@registry.register_schedule("cosine_restarts")
def cosine_restarts(*, base_lr: float, total_steps: int, first_decay_steps: int | None = None, t_mul: float = 2.0,
                    m_mul: float = 1.0, alpha: float = 0.0) -> Schedule:
    """SGDR: cosine cycles whose length grows by t_mul and height by m_mul (Keras CosineDecayRestarts).

    Args:
      base_lr: initial rate.
      total_steps: steps of the run.
      first_decay_steps: length of the first cycle (default a quarter of the run).
      t_mul: factor on each next cycle's length.
      m_mul: factor on each next cycle's initial rate.
      alpha: minimum rate as a fraction of the cycle's initial rate.
    """
    first = _int("first_decay_steps", max(total_steps // 4, 1) if first_decay_steps is None else first_decay_steps,
                 minimum=1)
    t_mul = _num("t_mul", t_mul, low=0.0, low_open=True)
    m_mul = _num("m_mul", m_mul, low=0.0)
    alpha = _num("alpha", alpha, low=0.0)
    sched = keras.optimizers.schedules.CosineDecayRestarts(base_lr, first, t_mul=t_mul, m_mul=m_mul, alpha=alpha)
    return lambda step: tf.cast(sched(_f(step)), tf.float32)


@registry.register_schedule("linear")
def linear(*, base_lr: float, total_steps: int, end_fraction: float = 0.0, decay_steps: int | None = None) -> Schedule:
    """Straight line from base_lr to end_fraction * base_lr over decay_steps (default: the run)."""
    n = _int("decay_steps", max(total_steps, 1) if decay_steps is None else decay_steps, minimum=1)
    end_fraction = _num("end_fraction", end_fraction, low=0.0)
    return lambda step: base_lr * (1.0 - (1.0 - end_fraction) * tf.minimum(_f(step), float(n)) / float(n))


@registry.register_schedule("polynomial")
def polynomial(*, base_lr: float, total_steps: int, decay_steps: int | None = None, end_lr: float = 0.0,
               power: float = 1.0) -> Schedule:
    """(base_lr - end_lr) * (1 - min(step, n) / n) ** power + end_lr (Keras PolynomialDecay, no cycle)."""
    n = _int("decay_steps", max(total_steps, 1) if decay_steps is None else decay_steps, minimum=1)
    end_lr = _num("end_lr", end_lr, low=0.0)
    power = _num("power", power, low=0.0, low_open=True)
    return lambda step: (base_lr - end_lr) * tf.pow(1.0 - tf.minimum(_f(step), float(n)) / float(n), power) + end_lr


@registry.register_schedule("exponential")
def exponential(*, base_lr: float, total_steps: int, decay_rate: float = 0.96, decay_steps: int = 1000,  # noqa: ARG001
                staircase: bool = False) -> Schedule:
    """base_lr * decay_rate ** (step / decay_steps), floored exponent if staircase (Keras ExponentialDecay)."""
    decay_steps = _int("decay_steps", decay_steps, minimum=1)
    decay_rate = _num("decay_rate", decay_rate, low=0.0, low_open=True)
    if not isinstance(staircase, bool):
        _fail("staircase", staircase, "true or false")

    def fn(step):
        p = _f(step) / float(decay_steps)
        if staircase:
            p = tf.floor(p)
        return base_lr * tf.pow(tf.constant(decay_rate, tf.float32), p)
    return fn


@registry.register_schedule("piecewise")
def piecewise(*, base_lr: float, total_steps: int, boundaries: Sequence[int] = (),  # noqa: ARG001
              multipliers: Sequence[float] | None = None, values: Sequence[float] | None = None) -> Schedule:
    """Constant pieces, as Keras PiecewiseConstantDecay: the i-th value while step <= boundaries[i].

    Args:
      base_lr: the rate that `multipliers` scale.
      total_steps: steps of the run.
      boundaries: strictly increasing steps >= 0.
      multipliers: one more than boundaries, times base_lr (default 1, 0.1, 0.01, ...).
      values: absolute rates instead of multipliers (one more than boundaries).
    """
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence):
        _fail("boundaries", boundaries, "a list of steps")
    b = list(boundaries)
    if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in b):
        _fail("boundaries", b, "integer steps >= 0")
    if any(x >= y for x, y in zip(b, b[1:])):
        _fail("boundaries", b, "strictly increasing steps")
    if values is not None and multipliers is not None:
        _fail("values", values, "either values or multipliers, not both (multipliers="
              f"{multipliers!r})")
    key = "values" if values is not None else "multipliers"
    if values is None:
        given = list(multipliers) if multipliers is not None else [0.1 ** i for i in range(len(b) + 1)]
        pieces = [base_lr * _num(key, m, low=0.0) for m in given]
    else:
        given = list(values)
        pieces = [_num(key, v, low=0.0) for v in given]
    if len(pieces) != len(b) + 1:
        _fail(key, given, f"{len(b) + 1} entries (one more than boundaries {b})")
    table = tf.constant(pieces, tf.float32)
    edges = tf.constant(b or [0], tf.int64)

    def fn(step):
        if not b:
            return table[0] + 0.0 * _f(step)
        s = tf.reshape(tf.cast(step, tf.int64), [1])
        return tf.gather(table, tf.searchsorted(edges, s, side="left")[0])
    return fn


registry.register_schedule("step")(piecewise)


@registry.register_schedule("one_cycle")
def one_cycle(*, base_lr: float, total_steps: int, max_lr: float | None = None, pct_start: float = 0.3,
              div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
    """1cycle (Smith), as PyTorch's OneCycleLR with cosine annealing.

    From max_lr / div_factor up to max_lr at step pct_start * total_steps - 1, then down to
    max_lr / div_factor / final_div_factor at step total_steps - 1 (flat afterwards).

    Args:
      base_lr: used as max_lr when max_lr is not given.
      total_steps: steps of the run (>= 2).
      max_lr: the peak rate.
      pct_start: fraction of the run spent rising.
      div_factor: max_lr / initial rate.
      final_div_factor: initial rate / final rate.
    """
    top = _num("max_lr", base_lr if max_lr is None else max_lr, low=0.0)
    pct_start = _num("pct_start", pct_start, low=0.0, high=1.0, low_open=True, high_open=True)
    div_factor = _num("div_factor", div_factor, low=0.0, low_open=True)
    final_div_factor = _num("final_div_factor", final_div_factor, low=0.0, low_open=True)
    if total_steps < 2:
        raise ValueError(f"optimizer.schedule: one_cycle needs a run of at least 2 steps; "
                         f"got total_steps={total_steps}")
    start = top / div_factor
    end = start / final_div_factor
    up_end = max(pct_start * total_steps - 1.0, 1e-9)
    down_end = float(total_steps - 1)
    if down_end <= up_end:
        _fail("pct_start", pct_start, f"a fraction that leaves steps to anneal in a run of {total_steps}")

    def fn(step):
        s = _f(step)
        lr_up = _cos_anneal(start, top, tf.clip_by_value((up_end - s) / up_end, 0.0, 1.0))
        lr_down = _cos_anneal(top, end, tf.clip_by_value((down_end - s) / (down_end - up_end), 0.0, 1.0))
        return tf.where(s <= up_end, lr_up, lr_down)
    return fn


@registry.register_schedule("inverse_sqrt")
def inverse_sqrt(*, base_lr: float, total_steps: int, warmup_steps: int | None = None) -> Schedule:
    """Linear warmup to base_lr, then decay as 1/sqrt(step) (Transformer / fairseq style).

    lr = base_lr * min((step + 1) / W, sqrt(W / (step + 1))): base_lr at step W - 1. Do not
    combine with `optimizer.warmup_steps` unless a double warmup is meant.

    Args:
      base_lr: the peak rate.
      total_steps: steps of the run.
      warmup_steps: W (default a tenth of the run).
    """
    w = float(_int("warmup_steps", max(1, total_steps // 10) if warmup_steps is None else warmup_steps, minimum=1))

    def fn(step):
        s = _f(step) + 1.0
        return base_lr * tf.minimum(s / w, tf.math.rsqrt(s / w))
    return fn


# ----------------------------------------------------------------------------- warmup and build


def with_warmup(fn: Schedule, *, warmup_steps: int, base_lr: float | None = None) -> Schedule:
    """Linear warmup in front of any schedule.

    lr(step) = fn(step) * min(1, (step + 1) / warmup_steps): it rises linearly from
    fn(0) / warmup_steps and meets the schedule at step warmup_steps - 1; the schedule itself
    keeps running under the warmup (a cosine over the run has already decayed a little there).

    Args:
      fn: the schedule.
      warmup_steps: length of the warmup; 0 returns `fn` unchanged.
      base_lr: the run's base rate; accepted for symmetry with the factories (the warmup scales
        the schedule's own value, so it is not needed).

    Raises:
      ValueError: `warmup_steps` is negative or not an integer.
    """
    del base_lr
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"optimizer.warmup_steps: expected an integer >= 0; got {warmup_steps!r}")
    if warmup_steps == 0:
        return fn
    w = float(warmup_steps)
    return lambda step: fn(step) * tf.minimum(1.0, (_f(step) + 1.0) / w)


def build(cfg: OptimizerConfig, *, total_steps: int) -> Schedule:
    """The schedule `optimizer.schedule` names, at base `optimizer.learning_rate`, with warmup.

    Args:
      cfg: the `optimizer` section.
      total_steps: optimizer steps of the whole run.

    Returns:
      fn(step: int64 tensor) -> float32 learning rate.

    Raises:
      RegistryError: unknown schedule name (lists the registered ones).
      ValueError: an unknown key or a bad value, naming `optimizer.schedule.<key>`.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"optimizer.schedule: total_steps must be an integer >= 1; got {total_steps!r}")
    base_lr = _lr(cfg.learning_rate)
    fn = registry.build(registry.SCHEDULES, cfg.schedule.name, cfg.schedule.kwargs, section="optimizer.schedule",
                        extra={"base_lr": base_lr, "total_steps": int(total_steps)},
                        section_keys=own_keys(cfg.schedule))
    return with_warmup(fn, warmup_steps=cfg.warmup_steps, base_lr=base_lr)


def _lr(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"optimizer.learning_rate: expected a finite number >= 0; got {value!r}")
    return float(value)
