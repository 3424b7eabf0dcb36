"""Schedules by name: values at chosen steps (closed forms, Keras equivalents), warmup, tf.function, errors."""
import math

import keras
import pytest
import tensorflow as tf

from framework import registry
from framework.config import OptimizerConfig, ScheduleConfig
from framework.optim import schedules

STEPS = (0, 1, 99, 100, 101, 250, 299, 300, 301, 700, 999, 1000, 1500)


def _sched(name, lr=0.1, total=1000, warmup=0, **kw):
    cfg = OptimizerConfig(learning_rate=lr, schedule=ScheduleConfig(name=name, kwargs=kw), warmup_steps=warmup)
    return schedules.build(cfg, total_steps=total)


def _at(fn, step):
    out = fn(tf.constant(step, tf.int64))
    assert out.dtype == tf.float32 and out.shape == ()
    return float(out)


def test_all_names_are_registered():
    names = {"constant", "cosine", "cosine_restarts", "linear", "polynomial", "exponential", "step", "piecewise",
             "one_cycle", "inverse_sqrt"}
    assert names <= set(registry.SCHEDULES.names())


def test_closed_forms():
    cases = [
        ("constant", {}, lambda s: 0.1),
        ("cosine", {"alpha": 0.1}, lambda s: 0.1 * (0.9 * 0.5 * (1 + math.cos(math.pi * min(s, 1000) / 1000)) + 0.1)),
        ("cosine", {"decay_steps": 400}, lambda s: 0.1 * 0.5 * (1 + math.cos(math.pi * min(s, 400) / 400))),
        ("linear", {"end_fraction": 0.2}, lambda s: 0.1 * (1 - 0.8 * min(s, 1000) / 1000)),
        ("inverse_sqrt", {"warmup_steps": 100}, lambda s: 0.1 * min((s + 1) / 100, math.sqrt(100 / (s + 1)))),
        ("step", {"boundaries": [100, 300], "multipliers": [1.0, 0.5, 0.25]},
         lambda s: 0.1 * (1.0 if s <= 100 else 0.5 if s <= 300 else 0.25)),
    ]
    for name, kw, ref in cases:
        fn = _sched(name, **kw)
        for s in STEPS:
            assert _at(fn, s) == pytest.approx(ref(s), rel=1e-5, abs=1e-9), (name, kw, s)


def test_keras_equivalents():
    ks = keras.optimizers.schedules
    pairs = [
        (_sched("cosine", alpha=0.05), ks.CosineDecay(0.1, 1000, alpha=0.05)),
        (_sched("cosine_restarts", first_decay_steps=100), ks.CosineDecayRestarts(0.1, 100)),
        (_sched("cosine_restarts", first_decay_steps=100, t_mul=1.5, m_mul=0.5, alpha=0.1),
         ks.CosineDecayRestarts(0.1, 100, t_mul=1.5, m_mul=0.5, alpha=0.1)),
        (_sched("polynomial", end_lr=0.01, power=2.0), ks.PolynomialDecay(0.1, 1000, 0.01, power=2.0)),
        (_sched("polynomial", decay_steps=300, end_lr=0.01), ks.PolynomialDecay(0.1, 300, 0.01)),
        (_sched("exponential", decay_rate=0.5, decay_steps=100), ks.ExponentialDecay(0.1, 100, 0.5)),
        (_sched("exponential", decay_rate=0.5, decay_steps=100, staircase=True),
         ks.ExponentialDecay(0.1, 100, 0.5, staircase=True)),
        (_sched("piecewise", boundaries=[100, 300], values=[0.1, 0.05, 0.01]),
         ks.PiecewiseConstantDecay([100, 300], [0.1, 0.05, 0.01])),
    ]
    for ours, ref in pairs:
        for s in STEPS:
            assert _at(ours, s) == pytest.approx(float(ref(s)), rel=1e-5, abs=1e-9), (ref, s)


