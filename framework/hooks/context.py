"""RunContext: what a hook sees and may change (step, last logs, stop, LR factor, save)."""
from __future__ import annotations

from typing import Any, Callable


class RunContext:
    """The controller's face towards hooks.

    Attributes:
      train_logs: values of the last inner loop (loss, metrics, learning rates, grad norms).
      eval_logs: values of the last evaluation (empty before the first one).
    """

    def __init__(self, *, controller: Any) -> None:
        self._c = controller
        self.train_logs: dict[str, float] = {}
        self.eval_logs: dict[str, float] = {}
        self.stop_requested = False
        self.stop_reason = ""

    @property
    def step(self) -> int:
        return int(self._c.t.global_step.numpy())

    @property
    def total_steps(self) -> int:
        return self._c.t.total_steps

    @property
    def model(self) -> Any:
        return self._c.t.model

    @property
    def model_dir(self) -> str:
        return self._c.model_dir

    @property
    def lr_factor(self) -> float:
        return float(self._c.t.lr_factor.numpy())

    def set_lr_factor(self, value: float) -> None:
        """Scales every group's learning rate by `value` from the next step on (no retrace)."""
        self._c.t.lr_factor.assign(float(value))

    def request_stop(self, reason: str) -> None:
        """Ends training after this boundary (a checkpoint is written first)."""
        self.stop_requested = True
        self.stop_reason = reason

    def get_weights(self) -> list:
        return [v.numpy() for v in self._c.t.model.variables]

    def set_weights(self, weights: list) -> None:
        for v, w in zip(self._c.t.model.variables, weights):
            v.assign(w)


def every_n_steps(n: int, fn: Callable[[str, RunContext], None], *, event: str = "train_loop_end") -> Callable:
    """Wraps `fn` so it runs on `event` only when the step crossed a multiple of `n`."""
    if n <= 0:
        raise ValueError(f"every_n_steps: n must be > 0; got {n!r}")
    last = {"k": None}

    def hook(ev: str, ctx: RunContext) -> None:
        if ev != event:
            return
        k = ctx.step // n
        if last["k"] is None or k != last["k"]:
            last["k"] = k
            fn(ev, ctx)

    return hook
