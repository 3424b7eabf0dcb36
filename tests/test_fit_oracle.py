"""Keras `fit` as an oracle: tapeline's weights after N steps equal `model.fit`'s (one device).

Every case builds a tapeline run through the real path (config -> `trainer.build` ->
`Controller.train`), reads the batches of tapeline's own input pipeline in the order the run
consumes them, and feeds exactly those batches to `model.fit` (no shuffle) on a copy of the
same model with the same initial weights. float32, no dropout; each case under the default
`jit_compile: auto` (whole-step XLA on CPU; no XLA for the `*_conv` cases' convolutional
model) and `false` (six cases in the default suite, all with --slow). Where tapeline differs by design the
case asserts the documented difference instead:

- `optimizer.warmup_steps` multiplies the schedule by min(1, (step + 1) / W) while the schedule
  itself keeps running (Keras's CosineDecay warmup ramps from `initial_learning_rate` at step 0
  to the target, then starts the cosine): fit gets Keras's CosineDecay times that factor.
- EMA starts from the weights before the first step (Keras's from the weights after it):
  tapeline's average = Keras's + decay**N * (W0 - W1).
- With gradient accumulation the schedule counts optimizer steps; Keras's counts micro-batches
  (it calls the schedule with its batch counter): fit gets the schedule of step // N.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from framework import controller as controller_lib
from framework import registry
from framework import trainer as trainer_lib
from tests import _components as C

BATCH = 8
STEPS = 5


def _warmup_cosine(lr: float, total: int, warmup: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Keras's CosineDecay over the run times tapeline's documented warmup factor."""
    cosine = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)

    class Warmup(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            return cosine(step) * tf.minimum(1.0, (step + 1.0) / warmup)

    return Warmup()


def _per_update(schedule: keras.optimizers.schedules.LearningRateSchedule,
                every: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """`schedule` of the optimizer step, for a Keras optimizer that counts `every` micro-batches per step."""

    class PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return schedule(tf.math.floordiv(tf.cast(step, tf.int64), every))

    return PerUpdate()


@dataclasses.dataclass
class Case:
    optimizer: dict  # tapeline's `optimizer` section
    keras_optimizer: Callable[[], keras.optimizers.Optimizer]
    model: dict = dataclasses.field(default_factory=lambda: {"hidden": 8})
    task: dict = dataclasses.field(default_factory=dict)
    trainer: dict = dataclasses.field(default_factory=dict)
    sample_weights: bool = False
    accumulation: int = 1
    keras_frozen: tuple = ()  # layers set trainable=False in the Keras model


def _adamw():
    opt = keras.optimizers.AdamW(0.02, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])  # tapeline's default exclusions
    return opt


CASES = {
    "sgd": Case({"name": "sgd", "learning_rate": 0.1}, lambda: keras.optimizers.SGD(0.1)),
    "momentum": Case({"name": "momentum", "learning_rate": 0.05}, lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
    "adam": Case({"name": "adam", "learning_rate": 0.02}, lambda: keras.optimizers.Adam(0.02)),
    "adamw_batchnorm": Case({"name": "adamw", "learning_rate": 0.02, "weight_decay": 0.1}, _adamw,
                            model={"hidden": 8, "batchnorm": True}),
    "nadam": Case({"name": "nadam", "learning_rate": 0.02}, lambda: keras.optimizers.Nadam(0.02)),
    "frozen_group": Case({"name": "adam", "learning_rate": 0.02,
                          "param_groups": [{"pattern": "^hidden/", "trainable": False}]},
                         lambda: keras.optimizers.Adam(0.02), keras_frozen=("hidden",)),
    "rmsprop": Case({"name": "rmsprop", "learning_rate": 0.01}, lambda: keras.optimizers.RMSprop(0.01)),
    "exponential": Case({"name": "sgd", "learning_rate": 0.2,
                         "schedule": {"name": "exponential", "decay_rate": 0.5, "decay_steps": 2}},
                        lambda: keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.2, 2, 0.5))),
    "cosine_warmup": Case({"name": "adam", "learning_rate": 0.05, "schedule": {"name": "cosine"}, "warmup_steps": 3},
                          lambda: keras.optimizers.Adam(_warmup_cosine(0.05, STEPS, 3))),
    "class_weight": Case({"name": "adam", "learning_rate": 0.02}, lambda: keras.optimizers.Adam(0.02),
                         task={"class_weight": "balanced"}),
    "sample_weight": Case({"name": "adam", "learning_rate": 0.02}, lambda: keras.optimizers.Adam(0.02),
                          sample_weights=True),
    "accumulation": Case({"name": "adam", "learning_rate": 0.02, "accumulation_steps": 2},
                         lambda: keras.optimizers.Adam(0.02, gradient_accumulation_steps=2), accumulation=2),
    "accumulation_schedule": Case(
        {"name": "sgd", "learning_rate": 0.2, "accumulation_steps": 2,
         "schedule": {"name": "exponential", "decay_rate": 0.5, "decay_steps": 2}},
        lambda: keras.optimizers.SGD(_per_update(keras.optimizers.schedules.ExponentialDecay(0.2, 2, 0.5), 2),
                                     gradient_accumulation_steps=2), accumulation=2),
    "global_clipnorm": Case({"name": "sgd", "learning_rate": 0.3, "clip": {"global_norm": 0.2}},
                            lambda: keras.optimizers.SGD(0.3, global_clipnorm=0.2)),
    "ema": Case({"name": "adam", "learning_rate": 0.02}, lambda: keras.optimizers.Adam(0.02, use_ema=True,
                                                                                        ema_momentum=0.8),
                trainer={"ema_decay": 0.8}),
}
# A convolutional model: the step users get by default for one (digits_cnn), where `auto`
# resolves to no XLA on CPU.
_CONV = {"hidden": 8, "conv": 2}
CASES |= {
    "adam_conv": Case({"name": "adam", "learning_rate": 0.02}, lambda: keras.optimizers.Adam(0.02), model=_CONV),
    "global_clipnorm_conv": Case({"name": "sgd", "learning_rate": 0.3, "clip": {"global_norm": 0.2}},
                                 lambda: keras.optimizers.SGD(0.3, global_clipnorm=0.2), model=_CONV),
}


