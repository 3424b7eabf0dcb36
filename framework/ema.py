"""EMA weights: the exponential moving average of the trained variables, its update, swap and reset.

With `trainer.ema_decay` set, every trained variable has an average copy (colocated with it,
checkpointed through `state()`); the compiled update advances it after each applied step, and
evaluation, early stopping and the export read the model inside `scored()`, where the copies
are swapped in (docs/design.md#5-model-selection-and-reporting).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import keras
import tensorflow as tf


def native(v: Any) -> Any:
    """The TensorFlow variable behind a Keras variable (itself otherwise)."""
    return v.value if isinstance(v, keras.Variable) else v


class Ema:
    """The average copies of `variables` (create inside the strategy's scope).

    Args:
      strategy: the run's strategy (the copies are colocated with their variables).
      variables: the trained variables, in the order of the update.
      decay: `trainer.ema_decay`: average := decay * average + (1 - decay) * weight.
    """

    def __init__(self, *, strategy: tf.distribute.Strategy, variables: Sequence[Any], decay: float) -> None:
        self.decay = float(decay)
        self.variables = list(variables)
        self.weights: list[tf.Variable] = []
        for v in self.variables:
            tv = native(v)
            with strategy.extended.colocate_vars_with(tv):
                self.weights.append(tf.Variable(tv.read_value(), trainable=False,
                                                name=f"ema/{v.path.replace('/', '_')}"))
        self._scored_depth = 0  # nesting of `scored()` blocks

    def state(self) -> list[tf.Variable]:
        """The copies, for the checkpoint (key `ema` of `Steps.state()`)."""
        return list(self.weights)

    def update(self, strategy: tf.distribute.Strategy, put: Any) -> None:
        """In cross-replica context while tracing: advances every copy; `put(var, value)` writes
        (a gated write under whole-step XLA, see `framework.update`)."""
        d = tf.constant(self.decay, tf.float32)
        for e, v in zip(self.weights, self.variables):
            strategy.extended.update(e, lambda ev, sv: put(ev, d * ev + (1.0 - d) * sv), args=(native(v),),
                                     group=False)

    def swap(self) -> None:
        """Exchanges model weights and EMA weights (call twice to swap back)."""
        for e, v in zip(self.weights, self.variables):
            tv = native(v)
            tmp = tv.read_value()
            tv.assign(e.read_value())
            e.assign(tmp)

    def reset(self) -> None:
        """Restarts the average from the model's current weights."""
        for e, v in zip(self.weights, self.variables):
            e.assign(native(v).read_value())

    @contextlib.contextmanager
    def scored(self) -> Iterator[None]:
        """The EMA weights in the model within the block (swapped back on exit, also on an
        exception); nested blocks swap only once."""
        self._scored_depth += 1
        if self._scored_depth == 1:
            self.swap()
        try:
            yield
        finally:
            self._scored_depth -= 1
            if self._scored_depth == 0:
                self.swap()
