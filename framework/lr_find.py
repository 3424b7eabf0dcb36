"""LR range test (`--mode=lr_find`): exponential LR sweep, `lr_find.csv` and `lr_find.png`, no checkpoint.

The sweep runs the real compiled step (same groups, clipping, strategy): the base learning
rate is replaced by `min_lr * (max_lr/min_lr) ** (i / (steps-1))` through the LR-factor
variable, one step per compiled call. It stops early once the smoothed loss exceeds 4x its
minimum. The suggestion is the LR of the steepest descent of the smoothed loss, a common
heuristic (fastai); read the plot rather than trusting it blindly.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from framework import atomic
from framework import summaries as summ


def suggest(lrs: np.ndarray, losses: np.ndarray) -> float | None:
    """LR at the steepest negative slope of loss vs log(lr); None if fewer than 5 points."""
    if len(lrs) < 5:
        return None
    slope = np.gradient(losses, np.log(lrs))
    return float(lrs[int(np.argmin(slope))])


def run(trainer: Any, *, model_dir: str, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100,
        beta: float = 0.9, diverge: float = 4.0) -> dict[str, Any]:
    """Sweeps the learning rate over `steps` steps; writes the CSV and PNG into `model_dir`.

    The task's schedule and warmup are bypassed: the factor variable is set so that the
    effective base learning rate equals the sweep value at each step.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"lr_find: expected 0 < min_lr < max_lr; got min_lr={min_lr}, max_lr={max_lr}")
    t = trainer
    it = iter(t.train_dataset(start_step=0))
    active = [i for i, g in enumerate(t.groups.group_of) if t.groups.groups[g].trainable]
    rows = []
    best = math.inf
    avg = 0.0
    for i in range(steps):
        lr = min_lr * (max_lr / min_lr) ** (i / max(steps - 1, 1))
        sched = float(t.schedule(tf.constant(t.global_step.numpy(), tf.int64)))
        # Warmup can make the schedule 0 at step 0; the factor then stands for the LR itself.
        t.lr_factor.assign(lr / sched if sched > 0 else 0.0)
        if sched <= 0:
            t.lr_factor.assign(lr / max(t.cfg.optimizer.learning_rate, 1e-30))
        result = t.steps.train_loop(it, 1, active)
        loss = result.loss
        if result.halted or not math.isfinite(loss):
            break
        avg = beta * avg + (1 - beta) * loss
        smooth = avg / (1 - beta ** (i + 1))
        rows.append((i, lr, loss, smooth))
        best = min(best, smooth)
        if smooth > diverge * best and i > 10:
            break
    path_csv = os.path.join(model_dir, "lr_find.csv")
    with atomic.replacing(path_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
        w.writerows(rows)
    lrs = np.array([r[1] for r in rows])
    sm = np.array([r[3] for r in rows])
    suggestion = suggest(lrs, sm)
    path_png = os.path.join(model_dir, "lr_find.png")
    _plot(lrs, sm, suggestion, path_png)
    summ.log(f"lr_find | {len(rows)} steps | suggested learning_rate {suggestion!r} | {path_csv}")
    logging.info("lr_find wrote %s and %s", path_csv, path_png)
    return {"step": len(rows), "suggestion": suggestion, "csv": path_csv, "png": path_png}


def _plot(lrs: np.ndarray, losses: np.ndarray, suggestion: float | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    if suggestion is not None:
        ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2e}")
        ax.legend()
    fig.tight_layout()
    with atomic.replacing(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
