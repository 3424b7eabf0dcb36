"""The cross-replica update rule: per-variable learning rates, decoupled weight decay, the
optimizer's update, constraints and EMA, applied whole or not at all (a conditional, or gated writes).

It runs inside one `merge_call` in cross-replica context (docs/design.md#2-the-gradient-pipeline):
Keras's optimizer would sum across replicas a second time in replica context, and a
synchronization point inside a `tf.cond` in replica context fails ("merge_call called while
defining a new graph").

Under whole-step XLA a skipped step is a select in every write, not a conditional: a
conditional around the update cost 4-9% of the MLP step (ablation `cond_update`: the weights
and slots it writes leave the conditional as copies). A select fused into each elementwise
write is close to free and, when the step is not applied, leaves every variable as it was, as
the conditional did. `writes_through_assign` says which optimizers qualify.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from framework.ema import Ema, native
from framework.optim import optimizers as optimizers_lib

# Optimizers whose `update_step` writes state only via `self.assign`, `self.assign_add` and
# `self.assign_sub` (Keras's documented convention): every Keras optimizer class but Muon (it
# assigns variables itself), and the framework's own. Exact types: a subclass may write as it likes.
_KERAS_OPTIMIZERS = frozenset(
    c for c in vars(keras.optimizers).values()
    if isinstance(c, type) and issubclass(c, keras.optimizers.Optimizer) and c is not keras.optimizers.Muon)
ASSIGN_WRITERS: frozenset[type] = _KERAS_OPTIMIZERS | {optimizers_lib.Nadam}


def writes_through_assign(optimizer: keras.optimizers.Optimizer) -> bool:
    """True for optimizers of a type in `ASSIGN_WRITERS`. Others, such as a user's optimizer that
    calls `variable.assign` itself, keep the conditional update."""
    return type(optimizer) in ASSIGN_WRITERS


def put(var: Any, value: Any, gate: tf.Tensor | None) -> None:
    """var := value, or only where `gate` is True (a select instead of a conditional)."""
    var.assign(value if gate is None else tf.where(gate, tf.cast(value, var.dtype), var))


# The gate of the step being traced, per thread and optimizer: the first loop of a run may be
# traced while the XLA loop is traced in a background thread (`loops.CompileAhead`).
_GATES = threading.local()
_PATCH_LOCK = threading.Lock()
_PATCHED: dict[int, int] = {}  # id(optimizer) -> threads tracing under a gate


@contextlib.contextmanager
def gated_writes(optimizer: keras.optimizers.Optimizer, gate: tf.Tensor):
    """While tracing: the optimizer's writes change each variable only where `gate` is True.

    The gate applies to this thread's writes only; another thread's writes through the same
    optimizer meanwhile (another trace, or eager code) stay the class's own.
    """
    gates = _GATES.__dict__.setdefault("by_optimizer", {})
    key = id(optimizer)
    outer = gates.get(key)
    gates[key] = gate
    with _PATCH_LOCK:
        if not _PATCHED.get(key):
            _patch(optimizer)
        _PATCHED[key] = _PATCHED.get(key, 0) + 1
    try:
        yield
    finally:
        if outer is None:
            del gates[key]
        else:
            gates[key] = outer
        with _PATCH_LOCK:
            _PATCHED[key] -= 1
            if not _PATCHED[key]:  # the class's methods again
                del _PATCHED[key]
                del optimizer.assign, optimizer.assign_add, optimizer.assign_sub


def _patch(optimizer: keras.optimizers.Optimizer) -> None:
    """Routes the optimizer's writes through this thread's gate, if it has one."""
    cls = type(optimizer)

    def gate_of() -> tf.Tensor | None:
        return _GATES.__dict__.get("by_optimizer", {}).get(id(optimizer))

    def assign(variable: Any, value: Any) -> None:
        gate = gate_of()
        if gate is None:
            return cls.assign(optimizer, variable, value)
        v = native(variable)
        if isinstance(value, tf.IndexedSlices):
            kept = tf.gather(v, value.indices)
            v.scatter_update(tf.IndexedSlices(tf.where(gate, tf.cast(value.values, v.dtype), kept),
                                              value.indices, value.dense_shape))
        else:
            put(v, value, gate)

    def add(variable: Any, value: Any, sign: float = 1.0) -> None:
        gate = gate_of()
        if gate is None:
            method = cls.assign_add if sign > 0 else cls.assign_sub
            return method(optimizer, variable, value)
        v = native(variable)
        if isinstance(value, tf.IndexedSlices):
            vals = tf.cast(value.values, v.dtype) * sign
            v.scatter_add(tf.IndexedSlices(tf.where(gate, vals, tf.zeros_like(vals)), value.indices,
                                           value.dense_shape))
        else:
            value = tf.cast(value, v.dtype)
            put(v, v + value if sign > 0 else v - value, gate)

    optimizer.assign, optimizer.assign_add = assign, add
    optimizer.assign_sub = lambda variable, value: add(variable, value, -1.0)


class Update:
    """Applies one step's aggregated gradients to the active variables (create in scope).

    Args:
      optimizer: the built optimizer (its `update_step` is called per variable).
      variables: every trainable variable, indexed as `active`.
      weight_decays: decoupled weight decay per variable (0: none).
      lr_multipliers: per-variable learning-rate multipliers (a variable: phases change it).
      schedule: step -> base learning rate.
      lr_factor: the factor every rate is multiplied by (a variable: ReduceLROnPlateau's).
      ema: the EMA copies to advance after an applied step, or None.
      gated: gated writes instead of a conditional (whole-step XLA and an optimizer in
        `ASSIGN_WRITERS`).
    """

    def __init__(self, *, optimizer: keras.optimizers.Optimizer, variables: Sequence[Any],
                 weight_decays: Sequence[float], lr_multipliers: tf.Variable,
                 schedule: Callable[[tf.Tensor], tf.Tensor], lr_factor: tf.Variable, ema: Ema | None,
                 gated: bool) -> None:
        self.optimizer = optimizer
        self.variables = list(variables)
        self.weight_decays = [float(w) for w in weight_decays]
        self.lr_multipliers = lr_multipliers
        self.schedule = schedule
        self.lr_factor = lr_factor
        self.ema = ema
        self.gated = gated
        # The learning rate of every variable at the last step run (what the log reports).
        self.last_lr = tf.Variable(tf.zeros([len(self.variables)]), trainable=False, name="last_lr")

    def learning_rates(self, step: tf.Tensor) -> tf.Tensor:
        """Every variable's learning rate at `step`: schedule x LR factor x its multiplier."""
        return tf.cast(self.schedule(step), tf.float32) * self.lr_factor * self.lr_multipliers

    def apply(self, strategy: tf.distribute.Strategy, grads: Sequence[Any], active: tuple[int, ...],
              step: tf.Tensor, apply: tf.Tensor, live: tf.Tensor) -> None:
        """In cross-replica context: the update of `step` where `apply` is True (the gradients of
        `active`, in that order); records the rates used when `live`."""
        lrs = self.learning_rates(step)
        self.last_lr.assign(tf.where(live, lrs, self.last_lr))
        if self.gated:
            with gated_writes(self.optimizer, apply):
                self._update(strategy, grads, active, lrs, apply)
        else:
            tf.cond(apply, lambda: self._update(strategy, grads, active, lrs, None), lambda: tf.constant(False))

    def _update(self, strategy: tf.distribute.Strategy, grads: Sequence[Any], active: tuple[int, ...],
                lrs: tf.Tensor, gate: tf.Tensor | None) -> tf.Tensor:
        opt = self.optimizer
        for j, i in enumerate(active):
            g = grads[j]
            if g is None:
                continue
            var = self.variables[i]
            wd = self.weight_decays[i]
            constraint = getattr(var, "constraint", None)

            def fn(v, g, lr=lrs[i], wd=wd, constraint=constraint):
                if wd:
                    put(v, v - v * tf.cast(wd * lr, v.dtype), gate)  # decoupled (AdamW-style)
                opt.update_step(g, v, tf.cast(lr, v.dtype))
                if constraint is not None:
                    put(v, constraint(v), gate)

            strategy.extended.update(native(var), fn, args=(g,), group=False)
        iterations = native(opt.iterations)
        put(iterations, iterations + 1, gate)
        if self.ema is not None:
            self.ema.update(strategy, lambda ev, value: put(ev, value, gate))
        return tf.constant(True)
