"""Compiled code only: the per-replica train/eval step and the inner loop of K steps.

The gradient pipeline is docs/design.md#2-the-gradient-pipeline. Per replica: forward with training=True,
per-example loss x sample and class weights averaged over the GLOBAL batch plus regularization
scaled by 1/replicas; (fp16) loss scaling; gradients; one cross-replica SUM (the true mean
gradient); accumulation over micro-batches; clipping of the aggregated gradient; then one
`merge_call` into cross-replica context where every active variable is updated with its own
learning rate. The update runs there because Keras's optimizer would sum across replicas a
second time in replica context, and because a synchronization point inside a `tf.cond` in
replica context fails ("merge_call called while defining a new graph").

Several outputs (a dict or list of model outputs, labels keyed by output name) each have their
loss; the trained loss is their weighted sum. A sequence output (a loss with one value per
position) is token-level: padded positions (weight 0) and positions outside the output's Keras
mask are excluded, and the loss is the mean over the real tokens of the global batch (all
replicas and micro-batches). Its gradient is taken of the token sum and divided by the global
token count once that count is all-reduced.

No logging, file I/O or NumPy here: the controller reads results once per inner loop.
"""
from __future__ import annotations

import collections
import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import keras
import tensorflow as tf

from framework import layers as layers_lib
from framework.config import ClipConfig
from framework.optim import clipping

_GROWTH_INTERVAL = 2000  # finite fp16 steps before the loss scale doubles (Keras's default)
# A step whose applied gradient has a norm at or above sqrt(float32 max) is not applied: its
# squares overflow in every optimizer that keeps second moments (Adam's `v` would become inf).
_MAX_APPLIED_NORM = 1.8e19


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


def _all_finite(tensors: Sequence[tf.Tensor | None]) -> tf.Tensor:
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def _native(v: Any) -> Any:
    """The TensorFlow variable behind a Keras variable (itself otherwise)."""
    return v.value if isinstance(v, keras.Variable) else v


def _put(var: Any, value: Any, gate: tf.Tensor | None) -> None:
    """var := value, or only where `gate` is True (a select instead of a conditional)."""
    var.assign(value if gate is None else tf.where(gate, tf.cast(value, var.dtype), var))


def _writes_through_assign(optimizer: keras.optimizers.Optimizer) -> bool:
    """True for optimizers whose `update_step` writes state only via `self.assign`,
    `self.assign_add` and `self.assign_sub` (Keras's documented convention, kept by all of
    Keras's optimizers but Muon and by the framework's own). Others, such as a user's
    optimizer that calls `variable.assign` itself, keep the conditional update."""
    module = type(optimizer).__module__
    return (module.startswith("keras.") and ".muon" not in module) or module == "framework.optim.optimizers"


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


@contextlib.contextmanager
def _gated_writes(optimizer: keras.optimizers.Optimizer, gate: tf.Tensor):
    """While tracing: the optimizer's writes change each variable only where `gate` is True."""
    def assign(variable: Any, value: Any) -> None:
        v = _native(variable)
        if isinstance(value, tf.IndexedSlices):
            kept = tf.gather(v, value.indices)
            v.scatter_update(tf.IndexedSlices(tf.where(gate, tf.cast(value.values, v.dtype), kept),
                                              value.indices, value.dense_shape))
        else:
            _put(v, value, gate)

    def add(variable: Any, value: Any, sign: float = 1.0) -> None:
        v = _native(variable)
        if isinstance(value, tf.IndexedSlices):
            vals = tf.cast(value.values, v.dtype) * sign
            v.scatter_add(tf.IndexedSlices(tf.where(gate, vals, tf.zeros_like(vals)), value.indices,
                                           value.dense_shape))
        else:
            value = tf.cast(value, v.dtype)
            _put(v, v + value if sign > 0 else v - value, gate)

    optimizer.assign, optimizer.assign_add = assign, add
    optimizer.assign_sub = lambda variable, value: add(variable, value, -1.0)
    try:
        yield
    finally:  # the class's methods again
        del optimizer.assign, optimizer.assign_add, optimizer.assign_sub