def _data(name: str, case: Case) -> None:
    n = 4 * BATCH * case.accumulation  # shorter than the run: it wraps into a second epoch
    x, y = C.toy_classification(n=n, seed=11)
    y[: n // 2] = 0  # imbalanced, so balanced class weights are not all 1
    w = np.random.default_rng(2).uniform(0.0, 2.0, n).astype(np.float32) if case.sample_weights else None
    C.set_arrays(f"oracle_{name}", x, y, w)


def _tapeline(name: str, case: Case, jit: Any, model_dir: str):
    """(trainer, initial weights, the batches the run consumes) with the run trained."""
    _data(name, case)
    cfg = C.make_config(
        task={"model": case.model, "train_data": {"key": f"oracle_{name}", "batch_size": BATCH},
              "eval_data": {"name": ""}, "metrics": [], **case.task},
        trainer={"train_steps": STEPS, "steps_per_loop": STEPS, "checkpoint_interval": 1000,
                 "jit_compile": jit, **case.trainer},
        optimizer=case.optimizer)
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    initial = [v.numpy().copy() for v in t.model.weights]
    it = iter(t.train_dataset(start_step=0))
    batches = [next(it) for _ in range(STEPS * case.accumulation)]
    ctl = controller_lib.Controller(trainer=t, model_dir=model_dir, save_checkpoints=False)
    ctl.train(evaluate=False)
    return t, initial, batches, ctl.last_result


class _Record(keras.callbacks.Callback):
    """The raw weights after the first and the last batch (fit replaces them by the EMA at its end)."""

    def on_train_batch_end(self, batch, logs=None):
        weights = [v.numpy().copy() for v in self.model.trainable_weights]
        if batch == 0:
            self.first = weights
        self.last = weights


def _fit(name: str, case: Case, initial: list, batches: list):
    model = registry.build(registry.MODELS, "test_linear", {"units": 3, "inputs": 3, **case.model}, section="test")
    model.set_weights(initial)
    for layer in case.keras_frozen:
        model.get_layer(layer).trainable = False
    model.compile(optimizer=case.keras_optimizer(), run_eagerly=True,  # eager: no trace to pay for
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, w = (np.concatenate([b[i].numpy() for b in batches]) for i in range(3))
    kwargs = {}
    if case.task.get("class_weight") == "balanced":
        labels = C._ARRAYS[f"oracle_{name}"][1]  # the whole training set, as tapeline counts it
        kwargs["class_weight"] = dict(enumerate(compute_class_weight("balanced", classes=np.arange(3), y=labels)))
    elif case.sample_weights:
        kwargs["sample_weight"] = w
    record = _Record()
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[record], **kwargs)
    return model, record


_FIT_CACHE: dict[str, tuple] = {}


# Every case under the default `auto`; without XLA the cases whose step differs most (plain,
# adaptive, accumulation, clipping, EMA) in the default suite, every case with --slow.
NOJIT_DEFAULT = {"sgd", "adam", "accumulation", "global_clipnorm", "ema", "adam_conv"}


@pytest.mark.parametrize("name,jit", [pytest.param(n, "auto", id=f"{n}-auto") for n in CASES] + [
    pytest.param(n, False, id=f"{n}-nojit", marks=() if n in NOJIT_DEFAULT else pytest.mark.slow) for n in CASES])
def test_weights_equal_keras_fit(name, jit, tmp_path):
    case = CASES[name]
    t, initial, batches, result = _tapeline(name, case, jit, str(tmp_path))
    assert int(t.global_step.numpy()) == STEPS
    plan = t.steps.jit  # the path this case is about
    assert plan.whole_step == (jit == "auto" and not case.model.get("conv"))
    if name not in _FIT_CACHE:  # the reference does not depend on tapeline's jit setting
        _FIT_CACHE[name] = _fit(name, case, initial, batches)
    model, record = _FIT_CACHE[name]
    assert len(t.model.weights) == len(model.weights)
    if case.trainer.get("ema_decay"):
        d = case.trainer["ema_decay"]
        raw = [v.numpy() for v in t.model.trainable_weights]
        for got, want, v in zip(raw, record.last, t.model.trainable_weights):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=v.path)
        # fit ends by writing the EMA into the model; tapeline keeps it beside the weights.
        first = {v.path: w for v, w in zip(model.trainable_weights, record.first)}
        init = {v.path: w for v, w in zip(t.model.weights, initial)}
        for e, v, keras_ema in zip(t.steps.ema.weights, t.steps.variables, model.trainable_weights):
            want = keras_ema.numpy() + d ** STEPS * (init[v.path] - first[v.path])
            np.testing.assert_allclose(e.numpy(), want, rtol=1e-5, atol=1e-6, err_msg=v.path)
        return
    for v, k in zip(t.model.weights, model.weights):
        assert v.path == k.path
        np.testing.assert_allclose(v.numpy(), k.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{name}: {v.path}")
    if name == "global_clipnorm":  # the clip was active (else the case shows nothing)
        assert result.clipped_fraction > 0.0


def test_warmup_differs_from_keras_cosine_warmup_as_documented():
    """tapeline: cosine(step) * min(1, (step + 1) / W); Keras: a ramp from 0 at step 0, then the cosine."""
    from framework.config import OptimizerConfig, ScheduleConfig
    from framework.optim import schedules

    total, w, lr = 10, 3, 0.05
    ours = schedules.build(OptimizerConfig(learning_rate=lr, schedule=ScheduleConfig(name="cosine"), warmup_steps=w),
                           total_steps=total)
    ramp = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total - w, warmup_target=lr, warmup_steps=w)
    cosine = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    for s in range(total):
        got = float(ours(tf.constant(s, tf.int64)))
        assert got == pytest.approx(float(cosine(s)) * min(1.0, (s + 1) / w), rel=1e-6), s
    assert float(ramp(0)) == 0.0 and float(ours(tf.constant(0, tf.int64))) > 0.0
