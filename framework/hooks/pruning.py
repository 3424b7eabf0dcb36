"""Pruning hook: reports each evaluation's metric to a search trial and stops the run when pruned.

`--mode=tune` adds it to every trial run (it is not a config hook: it needs the live trial).
The trial is duck-typed (`report(value, step)`, `should_prune()`), so this floor does not
depend on the search library.
"""
from __future__ import annotations

import math
from typing import Any

from absl import logging

from framework.hooks.base import Hook, monitored
from framework.hooks.context import RunContext


class PruningHook(Hook):
    """At every `eval_end`: `trial.report(metric, step)`; if the trial should be pruned, stop.

    Attributes:
      pruned_at: the step of the evaluation that pruned the run (None if it was not pruned).
      value: the metric at that evaluation (or the last one reported).
    """

    def __init__(self, *, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None
        self.value: float | None = None

    def eval_end(self, ctx: RunContext) -> None:
        """Reports the metric to the trial; stops the run if the pruner says so."""
        if self.pruned_at is not None:
            return
        self.value = monitored(ctx.eval_logs, self.metric, section="tune")
        if not math.isfinite(self.value):
            return  # a non-finite value is not reported; the run's own non-finite policy acts
        self.trial.report(self.value, ctx.step)
        if self.trial.should_prune():
            self.pruned_at = ctx.step
            logging.info("tune: trial %s pruned at step %d (%s=%.6g)", getattr(self.trial, "number", "?"),
                         ctx.step, self.metric, self.value)
            ctx.request_stop(f"pruned by the tuner at step {ctx.step} ({self.metric}={self.value:.6g})")
