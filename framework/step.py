"""Compiled code: the per-replica train and eval step, and `Steps`, which assembles a run's loops.

The gradient pipeline is docs/design.md#2-the-gradient-pipeline. Per replica: forward with training=True,
per-example loss x sample and class weights averaged over the GLOBAL batch plus regularization
scaled by 1/replicas; (fp16) loss scaling; gradients; one cross-replica SUM (the true mean
gradient); accumulation over micro-batches; clipping of the aggregated gradient; then one
`merge_call` into cross-replica context where `update.Update` applies every active variable
with its own learning rate and `nonfinite.NonFinitePolicy` records the step.

Several outputs (a dict or list of model outputs, labels keyed by output name) each have their
loss; the trained loss is their weighted sum. A sequence output (a loss with one value per
position) is token-level: padded positions (weight 0) and positions outside the output's Keras
mask are excluded, and the loss is the mean over the real tokens of the global batch (all
replicas and micro-batches). Its gradient is taken of the token sum and divided by the global
token count once that count is all-reduced.

The loops themselves are built in `framework.loops`; the EMA in `framework.ema`; what XLA
covers is `framework.jit`'s plan. No logging, file I/O or NumPy in compiled code: `train_loop`
and `eval_loop` return their results once per call (`results.LoopResult` / `EvalResult`).
"""
from __future__ import annotations

import collections
import contextlib
from typing import Any, Callable, Mapping, Sequence

import keras
import tensorflow as tf

from framework import cheap_ops, loops
from framework import layers as layers_lib
from framework import results as results_lib
from framework.config import ClipConfig
from framework.ema import Ema
from framework.jit import JitPlan
from framework.nonfinite import NonFinitePolicy
from framework.optim import clipping
from framework.outputs import Report
from framework.update import Update, writes_through_assign


def _match_labels(y: tf.Tensor, pred: tf.Tensor) -> tf.Tensor:
    """Gives labels the trailing unit axis of a one-output model ([B] -> [B, 1])."""
    if pred.shape.rank is not None and y.shape.rank is not None and pred.shape[-1] == 1 \
            and y.shape.rank == pred.shape.rank - 1:
        return tf.expand_dims(y, -1)
    return y


def _select(struct: Any, key: str | None, names: Sequence[str]) -> Any:
    """The part of a model output, label or weight structure that belongs to output `key`."""
    if key is None:
        return struct
    if isinstance(struct, Mapping):
        return struct[key]
    if isinstance(struct, (list, tuple)):
        return struct[list(names).index(key)]
    return struct  # one weight shared by every output


def _token_rows(pred: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple:
    """A sequence output's predictions, labels and weights as one row per token, for metrics."""
    def rows(t: tf.Tensor) -> tf.Tensor:
        return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))
    return rows(pred), rows(y), tf.reshape(w, [-1])


def _add_grads(a: Sequence[Any], b: Sequence[Any]) -> list:
    """Elementwise sum of two gradient lists (None: no gradient; sparse parts made dense)."""
    def add(x: Any, y: Any) -> Any:
        if isinstance(x, tf.IndexedSlices) or isinstance(y, tf.IndexedSlices):
            return tf.convert_to_tensor(x) + tf.convert_to_tensor(y)
        return x + y
    return [x if y is None else (y if x is None else add(x, y)) for x, y in zip(a, b)]


def _scale_grad(g: Any, s: tf.Tensor) -> Any:
    """g * s; a sparse gradient (an embedding's) is made dense: under Mirrored the all-gather of
    sparse gradients whose row counts differ per replica (padded batches of different
    lengths) failed with "Shape mismatch in the collective instance" on 2 logical CPUs."""
    if g is None:
        return None
    return tf.convert_to_tensor(g) * tf.cast(s, g.dtype)


def _dense(g: Any) -> Any:
    """A gradient as a dense tensor (IndexedSlices converted; None kept)."""
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


