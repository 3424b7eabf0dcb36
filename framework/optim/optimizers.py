"""Keras 3 optimizers by name, built for the framework's per-variable update path.

A factory is `(learning_rate, **kwargs) -> keras.optimizers.Optimizer`. The framework calls
`optimizer.update_step(grad, var, lr)` itself, per variable, with that variable's own learning
rate (schedule x group multiplier), and applies decoupled weight decay per group. So factories
never pass `weight_decay` (it lives in Keras's `apply`, which the framework bypasses; it would
also decay frozen groups) nor `clipnorm` / `clipvalue` / `global_clipnorm` (Keras clips per
replica before the cross-replica sum: docs/design.md#t1). The `learning_rate` given here only
seeds the optimizer's own variable; the rate that counts is the one passed to `update_step`.
"""
from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from framework import registry

Optimizer = keras.optimizers.Optimizer

# Keras's AdamW default; the framework applies it (decoupled) unless the config says otherwise.
_DEFAULT_WEIGHT_DECAY = {"adamw": 0.004}


def default_weight_decay(name: str, kwargs: Mapping[str, Any]) -> float | None:
    """The weight decay an optimizer asks for by itself.

    Args:
      name: the registered optimizer name (`optimizer.name`).
      kwargs: its keyword arguments from the config.

    Returns:
      `kwargs["weight_decay"]` if given, else adamw's default 0.004, else None.
    """
    if kwargs.get("weight_decay") is not None:
        return float(kwargs["weight_decay"])
    return _DEFAULT_WEIGHT_DECAY.get(name)


@registry.register_optimizer("sgd")
def sgd(learning_rate: float, momentum: float = 0.0, nesterov: bool = False) -> Optimizer:
    """Plain SGD (`momentum=0`): var -= lr * grad; with momentum, heavy-ball or Nesterov."""
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov)


@registry.register_optimizer("momentum")
def momentum(learning_rate: float, momentum: float = 0.9, nesterov: bool = False) -> Optimizer:
    """SGD with momentum 0.9 by default."""
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov)


@registry.register_optimizer("adam")
def adam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
         amsgrad: bool = False) -> Optimizer:
    """Adam (Kingma & Ba); bias correction counts `optimizer.iterations`."""
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                                 amsgrad=amsgrad)


@registry.register_optimizer("adamw")
def adamw(learning_rate: float, weight_decay: float = 0.004, beta_1: float = 0.9, beta_2: float = 0.999,
          epsilon: float = 1e-7, amsgrad: bool = False) -> Optimizer:
    """AdamW: Adam's update; the decoupled `weight_decay` is applied by the framework.

    Keras's AdamW differs from Adam only by the decay in `apply`, which the framework bypasses,
    so the returned optimizer is a plain Adam; see `default_weight_decay`.
    """
    del weight_decay
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                                 amsgrad=amsgrad)


# prod_{i=1..t} (1 - 0.5 * 0.96**i) for t = 0.._NADAM_TABLE; constant (in float32) beyond.
_NADAM_TABLE = 1000
_NADAM_PRODUCTS = np.cumprod(np.concatenate([[1.0], 1.0 - 0.5 * 0.96 ** np.arange(1, _NADAM_TABLE + 1)]))


