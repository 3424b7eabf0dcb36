"""Hooks: what the controller runs at loop boundaries, typed by event (see `hooks.base`).

Events: `begin`, `train_loop_end` (after every compiled inner loop), `eval_end` (after each
evaluation) and `end`. A hook subclasses `Hook` and overrides the methods of the events it acts
on; a plain callable `hook(event, ctx)` is wrapped. A hook keeps state across a restart through
`state() -> dict` and `load_state(dict)`; the controller stores it in the checkpoint. Built-in
hooks are registered by name (`hooks: [{name: early_stopping, monitor: accuracy, ...}]`); a
user's own with `framework.registry.register_hook`.
"""
from __future__ import annotations

from framework.hooks.base import Event, Hook
from framework.hooks.context import RunContext, every_n_steps

__all__ = ["Event", "Hook", "RunContext", "every_n_steps"]

# Importing the built-in hooks registers them.
from framework.hooks import best_checkpoint as _best_checkpoint  # noqa: E402,F401
from framework.hooks import early_stopping as _early_stopping  # noqa: E402,F401
from framework.hooks import export as _export  # noqa: E402,F401
from framework.hooks import plateau as _plateau  # noqa: E402,F401