@contextlib.contextmanager
def _replica_seeds(model: keras.Model):
    """While tracing a replica's forward pass under N > 1 replicas: every Keras SeedGenerator
    of `model` folds the replica id into the seed it hands out, so each replica draws its own
    Dropout masks. The generators' state still advances identically on every replica (it is
    mirrored and checkpointed), so the masks stay a deterministic function of it: exact resume.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        yield
        return
    replica = ctx.replica_id_in_sync_group
    gens = {id(sg): sg for layer in layers_lib.walk(model)
            for sg in getattr(layer, "_seed_generators", [])}.values()
    for sg in gens:
        def folded(ordered: bool = True, draw=sg.next) -> tf.Tensor:
            seed = draw(ordered)
            return tf.cast(tf.random.experimental.stateless_fold_in(seed, replica), seed.dtype)
        sg.next = folded
    try:
        yield
    finally:  # the class's method again
        for sg in gens:
            del sg.next


class Steps:
    """The compiled train and eval loops of one run and the replica code they run.

    Args:
      strategy: the run's strategy (every variable here is created in its scope).
      model: the built model.
      loss_fn: the loss, or {output: loss} for several outputs.
      optimizer: the built optimizer.
      variables: the trainable variables (indices of `active`).
      weight_decays, lr_multipliers, schedule, lr_factor: the update rule (`update.Update`).
      global_step: the step counter the loops advance.
      global_batch: examples per global batch (per micro-batch).
      train_metrics, eval_metrics: metrics by logged name.
      reports: the per-class / per-label reports measured by the eval loop.
      clip: gradient clipping.
      group_of, num_groups: the parameter group of every variable, and how many groups.
      accumulation_steps: micro-batches per step.
      class_weights: per-class loss weights (a vector, or per output).
      nonfinite, loss_scaling, initial_loss_scale: `nonfinite.NonFinitePolicy`.
      ema_decay: the EMA's decay (None: no EMA).
      jit: where XLA runs (`jit.plan`).
      loss_weights: the weight of every output's loss (several outputs).
      output_names: the model's output names (several outputs).

    All state that a resume needs and that lives here (counters, loss scale, EMA weights)
    is exposed by `state()` for the checkpoint.
    """

    def __init__(self, *, strategy: tf.distribute.Strategy, model: keras.Model, loss_fn: Callable,
                 optimizer: keras.optimizers.Optimizer, variables: Sequence[Any],
                 weight_decays: Sequence[float], lr_multipliers: tf.Variable,
                 schedule: Callable[[tf.Tensor], tf.Tensor], lr_factor: tf.Variable,
                 global_step: tf.Variable, global_batch: int, train_metrics: Mapping[str, Any],
                 eval_metrics: Mapping[str, Any], clip: ClipConfig, group_of: Sequence[int],
                 num_groups: int, reports: Sequence[Report] = (), accumulation_steps: int = 1,
                 class_weights: Sequence[float] | None = None, nonfinite: str = "terminate",
                 loss_scaling: bool = False, initial_loss_scale: float = 32768.0,
                 ema_decay: float | None = None, jit: JitPlan = JitPlan(),
                 loss_weights: Mapping[str, float] | None = None, output_names: Sequence[str] = ()) -> None:
        self.strategy = strategy
        self.model = model
        self.loss_fn = loss_fn
        # (output key, loss, weight) per output; key None: a single-output model.
        if isinstance(loss_fn, Mapping):
            self.outputs = [(k, f, float((loss_weights or {}).get(k, 1.0))) for k, f in loss_fn.items()]
        else:
            self.outputs = [(None, loss_fn, 1.0)]
        self.output_names = list(output_names)
        self.optimizer = optimizer
        self.variables = list(variables)
        self.global_step = global_step
        self.global_batch = global_batch
        self.clip = clip
        self.group_of = list(group_of)
        self.accumulation_steps = accumulation_steps
        if isinstance(class_weights, Mapping):
            self.class_weights = {k: [float(c) for c in v] for k, v in class_weights.items() if v is not None}
        else:
            self.class_weights = None if class_weights is None else [float(c) for c in class_weights]
        self.jit = jit
        self.reports = tuple(reports)
        self.traces: collections.Counter = collections.Counter()
        self._train_fns: dict[tuple, Any] = {}
        self._eval_fn = None
        keys = [k for k, _, _ in self.outputs if k is not None]
        with strategy.scope():
            self.train_meters = results_lib.TrainMeters(metrics=train_metrics, output_keys=keys,
                                                        num_groups=num_groups)
            self.eval_meters = results_lib.EvalMeters(metrics=eval_metrics, output_keys=keys, reports=self.reports)
            self.policy = NonFinitePolicy(policy=nonfinite, loss_scaling=loss_scaling,
                                          initial_loss_scale=initial_loss_scale)
            self.ema = None if ema_decay is None else Ema(strategy=strategy, variables=self.variables,
                                                          decay=ema_decay)
            # Under whole-step XLA a skipped step is a select in every write, not a conditional.
            self.update = Update(optimizer=optimizer, variables=self.variables, weight_decays=weight_decays,
                                 lr_multipliers=lr_multipliers, schedule=schedule, lr_factor=lr_factor,
                                 ema=self.ema, gated=jit.whole_step and writes_through_assign(optimizer))

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """Variables of this module that a checkpoint must hold for an exact resume."""
        out = dict(self.policy.state())
        if self.ema is not None:
            out["ema"] = self.ema.state()
        return out

    @property
    def jit_compile(self) -> bool:
        """Whether any part of the step runs under XLA (`self.jit.enabled`)."""
        return self.jit.enabled

    @property
    def xla_group_steps(self) -> int:
        """Optimizer steps per XLA call (`self.jit.group_steps`)."""
        return self.jit.group_steps

    @property
    def gated_update(self) -> bool:
        """Whether a skipped step is a select in every write (`update.Update.gated`)."""
        return self.update.gated

    def metric_output(self, name: str) -> str | None:
        """The output a metric reads: the `<output>/` prefix of its name (several outputs)."""
        return name.split("/", 1)[0] if self.outputs[0][0] is not None else None

    def loss_weights(self) -> dict[str, float]:
        """The weight of every output's loss (several outputs; empty for one)."""
        return {k: w for k, _, w in self.outputs if k is not None}

    # ------------------------------------------------------------------ replica code

    def _example_weights(self, y: tf.Tensor, w: tf.Tensor, key: str | None = None) -> tf.Tensor:
        w = tf.cast(w, tf.float32)
        cws = self.class_weights.get(key) if isinstance(self.class_weights, dict) else self.class_weights
        if cws is not None:
            cw = tf.constant(cws, tf.float32)
            # One-hot (or soft) labels, one axis more than the weights: the class is the argmax,
            # as in Keras's fit. Otherwise class ids, per example or per token (shaped as `w`).
            one_hot = (y.shape.rank is not None and w.shape.rank is not None and y.shape.rank == w.shape.rank + 1
                       and y.shape[-1] == len(cws) > 1)
            if one_hot:
                ids = tf.argmax(y, axis=-1, output_type=tf.int32)
            else:
                ids = tf.cast(tf.reshape(y, tf.shape(w)), tf.int32) if w.shape.rank else \
                    tf.cast(tf.reshape(y, [-1]), tf.int32)
            w = w * tf.gather(cw, ids)
        return w

    def _output_terms(self, key: str | None, loss_fn: Callable, pred: Any, y: Any, w: Any):
        """One output's loss terms: (sum of weighted losses, count it is a mean over or None for
        an example-level output, float32 prediction, matched labels, weight for its metrics)."""
        pred_k = _select(pred, key, self.output_names)
        mask = getattr(pred_k, "_keras_mask", None)  # read before the cast, which drops it
        pred32 = tf.cast(pred_k, tf.float32)
        y_k = _select(y, key, self.output_names)
        w_k = tf.cast(_select(w, key, self.output_names), tf.float32)
        y2 = _match_labels(y_k, pred32)
        per = loss_fn(y2, pred32)
        if per.shape.rank is not None and per.shape.rank >= 2:  # one loss per position: tokens
            per = tf.reshape(per, tf.concat([tf.shape(per)[:2], [-1]], 0))
            per = tf.reduce_mean(per, axis=-1)
            w_pos = w_k if w_k.shape.rank == 2 else w_k[:, None] * tf.ones_like(per)
            real = tf.cast(tf.not_equal(w_pos, 0.0), tf.float32)
            if mask is not None:
                m = tf.cast(tf.reshape(mask, tf.shape(per)), tf.float32)
                real, w_pos = real * m, w_pos * m
            weights = self._example_weights(y2, w_pos, key)
            return (tf.reduce_sum(per * weights), tf.reduce_sum(real)) + _token_rows(pred32, y2, w_pos)
        per = tf.reshape(per, [tf.shape(per)[0], -1])
        per = tf.reduce_mean(per, axis=-1) * self._example_weights(y_k, w_k, key)
        return tf.reduce_sum(per), None, pred32, y2, w_k

    def _eval_terms(self, key: str | None, loss_fn: Callable, pred: Any, y: Any, w: Any):
        """One output's eval losses and their weights (per example, or per real token), the
        float32 prediction, matched labels and the weight for its metrics."""
        pred_k = _select(pred, key, self.output_names)
        mask = getattr(pred_k, "_keras_mask", None)
        pred32 = tf.cast(pred_k, tf.float32)
        w_k = tf.cast(_select(w, key, self.output_names), tf.float32)
        y2 = _match_labels(_select(y, key, self.output_names), pred32)
        per = loss_fn(y2, pred32)
        if per.shape.rank is not None and per.shape.rank >= 2:
            per = tf.reduce_mean(tf.reshape(per, tf.concat([tf.shape(per)[:2], [-1]], 0)), axis=-1)
            w_pos = w_k if w_k.shape.rank == 2 else w_k[:, None] * tf.ones_like(per)
            if mask is not None:
                w_pos = w_pos * tf.cast(tf.reshape(mask, tf.shape(per)), tf.float32)
            return (per, w_pos) + _token_rows(pred32, y2, w_pos)
        per = tf.reduce_mean(tf.reshape(per, [tf.shape(per)[0], -1]), axis=-1)
        return per, w_k, pred32, y2, w_k

    def _forward_backward(self, x: Any, y: tf.Tensor, w: tf.Tensor, active: tuple[int, ...]):
        """Per-replica loss terms, predictions and gradients of one micro-batch.

        Returns a dict: `loss` is this replica's share of the global mean of the weighted
        example-level outputs (plus regularization) and `grads` its gradient; a token-level
        output k contributes its token-loss sum `token_sums[k]` (unweighted), real-token count
        `token_counts[k]` and the gradient of its weighted sum `token_grads[k]` (normalised by
        the caller once the global count is known); `output_losses[k]` is an example-level
        output's unweighted share. `preds`, `labels`, `weights` are keyed by output (None: a
        single output).
        """
        variables = [self.variables[i] for i in active]
        # Persistent: a token-level output takes its own gradient call (a trace-time choice; in
        # a compiled step it keeps nothing alive that the one backward pass would not).
        with tf.GradientTape(persistent=True) as tape:
            with _replica_seeds(self.model):
                pred = self.model(x, training=True)
            loss = tf.constant(0.0)
            token_sums, token_counts, preds, labels, weights, output_losses = {}, {}, {}, {}, {}, {}
            for key, loss_fn, lw in self.outputs:
                total, count, preds[key], labels[key], weights[key] = self._output_terms(key, loss_fn, pred, y, w)
                if count is None:
                    output_losses[key] = total / self.global_batch
                    loss += lw * output_losses[key]
                else:
                    token_sums[key], token_counts[key] = total, count
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n([tf.cast(r, tf.float32) for r in self.model.losses]))
            static = len(token_sums) < len(self.outputs) or bool(self.model.losses)
            scale = self.policy.scale()
            lws = {k: lw for k, _, lw in self.outputs}
            scaled = {k: v * (lws[k] * scale) for k, v in token_sums.items()}
            scaled_loss = loss * scale
        grads = tape.gradient(scaled_loss, variables) if static else [None] * len(variables)
        token_grads = {k: tape.gradient(v, variables) for k, v in scaled.items()}
        # Sparse gradients (an Embedding's IndexedSlices) become dense here, once, so that every
        # stage after this one (loss-scale division, accumulation sums, the cross-replica sum,
        # clipping norms, the non-finite check, gated writes) sees plain tensors. Chosen over
        # accumulating IndexedSlices by concatenation: that grows with every micro-batch and
        # replica, repeats indices that clipping must sum anyway, and Keras's Adam densifies its
        # moment updates regardless; the cost is one table-sized add per step and micro-batch.
        grads = [_dense(g) for g in grads]
        token_grads = {k: [_dense(g) for g in gs] for k, gs in token_grads.items()}
        if self.policy.loss_scaling:
            ls = self.policy.loss_scale
            grads = [None if g is None else tf.cast(g, tf.float32) / ls for g in grads]
            token_grads = {k: [_scale_grad(g, 1.0 / ls) for g in gs] for k, gs in token_grads.items()}
        return dict(loss=loss, token_sums=token_sums, token_counts=token_counts, preds=preds, labels=labels,
                    weights=weights, grads=grads, token_grads=token_grads, output_losses=output_losses)

    def _replica_grads(self, batches: Sequence[Any], active: tuple[int, ...]) -> tuple:
        """This replica's share of the loss, its gradients (accumulated over the micro-batches,
        token-level outputs normalised by the global token count) and its per-output losses;
        updates the training metrics."""
        ctx = tf.distribute.get_replica_context()
        n = len(batches)
        total_loss = tf.constant(0.0)
        acc = None
        compute = self._compute_fn(active)
        tokens: dict = {}  # token-level output -> [loss sum, real-token count, gradient of its weighted sum]
        output_losses: dict = {}
        for x, y, w in batches:  # accumulation micro-batches (Python-unrolled; n is small)
            out = compute(x, y, w)
            loss, grads = out["loss"], out["grads"]
            for name, m in self.train_meters.metrics.items():
                k = self.metric_output(name)
                m.update_state(out["labels"][k], out["preds"][k], sample_weight=out["weights"][k])
            total_loss += loss
            acc = grads if acc is None else [a if g is None else (g if a is None else a + g)
                                             for a, g in zip(acc, grads)]
            for k, v in out["output_losses"].items():
                output_losses[k] = output_losses.get(k, 0.0) + v / n
            for k, v in out["token_sums"].items():
                prev = tokens.get(k)
                tokens[k] = [v, out["token_counts"][k], out["token_grads"][k]] if prev is None else \
                    [prev[0] + v, prev[1] + out["token_counts"][k], _add_grads(prev[2], out["token_grads"][k])]
        if n > 1:
            total_loss = total_loss / n
            acc = [None if g is None else g / n for g in acc]
        if tokens:
            # The mean over the real tokens of the global batch: one all-reduce of the counts.
            counts = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tokens[k][1] for k in tokens])
            lws = {k: lw for k, _, lw in self.outputs}
            for k, c in zip(tokens, counts):
                inv = 1.0 / tf.maximum(c, 1.0)
                output_losses[k] = tokens[k][0] * inv
                total_loss += lws[k] * output_losses[k]
                acc = _add_grads(acc, [_scale_grad(g, inv) for g in tokens[k][2]])
        return total_loss, acc, output_losses

    def _replica_train(self, batches: Sequence[Any], active: tuple[int, ...], step: tf.Tensor) -> None:
        """One optimizer step on this replica: local gradients, one cross-replica sum, clipping,
        the meters, then the update in cross-replica context."""
        ctx = tf.distribute.get_replica_context()
        total_loss, acc, output_losses = self._replica_grads(batches, active)
        # One cross-replica sum: after the global-batch averaging above it is the true mean
        # gradient. Everything below is identical on every replica.
        acc = ctx.all_reduce(tf.distribute.ReduceOp.SUM, acc)
        global_loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM, total_loss)
        loss_ok = cheap_ops.is_finite(global_loss)
        groups = [self.group_of[i] for i in active]
        clipped, stats = clipping.clip_gradients(acc, groups=groups, clip=self.clip)
        grads_ok = self.policy.grads_ok(stats)
        meters = self.train_meters
        meters.loss.update_state(global_loss)
        if meters.output_losses:
            keys = list(meters.output_losses)
            values = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [output_losses[k] for k in keys])
            for k, v in zip(keys, values):
                meters.output_losses[k].update_state(v)
        meters.update_stats(stats)
        ctx.merge_call(self._cross_replica_apply, args=(clipped, loss_ok, grads_ok, active, step))

    def _cross_replica_apply(self, strategy: tf.distribute.Strategy, grads: Sequence[Any], loss_ok: Any,
                             grads_ok: Any, active: tuple[int, ...], step: tf.Tensor) -> None:
        local = strategy.experimental_local_results
        loss_ok = local(loss_ok)[0]
        grads_ok = local(grads_ok)[0]
        ok = tf.logical_and(loss_ok, grads_ok)
        # `live` is False only for the remaining steps of an XLA group after a halt (see
        # `loops`): they change no state. Elsewhere a step never starts halted.
        live = self.policy.live()
        self.update.apply(strategy, grads, active, step, apply=tf.logical_and(ok, live), live=live)
        self.policy.record(ok=ok, loss_ok=loss_ok, live=live, step=step)

    def _compute_fn(self, active: tuple[int, ...]) -> Callable:
        def compute(x, y, w):
            return self._forward_backward(x, y, w, active)
        if self.jit.forward_backward:
            return tf.function(compute, jit_compile=True, autograph=False)
        return compute

    @tf.autograph.experimental.do_not_convert  # as the train step (see loops.build_train_loop)
    def _replica_eval(self, batch: Any) -> None:
        x, y, w = batch
        pred = self.model(x, training=False)
        preds, labels, weights = {}, {}, {}
        meters = self.eval_meters
        for key, loss_fn, _ in self.outputs:
            values, vw, preds[key], labels[key], weights[key] = self._eval_terms(key, loss_fn, pred, y, w)
            (meters.output_losses.get(key) or meters.loss).update_state(values, sample_weight=vw)
        for name, m in meters.metrics.items():
            k = self.metric_output(name)
            m.update_state(labels[k], preds[k], sample_weight=weights[k])
        for r in self.reports:
            r.metric.update_state(labels[r.key], preds[r.key], sample_weight=weights[r.key])

    # ------------------------------------------------------------------ loops

    def train_loop(self, iterator: Any, num_steps: Any, active: Sequence[int]) -> results_lib.LoopResult:
        """Runs up to `num_steps` optimizer steps in one compiled call; returns what it did.

        `active` lists the indices of the variables that train: the frozen set is part of the
        trace, so a phase change costs one retrace and a shorter loop none. The loop's results
        are copied to the host once, here.
        """
        key = tuple(active)
        fn = self._train_fns.get(key)
        if fn is None:
            self.settle()  # no trace overlaps a background XLA compile's trace
            fn = loops.build_train_loop(
                strategy=self.strategy, replica_step=lambda batches, step: self._replica_train(batches, key, step),
                global_step=self.global_step, policy=self.policy, meters=self.train_meters, update=self.update,
                plan=self.jit, micro_batches=self.accumulation_steps, traces=self.traces)
            self._train_fns[key] = fn
        out = fn(iterator, tf.convert_to_tensor(num_steps, tf.int64))
        return results_lib.LoopResult.from_host(results_lib.fetch(out))

    def eval_loop(self, iterator: Any, num_batches: Any) -> results_lib.EvalResult:
        """Evaluates `num_batches` global batches in one compiled call; returns the results
        (copied to the host once). Call inside `scored_weights()` to score the kept model."""
        if self._eval_fn is None:
            self.settle()
            self._eval_fn = loops.build_eval_loop(strategy=self.strategy, replica_eval=self._replica_eval,
                                                  meters=self.eval_meters, traces=self.traces)
        out = self._eval_fn(iterator, tf.convert_to_tensor(num_batches, tf.int64))
        return results_lib.EvalResult.from_host(results_lib.fetch(out), loss_weights=self.loss_weights(),
                                                reports=self.reports)

    def settle(self) -> None:
        """Waits for a train loop's background XLA compile (`loops.CompileAhead`), if one runs."""
        for fn in self._train_fns.values():
            if isinstance(fn, loops.CompileAhead):
                fn.wait()

    @property
    def first_loop_without_xla(self) -> bool:
        """Whether a train loop ran its first call without XLA while XLA compiled."""
        return any(isinstance(fn, loops.CompileAhead) and fn.ran_plain for fn in self._train_fns.values())

    def retrace(self) -> None:
        """Drops the compiled loops: the next call traces again (after a change of the replica code)."""
        self.settle()
        self._train_fns.clear()
        self._eval_fn = None

    # ------------------------------------------------------------------ EMA

    def swap_ema(self) -> None:
        """Exchanges model weights and EMA weights (call twice to swap back; no-op without EMA)."""
        if self.ema is not None:
            self.ema.swap()

    def reset_ema(self) -> None:
        """Restarts the EMA from the model's current weights (no-op without EMA).

        The EMA copies are made when the Steps are built, from the freshly initialized model;
        weights loaded afterwards (`task.init_checkpoint`, early stopping's best weights) must
        become the average's starting point, or it keeps averaging towards random weights.
        """
        if self.ema is not None:
            self.ema.reset()

    def scored_weights(self) -> contextlib.AbstractContextManager[None]:
        """Within the block the model holds the weights that evaluation scores.

        The rule: the model that was scored is the model that is kept and exported. With
        `trainer.ema_decay` set those are the EMA weights (swapped in on entry, the training
        weights swapped back on exit, also on an exception); without EMA the block changes
        nothing. Evaluation, early stopping's best weights, `best/` checkpoints and the export
        all read the model inside this block. Nested blocks swap only once.
        """
        return contextlib.nullcontext() if self.ema is None else self.ema.scored()
