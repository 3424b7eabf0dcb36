"""A finished run leaves a usable model: `model_dir/export/` with `model.keras` (loads with
`safe_mode=True`) and `saved_model/` (a `serving_default` signature), unless
`trainer.export: false`. References: the final checkpoint's model, restored into a fresh build."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import checkpoint as ckpt_lib
from framework import controller as controller_lib
from framework import distribute as dist
from framework import main as main_lib
from framework import plugins, registry
from framework import trainer as trainer_lib
from framework.config import RuntimeConfig
from framework.hooks import export as export_lib
from tests import _components as C


def _cfg(steps=8, **kw):
    x, y = C.toy_classification(n=48, seed=4)
    C.set_arrays("export", x, y)
    trainer = {"train_steps": steps, "steps_per_loop": 4, "eval_interval": 8, "checkpoint_interval": 8,
               **kw.pop("trainer", {})}
    task = {"model": {"hidden": 8, "dropout": 0.2}, "train_data": {"key": "export"},
            "eval_data": {"key": "export"}, **kw.pop("task", {})}
    return C.make_config(task=task, trainer=trainer, optimizer={"name": "adam", "learning_rate": 0.05}, **kw)


def _final_model(cfg, model_dir, strategy=None):
    """The model of the run's last checkpoint, in a fresh build (the reference)."""
    t = trainer_lib.build(cfg, strategy or tf.distribute.get_strategy())
    controller_lib.Controller(trainer=t, model_dir=str(model_dir)).restore()
    return t.model


def _assert_export_serves(model_dir, reference):
    x, _ = C.toy_classification(n=48, seed=4)
    want = reference(x, training=False).numpy()
    loaded = keras.saving.load_model(os.path.join(model_dir, "export", "model.keras"), safe_mode=True)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), want, rtol=1e-5, atol=1e-6)
    sm = tf.saved_model.load(os.path.join(model_dir, "export", "saved_model"))
    serve = sm.signatures["serving_default"]
    (out,) = serve(tf.constant(x)).values()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit", ["auto", False])
def test_a_training_run_ends_with_a_usable_export(tmp_path, jit):
    cfg = _cfg(trainer={"jit_compile": jit})
    out = main_lib.run(cfg, model_dir=str(tmp_path), mode="train")  # the user's path, no eval
    assert out["step"] == 8
    _assert_export_serves(tmp_path, _final_model(cfg, tmp_path))


def test_export_under_two_replicas_holds_the_ema_weights(tmp_path):
    cfg = _cfg(trainer={"ema_decay": 0.9})
    mirrored = dist.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=2))
    t = trainer_lib.build(cfg, mirrored)
    controller_lib.Controller(trainer=t, model_dir=str(tmp_path)).train(evaluate=True)
    # Reference: the final checkpoint's EMA weights put into a fresh one-device build.
    ref = trainer_lib.build(cfg, tf.distribute.get_strategy())
    controller_lib.Controller(trainer=ref, model_dir=str(tmp_path)).restore()
    for v, e in zip(ref.steps.variables, ref.steps.ema.weights):
        v.assign(e.numpy())
    _assert_export_serves(tmp_path, ref.model)


def test_the_export_holds_early_stoppings_restored_best_weights(tmp_path):
    from framework.hooks.early_stopping import EarlyStopping

    # mode=max on the loss: the first evaluation (step 8) is the best, the second (16) stops.
    stopper = EarlyStopping(monitor="loss", mode="max", patience=1, restore_best=True)
    t = trainer_lib.build(_cfg(24), tf.distribute.get_strategy())
    controller_lib.Controller(trainer=t, model_dir=str(tmp_path), hooks=[stopper]).train(evaluate=True)
    assert stopper.best_step == 8 and int(t.global_step.numpy()) == 16
    # Reference: the model of the step-8 checkpoint, in a fresh build.
    ref = trainer_lib.build(_cfg(24), tf.distribute.get_strategy()).model
    ckpt_lib.load_weights(ref, str(tmp_path / "ckpt-8"))
    _assert_export_serves(tmp_path, ref)


def test_export_false_leaves_no_export(tmp_path):
    main_lib.run(_cfg(trainer={"export": False}), model_dir=str(tmp_path), mode="train_and_eval")
    assert os.path.exists(tmp_path / "checkpoint") and not os.path.exists(tmp_path / "export")


def test_a_preempted_run_exports_when_its_resumed_run_ends(tmp_path):
    def preempt_at_4(event, ctx):
        if event == "train_loop_end" and ctx.step == 4:
            ctx._c._preempted.set()  # what the SIGTERM handler does

    t = trainer_lib.build(_cfg(), tf.distribute.get_strategy())
    controller_lib.Controller(trainer=t, model_dir=str(tmp_path), hooks=[preempt_at_4]).train(evaluate=False)
    assert int(t.global_step.numpy()) == 4 and not os.path.exists(tmp_path / "export")
    main_lib.run(_cfg(), model_dir=str(tmp_path), mode="train")
    _assert_export_serves(tmp_path, _final_model(_cfg(), tmp_path))


