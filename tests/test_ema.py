"""EMA with the rest of a run: it starts from `task.init_checkpoint`, and the model that was
scored (the EMA weights) is the model that early stopping keeps, `best/` holds and the export
writes. References: the loaded checkpoint's weights, and scikit-learn's log loss of each kept
model recomputed from its saved files."""
import json

import keras
import numpy as np
import pytest
import sklearn.metrics
import tensorflow as tf

from framework import checkpoint as ckpt_lib
from framework import controller as controller_lib
from framework import trainer as trainer_lib
from framework.hooks.best_checkpoint import BestCheckpoint
from framework.hooks.early_stopping import EarlyStopping
from tests import _components as C

DECAY = 0.9


def _cfg(steps, *, jit="auto", **kw):
    x, y = C.toy_classification(n=64, seed=11)
    C.set_arrays("ema_runs", x, y)
    trainer = {"train_steps": steps, "steps_per_loop": 4, "eval_interval": 8, "checkpoint_interval": 8,
               "jit_compile": jit, **kw.pop("trainer", {})}
    return C.make_config(task={"model": {"hidden": 8}, "train_data": {"key": "ema_runs"},
                               "eval_data": {"key": "ema_runs"}, **kw.pop("task", {})},
                         trainer=trainer, optimizer={"name": "adam", "learning_rate": 0.05}, **kw)


def _run(cfg, model_dir, hooks=(), evaluate=True):
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(model_dir), hooks=hooks)
    ctl.train(evaluate=evaluate)
    return t, ctl


def _log_loss(model) -> float:
    """The eval loss of `model` on the eval set, by scikit-learn (softmax of the logits)."""
    x, y = C.toy_classification(n=64, seed=11)
    probs = tf.nn.softmax(model(x, training=False)).numpy().astype(np.float64)
    return float(sklearn.metrics.log_loss(y, probs, labels=[0, 1, 2]))


@pytest.mark.parametrize("jit", ["auto", False])
def test_ema_starts_from_the_init_checkpoint(tmp_path, jit):
    pre, _ = _run(_cfg(8, jit=jit, trainer={"export": False}), tmp_path / "pretrain", evaluate=False)
    loaded = {v.path: v.numpy() for v in pre.model.trainable_variables}
    # Fine-tune as transfer_digits does: the body from the checkpoint by path, a new head.
    cfg = _cfg(1, jit=jit, task={"init_checkpoint": str(tmp_path / "pretrain"),
                                 "init_mapping": [{"from": "^out/", "to": "not_in_checkpoint/"}]},
               trainer={"ema_decay": DECAY, "steps_per_loop": 1, "export": False})
    fine = trainer_lib.build(cfg, tf.distribute.get_strategy())
    head0 = {v.path: v.numpy() for v in fine.model.trainable_variables if v.path.startswith("out/")}
    controller_lib.Controller(trainer=fine, model_dir=str(tmp_path / "finetune")).train(evaluate=False)
    assert fine.steps.jit.whole_step == (jit == "auto")
    for v, e in zip(fine.steps.variables, fine.steps.ema.weights):
        start = head0[v.path] if v.path.startswith("out/") else loaded[v.path]
        # One EMA update from the weights the run started with (not the random initial ones).
        np.testing.assert_allclose(e.numpy(), DECAY * start + (1 - DECAY) * v.numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=v.path)


def _fresh_model():
    return trainer_lib.build(_cfg(1), tf.distribute.get_strategy()).model


