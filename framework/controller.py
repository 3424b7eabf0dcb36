"""The Python outer loop: inner-loop calls, eval and checkpoint boundaries, hooks, resume.

One compiled call runs up to `trainer.steps_per_loop` steps and returns its results, copied to
the host once per call (`results.LoopResult`); the controller writes summaries and the log
line from them, dispatches hooks, evaluates and checkpoints on their intervals. Training
resumes from the newest checkpoint and a finished run returns at once.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from framework import checkpoint as ckpt_lib
from framework import layers as layers_lib
from framework import reports as reports_lib
from framework import summaries as summ
from framework.hooks import RunContext
from framework.hooks import base as hooks_base
from framework.hooks import export as export_lib
from framework.hooks.context import EveryNSteps
from framework.results import EvalResult, LoopResult
from framework.trainer import Trainer


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient under `trainer.nonfinite=terminate`."""


class TestDataError(ValueError):
    """`task.test_data` could not be read at the end; training itself finished and is checkpointed."""


@dataclasses.dataclass
class Phase:
    """A stretch of training with its own trainable groups and group multipliers."""

    start_step: int
    trainable: dict[str, bool]
    lr_multiplier: dict[str, float]


def resolve_phases(trainer: Trainer) -> list[Phase]:
    """Turns `trainer.phases` into steps (epochs are converted with the train set's size).

    Each entry: {start_step | start_epoch, trainable: {group: bool}, lr_multiplier: {group: x}};
    a group not named keeps its setting from the previous phase.
    """
    cfg = trainer.cfg
    names = trainer.groups.names()
    steps_per_epoch = None
    if trainer.num_train_examples > 0:
        steps_per_epoch = trainer.num_train_examples / (cfg.task.train_data.batch_size * trainer.batches_per_step)
    out = []
    for i, p in enumerate(cfg.trainer.phases):
        key = f"trainer.phases[{i}]"
        if not isinstance(p, dict):
            raise ValueError(f"{key}: expected a mapping; got {p!r}")
        unknown = set(p) - {"start_step", "start_epoch", "trainable", "lr_multiplier"}
        if unknown:
            raise ValueError(f"{key}: unknown key(s) {sorted(unknown)}; valid: start_step, start_epoch, "
                             f"trainable, lr_multiplier; got {p!r}")
        if "start_epoch" in p:
            if steps_per_epoch is None:
                raise ValueError(f"{key}.start_epoch: the training set is infinite; use start_step; got {p!r}")
            start = int(round(float(p["start_epoch"]) * steps_per_epoch))
        else:
            start = int(p.get("start_step", 0))
        for field in ("trainable", "lr_multiplier"):
            for g in (p.get(field) or {}):
                if g not in names:
                    raise ValueError(f"{key}.{field}: unknown parameter group {g!r}; groups: {', '.join(names)}")
        out.append(Phase(start_step=start, trainable=dict(p.get("trainable") or {}),
                         lr_multiplier={k: float(v) for k, v in (p.get("lr_multiplier") or {}).items()}))
    out.sort(key=lambda ph: ph.start_step)
    return out


