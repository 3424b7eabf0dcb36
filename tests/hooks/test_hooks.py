"""Built-in hooks on scripted metric sequences: early stopping, plateau, best checkpoint, export."""
import contextlib
import json
import os

import keras
import numpy as np
import pytest

from framework.hooks.best_checkpoint import BestCheckpoint
from framework.hooks.early_stopping import EarlyStopping
from framework.hooks.export import export_model
from framework.hooks.plateau import ReduceLROnPlateau


class FakeCtx:
    """Just enough of RunContext for hooks, with a real model whose weights move each eval."""

    def __init__(self, model_dir):
        self.model_dir = str(model_dir)
        self.model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")], name="m")
        self.step = 0
        self.eval_logs = {}
        self.lr_factor = 1.0
        self.stop_requested = False
        self.stop_reason = ""

    def set_lr_factor(self, v):
        self.lr_factor = v

    def request_stop(self, reason):
        self.stop_requested, self.stop_reason = True, reason

    def get_weights(self):
        return [v.numpy() for v in self.model.variables]

    def set_weights(self, ws):
        for v, w in zip(self.model.variables, ws):
            v.assign(w)

    def scored_weights(self):  # no EMA here: the scored weights are the model's
        return contextlib.nullcontext()

    def load_scored_weights(self, ws):
        self.set_weights(ws)

    def evaluate(self, step, value, hooks):
        self.step = step
        self.model.get_layer("d").bias.assign([float(step)])  # weights identify the step
        self.eval_logs = {"loss": value, "accuracy": 1 - value}
        for h in hooks:
            h("eval_end", self)


def test_early_stopping_stops_at_expected_eval_and_restores_best(tmp_path):
    ctx = FakeCtx(tmp_path)
    es = EarlyStopping(monitor="accuracy", patience=2, min_delta=0.001)
    seq = [0.5, 0.4, 0.3, 0.32, 0.31, 0.2]  # loss; accuracy = 1 - loss; best at step 30
    stopped_at = None
    for i, v in enumerate(seq, start=1):
        ctx.evaluate(10 * i, v, [es])
        if ctx.stop_requested:
            stopped_at = ctx.step
            break
    assert stopped_at == 50 and es.best_step == 30
    es("end", ctx)
    assert ctx.model.get_layer("d").bias.numpy()[0] == 30.0


def test_early_stopping_resume_mid_patience_continues_count(tmp_path):
    ctx = FakeCtx(tmp_path)
    es = EarlyStopping(monitor="loss", patience=3)
    for i, v in enumerate([0.5, 0.4, 0.45, 0.46], start=1):
        ctx.evaluate(i, v, [es])
    state = json.loads(json.dumps(es.state()))  # what the checkpoint stores
    es2 = EarlyStopping(monitor="loss", patience=3)
    es2.load_state(state)
    assert es2.wait == 2
    ctx.evaluate(5, 0.47, [es2])
    assert ctx.stop_requested and es2.best_step == 2


def test_early_stopping_unknown_monitor_names_it(tmp_path):
    ctx = FakeCtx(tmp_path)
    with pytest.raises(ValueError, match=r"hooks.early_stopping.monitor: expected one of the eval metrics .*loss.*; got 'accuracyy'"):
        ctx.evaluate(1, 0.1, [EarlyStopping(monitor="accuracyy")])


def test_plateau_reduces_after_patience_with_cooldown(tmp_path):
    ctx = FakeCtx(tmp_path)
    p = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=1)
    for i, v in enumerate([1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95], start=1):
        ctx.evaluate(i, v, [p])
    # evals 3,4 stall -> x0.5 at 4 (cooldown 1 ends at eval 5, as in Keras); 5,6 stall -> x0.25 at 6
    assert p.reductions == [4, 6] and ctx.lr_factor == 0.25
    p2 = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=1)
    p2.load_state(json.loads(json.dumps(p.state())))
    assert p2.reductions == [4, 6] and p2.best == 0.9


def test_best_checkpoint_keeps_best_k_with_record(tmp_path):
    ctx = FakeCtx(tmp_path)
    h = BestCheckpoint(monitor="loss", keep=2)
    for i, v in enumerate([0.5, 0.3, 0.4, 0.1, 0.6], start=1):
        ctx.evaluate(i, v, [h])
    rec = json.loads((tmp_path / "best" / "best.json").read_text())
    assert [r["step"] for r in rec] == [4, 2]
    files = os.listdir(tmp_path / "best")
    assert any(f.startswith("ckpt-4") for f in files) and any(f.startswith("ckpt-2") for f in files)
    assert not any(f.startswith("ckpt-3") or f.startswith("ckpt-1") for f in files)
    # A new hook instance (a restart) continues from the record on disk.
    h2 = BestCheckpoint(monitor="loss", keep=2)
    ctx.evaluate(6, 0.2, [h2])
    assert [r["step"] for r in json.loads((tmp_path / "best" / "best.json").read_text())] == [4, 6]