class Steps:
    """Builds and caches the compiled train and eval loops of one run.

    All state that a resume needs and that lives here (counters, loss scale, EMA weights)
    is exposed by `state()` for the checkpoint.
    """

    def __init__(self, *, strategy: tf.distribute.Strategy, model: keras.Model, loss_fn: Callable,
                 optimizer: keras.optimizers.Optimizer, variables: Sequence[Any],
                 weight_decays: Sequence[float], lr_multipliers: tf.Variable,
                 schedule: Callable[[tf.Tensor], tf.Tensor], lr_factor: tf.Variable,
                 global_step: tf.Variable, global_batch: int, train_metrics: Mapping[str, Any],
                 eval_metrics: Mapping[str, Any], clip: ClipConfig, group_of: Sequence[int],
                 num_groups: int, accumulation_steps: int = 1,
                 class_weights: Sequence[float] | None = None, nonfinite: str = "terminate",
                 loss_scaling: bool = False, initial_loss_scale: float = 32768.0,
                 ema_decay: float | None = None, jit_compile: bool = False,
                 inject_nonfinite_at: int | None = None, xla_group_steps: int = 1,
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
        self.weight_decays = [float(w) for w in weight_decays]
        self.lr_multipliers = lr_multipliers
        self.schedule = schedule
        self.lr_factor = lr_factor
        self.global_step = global_step
        self.global_batch = global_batch
        self.train_metrics = dict(train_metrics)
        self.eval_metrics = dict(eval_metrics)
        self.clip = clip
        self.group_of = list(group_of)
        self.num_groups = num_groups
        self.accumulation_steps = accumulation_steps
        if isinstance(class_weights, Mapping):
            self.class_weights = {k: [float(c) for c in v] for k, v in class_weights.items() if v is not None}
        else:
            self.class_weights = None if class_weights is None else [float(c) for c in class_weights]
        self.nonfinite = nonfinite
        self.loss_scaling = loss_scaling
        self.ema_decay = ema_decay
        self.jit_compile = jit_compile
        # With XLA over the whole step on one device: steps per XLA call (amortizes the launch;
        # only for models whose XLA while loop is fast, see trainer.build).
        self.xla_group_steps = max(1, int(xla_group_steps)) if self._whole_step_xla() else 1
        # Under whole-step XLA a skipped step is a select in every write, not a conditional.
        self.gated_update = self._whole_step_xla() and _writes_through_assign(optimizer)
        # Test hook (never set from config): make the loss of this global step non-finite.
        self.inject_nonfinite_at = inject_nonfinite_at
        self.traces: collections.Counter = collections.Counter()
        self._train_fns: dict[tuple, Any] = {}
        self._eval_fn = None
        self._scored_depth = 0  # nesting of `scored_weights()` blocks
        with strategy.scope():
            self.loss_mean = keras.metrics.Mean(name="loss")
            self.eval_loss_mean = keras.metrics.Mean(name="loss")
            # Per-output (unweighted) losses of a multi-output model: "<output>/loss".
            multi = self.outputs[0][0] is not None
            self.output_loss_means = {k: keras.metrics.Mean(name=f"{k}/loss") for k, _, _ in self.outputs} \
                if multi else {}
            self.eval_output_loss_means = {k: keras.metrics.Mean(name=f"{k}/loss") for k, _, _ in self.outputs} \
                if multi else {}
            self.stat_means = {k: keras.metrics.Mean(name=k) for k in
                               ["grad_norm", "grad_norm_clipped", "clipped_fraction"] +
                               [f"grad_norm/{i}" for i in range(num_groups)]}
            self.halt = tf.Variable(False, trainable=False, name="halt")
            self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_steps")
            self.nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="nonfinite_step")
            self.nonfinite_loss = tf.Variable(False, trainable=False, name="nonfinite_loss")
            self.loss_scale = tf.Variable(initial_loss_scale if loss_scaling else 1.0, dtype=tf.float32,
                                          trainable=False, name="loss_scale")
            self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
            # The learning rate of every variable at the last step run (what the log reports).
            self.last_lr = tf.Variable(tf.zeros([len(self.variables)]), trainable=False, name="last_lr")
            self.ema = None
            if ema_decay is not None:
                self.ema = []
                for v in self.variables:
                    tv = _native(v)
                    with strategy.extended.colocate_vars_with(tv):
                        self.ema.append(tf.Variable(tv.read_value(), trainable=False,
                                                    name=f"ema/{v.path.replace('/', '_')}"))

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """Variables of this module that a checkpoint must hold for an exact resume."""
        out = {"nonfinite_steps": self.nonfinite_steps, "loss_scale": self.loss_scale,
               "good_steps": self.good_steps}
        if self.ema is not None:
            out["ema"] = list(self.ema)
        return out

    def reset_train_metrics(self) -> None:
        """Resets the loss, gradient statistics and training metrics (before each inner loop)."""
        for m in [self.loss_mean, *self.stat_means.values(), *self.train_metrics.values(),
                  *self.output_loss_means.values()]:
            m.reset_state()

    def reset_eval_metrics(self) -> None:
        """Resets the eval loss and metrics (before each evaluation)."""
        for m in [self.eval_loss_mean, *self.eval_metrics.values(), *self.eval_output_loss_means.values()]:
            m.reset_state()

    def loss_values(self, *, train: bool) -> dict[str, float]:
        """`loss` (the weighted total) and, for several outputs, `<output>/loss` (unweighted)."""
        means = self.output_loss_means if train else self.eval_output_loss_means
        if not means:
            return {"loss": float((self.loss_mean if train else self.eval_loss_mean).result())}
        per = {f"{k}/loss": float(means[k].result()) for k, _, _ in self.outputs}
        total = float(self.loss_mean.result()) if train else \
            sum(w * per[f"{k}/loss"] for k, _, w in self.outputs)
        return {"loss": total, **per}

    def metric_output(self, name: str) -> str | None:
        """The output a metric reads: the `<output>/` prefix of its name (several outputs)."""
        return name.split("/", 1)[0] if self.outputs[0][0] is not None else None

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
            scale = self.loss_scale if self.loss_scaling else 1.0
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
        if self.loss_scaling:
            grads = [None if g is None else tf.cast(g, tf.float32) / self.loss_scale for g in grads]
            token_grads = {k: [_scale_grad(g, 1.0 / self.loss_scale) for g in gs] for k, gs in token_grads.items()}
        return dict(loss=loss, token_sums=token_sums, token_counts=token_counts, preds=preds, labels=labels,
                    weights=weights, grads=grads, token_grads=token_grads, output_losses=output_losses)

    def _replica_train(self, batches: Sequence[Any], active: tuple[int, ...], step: tf.Tensor) -> None:
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
            for name, m in self.train_metrics.items():
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
        if self.inject_nonfinite_at is not None:
            bad = tf.equal(step, self.inject_nonfinite_at)
            total_loss = tf.where(bad, tf.constant(float("nan")), total_loss)
            acc = [None if g is None else tf.where(bad, tf.fill(tf.shape(g), float("nan")), g) for g in acc]
        # One cross-replica sum: after the global-batch averaging above it is the true mean
        # gradient. Everything below is identical on every replica.
        acc = ctx.all_reduce(tf.distribute.ReduceOp.SUM, acc)
        global_loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM, total_loss)
        loss_ok = tf.math.is_finite(global_loss)
        groups = [self.group_of[i] for i in active]
        clipped, stats = clipping.clip_gradients(acc, groups=groups, clip=self.clip)
        # A finite global norm (of the unclipped gradients) implies finite gradients: the full
        # elementwise check, another pass over every gradient, runs only when it is not (a norm
        # beyond float32 of finite gradients is inf too). The decision is also made on what is
        # applied: the clipped gradients must be finite with a norm whose square is a float32.
        grads_ok = tf.cond(tf.math.is_finite(stats["grad_norm"]), lambda: tf.constant(True),
                           lambda: _all_finite(acc))
        grads_ok = tf.logical_and(grads_ok, stats["grad_norm_clipped"] < _MAX_APPLIED_NORM)
        self.loss_mean.update_state(global_loss)
        if self.output_loss_means:
            keys = list(self.output_loss_means)
            values = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [output_losses[k] for k in keys])
            for k, v in zip(keys, values):
                self.output_loss_means[k].update_state(v)
        for k, v in stats.items():
            if k == "clipped":
                self.stat_means["clipped_fraction"].update_state(v)
            elif k in self.stat_means:
                self.stat_means[k].update_state(v)
        ctx.merge_call(self._cross_replica_apply, args=(clipped, loss_ok, grads_ok, active, step))

    def _cross_replica_apply(self, strategy: tf.distribute.Strategy, grads: Sequence[Any], loss_ok: Any,
                             grads_ok: Any, active: tuple[int, ...], step: tf.Tensor) -> None:
        local = strategy.experimental_local_results
        loss_ok = local(loss_ok)[0]
        grads_ok = local(grads_ok)[0]
        ok = tf.logical_and(loss_ok, grads_ok)
        base_lr = tf.cast(self.schedule(step), tf.float32) * self.lr_factor
        lrs = base_lr * self.lr_multipliers
        opt = self.optimizer

        def update(gate: tf.Tensor | None = None) -> tf.Tensor:
            for j, i in enumerate(active):
                g = grads[j]
                if g is None:
                    continue
                var = self.variables[i]
                tv = _native(var)
                lr = lrs[i]
                wd = self.weight_decays[i]
                constraint = getattr(var, "constraint", None)

                def fn(v, g, lr=lr, wd=wd, constraint=constraint):
                    if wd:
                        _put(v, v - v * tf.cast(wd * lr, v.dtype), gate)  # decoupled (AdamW-style)
                    opt.update_step(g, v, tf.cast(lr, v.dtype))
                    if constraint is not None:
                        _put(v, constraint(v), gate)

                strategy.extended.update(tv, fn, args=(g,), group=False)
            iterations = _native(opt.iterations)
            _put(iterations, iterations + 1, gate)
            if self.ema is not None:
                d = tf.constant(self.ema_decay, tf.float32)
                for e, i in zip(self.ema, range(len(self.variables))):
                    src = _native(self.variables[i])
                    strategy.extended.update(e, lambda ev, sv: _put(ev, d * ev + (1.0 - d) * sv, gate),
                                             args=(src,), group=False)
            return tf.constant(True)

        # `live` is False only for the remaining steps of an XLA group after a halt (see
        # `_make_train_loop`): they change no state. Elsewhere a step never starts halted.
        live = tf.logical_not(self.halt)
        apply = tf.logical_and(ok, live)
        self.last_lr.assign(tf.where(live, lrs, self.last_lr))
        if self.gated_update:
            # Under whole-step XLA a conditional around the update cost 4-9% of the MLP step
            # (ablation `cond_update`: the weights and slots it writes leave the conditional as
            # copies). A select fused into each elementwise write is close to free and, when
            # `apply` is False, leaves every variable as it was, as the conditional did.
            # `_writes_through_assign` says which optimizers qualify.
            with _gated_writes(opt, apply):
                update(apply)
        else:
            tf.cond(apply, update, lambda: tf.constant(False))
        if self.loss_scaling:
            # Dynamic loss scaling: halve on overflow, double after a run of finite steps.
            grow = tf.logical_and(ok, self.good_steps + 1 >= _GROWTH_INTERVAL)
            scale = tf.where(ok, tf.where(grow, self.loss_scale * 2.0, self.loss_scale),
                             tf.maximum(self.loss_scale / 2.0, 1.0))
            good = tf.where(ok, tf.where(grow, tf.constant(0, tf.int64), self.good_steps + 1),
                            tf.constant(0, tf.int64))
            self.loss_scale.assign(tf.where(live, scale, self.loss_scale))
            self.good_steps.assign(tf.where(live, good, self.good_steps))
            # A gradient overflow under fp16 is routine: skipped and counted, never a policy hit.
            policy_hit = tf.logical_not(loss_ok)
        else:
            policy_hit = tf.logical_not(ok)
        self.nonfinite_steps.assign_add(tf.cast(tf.logical_and(tf.logical_not(ok), live), tf.int64))
        if self.nonfinite != "skip":
            hit = tf.logical_and(policy_hit, live)
            self.halt.assign(tf.logical_or(self.halt, hit))
            self.nonfinite_step.assign(tf.where(hit, step, self.nonfinite_step))
            self.nonfinite_loss.assign(tf.where(live, tf.logical_not(loss_ok), self.nonfinite_loss))

    def _whole_step_xla(self) -> bool:
        """XLA over the whole step (forward, backward, statistics, update): one device, no
        Mirrored / MultiWorkerMirrored (docs/design.md#t5) or TPU strategy (it compiles by itself); there
        only the forward and backward pass are given to XLA, as before."""
        other = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy)
        return bool(self.jit_compile) and self.strategy.num_replicas_in_sync == 1 and \
            not isinstance(self.strategy, other)

    def _compute_fn(self, active: tuple[int, ...]) -> Callable:
        def compute(x, y, w):
            return self._forward_backward(x, y, w, active)
        if self.jit_compile and not self._whole_step_xla():
            return tf.function(compute, jit_compile=True, autograph=False)
        return compute

    # ------------------------------------------------------------------ loops

    def train_loop(self, iterator: Any, num_steps: tf.Tensor, active: Sequence[int]) -> Any:
        """Runs up to `num_steps` optimizer steps in one compiled call; returns steps done.

        `active` lists the indices of the variables that train: the frozen set is part of the
        trace, so a phase change costs one retrace and a shorter loop none.
        """
        key = tuple(active)
        fn = self._train_fns.get(key)
        if fn is None:
            fn = self._make_train_loop(key)
            self._train_fns[key] = fn
        return fn(iterator, tf.convert_to_tensor(num_steps, tf.int64))

    def _make_train_loop(self, active: tuple[int, ...]) -> Callable:
        strategy = self.strategy
        n_micro = self.accumulation_steps

        # The step body is not converted by AutoGraph (as in Keras's own train step): it needs
        # no Python control flow on tensors, and converting the model, optimizer and metrics
        # code recursively made the first trace ~5x slower (measured: 2.1 s vs 0.4 s, MLP).
        @tf.autograph.experimental.do_not_convert
        def one_step(batches):
            step = self.global_step.read_value()
            strategy.run(self._replica_train, args=(batches, active, step))
            self.global_step.assign_add(tf.where(self.halt, tf.constant(0, tf.int64), tf.constant(1, tf.int64)))

        group = self.xla_group_steps
        if not self._whole_step_xla() or group == 1:
            # Under XLA with one step per call there is no XLA loop (an XLA loop around a conv
            # layer ran ~50x slower on CPU: docs/design.md#t5): each step is one XLA call.
            run_step = tf.function(one_step, jit_compile=True, autograph=False) if self._whole_step_xla() \
                else one_step

            @tf.function
            def loop(iterator, num_steps):
                self.traces["train"] += 1
                self.halt.assign(False)
                i = tf.constant(0, tf.int64)
                while tf.logical_and(i < num_steps, tf.logical_not(self.halt)):
                    run_step([next(iterator) for _ in range(n_micro)])
                    i += 1
                return i

            return loop

        # XLA over the whole step on one device. Up to `group` steps share one XLA call (one
        # launch, one executable for any count): an XLA while loop over `count` stacked batches.
        # Only the batches of the steps to run are fetched (the data position stays exact);
        # unused slots repeat the last batch and are never read. A step after a halt inside the
        # group changes no state (`live` in _cross_replica_apply); only the metrics of this
        # abandoned loop may still move.
        @tf.function(jit_compile=True, autograph=False)
        def xla_steps(stacked, count):
            def body(j):
                one_step(tf.nest.map_structure(lambda t: t[j], stacked))
                return (j + 1,)
            tf.while_loop(lambda j: j < count, body, (tf.constant(0),))

        @tf.function
        def loop(iterator, num_steps):
            self.traces["train"] += 1
            self.halt.assign(False)
            i = tf.constant(0, tf.int64)
            while tf.logical_and(i < num_steps, tf.logical_not(self.halt)):
                count = tf.minimum(num_steps - i, group)
                fetched = [[next(iterator) for _ in range(n_micro)]]
                for k in range(1, group):
                    prev = fetched[-1]
                    fetched.append(tf.cond(k < count, lambda: [next(iterator) for _ in range(n_micro)],
                                           lambda prev=prev: prev))
                xla_steps(tf.nest.map_structure(lambda *ts: tf.stack(ts), *fetched), tf.cast(count, tf.int32))
                i += count
            return i

        return loop

    def eval_loop(self, iterator: Any, num_batches: tf.Tensor) -> Any:
        """Evaluates `num_batches` global batches in one compiled call."""
        if self._eval_fn is None:
            strategy = self.strategy

            @tf.autograph.experimental.do_not_convert  # as the train step (see _make_train_loop)
            def replica_eval(batch):
                x, y, w = batch
                pred = self.model(x, training=False)
                preds, labels, weights = {}, {}, {}
                for key, loss_fn, _ in self.outputs:
                    values, vw, preds[key], labels[key], weights[key] = self._eval_terms(key, loss_fn, pred, y, w)
                    (self.eval_output_loss_means.get(key) or self.eval_loss_mean).update_state(values, sample_weight=vw)
                for name, m in self.eval_metrics.items():
                    k = self.metric_output(name)
                    m.update_state(labels[k], preds[k], sample_weight=weights[k])

            @tf.function
            def loop(iterator, num_batches):
                self.traces["eval"] += 1
                for _ in tf.range(num_batches):
                    strategy.run(replica_eval, args=(next(iterator),))
                return num_batches

            self._eval_fn = loop
        return self._eval_fn(iterator, tf.convert_to_tensor(num_batches, tf.int64))

    # ------------------------------------------------------------------ EMA swap

    def swap_ema(self) -> None:
        """Exchanges model weights and EMA weights (call twice to swap back)."""
        if self.ema is None:
            return
        for e, v in zip(self.ema, self.variables):
            tv = _native(v)
            tmp = tv.read_value()
            tv.assign(e.read_value())
            e.assign(tmp)

    def reset_ema(self) -> None:
        """Restarts the EMA from the model's current weights (no-op without EMA).

        The EMA copies are made when the Steps are built, from the freshly initialized model;
        weights loaded afterwards (`task.init_checkpoint`, early stopping's best weights) must
        become the average's starting point, or it keeps averaging towards random weights.
        """
        if self.ema is None:
            return
        for e, v in zip(self.ema, self.variables):
            e.assign(_native(v).read_value())

    @contextlib.contextmanager
    def scored_weights(self) -> Iterator[None]:
        """Within the block the model holds the weights that evaluation scores.

        The rule: the model that was scored is the model that is kept and exported. With
        `trainer.ema_decay` set those are the EMA weights (swapped in on entry, the training
        weights swapped back on exit, also on an exception); without EMA the block changes
        nothing. Evaluation, early stopping's best weights, `best/` checkpoints and the export
        all read the model inside this block. Nested blocks swap only once.
        """
        self._scored_depth += 1
        if self._scored_depth == 1:
            self.swap_ema()
        try:
            yield
        finally:
            self._scored_depth -= 1
            if self._scored_depth == 0:
                self.swap_ema()
