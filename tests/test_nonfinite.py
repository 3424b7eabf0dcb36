"""trainer.nonfinite policies with a non-finite loss injected at a chosen step."""
import os

import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import testing
from framework import trainer as trainer_lib
from tests import _components as C


def _build(policy, tmp_path, inject=7, steps=12, **trainer_kw):
    x, y = C.toy_classification(n=64)
    C.set_arrays("nan", x, y)
    cfg = C.make_config(task={"train_data": {"key": "nan"}, "eval_data": {"name": ""}},
                        trainer={"train_steps": steps, "steps_per_loop": 4, "checkpoint_interval": 4,
                                 "nonfinite": policy, **trainer_kw})
    t = testing.inject_nonfinite(trainer_lib.build(cfg, tf.distribute.get_strategy()), at=inject)
    return t, controller_lib.Controller(trainer=t, model_dir=str(tmp_path))


def test_terminate_names_step_and_keeps_last_good_checkpoint(tmp_path):
    t, ctl = _build("terminate", tmp_path)
    with pytest.raises(controller_lib.NonFiniteError, match=r"non-finite loss at step 7"):
        ctl.train(evaluate=False)
    # Steps 0-6 applied, step 7 not: the checkpoint holds step 7's starting state.
    assert int(t.global_step.numpy()) == 7
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-7")
    assert any(f.startswith("ckpt-4") for f in os.listdir(tmp_path))


def test_skip_leaves_weights_untouched_on_that_step_and_counts_it(tmp_path):
    t, ctl = _build("skip", tmp_path, steps=8)
    ctl.train(evaluate=False)
    assert ctl.last_result.nonfinite_steps == 1
    assert int(t.global_step.numpy()) == 8
    # The skipped step did not count as an optimizer iteration.
    assert int(t.optimizer.iterations.numpy()) == 7


def test_skipped_step_changes_nothing(tmp_path):
    t, _ = _build("skip", tmp_path, inject=0)
    before = [v.numpy().copy() for v in t.model.trainable_variables]
    active = list(range(len(t.groups.variables)))
    t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, active)
    for v, b in zip(t.model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_restore_goes_back_then_terminates_after_max_restores(tmp_path):
    t, ctl = _build("restore", tmp_path, max_restores=2)
    with pytest.raises(controller_lib.NonFiniteError):
        ctl.train(evaluate=False)
    assert ctl._restores == 2  # went back to ckpt-4 twice, the injected step failed each time


# ------------------------------------------------------------------ huge-but-finite gradients

def _poisoned(key, n, batch, value):
    """Toy data whose global batch `batch` (batch size 8, no shuffle) has every feature = value
    and labels 0, 1, 2, 0, ...: most of its rows are misclassified whatever the weights."""
    x, y = C.toy_classification(n=n)
    x[8 * batch:8 * batch + 8] = value
    y[8 * batch:8 * batch + 8] = np.arange(8) % 3
    C.set_arrays(key, x, y)


def _run_poisoned(tmp_path, *, key, policy, jit, steps, clip=None, phases=None, groups=None, model=None, **trainer_kw):
    # allow_nonfinite: the data pre-flight would otherwise refuse the poisoned batch up front.
    cfg = C.make_config(task={"model": model or {},
                              "train_data": {"key": key, "shuffle_buffer": 0, "allow_nonfinite": True},
                              "eval_data": {"name": ""}},
                        trainer={"train_steps": steps, "steps_per_loop": 2, "checkpoint_interval": 4,
                                 "max_to_keep": 20, "nonfinite": policy, "jit_compile": jit,
                                 "phases": phases or [], **trainer_kw},
                        optimizer={"name": "sgd", "learning_rate": 0.1, "clip": clip or {},
                                   "param_groups": groups or []})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    return t, controller_lib.Controller(trainer=t, model_dir=str(tmp_path))


def _assert_checkpoints_finite(model_dir):
    """Every float tensor of every checkpoint on disk is finite."""
    paths = [os.path.join(model_dir, f[:-len(".index")]) for f in os.listdir(model_dir)
             if f.startswith("ckpt-") and f.endswith(".index")]
    assert paths
    for p in paths:
        reader = tf.train.load_checkpoint(p)
        for k, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating:
                assert np.all(np.isfinite(reader.get_tensor(k))), (p, k)
    return sorted(paths)


@pytest.mark.parametrize("jit", ["auto", False])
def test_huge_finite_gradient_is_clipped_exactly_not_nan(tmp_path, jit):
    # Batch 0 has features 1e21: the gradient (~1e20 per entry) is finite, its sum of squares
    # overflows float32. With global_norm clipping the step must apply the clipped update.
    _poisoned("huge0", 64, 0, 1e21)
    t, _ = _run_poisoned(tmp_path, key="huge0", policy="terminate", jit=jit, steps=1, clip={"global_norm": 1.0})
    assert t.steps.gated_update == (jit == "auto")  # the default path: whole-step XLA, gated writes
    w0, b0 = (v.numpy().astype(np.float64) for v in t.model.trainable_variables)
    x, y = next(iter(t.train_source.batch(8).as_numpy_iterator()))[:2]
    result = t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, list(range(len(t.groups.variables))))
    # Reference in float64: softmax cross-entropy gradient, clipped to norm 1, one SGD step.
    logits = x.astype(np.float64) @ w0 + b0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(3)[y]) / 8
    gw, gb = x.astype(np.float64).T @ d, d.sum(0)
    norm = np.sqrt(np.sum(gw ** 2) + np.sum(gb ** 2))
    assert norm > 1e19  # beyond a float32 sum of squares
    w1, b1 = (v.numpy() for v in t.model.trainable_variables)
    np.testing.assert_allclose(w1, w0 - 0.1 * gw / norm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b1, b0 - 0.1 * gb / norm, rtol=1e-5, atol=1e-7)
    assert result.nonfinite_steps == 0 and not result.halted