def test_export_predictions_match_and_load_safely(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    paths = export_model(model, str(tmp_path / "export"))
    loaded = keras.saving.load_model(paths["keras"], safe_mode=True)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
    import tensorflow as tf
    sm = tf.saved_model.load(paths["saved_model"])
    out = sm.serve(tf.constant(x))
    np.testing.assert_allclose(out.numpy(), model(x).numpy(), rtol=1e-6)


def test_every_n_steps_runs_on_crossing_multiples_and_keeps_state(tmp_path):
    from framework.hooks import every_n_steps
    seen = []

    class H:
        def __call__(self, event, ctx):
            seen.append((event, ctx.step))

        def state(self):
            return {"n": len(seen)}

        def load_state(self, s):
            pass

    ctx = FakeCtx(tmp_path)
    h = every_n_steps(10, H())
    for step in (4, 8, 12, 16, 20, 31):
        ctx.step = step
        h("train_loop_end", ctx)
    h("end", ctx)
    assert seen == [("train_loop_end", 4), ("train_loop_end", 12), ("train_loop_end", 20),
                    ("train_loop_end", 31), ("end", 31)]
    assert h.state() == {"n": 5}


def test_hooks_from_config_with_every_n_steps():
    from framework import config as config_lib
    from framework import main as main_lib
    cfg = config_lib.resolve({"task": {"model": {"name": "m"}, "train_data": {"name": "d"}},
                              "hooks": [{"name": "early_stopping", "patience": 2, "every_n_steps": 5}]})
    hooks = main_lib.build_hooks(cfg.hooks)
    assert hooks[0].n == 5 and hooks[0].hook.patience == 2 and hasattr(hooks[0], "state")
    bad = config_lib.resolve({"task": {"model": {"name": "m"}, "train_data": {"name": "d"}},
                              "hooks": [{"name": "early_stopping", "patiense": 2}]})
    with pytest.raises(ValueError, match=r"hooks\[0\].*patiense"):
        main_lib.build_hooks(bad.hooks)


def test_plateau_min_lr_floor(tmp_path):
    ctx = FakeCtx(tmp_path)
    ctx.base_learning_rate = 0.1
    p = ReduceLROnPlateau(monitor="loss", factor=0.1, patience=1, min_lr=0.005)
    for i, v in enumerate([1.0, 1.0, 1.0, 1.0], start=1):
        ctx.evaluate(i, v, [p])
    assert ctx.lr_factor == pytest.approx(0.05)  # 0.1 * 0.05 = min_lr


def test_best_checkpoint_exports_best_model(tmp_path):
    ctx = FakeCtx(tmp_path)
    h = BestCheckpoint(monitor="loss", keep=1, export=True)
    ctx.evaluate(1, 0.5, [h])
    assert (tmp_path / "best" / "export" / "model.keras").exists()
    loaded = keras.saving.load_model(str(tmp_path / "best" / "export" / "model.keras"), safe_mode=True)
    assert float(loaded.get_layer("d").bias.numpy()[0]) == 1.0


@pytest.mark.parametrize("jit", ["auto", False], ids=["auto", "nojit"])
def test_lr_factor_set_by_a_hook_is_what_the_compiled_step_applies(tmp_path, jit):
    """A hook halves the LR (as ReduceLROnPlateau does) after the loop ending at step 2: SGD's step 3
    moves the weights by -lr * 0.5 * gradient (taken here at the step-2 weights, on batch 3), with no
    retrace, on the default path (whole-step XLA) and without XLA."""
    import tensorflow as tf

    from framework import controller as controller_lib
    from framework import trainer as trainer_lib
    from tests import _components as comp

    x, y = comp.toy_classification(n=48)
    comp.set_arrays("hook_lr", x, y)
    cfg = comp.make_config(task={"model": {"hidden": 8}, "train_data": {"key": "hook_lr"}, "eval_data": {"name": ""},
                                 "metrics": []},
                           trainer={"train_steps": 3, "steps_per_loop": 2, "jit_compile": jit},
                           optimizer={"name": "sgd", "learning_rate": 0.5})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    seen = {}

    def halve_at_2(event, ctx):
        if event == "train_loop_end" and ctx.step == 2:
            seen["w2"] = [v.numpy().copy() for v in ctx.model.trainable_variables]
            ctx.set_lr_factor(0.5)

    it = iter(t.train_dataset(start_step=2))
    bx, by, bw = next(it)
    controller_lib.Controller(trainer=t, model_dir=str(tmp_path), hooks=[halve_at_2]).train(evaluate=False)
    model = keras.models.clone_model(t.model)
    model.set_weights(seen["w2"])
    with tf.GradientTape() as tape:
        ce = keras.losses.sparse_categorical_crossentropy(by, model(bx, training=True), from_logits=True)
        loss = tf.reduce_sum(ce * bw) / cfg.task.train_data.batch_size
    grads = tape.gradient(loss, model.trainable_variables)
    for v, w2, g in zip(t.model.trainable_variables, seen["w2"], grads):
        np.testing.assert_allclose(v.numpy() - w2, -0.5 * 0.5 * g.numpy(), rtol=1e-4, atol=1e-7, err_msg=v.path)
    # The factor is a variable: no retrace (under compile-ahead, the first loop's plain graph and
    # the XLA loop: one trace each).
    assert t.steps.traces["train"] == 1 + t.steps.first_loop_without_xla
