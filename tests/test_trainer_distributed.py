"""Strategies on CPU: 1 vs 2 logical replicas agree; clipping, BN, class weights; clear failures."""
import itertools
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import distribute as dist
from framework import jit as jit_lib
from framework import nonfinite as nonfinite_lib
from framework import trainer as trainer_lib
from framework.config import RuntimeConfig
from tests import _components as C


def mirrored():
    return dist.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=2))


def _cfg(**kw):
    x, y = C.toy_classification(n=80, seed=5)
    C.set_arrays("dist", x, y)
    task = {"model": {"hidden": 16}, "train_data": {"key": "dist", "batch_size": 16},
            "eval_data": {"key": "dist", "batch_size": 16}, "metrics": ["accuracy", "f1", "auc"]}
    task.update(kw.pop("task", {}))
    return C.make_config(task=task, **kw)


def _train(cfg, strategy, tmp_path):
    t = trainer_lib.build(cfg, strategy)
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.train(evaluate=True)
    return t, ctl


@pytest.mark.parametrize("variant", ["plain", "classweights_clip", "sync_batchnorm"])
def test_one_vs_two_replicas_same_weights_and_metrics(tmp_path, variant):
    kw = {"optimizer": {"name": "adam", "learning_rate": 0.01,
                        "param_groups": [{"pattern": "^out/", "lr_multiplier": 0.5}]},
          "trainer": {"train_steps": 10, "steps_per_loop": 5, "eval_interval": 10}}
    if variant == "classweights_clip":
        kw["task"] = {"class_weight": "balanced"}
        kw["optimizer"]["clip"] = {"global_norm": 0.05}
    if variant == "sync_batchnorm":
        # Keras BN normalizes with per-replica batch statistics; synchronized=True makes them
        # global, so 2 replicas equal one device.
        kw["task"] = {"model": {"hidden": 16, "batchnorm": True, "sync_bn": True}}
    one, c1 = _train(_cfg(**kw), tf.distribute.get_strategy(), tmp_path / "one")
    two, c2 = _train(_cfg(**kw), mirrored(), tmp_path / "two")
    assert two.strategy.num_replicas_in_sync == 2
    for a, b in zip(one.model.variables, two.model.variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    for k in c1.last_eval:
        assert c2.last_eval[k] == pytest.approx(c1.last_eval[k], rel=1e-5, abs=1e-6), k
    assert int(two.optimizer.iterations.numpy()) == 10  # once per step, not once per replica (docs/design.md#t2)


def test_plain_batchnorm_trains_under_two_replicas(tmp_path):
    t, ctl = _train(_cfg(task={"model": {"hidden": 16, "batchnorm": True}},
                         trainer={"train_steps": 6, "steps_per_loop": 3, "eval_interval": 6}), mirrored(), tmp_path)
    bn = t.model.get_layer("bn")
    assert np.all(np.isfinite(bn.moving_mean.numpy())) and not np.allclose(bn.moving_mean.numpy(), 0.0)
    assert np.isfinite(ctl.last_eval["loss"])


def test_clipping_is_on_the_aggregated_gradient(tmp_path):
    # Replicas see very different halves (large vs small inputs): per-replica clipping would
    # scale them differently; the framework clips the sum, as on one device.
    x, y = C.toy_classification(n=32, seed=2)
    x[0:8] *= 50.0
    C.set_arrays("clip", x, y)
    kw = dict(task={"train_data": {"key": "clip", "batch_size": 16, "shuffle_buffer": 0}, "eval_data": {"name": ""}},
              optimizer={"name": "sgd", "learning_rate": 0.1, "clip": {"global_norm": 1.0}})
    one = trainer_lib.build(C.make_config(**kw), tf.distribute.get_strategy())
    two = trainer_lib.build(C.make_config(**kw), mirrored())
    results = [t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, list(range(len(t.groups.variables))))
               for t in (one, two)]
    for a, b in zip(one.model.trainable_variables, two.model.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    assert results[0].grad_norm > 1.0  # clipping was active


def test_batch_not_divisible_by_replicas_names_both():
    with pytest.raises(ValueError, match=r"task.train_data.batch_size.*2 replicas.*got 15"):
        trainer_lib.build(_cfg(task={"train_data": {"key": "dist", "batch_size": 15}}), mirrored())


def test_partial_eval_batch_on_two_replicas_no_nan(tmp_path):
    x, y = C.toy_classification(n=37)  # 37 = 2 full batches of 16 + 5
    C.set_arrays("odd", x, y)
    t, ctl = _train(_cfg(task={"train_data": {"key": "odd"}, "eval_data": {"key": "odd"}},
                         trainer={"train_steps": 4, "steps_per_loop": 2, "eval_interval": 2}), mirrored(), tmp_path)
    assert all(np.isfinite(v) for v in ctl.last_eval.values())
    pred = np.argmax(t.model(x, training=False).numpy(), 1)
    assert ctl.last_eval["accuracy"] == pytest.approx(float(np.mean(pred == y)), abs=1e-6)
    assert t.steps.traces["eval"] == 1


def test_jit_true_under_mirrored_is_a_clear_error():
    with pytest.raises(ValueError, match="trainer.jit_compile.*MirroredStrategy"):
        jit_lib.jit_allowed(mirrored(), True, model_has_conv=False)
    on, why = jit_lib.jit_allowed(mirrored(), "auto", model_has_conv=False)
    assert not on and "Mirrored" in why


def test_tpu_without_hardware_fails_fast_naming_flag():
    t0 = time.monotonic()
    with pytest.raises((RuntimeError, TimeoutError), match=r"--tpu.*127.0.0.1:1"):
        dist.make_strategy(RuntimeConfig(strategy="tpu", tpu="grpc://127.0.0.1:1", tpu_timeout_s=5))
    assert time.monotonic() - t0 < 30  # a hang bound (docs/design.md#t8), not a speed assertion


def test_missing_gpus_fail_clearly():
    with pytest.raises(RuntimeError, match=r"num_gpus=2.*0 GPU"):
        dist.make_strategy(RuntimeConfig(strategy="mirrored", num_gpus=2))


def test_multi_worker_without_tf_config_is_an_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        dist.check_runtime(RuntimeConfig(strategy="multi_worker"))


@pytest.mark.parametrize("jit", ["auto", False])
def test_fp16_gradient_overflow_skips_step_halves_and_regrows_the_loss_scale(monkeypatch, jit):
    # The real path: a finite loss whose scaled gradients overflow float16 (max 65504) under a
    # huge initial loss scale. Each such step is skipped (weights unchanged), halves the scale
    # and does not trigger `nonfinite=terminate`; after `interval` finite steps the scale doubles.
    interval = 3
    monkeypatch.setattr(nonfinite_lib, "GROWTH_INTERVAL", interval)  # test seam: a short growth interval
    cfg = _cfg(task={"eval_data": {"name": ""}}, trainer={"nonfinite": "terminate", "jit_compile": jit})
    cfg.runtime.precision = "mixed_float16"
    cfg.runtime.initial_loss_scale = 2.0 ** 22
    try:
        t = trainer_lib.build(cfg, tf.distribute.get_strategy())
        assert t.model.get_layer("out").compute_dtype == "float16"
        it, active = iter(t.train_dataset(start_step=0)), list(range(len(t.groups.variables)))
        applied, scales = [], [float(t.steps.policy.loss_scale.numpy())]
        for _ in range(16):
            before = [v.numpy().copy() for v in t.model.trainable_variables]
            result = t.steps.train_loop(it, 1, active)
            assert not result.halted  # an fp16 overflow is never a policy hit
            assert np.isfinite(result.loss)  # the loss itself is finite
            changed = [not np.array_equal(v.numpy(), b) for v, b in zip(t.model.trainable_variables, before)]
            assert all(changed) or not any(changed)  # a step is applied whole or not at all
            applied.append(all(changed))
            scales.append(result.loss_scale)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert scales[:2] == [2.0 ** 22, 2.0 ** 21] and not applied[0]  # the first step overflows
    # Keras's dynamic loss-scale rule, replayed on which steps were applied.
    want, scale, good = [scales[0]], scales[0], 0
    for ok in applied:
        if ok:
            good += 1
            if good == interval:
                scale, good = scale * 2.0, 0
        else:
            scale, good = max(scale / 2.0, 1.0), 0
        want.append(scale)
    assert scales == want
    assert any(b > a for a, b in itertools.pairwise(scales))  # it grew at least once
    assert result.nonfinite_steps == applied.count(False) > 0
    assert int(t.optimizer.iterations.numpy()) == applied.count(True) > interval


def test_optimizer_iterations_count_steps_under_mirrored():
    """Built in the strategy's scope, the optimizer advances once per step, not once per replica."""
    t = trainer_lib.build(_cfg(task={"eval_data": {"name": ""}}), mirrored())
    t.steps.train_loop(iter(t.train_dataset(start_step=0)), 3, list(range(len(t.groups.variables))))
    assert int(t.optimizer.iterations.numpy()) == 3 and int(t.global_step.numpy()) == 3


def test_bfloat16_trains_with_groups(tmp_path):
    cfg = _cfg(task={"eval_data": {"name": ""}}, optimizer={"name": "adam", "param_groups": [{"pattern": "^out/"}]})
    cfg.runtime.precision = "mixed_bfloat16"
    try:
        t = trainer_lib.build(cfg, tf.distribute.get_strategy())
        assert t.model.get_layer("out").compute_dtype == "bfloat16"
        assert t.model.get_layer("out").kernel.dtype == "float32"  # float32 master weights
        result = t.steps.train_loop(iter(t.train_dataset(start_step=0)), 3, list(range(len(t.groups.variables))))
        assert int(t.optimizer.iterations.numpy()) == 3 and np.isfinite(result.loss)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _dropout_cfg(steps=8):
    return _cfg(task={"model": {"hidden": 16, "dropout": 0.5}, "eval_data": {"name": ""}},
                trainer={"train_steps": steps, "steps_per_loop": 2, "checkpoint_interval": 4},
                optimizer={"name": "adam", "learning_rate": 0.01})


def test_replicas_draw_their_own_dropout_masks_deterministically():
    s = mirrored()
    t = trainer_lib.build(_dropout_cfg(), s)
    x, y, w = tf.ones([8, 3]), tf.zeros([8], tf.int32), tf.ones([8])  # the same batch on both replicas
    active = tuple(range(len(t.groups.variables)))

    @tf.function
    def forward():  # the replica forward pass of the train step, training=True
        return s.run(lambda: t.steps._forward_backward(x, y, w, active)["preds"][None])

    rng = next(v for v in t.model.variables if "seed_generator_state" in v.path)
    state = rng.numpy()
    first = [p.numpy() for p in s.experimental_local_results(forward())]
    assert not np.array_equal(first[0], first[1])  # different masks on the two replicas
    assert not np.array_equal(rng.numpy(), state)  # the (mirrored) generator state advanced
    rng.assign(state)
    again = [p.numpy() for p in s.experimental_local_results(forward())]
    for a, b in zip(first, again):  # a function of the checkpointed state: exact resume
        np.testing.assert_array_equal(a, b)


def test_dropout_under_two_replicas_resumes_bit_identically(tmp_path):
    straight = trainer_lib.build(_dropout_cfg(), mirrored())
    controller_lib.Controller(trainer=straight, model_dir=str(tmp_path / "a")).train(evaluate=False)

    def stop_at_4(event, ctx):
        if event == "train_loop_end" and ctx.step >= 4:
            ctx.request_stop("test interruption")

    first = trainer_lib.build(_dropout_cfg(), mirrored())
    assert controller_lib.Controller(trainer=first, model_dir=str(tmp_path / "b"), hooks=[stop_at_4]).train(
        evaluate=False) == 4
    resumed = trainer_lib.build(_dropout_cfg(), mirrored())
    assert controller_lib.Controller(trainer=resumed, model_dir=str(tmp_path / "b")).train(evaluate=False) == 8
    for a, b in zip(straight.model.variables, resumed.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