@pytest.mark.parametrize("policy,jit", [("terminate", "auto"), ("skip", "auto"), ("restore", "auto"),
                                        ("terminate", False)])
def test_clipped_huge_gradient_trains_on_under_every_policy(tmp_path, policy, jit):
    _poisoned("huge5", 64, 5, 1e21)  # batch 5 of 8
    t, ctl = _run_poisoned(tmp_path, key="huge5", policy=policy, jit=jit, steps=8, clip={"global_norm": 1.0})
    assert ctl.train(evaluate=False) == 8
    assert ctl.last_result.nonfinite_steps == 0
    assert all(np.all(np.isfinite(v.numpy())) for v in t.model.variables)
    assert len(_assert_checkpoints_finite(tmp_path)) == 2


@pytest.mark.parametrize("policy", ["terminate", "skip", "restore"])
def test_unclipped_overflowing_gradient_is_skipped_under_every_policy(tmp_path, policy):
    # Without clipping, an update whose gradient norm is beyond sqrt(float32 max) is not applied
    # (its squares overflow): each policy then does what it says, and no checkpoint holds NaN/inf.
    _poisoned("huge5b", 64, 5, 1e21)
    t, ctl = _run_poisoned(tmp_path, key="huge5b", policy=policy, jit="auto", steps=8)
    if policy == "terminate":
        with pytest.raises(controller_lib.NonFiniteError, match=r"overflowing gradient at step 5"):
            ctl.train(evaluate=False)
        assert int(t.global_step.numpy()) == 5
    else:
        assert ctl.train(evaluate=False) == 8
        assert ctl.last_result.nonfinite_steps == (1 if policy == "skip" else 0)
        # restore: back to step 4, then steps 4-7 on batches 6-9 (4-5 skipped): 8 updates.
        assert int(t.optimizer.iterations.numpy()) == (7 if policy == "skip" else 8)
        assert int(ctl.data_skip.numpy()) == (0 if policy == "skip" else 2)
    assert all(np.all(np.isfinite(v.numpy())) for v in t.model.variables)
    _assert_checkpoints_finite(tmp_path)


# ------------------------------------------------------------------ restore: step and data after it

def _events(run_dir):
    out = {}
    for f in sorted(os.listdir(run_dir)):
        for e in tf.compat.v1.train.summary_iterator(os.path.join(run_dir, f)):
            for v in e.summary.value:
                out.setdefault(v.tag, []).append((e.step, tf.make_ndarray(v.tensor)))
    return out


