"""ReduceLROnPlateau: multiplies every group's learning rate by `factor` when an eval metric stalls."""
from __future__ import annotations

from absl import logging

from framework import registry
from framework.hooks.base import Hook, monitored
from framework.hooks.context import RunContext
from framework.hooks.early_stopping import better, resolve_mode


class ReduceLROnPlateau(Hook):
    """Scales the LR factor (a variable read by the compiled step: no retrace)."""

    def __init__(self, *, monitor: str = "loss", mode: str = "auto", factor: float = 0.5, patience: int = 2,
                 min_delta: float = 0.0, cooldown: int = 0, min_factor: float = 1e-4,
                 min_lr: float | None = None) -> None:
        if not 0.0 < factor < 1.0:
            raise ValueError(f"hooks.reduce_lr_on_plateau.factor: expected a number in (0, 1); got {factor!r}")
        if patience < 1:
            raise ValueError(f"hooks.reduce_lr_on_plateau.patience: expected an integer >= 1; got {patience!r}")
        self.monitor = monitor
        self.mode = resolve_mode(mode, monitor, section="hooks.reduce_lr_on_plateau")
        self.factor, self.patience, self.min_delta = factor, patience, float(min_delta)
        self.cooldown, self.min_factor = cooldown, min_factor
        self.min_lr = min_lr  # floor on the base learning rate (as Keras's min_lr)
        self.best: float | None = None
        self.wait = 0
        self.cooldown_left = 0
        self.reductions: list[int] = []

    def state(self) -> dict:
        """The best value, the evaluations waited, the cooldown left and the steps of reductions."""
        return {"best": self.best, "wait": self.wait, "cooldown_left": self.cooldown_left,
                "reductions": self.reductions}

    def load_state(self, s: dict) -> None:
        """Restores `state()`."""
        self.best, self.wait = s["best"], s["wait"]
        self.cooldown_left, self.reductions = s["cooldown_left"], list(s["reductions"])

    def eval_end(self, ctx: RunContext) -> None:
        """Multiplies the LR factor by `factor` after `patience` evaluations without gain."""
        value = monitored(ctx.eval_logs, self.monitor, section="hooks.reduce_lr_on_plateau")
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
        if better(value, self.best, mode=self.mode, min_delta=self.min_delta):
            self.best, self.wait = value, 0
            return
        if self.cooldown_left > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            floor = self.min_factor
            if self.min_lr is not None:
                floor = max(floor, self.min_lr / ctx.base_learning_rate)
            new = max(ctx.lr_factor * self.factor, floor)
            if new < ctx.lr_factor:
                ctx.set_lr_factor(new)
                self.reductions.append(ctx.step)
                logging.info("reduce_lr_on_plateau: %s stalled at %.6g; LR factor now %.4g (step %d)",
                             self.monitor, self.best, new, ctx.step)
            self.wait = 0
            self.cooldown_left = self.cooldown


@registry.register_hook("reduce_lr_on_plateau")
def reduce_lr_on_plateau(monitor: str = "loss", mode: str = "auto", factor: float = 0.5, patience: int = 2,
                         min_delta: float = 0.0, cooldown: int = 0, min_factor: float = 1e-4,
                         min_lr: float | None = None) -> ReduceLROnPlateau:
    """`hooks: [{name: reduce_lr_on_plateau, monitor: loss, factor: 0.5, patience: 2}]`."""
    return ReduceLROnPlateau(monitor=monitor, mode=mode, factor=factor, patience=patience, min_delta=min_delta,
                             cooldown=cooldown, min_factor=min_factor, min_lr=min_lr)