@pytest.mark.parametrize("jit", ["auto", False])
def test_kept_and_exported_models_are_the_scored_ema_models(tmp_path, jit):
    raw_at = {}

    def record(event, ctx):
        if event == "eval_end":
            raw_at[ctx.step] = ctx.get_weights()

    # mode=max on the loss: the first evaluation (step 8) is the best, the second (16) stops.
    stopper = EarlyStopping(monitor="loss", mode="max", patience=1, restore_best=True)
    best = BestCheckpoint(monitor="loss", keep=1)
    t, ctl = _run(_cfg(24, jit=jit, trainer={"ema_decay": DECAY}), tmp_path, hooks=[record, stopper, best])
    assert stopper.best_step == 8 and stopper.stopped_step == 16
    scored = {h["step"]: h["loss"] for h in ctl.eval_history}

    # The premise: the training weights at step 8 score differently from the EMA weights.
    m = _fresh_model()
    for v, w in zip(m.variables, raw_at[8]):
        v.assign(w)
    assert abs(_log_loss(m) - scored[8]) > 1e-3

    # 1. early stopping's best weights are the scored ones.
    with np.load(tmp_path / "early_stopping_best.npz") as data:
        for i, v in enumerate(m.variables):
            v.assign(data[f"w{i}"])
    assert _log_loss(m) == pytest.approx(scored[8], rel=1e-5)

    # 2. the best/ checkpoint holds the model that earned its recorded value.
    rec = json.loads((tmp_path / "best" / "best.json").read_text())[0]
    m2 = _fresh_model()
    ckpt_lib.load_weights(m2, str(tmp_path / "best" / rec["path"]))
    assert _log_loss(m2) == pytest.approx(rec["value"], rel=1e-5) and rec["value"] == scored[rec["step"]]

    # 3. the export (after restore-best) holds the best scored model, and so does the run's model.
    exported = keras.saving.load_model(str(tmp_path / "export" / "model.keras"), safe_mode=True)
    assert _log_loss(exported) == pytest.approx(scored[8], rel=1e-5)
    assert _log_loss(t.model) == pytest.approx(scored[8], rel=1e-5)
    for v, e in zip(t.steps.variables, t.steps.ema.weights):
        np.testing.assert_array_equal(e.numpy(), v.numpy())  # the EMA restarted from the best


def test_export_without_early_stopping_holds_the_final_ema_weights(tmp_path):
    t, _ = _run(_cfg(16, trainer={"ema_decay": DECAY}), tmp_path)
    final = json.loads((tmp_path / "metrics.json").read_text())
    exported = keras.saving.load_model(str(tmp_path / "export" / "model.keras"), safe_mode=True)
    assert _log_loss(exported) == pytest.approx(final["loss"], rel=1e-5)
    assert abs(_log_loss(t.model) - final["loss"]) > 1e-3  # the model itself keeps its training weights
    for v, e in zip(t.steps.variables, t.steps.ema.weights):
        assert not np.array_equal(v.numpy(), e.numpy())


@pytest.mark.slow  # two CNN runs of the experiments library
def test_transfer_digits_with_ema_scores_the_pretrained_body(tmp_path):
    from framework import main as main_lib

    small = ["trainer.steps_per_loop=2", "trainer.eval_interval=2", "trainer.checkpoint_interval=2",
             "trainer.eval_steps=2", "task.train_data.batch_size=8", "trainer.export=false"]

    def resolve(name, *overrides):
        return main_lib.resolve_config(experiment=name, imports=[], config_files=[],
                                       overrides=[*small, *overrides], runtime_flags={})

    pre_dir = str(tmp_path / "pretrain")
    main_lib.run(resolve("digits_pretrain", "trainer.train_steps=4"), model_dir=main_lib.check_model_dir(pre_dir),
                 mode="train")
    pre = trainer_lib.build(resolve("digits_pretrain"), tf.distribute.get_strategy())
    ckpt_lib.load_weights(pre.model, pre_dir)
    loaded = {v.path: v.numpy() for v in pre.model.trainable_variables}
    # The experiment's first phase trains the head only: the body stays at the loaded weights.
    cfg = resolve("transfer_digits", "trainer.train_steps=2", f"task.init_checkpoint={pre_dir}",
                  "trainer.ema_decay=0.99")
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    controller_lib.Controller(trainer=t, model_dir=str(tmp_path / "transfer")).train(evaluate=True)
    body = [(v, e) for v, e in zip(t.steps.variables, t.steps.ema.weights) if not v.path.startswith("head/")]
    assert len(body) >= 6
    for v, e in body:
        np.testing.assert_allclose(v.numpy(), loaded[v.path], rtol=1e-6, err_msg=v.path)  # frozen
        np.testing.assert_allclose(e.numpy(), loaded[v.path], rtol=1e-5, atol=1e-7, err_msg=v.path)
