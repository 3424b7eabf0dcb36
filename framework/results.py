"""What a compiled loop reports: its meters (loss, metric and gradient-statistic accumulators) and
the typed host results `LoopResult` / `EvalResult`.

Each loop resets its meters when it starts and returns, at its end, one structure of tensors
(`TrainMeters.results` / `EvalMeters.results` plus the loop's status); the caller fetches that
structure to the host once (`fetch`) and converts it once (`LoopResult.from_host` /
`EvalResult.from_host`). Nothing else reads the meters.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from framework.outputs import Report

_STATS = ("grad_norm", "grad_norm_clipped", "clipped_fraction")


def _scalar_results(metrics: Mapping[str, Any]) -> dict[str, tf.Tensor]:
    """While tracing: the results of the metrics whose result is a scalar (static shape)."""
    out = {}
    for name, m in metrics.items():
        r = tf.convert_to_tensor(m.result())
        if r.shape.rank == 0:
            out[name] = r
    return out


def fetch(tensors: Any) -> Any:
    """The one host copy of a loop's returned structure (NumPy values, same structure)."""
    return tf.nest.map_structure(np.asarray, tensors)


class TrainMeters:
    """Accumulators of one train loop (create inside the strategy's scope).

    Args:
      metrics: training metrics by logged name.
      output_keys: output names of a multi-output model (their unweighted losses are metered);
        empty for one output.
      num_groups: parameter groups (one gradient-norm mean each).
    """

    def __init__(self, *, metrics: Mapping[str, Any], output_keys: Sequence[str], num_groups: int) -> None:
        self.metrics = dict(metrics)
        self.loss = keras.metrics.Mean(name="loss")
        self.output_losses = {k: keras.metrics.Mean(name=f"{k}/loss") for k in output_keys}
        self.stats = {k: keras.metrics.Mean(name=k) for k in _STATS}
        self.group_norms = [keras.metrics.Mean(name=f"grad_norm/{i}") for i in range(num_groups)]

    def reset(self) -> None:
        """Zeroes every accumulator (at the start of a loop)."""
        for m in [self.loss, *self.output_losses.values(), *self.stats.values(), *self.group_norms,
                  *self.metrics.values()]:
            m.reset_state()

    def update_stats(self, stats: Mapping[str, tf.Tensor]) -> None:
        """Adds one step's clipping statistics (`clipping.clip_gradients`'s)."""
        for k, v in stats.items():
            if k == "clipped":
                self.stats["clipped_fraction"].update_state(v)
            elif k in self.stats:
                self.stats[k].update_state(v)
            elif k.startswith("grad_norm/"):
                self.group_norms[int(k.split("/")[1])].update_state(v)

    def results(self) -> dict[str, Any]:
        """While tracing, at the end of the loop: every result as a tensor."""
        return {"loss": self.loss.result(),
                "output_losses": {k: m.result() for k, m in self.output_losses.items()},
                "metrics": _scalar_results(self.metrics),
                "stats": {k: m.result() for k, m in self.stats.items()},
                "group_grad_norms": [m.result() for m in self.group_norms]}


class EvalMeters:
    """Accumulators of one eval loop (create inside the strategy's scope).

    Args:
      metrics: eval metrics by logged name (scalar results are reported).
      output_keys: as `TrainMeters`.
      reports: the per-class / per-label reports (`outputs.Report`), each with its own metric.
    """

    def __init__(self, *, metrics: Mapping[str, Any], output_keys: Sequence[str],
                 reports: Sequence[Report] = ()) -> None:
        self.metrics = dict(metrics)
        self.reports = list(reports)
        self.loss = keras.metrics.Mean(name="loss")
        self.output_losses = {k: keras.metrics.Mean(name=f"{k}/loss") for k in output_keys}

    def reset(self) -> None:
        """Zeroes every accumulator (at the start of a loop)."""
        for m in [self.loss, *self.output_losses.values(), *self.metrics.values(),
                  *(r.metric for r in self.reports)]:
            m.reset_state()

    def results(self) -> dict[str, Any]:
        """While tracing, at the end of the loop: every result as a tensor."""
        return {"loss": self.loss.result(),
                "output_losses": {k: m.result() for k, m in self.output_losses.items()},
                "metrics": _scalar_results(self.metrics),
                "reports": [r.metric.result() for r in self.reports]}