def test_export_hook_in_the_config_is_not_run_twice(tmp_path, monkeypatch):
    calls = []
    real = export_lib.export_model
    monkeypatch.setattr(export_lib, "export_model", lambda model, d: calls.append(d) or real(model, d))
    t = trainer_lib.build(_cfg(), tf.distribute.get_strategy())
    hooks = [export_lib.Export(subdir="export")]  # as `hooks: [{name: export}]` gives
    controller_lib.Controller(trainer=t, model_dir=str(tmp_path), hooks=hooks).train(evaluate=False)
    assert calls == [os.path.join(str(tmp_path), "export")]


# -------------------------------------------------------------------- custom layers

class _Unregistered(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


@keras.saving.register_keras_serializable(package="tapeline_tests")
class _Doubled(keras.layers.Layer):
    """A custom layer registered serializable: its export loads with safe_mode=True."""

    def call(self, x):
        return 2.0 * x


if "test_custom_layer" not in registry.MODELS:
    @registry.register_model("test_custom_layer")
    def custom_layer_model(registered: bool = True, units: int = 3, inputs: int = 3) -> keras.Model:
        x_in = keras.Input((inputs,), name="x")
        h = (_Doubled if registered else _Unregistered)(name="doubled")(x_in)
        return keras.Model(x_in, keras.layers.Dense(units, name="out")(h), name="custom")


def test_a_registered_custom_layer_exports_and_loads_safely(tmp_path):
    cfg = _cfg(task={"model": {"name": "test_custom_layer", "registered": True}})
    main_lib.run(cfg, model_dir=str(tmp_path), mode="train")
    _assert_export_serves(tmp_path, _final_model(cfg, tmp_path))


def test_an_unregistered_custom_layer_is_refused_before_training(tmp_path):
    cfg = _cfg(task={"model": {"name": "test_custom_layer", "registered": False}})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    with pytest.raises(ValueError, match=r"trainer\.export: layer 'doubled'.*_Unregistered.*"
                                         r"register_keras_serializable"):
        controller_lib.Controller(trainer=t, model_dir=str(tmp_path)).train(evaluate=False)
    assert int(t.global_step.numpy()) == 0 and not os.path.exists(tmp_path / "checkpoint")
    with pytest.raises(main_lib.UserError, match=r"trainer\.export: layer 'doubled'"):  # main exits 2
        main_lib.run(cfg, model_dir=main_lib.check_model_dir(str(tmp_path / "main")), mode="train")
    # With the export off the same model trains.
    cfg.trainer.export = False
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    assert controller_lib.Controller(trainer=t, model_dir=str(tmp_path)).train(evaluate=False) == 8


def test_lambda_layers_are_refused():
    x_in = keras.Input((3,))
    model = keras.Model(x_in, keras.layers.Lambda(lambda t: t * 2.0, name="times2")(x_in))
    with pytest.raises(ValueError, match=r"trainer\.export: layer 'times2' is a Lambda layer.*safe_mode"):
        export_lib.check_exportable(model)


def _example_input(spec):
    """Two examples for a model input: unknown lengths as 8, token ids for integer inputs."""
    shape = (2, *[8 if d is None else d for d in spec.shape[1:]])
    rng = np.random.default_rng(0)
    if np.issubdtype(np.dtype(spec.dtype), np.integer):
        return rng.integers(1, 3, size=shape).astype(spec.dtype)
    return rng.normal(size=shape).astype(spec.dtype)


def test_models_of_registered_experiments_export_and_load_safely(tmp_path):
    plugins.load_experiments()
    # The built-in experiments (the test suite registers throwaway ones of its own).
    names = sorted(n for n in registry.EXPERIMENTS.names()
                   if registry.EXPERIMENTS.get(n).__module__.startswith("experiments."))
    assert len(names) >= 10
    for name in names:
        cfg = main_lib.resolve_config(experiment=name, imports=[], config_files=[], overrides=[], runtime_flags={})
        model = registry.build(registry.MODELS, cfg.task.model.name, cfg.task.model.kwargs, section="task.model")
        export_lib.check_exportable(model)
        x = [_example_input(i) for i in model.inputs]
        path = str(tmp_path / f"{name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-6, err_msg=name)


def test_a_non_bool_export_key_is_refused_by_the_config():
    from framework import config as config_lib
    with pytest.raises(config_lib.ConfigError, match=r"trainer\.export: expected bool; got 'yes please'"):
        config_lib.resolve({"task": {"model": {"name": "m"}, "train_data": {"name": "d"}},
                            "trainer": {"export": "yes please"}})
