"""Best-k checkpoints by an eval metric in `model_dir/best/`, with an atomic JSON record."""
from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

from framework import atomic, registry
from framework import checkpoint as ckpt_lib
from framework.hooks.base import Hook, monitored
from framework.hooks.context import RunContext
from framework.hooks.early_stopping import resolve_mode


class BestCheckpoint(Hook):
    """Keeps the `keep` best model checkpoints; `best/best.json` lists them with their metrics.

    A checkpoint (and the optional export) holds the weights that were scored: the EMA
    weights when `trainer.ema_decay` is set, else the training weights.
    """

    def __init__(self, *, monitor: str = "loss", mode: str = "auto", keep: int = 1, export: bool = False) -> None:
        if keep < 1:
            raise ValueError(f"hooks.best_checkpoint.keep: expected an integer >= 1; got {keep!r}")
        self.monitor = monitor
        self.mode = resolve_mode(mode, monitor, section="hooks.best_checkpoint")
        self.keep = keep
        self.export = export  # also export the best model (.keras + SavedModel) to best/export
        self._ckpt = None

    def _dir(self, ctx: RunContext) -> str:
        return os.path.join(ctx.model_dir, "best")

    def records(self, model_dir: str) -> list[dict]:
        """The kept checkpoints, best first, as `best/best.json` lists them."""
        path = os.path.join(model_dir, "best", "best.json")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def eval_end(self, ctx: RunContext) -> None:
        """Writes a checkpoint of the scored weights if this evaluation ranks among the best `keep`."""
        value = monitored(ctx.eval_logs, self.monitor, section="hooks.best_checkpoint")
        records = self.records(ctx.model_dir)
        if any(r["step"] == ctx.step for r in records):
            return
        sign = 1.0 if self.mode == "min" else -1.0
        ranked = sorted(records, key=lambda r: sign * r["value"])
        if len(ranked) >= self.keep and sign * value >= sign * ranked[-1]["value"]:
            return
        d = self._dir(ctx)
        os.makedirs(d, exist_ok=True)
        if self._ckpt is None:
            self._ckpt = tf.train.Checkpoint(**ckpt_lib.model_objects(ctx.model))
        with ctx.scored_weights():  # the weights that earned `value` (EMA if on)
            prefix = self._ckpt.write(os.path.join(d, f"ckpt-{ctx.step}"))
        ranked.append({"step": ctx.step, "value": value, "monitor": self.monitor, "path": os.path.basename(prefix),
                       "metrics": dict(ctx.eval_logs)})
        ranked.sort(key=lambda r: sign * r["value"])
        for r in ranked[self.keep:]:
            for f in os.listdir(d):
                if f.startswith(r["path"] + "."):
                    os.remove(os.path.join(d, f))
        ranked = ranked[:self.keep]
        atomic.write_json(os.path.join(d, "best.json"), ranked)
        logging.info("best_checkpoint: step %d %s=%.6g kept in %s", ctx.step, self.monitor, value, d)
        if self.export and ranked[0]["step"] == ctx.step:
            from framework.hooks.export import export_model

            with ctx.scored_weights():
                export_model(ctx.model, os.path.join(d, "export"))


@registry.register_hook("best_checkpoint")
def best_checkpoint(monitor: str = "loss", mode: str = "auto", keep: int = 1, export: bool = False) -> BestCheckpoint:
    """`hooks: [{name: best_checkpoint, monitor: accuracy, keep: 3, export: false}]`."""
    return BestCheckpoint(monitor=monitor, mode=mode, keep=keep, export=export)
