"""Export at the end of training: a `.keras` file and a SavedModel with a serving signature."""
from __future__ import annotations

import os
import shutil

from absl import logging

from framework import registry
from framework.hooks.context import RunContext


def export_model(model, directory: str) -> dict[str, str]:
    """Writes `model.keras` and `saved_model/` under `directory` (replacing earlier exports).

    Each is written to a temporary name first and moved into place, so a crash never leaves a
    half-written export under the final name.
    """
    os.makedirs(directory, exist_ok=True)
    keras_path = os.path.join(directory, "model.keras")
    tmp = os.path.join(directory, f"tmp-{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, keras_path)
    sm_path = os.path.join(directory, "saved_model")
    sm_tmp = os.path.join(directory, f"saved_model.tmp-{os.getpid()}")
    shutil.rmtree(sm_tmp, ignore_errors=True)
    model.export(sm_tmp, format="tf_saved_model", verbose=False)
    shutil.rmtree(sm_path, ignore_errors=True)
    os.replace(sm_tmp, sm_path)
    return {"keras": keras_path, "saved_model": sm_path}


class Export:
    """Exports the final model (after any restore-best) to `model_dir/<subdir>`."""

    def __init__(self, *, subdir: str = "export") -> None:
        self.subdir = subdir

    def __call__(self, event: str, ctx: RunContext) -> None:
        if event != "end":
            return
        paths = export_model(ctx.model, os.path.join(ctx.model_dir, self.subdir))
        logging.info("exported %s and %s", paths["keras"], paths["saved_model"])


@registry.register_hook("export")
def export(subdir: str = "export") -> Export:
    norm = os.path.normpath(subdir) if isinstance(subdir, str) and subdir else ""
    if (not norm or os.path.isabs(subdir) or norm == "." or norm.split(os.sep)[0] == ".."
            or ".." in subdir.replace("\\", "/").split("/")):
        # Every output stays inside model_dir: no absolute path, no '..'.
        raise ValueError(f"export.subdir: expected a relative path inside model_dir without '..'; got {subdir!r}")
    return Export(subdir=subdir)