def test_one_cycle_as_pytorch():
    total, top, pct, div, fdiv = 1000, 1.0, 0.3, 25.0, 1e4
    oc = _sched("one_cycle", total=total, max_lr=top, pct_start=pct, div_factor=div, final_div_factor=fdiv)
    start, end = top / div, top / div / fdiv
    up, down = pct * total - 1, total - 1

    def ref(s):  # torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos"), written out
        if s <= up:
            a, b, p = start, top, s / up
        else:
            a, b, p = top, end, min((s - up) / (down - up), 1.0)
        return b + (a - b) / 2 * (1 + math.cos(math.pi * p))

    for s in (0, 1, 150, 298, 299, 300, 500, 998, 999, 1200):
        assert _at(oc, s) == pytest.approx(ref(s), rel=1e-5, abs=1e-12), s
    assert _at(oc, 0) == pytest.approx(start) and _at(oc, 299) == pytest.approx(top)
    assert _at(_sched("one_cycle", lr=0.5), 299) == pytest.approx(0.5)  # max_lr defaults to base_lr


def test_warmup_composes_with_any_schedule():
    w, base = _sched("cosine", warmup=100), _sched("cosine")
    assert _at(w, 0) == pytest.approx(_at(base, 0) / 100)
    assert _at(w, 49) == pytest.approx(_at(base, 49) * 50 / 100)
    assert _at(w, 99) == pytest.approx(_at(base, 99))
    assert _at(w, 500) == pytest.approx(_at(base, 500))
    fn = schedules.with_warmup(lambda s: tf.constant(2.0) + 0.0 * tf.cast(s, tf.float32), warmup_steps=4, base_lr=2.0)
    assert [_at(fn, s) for s in range(6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert schedules.with_warmup(fn, warmup_steps=0) is fn


@pytest.mark.parametrize("name,kw", [("constant", {}), ("cosine", {}), ("cosine_restarts", {}), ("linear", {}),
                                     ("polynomial", {}), ("exponential", {"staircase": True}),
                                     ("step", {"boundaries": [5, 15]}), ("one_cycle", {}), ("inverse_sqrt", {})])
def test_schedule_inside_tf_function_with_variable_step(name, kw):
    fn = _sched(name, total=40, warmup=3, **kw)
    step = tf.Variable(0, dtype=tf.int64)
    traces = []

    @tf.function
    def f():
        traces.append(1)
        out = fn(step.read_value())
        step.assign_add(10)
        return out

    got = [float(f()) for _ in range(4)]
    assert len(traces) == 1
    assert got == pytest.approx([_at(fn, s) for s in (0, 10, 20, 30)], rel=1e-6)


def test_bad_values_name_the_key_and_the_value():
    bad = [
        (dict(name="piecewise", boundaries=[300, 100], values=[1, 2, 3]), r"schedule.boundaries.*\[300, 100\]"),
        (dict(name="piecewise", boundaries=[100, 100], values=[1, 2, 3]), r"optimizer.schedule.boundaries.*increasing"),
        (dict(name="piecewise", boundaries=[-5], values=[1, 2]), r"optimizer.schedule.boundaries.*-5"),
        (dict(name="piecewise", boundaries=[100], values=[1, 2, 3]), r"schedule.values.*2 entries.*\[1, 2, 3\]"),
        (dict(name="step", boundaries=[100], multipliers=[1.0]), r"optimizer.schedule.multipliers.*\[1.0\]"),
        (dict(name="step", boundaries=[100], multipliers=[1, 2], values=[1, 2]), r"schedule.values.*not both"),
        (dict(name="exponential", decay_steps=0), r"optimizer.schedule.decay_steps.*got 0"),
        (dict(name="exponential", decay_rate=-0.5), r"optimizer.schedule.decay_rate.*-0.5"),
        (dict(name="cosine", decay_steps=-10), r"optimizer.schedule.decay_steps.*-10"),
        (dict(name="cosine_restarts", first_decay_steps=0), r"optimizer.schedule.first_decay_steps.*got 0"),
        (dict(name="one_cycle", pct_start=1.5), r"optimizer.schedule.pct_start.*1.5"),
        (dict(name="inverse_sqrt", warmup_steps=-1), r"optimizer.schedule.warmup_steps.*-1"),
        (dict(name="exponential", decay_stepz=3), r"optimizer.schedule.*decay_stepz"),
    ]
    for kw, pattern in bad:
        with pytest.raises(ValueError, match=pattern):
            _sched(**{"name": kw.pop("name")}, **kw)
    with pytest.raises(ValueError, match=r"optimizer.warmup_steps.*-3"):
        _sched("cosine", warmup=-3)
    with pytest.raises(registry.RegistryError, match=r"unknown schedule 'cosin'.*cosine"):
        _sched("cosin")