@pytest.mark.parametrize("jit", ["auto", False])
def test_restore_skips_the_poisoned_batches_and_names_them(tmp_path, jit, caplog):
    # Batch 5 has NaN features: a data-caused NaN loss. A restore that replayed it would fail
    # again each time (max_restores, then an error); it must move past it and finish.
    _poisoned("nan5", 96, 5, np.nan)
    t, ctl = _run_poisoned(tmp_path, key="nan5", policy="restore", jit=jit, steps=8, max_restores=1)
    assert ctl.train(evaluate=False) == 8
    assert ctl._restores == 1 and int(ctl.data_skip.numpy()) == 2
    assert all(np.all(np.isfinite(v.numpy())) for v in t.model.variables)
    _assert_checkpoints_finite(tmp_path)
    assert any("skipped global batches 4-5" in r.getMessage() for r in caplog.records)
    ev = _events(tmp_path / "train")
    assert [(s, float(v)) for s, v in ev["skipped_batches"] if v.dtype != object] == [(4, 2.0)]
    texts = [v.item().decode() for s, v in ev["skipped_batches"] if v.dtype == object]
    assert len(texts) == 1 and "skipped global batches 4-5" in texts[0]
    # The data position is checkpointed: a resumed run continues past the skipped batches too.
    reader = tf.train.load_checkpoint(ctl.checkpointer.latest)
    assert reader.get_tensor("data_skip/.ATTRIBUTES/VARIABLE_VALUE") == 2


def test_restore_continues_from_the_checkpoints_step_with_its_phase(tmp_path):
    # `body` (the hidden layer) is frozen before step 6. Batch 7 is poisoned: the loop 6-8 fails
    # and the run restores ckpt-4. Steps 4-5 must run in the frozen phase again.
    _poisoned("nan7", 96, 7, np.nan)
    seen = []

    t, ctl = _run_poisoned(tmp_path, key="nan7", policy="restore", jit="auto", steps=10, model={"hidden": 4},
                           groups=[{"pattern": "^hidden/", "name": "body"}],
                           phases=[{"start_step": 0, "trainable": {"body": False}},
                                   {"start_step": 6, "trainable": {"body": True}}])
    body0 = t.model.get_layer("hidden").kernel.numpy().copy()
    ctl.hooks.append(lambda event, ctx: seen.append((ctx.step, t.model.get_layer("hidden").kernel.numpy().copy()))
                     if event == "train_loop_end" else None)
    assert ctl.train(evaluate=False) == 10
    assert [s for s, _ in seen] == [2, 4, 6, 6, 8, 10]  # 6 twice: before the failure and after the restore
    for s, k in seen:
        if s <= 6:
            np.testing.assert_array_equal(k, body0, err_msg=f"the frozen group trained before step 6 (at {s})")
    assert not np.array_equal(seen[-1][1], body0)  # it trains after step 6


def test_restored_run_trains_on_the_other_batches_and_resumes_past_the_skip(tmp_path):
    # Each batch is either in the model or skipped: the poisoned run (restore at step 4, batches
    # 4-5 skipped), interrupted at step 6 and resumed in a new process-like build, ends with the
    # weights of a clean run on the same data without batches 4-5.
    _poisoned("nan5r", 96, 5, np.nan)
    x, y, _ = C._ARRAYS["nan5r"]
    C.set_arrays("clean5r", np.delete(x, np.s_[32:48], 0), np.delete(y, np.s_[32:48], 0))
    ref, ref_ctl = _run_poisoned(tmp_path / "ref", key="clean5r", policy="restore", jit="auto", steps=8)
    ref_ctl.train(evaluate=False)

    def stop_at_6(event, ctx):
        if event == "train_loop_end" and ctx.step >= 6:
            ctx.request_stop("test interruption")

    t, ctl = _run_poisoned(tmp_path / "run", key="nan5r", policy="restore", jit="auto", steps=8)
    ctl.hooks.append(stop_at_6)
    assert ctl.train(evaluate=False) == 6 and ctl._restores == 1
    t2, ctl2 = _run_poisoned(tmp_path / "run", key="nan5r", policy="restore", jit="auto", steps=8)
    assert ctl2.train(evaluate=False) == 8 and ctl2._restores == 0
    for a, b in zip(ref.model.variables, t2.model.variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