@dataclasses.dataclass(frozen=True)
class LoopResult:
    """What one train loop did, on the host.

    Attributes:
      steps_done: optimizer steps the loop ran (fewer than asked when it halted).
      step: the global step after the loop.
      loss: mean trained loss (the weighted total with regularization) over the loop's steps.
      output_losses: `<output>/loss` -> mean unweighted loss of that output (several outputs).
      metrics: training metrics with a scalar result, by logged name.
      grad_norm, grad_norm_clipped, clipped_fraction: mean gradient statistics.
      group_grad_norms: mean gradient norm per parameter group (in `GroupTable` order).
      learning_rates: every variable's learning rate at the loop's last step.
      halted: the non-finite policy stopped the loop.
      nonfinite_step: the step that failed (meaningful when `halted`).
      nonfinite_loss: whether that step's loss was non-finite (else its gradient overflowed).
      nonfinite_steps: steps skipped as non-finite since the run started (checkpointed).
      loss_scale: the fp16 loss scale after the loop (1.0 without loss scaling).
    """

    steps_done: int
    step: int
    loss: float
    output_losses: dict[str, float]
    metrics: dict[str, float]
    grad_norm: float
    grad_norm_clipped: float
    clipped_fraction: float
    group_grad_norms: tuple[float, ...]
    learning_rates: np.ndarray
    halted: bool
    nonfinite_step: int
    nonfinite_loss: bool
    nonfinite_steps: int
    loss_scale: float

    @classmethod
    def from_host(cls, v: Mapping[str, Any]) -> LoopResult:
        """From the fetched structure a train loop returned."""
        s = v["stats"]
        return cls(steps_done=int(v["steps_done"]), step=int(v["step"]), loss=float(v["loss"]),
                   output_losses={f"{k}/loss": float(x) for k, x in v["output_losses"].items()},
                   metrics={k: float(x) for k, x in v["metrics"].items()},
                   grad_norm=float(s["grad_norm"]), grad_norm_clipped=float(s["grad_norm_clipped"]),
                   clipped_fraction=float(s["clipped_fraction"]),
                   group_grad_norms=tuple(float(x) for x in v["group_grad_norms"]),
                   learning_rates=np.asarray(v["learning_rates"]), halted=bool(v["halted"]),
                   nonfinite_step=int(v["nonfinite_step"]), nonfinite_loss=bool(v["nonfinite_loss"]),
                   nonfinite_steps=int(v["nonfinite_steps"]), loss_scale=float(v["loss_scale"]))

    def losses(self) -> dict[str, float]:
        """`loss` and, for several outputs, `<output>/loss`."""
        return {"loss": self.loss, **self.output_losses}

    def stats(self) -> dict[str, float]:
        """`grad_norm`, `grad_norm_clipped`, `clipped_fraction`."""
        return {"grad_norm": self.grad_norm, "grad_norm_clipped": self.grad_norm_clipped,
                "clipped_fraction": self.clipped_fraction}


@dataclasses.dataclass(frozen=True)
class ReportValue:
    """One per-class or per-label report's accumulated array after an evaluation."""

    report: Report
    value: np.ndarray


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What one eval loop measured, on the host.

    Attributes:
      batches: global batches evaluated.
      loss: mean loss (several outputs: the weighted sum of their unweighted means).
      output_losses: `<output>/loss` -> mean unweighted loss of that output (several outputs).
      metrics: eval metrics with a scalar result, by logged name.
      reports: the per-class confusion matrices / per-label counts, one per classification output.
    """

    batches: int
    loss: float
    output_losses: dict[str, float]
    metrics: dict[str, float]
    reports: tuple[ReportValue, ...] = ()

    @classmethod
    def from_host(cls, v: Mapping[str, Any], *, loss_weights: Mapping[str, float],
                  reports: Sequence[Report]) -> EvalResult:
        """From the fetched structure an eval loop returned (`loss_weights` by output name)."""
        per = {f"{k}/loss": float(x) for k, x in v["output_losses"].items()}
        loss = sum(loss_weights[k] * per[f"{k}/loss"] for k in v["output_losses"]) if per else float(v["loss"])
        return cls(batches=int(v["batches"]), loss=loss, output_losses=per,
                   metrics={k: float(x) for k, x in v["metrics"].items()},
                   reports=tuple(ReportValue(report=r, value=np.asarray(x)) for r, x in zip(reports, v["reports"])))

    def values(self) -> dict[str, float]:
        """`loss`, `<output>/loss` and the scalar metrics: what metrics.json holds."""
        return {"loss": self.loss, **self.output_losses, **self.metrics}