class Controller:
    """Drives a built `Trainer` in `model_dir`.

    Args:
      trainer: the built run.
      model_dir: where checkpoints, summaries, params.yaml and metrics.json go.
      hooks: `hooks.base.Hook`s (a plain callable `hook(event, ctx)` is wrapped); their `state()`
        is checkpointed.
      save_checkpoints: False for runs that must leave no checkpoint (lr_find).
    """

    def __init__(self, *, trainer: Trainer, model_dir: str, hooks: Sequence[Any] = (),
                 save_checkpoints: bool = True) -> None:
        self.t = trainer
        self.cfg = trainer.cfg
        self.model_dir = model_dir
        self.hooks = [hooks_base.as_hook(h, section=f"hooks[{i}]") for i, h in enumerate(hooks)]
        self.summaries = summ.Summaries(model_dir=model_dir)
        self.save_checkpoints = save_checkpoints
        self.phases = resolve_phases(trainer)
        self.ctx = RunContext(controller=self)
        # Batches skipped after `nonfinite=restore`: the data position is step + data_skip.
        self.data_skip = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_skip")
        # Every model variable, Dropout RNG states included (docs/design.md#t9), plus their paths so that
        # task.init_checkpoint can load them into another model by path.
        objects = {**ckpt_lib.model_objects(trainer.model), "step": trainer.global_step,
                   "optimizer": trainer.optimizer, "lr_factor": trainer.lr_factor,
                   "trainer_state": trainer.steps.state(), "data_skip": self.data_skip}
        self.checkpointer = ckpt_lib.Checkpointer(
            directory=model_dir, objects=objects, max_to_keep=self.cfg.trainer.max_to_keep,
            get_hook_state=self._hook_state, set_hook_state=self._load_hook_state)
        self.last_eval: dict[str, float] | None = None
        self.eval_history: list[dict[str, float]] = []
        self._train_iter = None
        self._eval_ds = None
        self._restores = 0
        self._preempted = threading.Event()
        self.test_metrics: dict[str, float] | None = None
        self.overfit: dict[str, Any] | None = None
        self._loop_losses: list[float] = []  # first and last inner-loop loss, for overfit_batches
        self.last_result: LoopResult | None = None  # what the last inner loop returned
        self._start = (time.monotonic(), 0)  # (time, step) training started at, for the ETA

    @property
    def preempted(self) -> bool:
        """Whether training stopped for a SIGTERM (the run is unfinished and resumes later)."""
        return self._preempted.is_set()

    def handle_sigterm(self) -> Callable[[], None]:
        """On SIGTERM, finish the current inner loop, checkpoint and stop (preemption).

        Returns:
          A callable that puts the previous SIGTERM handler back. Call it when the run ends: a
          process that goes on after the run (a notebook, the folds of `--mode=cross_validate`)
          must stop on SIGTERM again, not set a flag of a controller nobody reads.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):  # noqa: ARG001 - signal API
            logging.warning("SIGTERM: checkpointing at the end of this loop, then exiting")
            self._preempted.set()

        previous = signal.signal(signal.SIGTERM, handler)
        return lambda: signal.signal(signal.SIGTERM, previous)

    # ----------------------------------------------------------------- hook plumbing

    def _hook_state(self) -> dict:
        out = {}
        for i, h in enumerate(self.hooks):
            state = hooks_base.as_hook(h).state()
            if state is not None:
                out[str(i)] = state
        return out

    def _load_hook_state(self, data: dict) -> None:
        for i, h in enumerate(self.hooks):
            if str(i) in data:
                hooks_base.as_hook(h).load_state(data[str(i)])

    def _dispatch(self, event: str) -> None:
        # `as_hook` again: a caller may have appended a plain callable to `hooks` since.
        hooks = [hooks_base.as_hook(h) for h in self.hooks]
        for h in hooks_base.ordered(hooks, event):  # the ordering rule lives in hooks.base
            h.dispatch(event, self.ctx)

    # ----------------------------------------------------------------- phases

    def _phase_at(self, step: int) -> tuple[list[int], np.ndarray]:
        """Active variable indices and per-variable multipliers in effect at `step`."""
        table = self.t.groups
        trainable = {g.name: g.trainable for g in table.groups}
        mult = {g.name: g.lr_multiplier for g in table.groups}
        for ph in self.phases:
            if ph.start_step > step:
                break
            trainable.update(ph.trainable)
            mult.update(ph.lr_multiplier)
        group_mults = [mult[g.name] if trainable[g.name] else 0.0 for g in table.groups]
        per_var = table.multipliers(group_multipliers=group_mults, layer_decay=self.cfg.optimizer.layer_decay)
        active = [i for i in range(len(table.variables)) if group_mults[table.group_of[i]] != 0.0]
        if self.cfg.trainer.freeze_bn_in_frozen_groups:
            self._set_bn_modes(set(active))
        return active, per_var

    def _set_bn_modes(self, active: set[int]) -> None:
        """Batch-norm layers whose weights are all frozen run in inference mode.

        Keras BN uses batch statistics only when `training and layer.trainable`; the flag is
        read at trace time, and a change of the frozen set retraces anyway (one per phase).
        """
        index = {id(v): i for i, v in enumerate(self.t.groups.variables)}
        for layer in layers_lib.walk(self.t.model, include_self=False):
            if "BatchNormalization" not in type(layer).__name__:
                continue
            weights = (getattr(layer, "gamma", None), getattr(layer, "beta", None))
            ids = [index.get(id(v)) for v in weights if v is not None]
            ids = [i for i in ids if i is not None]
            if ids:
                frozen = not any(i in active for i in ids)
                layer.trainable = not frozen

    def _next_phase_start(self, step: int) -> int | None:
        for ph in self.phases:
            if ph.start_step > step:
                return ph.start_step
        return None

    # ----------------------------------------------------------------- run

    def restore(self) -> int:
        """Restores the newest checkpoint, or loads `task.init_checkpoint` into a fresh run; returns the step."""
        path = self.checkpointer.restore_or_init()
        step = int(self.t.global_step.numpy())
        if path:
            logging.info("restored %s (step %d)", path, step)
        else:
            init = self.cfg.task.init_checkpoint
            if init:
                loaded = ckpt_lib.load_weights(self.t.model, init, mapping=self.cfg.task.init_mapping)
                # The EMA copies were made from the random initial weights: restart the average
                # from the loaded ones (a checkpoint restore above brings its own EMA state).
                self.t.steps.reset_ema()
                logging.info("initialized %d variables from %s", len(loaded), init)
        return step

    def train(self, *, evaluate: bool) -> int:
        """Trains to `total_steps` (evaluating on the interval when `evaluate`); returns the step."""
        step = self.restore()
        if step >= self.t.total_steps:
            return self._already_finished(step)
        final_export = self._begin_run(step)
        while step < self.t.total_steps and not self.ctx.stop_requested:
            step = self._train_loop(step, evaluate=evaluate)
        self._end_run(step, final_export)
        return step

    def _already_finished(self, step: int) -> int:
        logging.info("already finished: step %d of %d in %s; nothing to do", step, self.t.total_steps,
                     self.model_dir)
        if self.cfg.task.test_data.name and not os.path.exists(os.path.join(self.model_dir, "test_metrics.json")):
            # The test evaluation of this finished run did not complete (e.g. a test_data fixed since):
            # the end hooks put the final weights back (restore-best state is in the checkpoint).
            self._dispatch("end")
            self._test_once(step)
        return step

    def _begin_run(self, step: int) -> export_lib.Export | None:
        """Summaries of the run's setup, the `begin` hooks, the training iterator; returns the final export."""
        self.summaries.text("train", "config", _config_text(self.cfg), step=step)
        self.summaries.text("train", "param_groups", self.t.groups.format(), step=step)
        self.t.groups.write(os.path.join(self.model_dir, "param_groups.json"))
        if self.t.sampled_frequencies:
            self.summaries.scalars("train", step, {f"sampling/class_{c}": f
                                                   for c, f in self.t.sampled_frequencies.items()})
        final_export = self._final_export()
        if final_export is not None:
            export_lib.check_exportable(self.t.model)  # before training, not after it
        self._dispatch("begin")
        self._train_iter = iter(self.t.train_dataset(start_step=step + int(self.data_skip.numpy())))
        self._start = (time.monotonic(), step)
        return final_export

    def _loop_length(self, step: int, *, evaluate: bool) -> int:
        """Steps of the next inner loop: up to the nearest end, loop, eval, checkpoint or phase boundary."""
        tr = self.cfg.trainer
        bounds = [self.t.total_steps, _next_multiple(step, tr.steps_per_loop)]
        if evaluate:
            bounds.append(_next_multiple(step, tr.eval_interval))
        if self.save_checkpoints:
            bounds.append(_next_multiple(step, tr.checkpoint_interval))
        nxt = self._next_phase_start(step)
        if nxt is not None:
            bounds.append(nxt)
        return min(bounds) - step

    def _train_loop(self, step: int, *, evaluate: bool) -> int:
        """One inner loop from `step`, its report, hooks, evaluation and checkpoint; returns the new step."""
        active, per_var = self._phase_at(step)
        self.t.lr_multipliers.assign(per_var)
        n = self._loop_length(step, evaluate=evaluate)
        t0 = time.monotonic()
        result = self.t.steps.train_loop(self._train_iter, n, active)  # the one host copy of this loop
        dt = max(time.monotonic() - t0, 1e-9)
        self.last_result = result
        if result.halted:
            restored = self._nonfinite(result)
            if restored is not None:
                return restored  # phases, eval and checkpoint boundaries from the checkpoint's step
        self._report_loop(result, done=result.step - step, dt=dt)
        self._dispatch("train_loop_end")
        step = result.step
        if self._preempted.is_set():
            self.ctx.request_stop("preempted (SIGTERM)")
        tr = self.cfg.trainer
        at_end = step >= self.t.total_steps or self.ctx.stop_requested
        if evaluate and (step % tr.eval_interval == 0 or at_end):
            self.evaluate(step=step)
        if self.save_checkpoints and (step % tr.checkpoint_interval == 0 or at_end):
            self.save(step)
        return step

    def _report_loop(self, result: LoopResult, *, done: int, dt: float) -> None:
        """The loop's summaries and log line; its values become `ctx.train_logs`."""
        step, total = result.step, self.t.total_steps
        values = self._train_values(result)
        global_batch = self.cfg.task.train_data.batch_size * self.t.batches_per_step
        rates = {"steps_per_sec": done / dt, "examples_per_sec": done * global_batch / dt}
        self.summaries.scalars("train", step, {**values, **rates})
        start_time, start_step = self._start
        eta = (time.monotonic() - start_time) / max(step - start_step, 1) * (total - step)
        shown = {k: v for k, v in values.items()
                 if "/" not in k and k not in ("grad_norm_clipped", "clipped_fraction")}
        self.summaries.log(summ.log_line("train", step=step, total=total, values=shown,
                               examples_per_sec=rates["examples_per_sec"], eta_s=eta), live=True)
        self.ctx.train_logs = values
        self.ctx.loop_result = result
        self._loop_losses = self._loop_losses[:1] + [values["loss"]]

    def _end_run(self, step: int, final_export: export_lib.Export | None) -> None:
        """The `end` hooks, the overfit report, the final export and the test set, in that order."""
        if self.ctx.stop_requested:
            logging.info("stopped at step %d: %s", step, self.ctx.stop_reason)
        self._dispatch("end")
        if self.cfg.trainer.overfit_batches:
            self._report_overfit(step)
        if final_export is not None and not self._preempted.is_set():
            # After every `end` hook (early stopping's restore-best first): the run's model.
            # A preempted run is not finished; it exports when its resumed run ends.
            final_export("end", self.ctx)
        # After the end hooks (restore-best): the test set sees the final model, exactly once.
        if self.cfg.task.test_data.name and not self._preempted.is_set():
            self._test_once(step)
        self.summaries.close()

    def _final_export(self) -> export_lib.Export | None:
        """The end-of-run export to `model_dir/export/` (None: `trainer.export: false`, a run
        that must leave no checkpoint (`save_checkpoints=False`), or a configured `export` hook
        already writing there)."""
        if not self.cfg.trainer.export or not self.save_checkpoints:
            return None
        for h in self.hooks:
            h = h.hook if isinstance(h, EveryNSteps) else h
            if isinstance(h, export_lib.Export) and os.path.normpath(h.subdir) == "export":
                return None
        return export_lib.Export(subdir="export")

    def _test_once(self, step: int) -> None:
        try:
            self.test(step=step)
        except ValueError as e:
            raise TestDataError(f"{e} (training finished at step {step} and is checkpointed in {self.model_dir}; "
                                "fix task.test_data and rerun the same command to evaluate the test set)") from None

    def test(self, *, step: int) -> dict[str, float]:
        """Evaluates `task.test_data` once: test_metrics.json and TensorBoard `test/`, no hooks."""
        ds, nb = self.t.test_dataset()
        values = self.measure(ds, nb)
        self.summaries.scalars("test", step, values)
        self.summaries.log(summ.log_line("test", step=step, total=self.t.total_steps, values=values))
        summ.write_json(os.path.join(self.model_dir, "test_metrics.json"), {"step": step, **values})
        self.test_metrics = values
        return values

    def _report_overfit(self, step: int) -> None:
        """Whether training on `trainer.overfit_batches` batches halved the loss (overfit.json)."""
        n = self.cfg.trainer.overfit_batches
        if len(self._loop_losses) < 2:
            logging.warning("trainer.overfit_batches=%d: only one inner loop ran; nothing to compare", n)
            return
        first, last = self._loop_losses[0], self._loop_losses[-1]
        ok = bool(np.isfinite(last) and last <= 0.5 * first)
        self.overfit = {"step": step, "batches": n, "first_loss": first, "last_loss": last, "overfit": ok}
        summ.write_json(os.path.join(self.model_dir, "overfit.json"), self.overfit)
        self.summaries.scalars("train", step, {"overfit/first_loss": first, "overfit/last_loss": last})
        if ok:
            logging.info("trainer.overfit_batches: the model overfits %d batch(es): loss %.4g -> %.4g", n, first, last)
        else:
            logging.warning("trainer.overfit_batches: the model could not overfit %d batch(es): loss %.4g -> %.4g "
                            "(expected at most half the first loop's loss); check the model, loss and labels",
                            n, first, last)

    def save(self, step: int) -> str:
        """Writes the checkpoint of `step` (refused for non-finite state); returns its path prefix."""
        path = self.checkpointer.save(step)
        logging.info("saved %s", path)
        return path

    def _nonfinite(self, result: LoopResult) -> int | None:
        """Applies `trainer.nonfinite` after a halted loop; returns the restored step, or raises."""
        step, bad_step = result.step, result.nonfinite_step
        what = "loss" if result.nonfinite_loss else "or overflowing gradient"
        policy = self.cfg.trainer.nonfinite
        msg = (f"non-finite {what} at step {bad_step} (trainer.nonfinite={policy}); the update of that step "
               f"was not applied")
        if policy == "restore" and self.checkpointer.latest and self._restores < self.cfg.trainer.max_restores:
            self._restores += 1
            logging.warning("%s; restoring %s (%d/%d)", msg, self.checkpointer.latest, self._restores,
                            self.cfg.trainer.max_restores)
            return self._restore_past(bad_step)
        if self.save_checkpoints:
            try:
                self.save(step)  # the last good state, for inspection and a later resume
            except ckpt_lib.CheckpointError as e:  # refused: it holds non-finite values
                raise NonFiniteError(f"{msg}; {e}") from None
        raise NonFiniteError(msg + f"; last good checkpoint at step {step}")

    def _restore_past(self, bad_step: int) -> int:
        """Restores the latest checkpoint and moves the data past the failed step.

        A restore that replayed the same batches would meet a data-caused NaN again. Every
        batch between the checkpoint's data position and the failed step (the failed loop's, and
        any whose updates the restore discards) is skipped, never replayed: each batch is either
        in the model or named in the log and in TensorBoard (`skipped_batches`, a text summary).
        """
        end = bad_step + 1 + int(self.data_skip.numpy())  # data position after the failed step
        self.checkpointer.restore_or_init()
        step = int(self.t.global_step.numpy())
        first = step + int(self.data_skip.numpy())  # where the restored state would read next
        self.data_skip.assign(end - step)
        bps = self.t.batches_per_step
        text = (f"restored step {step}; skipped global batches {first * bps}-{end * bps - 1} (from the "
                f"checkpoint's data position through failed step {bad_step}); step {step} reads batch {end * bps}")
        logging.warning("nonfinite=restore: %s", text)
        self.summaries.scalars("train", step, {"skipped_batches": (end - first) * bps})
        self.summaries.text("train", "skipped_batches", text, step=step)
        self._train_iter = iter(self.t.train_dataset(start_step=end))
        return step  # the next loop starts un-halted (`NonFinitePolicy.begin_loop`)

    def _train_values(self, result: LoopResult) -> dict[str, float]:
        """What a train loop logs: losses, metrics, gradient statistics, learning rates."""
        out = {**result.losses(), **result.metrics, **result.stats()}
        for gi, v in enumerate(result.group_grad_norms):
            out[f"grad_norm/{self.t.groups.groups[gi].name}"] = v
        # learning_rate/<curve>: the rate the loop's last step used (recorded by the compiled
        # step; a frozen group's is 0), per group (its variable nearest the head) and, with layer
        # decay, per depth (GroupTable.lr_curves).
        curves = self.t.groups.lr_curves()
        empty = self.t.group_lrs(max(result.step - 1, 0)) if None in curves.values() else {}
        for name, i in curves.items():
            out[f"learning_rate/{name}"] = float(result.learning_rates[i]) if i is not None else empty[name]
        return out

    def evaluate(self, *, step: int | None = None) -> dict[str, float]:
        """Evaluates on the whole eval set (or `trainer.eval_steps` batches); writes metrics.json."""
        if self.t.eval_source is None:
            raise ValueError("task.eval_data.name: no eval dataset configured; got ''")
        if step is None:
            step = int(self.t.global_step.numpy())
        if self._eval_ds is None:
            self._eval_ds = self.t.eval_dataset()
        result = self.run_eval(*self._eval_ds)
        values = result.values()
        for report in result.reports:
            reports_lib.write(report, step=step, model_dir=self.model_dir, summaries=self.summaries)
        self.summaries.scalars("eval", step, values)
        self.summaries.log(summ.log_line("eval", step=step, total=self.t.total_steps, values=values))
        self.last_eval = values
        self.eval_history.append({"step": step, **values})
        summ.write_json(os.path.join(self.model_dir, "metrics.json"), {"step": step, **values})
        self.ctx.eval_logs = values
        self._dispatch("eval_end")
        return values

    def run_eval(self, ds: Any, nb: int) -> EvalResult:
        """The eval loop over `nb` batches of `ds` with the scored weights (EMA if any); no files, no hooks."""
        with self.t.steps.scored_weights():
            return self.t.steps.eval_loop(iter(ds), nb)

    def measure(self, ds: Any, nb: int) -> dict[str, float]:
        """Loss and metrics of `nb` batches of `ds` (with the EMA weights if any); no files, no hooks."""
        return self.run_eval(ds, nb).values()


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _config_text(cfg: Any) -> str:
    from framework import config as config_lib

    return config_lib.dump_yaml(cfg)
