"""Schedules by name: values at chosen steps (closed forms, Keras equivalents), warmup, errors."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework.config import OptimizerConfig, ScheduleConfig
from framework.optim import schedules


def _sched(name, lr=0.1, total=1000, warmup=0, **kw):
    cfg = OptimizerConfig(learning_rate=lr, schedule=ScheduleConfig(name=name, kwargs=kw), warmup_steps=warmup)
    return schedules.build(cfg, total_steps=total)


def _at(fn, step):
    return float(fn(tf.constant(step, tf.int64)))


def test_constant_and_cosine():
    assert _at(_sched("constant"), 500) == pytest.approx(0.1)
    cos = _sched("cosine", alpha=0.1)
    for s in (0, 250, 500, 1000, 1500):
        p = min(s, 1000) / 1000
        assert _at(cos, s) == pytest.approx(0.1 * (0.9 * 0.5 * (1 + math.cos(math.pi * p)) + 0.1), rel=1e-5)


def test_keras_equivalents():
    pairs = [
        (_sched("exponential", decay_rate=0.5, decay_steps=100),
         keras.optimizers.schedules.ExponentialDecay(0.1, 100, 0.5)),
        (_sched("exponential", decay_rate=0.5, decay_steps=100, staircase=True),
         keras.optimizers.schedules.ExponentialDecay(0.1, 100, 0.5, staircase=True)),
        (_sched("polynomial", end_lr=0.01, power=2.0),
         keras.optimizers.schedules.PolynomialDecay(0.1, 1000, 0.01, power=2.0)),
        (_sched("piecewise", boundaries=[100, 300], values=[0.1, 0.05, 0.01]),
         keras.optimizers.schedules.PiecewiseConstantDecay([100, 300], [0.1, 0.05, 0.01])),
        (_sched("cosine_restarts", first_decay_steps=100),
         keras.optimizers.schedules.CosineDecayRestarts(0.1, 100)),
    ]
    for ours, ref in pairs:
        for s in (0, 1, 99, 100, 101, 250, 299, 300, 301, 700, 1000):
            assert _at(ours, s) == pytest.approx(float(ref(s)), rel=1e-5, abs=1e-9), (ref, s)


def test_one_cycle_shape():
    oc = _sched("one_cycle", total=1000, max_lr=1.0, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert _at(oc, 0) == pytest.approx(1.0 / 25)
    assert _at(oc, 300) == pytest.approx(1.0)
    assert _at(oc, 1000) == pytest.approx(1.0 / 25 / 1e4, rel=1e-3)
    vals = [_at(oc, s) for s in range(0, 1001, 50)]
    top = int(np.argmax(vals))
    assert all(a <= b for a, b in zip(vals[:top], vals[1:top + 1]))
    assert all(a >= b for a, b in zip(vals[top:], vals[top + 1:]))


def test_warmup_composes_with_any_schedule():
    w = _sched("cosine", warmup=100)
    base = _sched("cosine")
    assert _at(w, 0) == pytest.approx(_at(base, 0) / 100)
    assert _at(w, 49) == pytest.approx(_at(base, 49) * 50 / 100)
    assert _at(w, 99) == pytest.approx(_at(base, 99))
    assert _at(w, 500) == pytest.approx(_at(base, 500))


def test_schedule_inside_tf_function_with_variable_step():
    fn = _sched("exponential", decay_rate=0.5, decay_steps=10)
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def f():
        step.assign_add(10)
        return fn(step.read_value())

    assert float(f()) == pytest.approx(0.05)
    assert float(f()) == pytest.approx(0.025)


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"optimizer.schedule.boundaries.*\[300, 100\]"):
        _sched("piecewise", boundaries=[300, 100], values=[1, 2, 3])
    with pytest.raises(ValueError, match=r"optimizer.schedule.values"):
        _sched("piecewise", boundaries=[100], values=[1, 2, 3])
    with pytest.raises(ValueError, match=r"optimizer.schedule.decay_steps.*0"):
        _sched("exponential", decay_steps=0)
    with pytest.raises(ValueError, match=r"optimizer.schedule.*decay_stepz"):
        _sched("exponential", decay_stepz=3)
