"""Keras 3 optimizers by name, built for the framework's per-variable update path.

The framework calls `optimizer.update_step(grad, var, lr)` itself with each variable's own
learning rate and applies decoupled weight decay per group, so factories never pass
`weight_decay` or global clipping to Keras (clipping there would run per replica, trap 1).
"""
from __future__ import annotations

from typing import Any, Mapping

import keras

from framework import registry

# Keras's AdamW default; the framework applies it (decoupled) unless the config says otherwise.
_DEFAULT_WEIGHT_DECAY = {"adamw": 0.004}


def default_weight_decay(name: str, kwargs: Mapping[str, Any]) -> float | None:
    """The optimizer's own weight decay (adamw's default or its `weight_decay` kwarg), else None."""
    if "weight_decay" in kwargs:
        return kwargs["weight_decay"]
    return _DEFAULT_WEIGHT_DECAY.get(name)


@registry.register_optimizer("sgd")
def sgd(learning_rate: float, momentum: float = 0.0, nesterov: bool = False) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov)


@registry.register_optimizer("momentum")
def momentum(learning_rate: float, momentum: float = 0.9, nesterov: bool = False) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov)


@registry.register_optimizer("adam")
def adam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
         amsgrad: bool = False) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                                 amsgrad=amsgrad)


@registry.register_optimizer("adamw")
def adamw(learning_rate: float, weight_decay: float = 0.004, beta_1: float = 0.9, beta_2: float = 0.999,
          epsilon: float = 1e-7, amsgrad: bool = False) -> keras.optimizers.Optimizer:
    # weight_decay is applied by the framework (decoupled, per group); Keras gets 0 — its
    # decay would run in `apply`, which the framework bypasses.
    del weight_decay
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                                 amsgrad=amsgrad)


@registry.register_optimizer("nadam")
def nadam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Any:
    return keras.optimizers.Nadam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


@registry.register_optimizer("adamax")
def adamax(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Any:
    return keras.optimizers.Adamax(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


@registry.register_optimizer("rmsprop")
def rmsprop(learning_rate: float, rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7,
            centered: bool = False) -> Any:
    return keras.optimizers.RMSprop(learning_rate=learning_rate, rho=rho, momentum=momentum, epsilon=epsilon,
                                    centered=centered)


@registry.register_optimizer("adagrad")
def adagrad(learning_rate: float, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7) -> Any:
    return keras.optimizers.Adagrad(learning_rate=learning_rate,
                                    initial_accumulator_value=initial_accumulator_value, epsilon=epsilon)


@registry.register_optimizer("adadelta")
def adadelta(learning_rate: float, rho: float = 0.95, epsilon: float = 1e-7) -> Any:
    return keras.optimizers.Adadelta(learning_rate=learning_rate, rho=rho, epsilon=epsilon)


@registry.register_optimizer("adafactor")
def adafactor(learning_rate: float, beta_2_decay: float = -0.8, epsilon_1: float = 1e-30, epsilon_2: float = 1e-3,
              clip_threshold: float = 1.0, relative_step: bool = True) -> Any:
    return keras.optimizers.Adafactor(learning_rate=learning_rate, beta_2_decay=beta_2_decay, epsilon_1=epsilon_1,
                                      epsilon_2=epsilon_2, clip_threshold=clip_threshold,
                                      relative_step=relative_step)


@registry.register_optimizer("lion")
def lion(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.99) -> Any:
    return keras.optimizers.Lion(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2)


@registry.register_optimizer("lamb")
def lamb(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Any:
    return keras.optimizers.Lamb(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


@registry.register_optimizer("ftrl")
def ftrl(learning_rate: float, learning_rate_power: float = -0.5, initial_accumulator_value: float = 0.1,
         l1_regularization_strength: float = 0.0, l2_regularization_strength: float = 0.0) -> Any:
    return keras.optimizers.Ftrl(learning_rate=learning_rate, learning_rate_power=learning_rate_power,
                                 initial_accumulator_value=initial_accumulator_value,
                                 l1_regularization_strength=l1_regularization_strength,
                                 l2_regularization_strength=l2_regularization_strength)
