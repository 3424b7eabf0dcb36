"""Early stopping on an eval metric, with restore-best weights that survive a restart."""
from __future__ import annotations

import math
import os

import numpy as np
from absl import logging

from framework import atomic, registry
from framework.hooks.base import Hook, monitored
from framework.hooks.context import RunContext


def better(value: float, best: float | None, *, mode: str, min_delta: float) -> bool:
    """Whether `value` improves on `best` by more than `min_delta` in `mode` (min | max)."""
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def resolve_mode(mode: str, monitor: str, *, section: str) -> str:
    """`min` or `max` for `monitor` (`auto`: min for losses and errors, max otherwise)."""
    if mode == "auto":
        return "min" if any(k in monitor for k in ("loss", "error", "mse", "mae")) else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"{section}.mode: expected min | max | auto; got {mode!r}")
    return mode


class EarlyStopping(Hook):
    """Stops when `monitor` has not improved for `patience` evaluations.

    With `restore_best` the model ends with the weights of the best evaluation, the weights
    that were scored (the EMA weights when `trainer.ema_decay` is set); the EMA restarts from
    them, so the end-of-run export holds them too.
    """

    restores_weights = True  # runs first at `end` (hooks.base): exports see the restored weights

    def __init__(self, *, monitor: str = "loss", mode: str = "auto", patience: int = 5,
                 min_delta: float = 0.0, start_from_step: int = 0, restore_best: bool = True) -> None:
        if patience < 1:
            raise ValueError(f"hooks.early_stopping.patience: expected an integer >= 1; got {patience!r}")
        self.monitor = monitor
        self.mode = resolve_mode(mode, monitor, section="hooks.early_stopping")
        self.patience = patience
        self.min_delta = float(min_delta)
        self.start_from_step = start_from_step
        self.restore_best = restore_best
        self.best: float | None = None
        self.best_step = -1
        self.wait = 0
        self.stopped_step = -1

    def state(self) -> dict:
        """The best value and step, the evaluations waited, the step it stopped at."""
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait,
                "stopped_step": self.stopped_step}

    def load_state(self, s: dict) -> None:
        """Restores `state()`."""
        self.best, self.best_step, self.wait = s["best"], s["best_step"], s["wait"]
        self.stopped_step = s.get("stopped_step", -1)

    def _weights_path(self, ctx: RunContext) -> str:
        return os.path.join(ctx.model_dir, "early_stopping_best.npz")

    def end(self, ctx: RunContext) -> None:
        """Puts the best weights back into the model when the run stopped early."""
        if self.restore_best and self.best_step >= 0 and self.stopped_step >= 0:
            path = self._weights_path(ctx)
            with np.load(path) as data:
                # Raw and EMA weights both become the best scored model (see RunContext).
                ctx.load_scored_weights([data[f"w{i}"] for i in range(len(data.files))])
            logging.info("early_stopping: restored the best weights (%s=%.6g) from step %d",
                         self.monitor, self.best, self.best_step)

    def eval_end(self, ctx: RunContext) -> None:
        """Keeps the best weights so far; requests a stop after `patience` evaluations without gain."""
        value = monitored(ctx.eval_logs, self.monitor, section="hooks.early_stopping")
        if ctx.step < self.start_from_step:
            return
        if better(value, self.best, mode=self.mode, min_delta=self.min_delta):
            self.best, self.best_step, self.wait = value, ctx.step, 0
            if self.restore_best:
                path = self._weights_path(ctx)
                with ctx.scored_weights():  # the weights that earned `value` (EMA if on)
                    weights = ctx.get_weights()
                with atomic.replacing(path, suffix=".npz") as tmp:  # np.savez adds `.npz` otherwise
                    np.savez(tmp, **{f"w{i}": w for i, w in enumerate(weights)})
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_step = ctx.step
            ctx.request_stop(f"early_stopping: {self.monitor} did not improve for {self.patience} evals "
                             f"(best {self.best:.6g} at step {self.best_step})")


@registry.register_hook("early_stopping")
def early_stopping(monitor: str = "loss", mode: str = "auto", patience: int = 5, min_delta: float = 0.0,
                   start_from_step: int = 0, restore_best: bool = True) -> EarlyStopping:
    """`hooks: [{name: early_stopping, monitor: auc, patience: 5, restore_best: true}]`."""
    return EarlyStopping(monitor=monitor, mode=mode, patience=patience, min_delta=min_delta,
                         start_from_step=start_from_step, restore_best=restore_best)
