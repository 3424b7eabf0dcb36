"""Hook: the typed base of what the controller schedules, one method per event, and their order.

The controller calls hooks at four points of a run (`Event`). A hook subclasses `Hook` and
overrides the methods of the events it acts on ("what"); when it runs inside those events is
the scheduler's business ("when": `every_n_steps`, the controller's loop boundaries). A plain
callable `hook(event_name, ctx)`, the older form a user may register, is wrapped by `as_hook`.

Ordering, stated once here: at every event hooks run in the order of the config's `hooks`
list, except at `Event.END`, where the hooks that put other weights into the model
(`restores_weights = True`, e.g. early stopping's restore-best) run first, so that exports and
the test-set evaluation that follow see the weights the run ends with.
"""
from __future__ import annotations

import enum
from typing import Any, Callable, Iterable, Mapping


class Event(str, enum.Enum):
    """The points of a run at which hooks are called."""

    BEGIN = "begin"                    # before the first inner loop (after any restore)
    TRAIN_LOOP_END = "train_loop_end"  # after every compiled inner loop
    EVAL_END = "eval_end"              # after every evaluation
    END = "end"                        # once, after the last loop (stopped or finished)


class Hook:
    """Base class of hooks: override the event methods you need, and `state` to be resumable.

    Attributes:
      restores_weights: True for hooks that load other weights into the model at `end`; they
        run before the others then (see the module docstring).
    """

    restores_weights: bool = False

    def begin(self, ctx: Any) -> None:
        """Called once before training (after a restore)."""

    def train_loop_end(self, ctx: Any) -> None:
        """Called after every compiled inner loop; `ctx.train_logs` holds its values."""

    def eval_end(self, ctx: Any) -> None:
        """Called after every evaluation; `ctx.eval_logs` holds its values."""

    def end(self, ctx: Any) -> None:
        """Called once at the end of training."""

    def state(self) -> dict | None:
        """What a resume needs (saved in the checkpoint); None for a stateless hook."""
        return None

    def load_state(self, state: dict) -> None:
        """Restores what `state` returned."""

    def dispatch(self, event: Event | str, ctx: Any) -> None:
        """Calls the method of `event`."""
        getattr(self, Event(event).value)(ctx)

    def __call__(self, event: Event | str, ctx: Any) -> None:  # the callable form, for old callers
        self.dispatch(event, ctx)


class FunctionHook(Hook):
    """A user's plain callable `fn(event_name, ctx)` as a Hook (its `state`/`load_state` kept)."""

    def __init__(self, *, fn: Callable[[str, Any], None]) -> None:
        self.fn = fn
        self.restores_weights = bool(getattr(fn, "restores_weights", False))

    def dispatch(self, event: Event | str, ctx: Any) -> None:
        """Calls the wrapped function with the event's name."""
        self.fn(Event(event).value, ctx)

    def state(self) -> dict | None:
        """The wrapped function's `state()`, if it has one."""
        return self.fn.state() if hasattr(self.fn, "state") else None

    def load_state(self, state: dict) -> None:
        """Passes `state` to the wrapped function's `load_state`, if it has one."""
        if hasattr(self.fn, "load_state"):
            self.fn.load_state(state)


def as_hook(obj: Any, *, section: str = "hooks") -> Hook:
    """`obj` as a Hook: itself, or a callable wrapped in `FunctionHook`.

    Raises:
      ValueError: `obj` is neither a Hook nor callable.
    """
    if isinstance(obj, Hook):
        return obj
    if callable(obj):
        return FunctionHook(fn=obj)
    raise ValueError(f"{section}: expected a Hook or a callable hook(event, ctx); got {type(obj).__name__}")


def ordered(hooks: Iterable[Hook], event: Event | str) -> list[Hook]:
    """The hooks in the order they run at `event` (the rule in the module docstring)."""
    hooks = list(hooks)
    if Event(event) is Event.END:
        return sorted(hooks, key=lambda h: not h.restores_weights)  # stable: config order kept
    return hooks


def monitored(logs: Mapping[str, float], monitor: str, *, section: str) -> float:
    """The value of `monitor` in an evaluation's logs.

    Raises:
      ValueError: the evaluation produced no such metric; names the hook's key and the
        metrics there are.
    """
    if monitor not in logs:
        raise ValueError(f"{section}.monitor: expected one of the eval metrics "
                         f"{', '.join(sorted(logs)) or '(none)'}; got {monitor!r}")
    return float(logs[monitor])
