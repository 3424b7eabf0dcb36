"""Export at the end of training: a `.keras` file and a SavedModel with a serving signature.

Every training run ends with `model_dir/export/` (`trainer.export: false` turns it off): the
controller runs `Export` after the `end` hooks, so after early stopping's restore-best, and
exports the scored weights (the EMA weights when `trainer.ema_decay` is set). `model.keras`
loads with `keras.saving.load_model(path, safe_mode=True)` only if every layer's class is
Keras's own or registered serializable (`@keras.saving.register_keras_serializable(package=...)`
on a custom layer, with `get_config`) and no `Lambda` layer is used; `check_exportable` says so
before training starts.
"""
from __future__ import annotations

import os
from typing import Any

import keras
from absl import logging

from framework import atomic, registry
from framework import layers as layers_lib
from framework.hooks.base import Hook
from framework.hooks.context import RunContext


def export_model(model, directory: str) -> dict[str, str]:
    """Writes `model.keras` and `saved_model/` under `directory` (replacing earlier exports).

    Each is written to a temporary name first and moved into place, so a crash never leaves a
    half-written export under the final name.
    """
    os.makedirs(directory, exist_ok=True)
    keras_path = os.path.join(directory, "model.keras")
    with atomic.replacing(keras_path, suffix=".keras") as tmp:  # Keras wants the `.keras` ending
        model.save(tmp)
    sm_path = os.path.join(directory, "saved_model")
    with atomic.replacing(sm_path) as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
    return {"keras": keras_path, "saved_model": sm_path}


class ExportError(ValueError):
    """The model could not be exported loadably (a user's mistake: main exits with status 2)."""


def check_exportable(model: Any, *, key: str = "trainer.export") -> None:
    """Raises ExportError unless `model.keras` of `model` will load with `safe_mode=True`.

    Each layer class (the model's own included) must be Keras's own or registered
    serializable, and no `Lambda` layer (arbitrary code, refused by safe mode) may be used.
    """
    for layer in layers_lib.walk(model):
        cls = type(layer)
        if isinstance(layer, keras.layers.Lambda):
            raise ExportError(f"{key}: layer {layer.name!r} is a Lambda layer, which "
                              f"keras.saving.load_model(..., safe_mode=True) refuses; expected a registered "
                              f"custom layer (or {key}: false); got {cls.__name__}")
        if cls.__module__.split(".")[0] == "keras":
            continue
        if keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is not cls:
            raise ExportError(f"{key}: layer {layer.name!r} has class {cls.__module__}.{cls.__qualname__}, which "
                              f"is not registered serializable, so the exported model.keras would not load; "
                              f"expected @keras.saving.register_keras_serializable(package=...) on the class "
                              f"(with get_config), or {key}: false; got an unregistered {cls.__name__}")


class Export(Hook):
    """Exports the final model (after any restore-best) to `model_dir/<subdir>`.

    The export holds the scored weights (`RunContext.scored_weights`): the EMA weights when
    `trainer.ema_decay` is set. Multi-worker: every worker runs it, as every worker runs each
    checkpoint save, but only the chief writes into `model_dir` (the others into a scratch
    directory that is removed).
    """

    def __init__(self, *, subdir: str = "export") -> None:
        self.subdir = subdir

    def end(self, ctx: RunContext) -> None:
        """Writes `model.keras` and `saved_model/` of the scored weights."""
        with ctx.scored_weights():
            paths = export_model(ctx.model, os.path.join(ctx.model_dir, self.subdir))
        logging.info("exported %s and %s", paths["keras"], paths["saved_model"])


@registry.register_hook("export")
def export(subdir: str = "export") -> Export:
    """`hooks: [{name: export, subdir: export}]` (a run exports to `export/` by itself)."""
    norm = os.path.normpath(subdir) if isinstance(subdir, str) and subdir else ""
    if (not norm or os.path.isabs(subdir) or norm == "." or norm.split(os.sep)[0] == ".."
            or ".." in subdir.replace("\\", "/").split("/")):
        # Every output stays inside model_dir: no absolute path, no '..'.
        raise ValueError(f"export.subdir: expected a relative path inside model_dir without '..'; got {subdir!r}")
    return Export(subdir=subdir)
