"""RunContext: what a hook sees and may change (step, logs, stop, LR factor, weights, scored weights)."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable

from framework.hooks.base import Event, Hook, as_hook

if TYPE_CHECKING:  # a type only: hooks sit beside the step modules, not above them
    from framework.results import LoopResult


class RunContext:
    """The controller's face towards hooks.

    Attributes:
      train_logs: values of the last inner loop (loss, metrics, learning rates, grad norms).
      eval_logs: values of the last evaluation (empty before the first one).
      loop_result: what the last inner loop returned (`results.LoopResult`; None before the
        first one): its step, losses, statistics and non-finite status.
    """

    def __init__(self, *, controller: Any) -> None:
        self._c = controller
        self.train_logs: dict[str, float] = {}
        self.eval_logs: dict[str, float] = {}
        self.loop_result: LoopResult | None = None
        self.stop_requested = False
        self.stop_reason = ""

    @property
    def step(self) -> int:
        """The global step (optimizer steps taken)."""
        return int(self._c.t.global_step.numpy())

    @property
    def total_steps(self) -> int:
        """The step the run trains to."""
        return self._c.t.total_steps

    @property
    def model(self) -> Any:
        """The Keras model being trained."""
        return self._c.t.model

    @property
    def model_dir(self) -> str:
        """The run's `--model_dir`."""
        return self._c.model_dir

    @property
    def base_learning_rate(self) -> float:
        """`optimizer.learning_rate` (the schedule's base)."""
        return float(self._c.cfg.optimizer.learning_rate)

    @property
    def lr_factor(self) -> float:
        """The factor every group's learning rate is multiplied by (ReduceLROnPlateau's)."""
        return float(self._c.t.lr_factor.numpy())

    def set_lr_factor(self, value: float) -> None:
        """Scales every group's learning rate by `value` from the next step on (no retrace)."""
        self._c.t.lr_factor.assign(float(value))

    def request_stop(self, reason: str) -> None:
        """Ends training after this boundary (a checkpoint is written first)."""
        self.stop_requested = True
        self.stop_reason = reason

    def get_weights(self) -> list:
        """Values of every model variable (the training weights, outside `scored_weights()`)."""
        return [v.numpy() for v in self._c.t.model.variables]

    def set_weights(self, weights: list) -> None:
        """Assigns values taken by `get_weights()` to the model's variables (the EMA is kept)."""
        for v, w in zip(self._c.t.model.variables, weights):
            v.assign(w)

    def scored_weights(self) -> contextlib.AbstractContextManager[None]:
        """A block within which the model holds the weights that evaluation scores.

        The rule: the model that was scored is the model that is kept and exported. With
        `trainer.ema_decay` set, evaluation scores the EMA weights, so inside this block the
        model holds them (the training weights come back on exit); without EMA it changes
        nothing. Hooks that keep or export a model (early stopping's best weights, `best/`
        checkpoints, the export) read it inside this block.
        """
        return self._c.t.steps.scored_weights()

    def load_scored_weights(self, weights: list) -> None:
        """Makes `weights` (taken by `get_weights()` inside `scored_weights()`) the model.

        They become the training weights and the EMA restarts from them, so evaluation, the
        export and the returned model all hold them (early stopping's restore-best).
        """
        self.set_weights(weights)
        self._c.t.steps.reset_ema()


class EveryNSteps(Hook):
    """"When" for another hook: its `train_loop_end` runs only when the step crossed a multiple
    of `n`; its other events, state and `restores_weights` pass through.
    """

    def __init__(self, *, n: int, hook: Hook) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"every_n_steps: expected an integer > 0; got {n!r}")
        self.n, self.hook = n, hook
        self.restores_weights = hook.restores_weights
        self._last: int | None = None

    def dispatch(self, event: Event | str, ctx: RunContext) -> None:
        """Passes `event` on, except a `train_loop_end` within the same multiple of `n`."""
        if Event(event) is Event.TRAIN_LOOP_END:
            k = ctx.step // self.n
            if self._last is not None and k == self._last:
                return
            self._last = k
        self.hook.dispatch(event, ctx)

    def state(self) -> dict | None:
        """The wrapped hook's state."""
        return self.hook.state()

    def load_state(self, state: dict) -> None:
        """Restores the wrapped hook's state."""
        self.hook.load_state(state)


def every_n_steps(n: int, hook: Callable[[str, RunContext], None] | Hook) -> EveryNSteps:
    """`hooks: [{name: x, every_n_steps: 500}]` wraps hook x with this."""
    return EveryNSteps(n=n, hook=as_hook(hook))