class Nadam(keras.optimizers.Nadam):
    """Keras Nadam whose momentum-schedule product is a function of `iterations`.

    Keras keeps the product of the momentum schedule in a variable `_u_product` that it
    advances in `_backend_update_step`, once per `apply`. The framework calls `update_step`
    directly, so that variable would stay at 1.0 and the first update divides by zero
    (-inf weights). Here `update_step` computes the product from `iterations` instead; the
    rest of the update is Keras's.
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Keras's Nadam update, with the momentum-schedule product computed from `iterations`."""
        var_dtype = variable.dtype
        lr = ops.cast(learning_rate, var_dtype)
        gradient = ops.cast(gradient, var_dtype)
        local_step = ops.cast(self.iterations + 1, var_dtype)
        next_step = ops.cast(self.iterations + 2, var_dtype)
        decay = ops.cast(0.96, var_dtype)
        beta_1 = ops.cast(self.beta_1, var_dtype)
        beta_2 = ops.cast(self.beta_2, var_dtype)
        u_t = beta_1 * (1.0 - 0.5 * ops.power(decay, local_step))
        u_t_1 = beta_1 * (1.0 - 0.5 * ops.power(decay, next_step))
        index = ops.minimum(ops.cast(self.iterations + 1, "int32"), _NADAM_TABLE)
        table = ops.cast(ops.convert_to_tensor(_NADAM_PRODUCTS, dtype="float32"), var_dtype)
        u_product_t = ops.power(beta_1, local_step) * ops.take(table, index)
        u_product_t_1 = u_product_t * u_t_1
        beta_2_power = ops.power(beta_2, local_step)

        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - beta_2))
        m_hat = ops.add(ops.divide(ops.multiply(u_t_1, m), 1 - u_product_t_1),
                        ops.divide(ops.multiply(1 - u_t, gradient), 1 - u_product_t))
        v_hat = ops.divide(v, 1 - beta_2_power)
        self.assign_sub(variable, ops.divide(ops.multiply(m_hat, lr), ops.add(ops.sqrt(v_hat), self.epsilon)))


@registry.register_optimizer("nadam")
def nadam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Optimizer:
    """Adam with Nesterov momentum (Keras's, fixed for direct `update_step` calls; see `Nadam`)."""
    return Nadam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


@registry.register_optimizer("adamax")
def adamax(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Optimizer:
    """Adam with the infinity norm."""
    return keras.optimizers.Adamax(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


@registry.register_optimizer("rmsprop")
def rmsprop(learning_rate: float, rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7,
            centered: bool = False) -> Optimizer:
    """RMSprop (optionally centered, with momentum)."""
    return keras.optimizers.RMSprop(learning_rate=learning_rate, rho=rho, momentum=momentum, epsilon=epsilon,
                                    centered=centered)


@registry.register_optimizer("adagrad")
def adagrad(learning_rate: float, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7) -> Optimizer:
    """Adagrad."""
    return keras.optimizers.Adagrad(learning_rate=learning_rate,
                                    initial_accumulator_value=initial_accumulator_value, epsilon=epsilon)


@registry.register_optimizer("adadelta")
def adadelta(learning_rate: float, rho: float = 0.95, epsilon: float = 1e-7) -> Optimizer:
    """Adadelta (Keras scales its update by the learning rate; use ~1.0 for the paper's rule)."""
    return keras.optimizers.Adadelta(learning_rate=learning_rate, rho=rho, epsilon=epsilon)


@registry.register_optimizer("adafactor")
def adafactor(learning_rate: float, beta_2_decay: float = -0.8, epsilon_1: float = 1e-30, epsilon_2: float = 1e-3,
              clip_threshold: float = 1.0, relative_step: bool = True) -> Optimizer:
    """Adafactor (factored second moments).

    With `relative_step=True` (Keras's default) Keras caps the rate passed to `update_step` at
    1/sqrt(iterations + 1), so a schedule above that cap has no effect.
    """
    return keras.optimizers.Adafactor(learning_rate=learning_rate, beta_2_decay=beta_2_decay, epsilon_1=epsilon_1,
                                      epsilon_2=epsilon_2, clip_threshold=clip_threshold,
                                      relative_step=relative_step)


@registry.register_optimizer("lion")
def lion(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.99) -> Optimizer:
    """Lion (sign of interpolated momentum); use a 3-10x smaller rate than Adam."""
    return keras.optimizers.Lion(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2)


@registry.register_optimizer("lamb")
def lamb(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Optimizer:
    """LAMB (Adam with a per-variable trust ratio)."""
    return keras.optimizers.Lamb(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


@registry.register_optimizer("ftrl")
def ftrl(learning_rate: float, learning_rate_power: float = -0.5, initial_accumulator_value: float = 0.1,
         l1_regularization_strength: float = 0.0, l2_regularization_strength: float = 0.0) -> Optimizer:
    """FTRL-proximal (with optional L1 / L2 strength)."""
    return keras.optimizers.Ftrl(learning_rate=learning_rate, learning_rate_power=learning_rate_power,
                                 initial_accumulator_value=initial_accumulator_value,
                                 l1_regularization_strength=l1_regularization_strength,
                                 l2_regularization_strength=l2_regularization_strength)
