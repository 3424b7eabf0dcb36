"""`--mode=smoke`: a run's whole path in seconds (two train steps, one eval batch, checkpoint
save + restore, export + safe load) in a temporary directory; only `smoke.json` stays.

Lightning's `fast_dev_run` is the model: every stage a long run depends on is exercised once,
and the first one that fails is reported by name. Nothing is left in `model_dir` but the
report, so a later real run there starts from scratch.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable, Sequence

# The config a smoke run uses on top of the experiment's (everything else, hooks included, is kept).
# The run's own end-of-training export is off: the export stage below does it, and reports it by name.
SMOKE_OVERRIDE = {"trainer": {"train_steps": 2, "train_epochs": None, "steps_per_loop": 1, "eval_interval": 2,
                              "eval_steps": 1, "checkpoint_interval": 2, "overfit_batches": 0, "export": False},
                  "task": {"test_data": {"name": ""}}}


class SmokeError(RuntimeError):
    """A smoke stage failed; the message names the stage and the first error."""


def smoke_config(cfg: Any) -> Any:
    """`cfg` shortened to the smoke run (2 steps, 1 eval batch, a checkpoint at step 2, no test set)."""
    from framework import config as config_lib

    return config_lib.validate(config_lib.merge(cfg, SMOKE_OVERRIDE))


def _stage(name: str, fn: Callable[[], Any], times: dict[str, float]) -> Any:
    t0 = time.monotonic()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - the point of a smoke run: report whatever breaks, by stage
        raise SmokeError(f"smoke failed at {name}: {type(e).__name__}: {_summary(e)}") from e
    times[name] = round(time.monotonic() - t0, 3)
    return out


def _summary(e: BaseException) -> str:
    """The error's own words in one line: without a traced function's stack and Keras's argument list."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln]
    files = [i for i, ln in enumerate(lines) if ln.startswith("File ")]
    if lines and lines[0].startswith("in user code") and files:
        lines = lines[files[-1] + 2:]  # after the last frame and its source line
    cut = next((i for i, ln in enumerate(lines) if ln.startswith("Arguments received")), len(lines))
    return " ".join(lines[:cut])[:500]


def run(trainer: Any, *, hooks: Sequence[Any], model_dir: str) -> dict[str, Any]:
    """Runs the smoke stages on a built (smoke-config) trainer; writes `model_dir/smoke.json`.

    Raises:
      SmokeError: naming the first stage that failed (`smoke.json` then says so too).
    """
    from framework import controller as controller_lib
    from framework import summaries as summ

    scratch = tempfile.mkdtemp(prefix="tapeline-smoke-")
    times: dict[str, float] = {}
    report: dict[str, Any] = {"ok": False, "scratch": scratch}
    try:
        ctl = controller_lib.Controller(trainer=trainer, model_dir=scratch, hooks=hooks)
        evaluate = trainer.eval_source is not None
        report["step"] = _stage("train", lambda: ctl.train(evaluate=evaluate), times)
        if evaluate:
            report["eval"] = ctl.last_eval
        _stage("checkpoint", lambda: _round_trip(ctl), times)
        _stage("export", lambda: _export_and_load(trainer, scratch), times)
        report["ok"] = True
    except SmokeError as e:
        report["error"] = str(e)
        raise
    finally:
        report["seconds"] = times
        shutil.rmtree(scratch, ignore_errors=True)
        summ.write_json(os.path.join(model_dir, "smoke.json"), report)
    summ.log(f"smoke | passed: {', '.join(f'{k} {v:.2f}s' for k, v in times.items())} | nothing kept but "
             f"{os.path.join(model_dir, 'smoke.json')}")
    return report


def _round_trip(ctl: Any) -> None:
    """Saves, scrambles every model variable, restores: the weights must come back bit-identical."""
    import numpy as np

    model = ctl.t.model
    before = [v.numpy() for v in model.variables]
    path = ctl.save(int(ctl.t.global_step.numpy()))
    for v in model.variables:
        v.assign(np.full(v.shape, 7, v.numpy().dtype))
    restored = ctl.checkpointer.restore_or_init()
    if restored != path:
        raise RuntimeError(f"restored {restored!r}, expected the checkpoint just saved {path!r}")
    for v, b in zip(model.variables, before):
        if not np.array_equal(v.numpy(), b):
            raise RuntimeError(f"variable {v.path} differs after the checkpoint round trip")


def _export_and_load(trainer: Any, scratch: str) -> None:
    """Exports model.keras + SavedModel; reloads model.keras with safe_mode=True; same outputs."""
    import keras
    import numpy as np
    import tensorflow as tf

    from framework.hooks.export import export_model

    paths = export_model(trainer.model, os.path.join(scratch, "export"))
    loaded = keras.models.load_model(paths["keras"], safe_mode=True)
    x = next(iter(trainer.train_source.batch(2)))[0]
    want = tf.nest.map_structure(np.asarray, trainer.model(x, training=False))
    got = tf.nest.map_structure(np.asarray, loaded(x, training=False))
    for a, b in zip(tf.nest.flatten(want), tf.nest.flatten(got)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg="reloaded model.keras predicts differently")
