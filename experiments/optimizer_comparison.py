"""SGD vs Adam vs RMSprop on the same task and seed (an MLP on flattened digits), via a sweep.

Run: python -m framework.main --experiment=optimizer_comparison --model_dir=runs/opt \
     --sweep='optimizer.name=sgd,adam,rmsprop'
Expected: sweep.md lists each optimizer's eval loss/accuracy at every eval and at the end;
Adam and RMSprop reach >= 0.95 accuracy, plain SGD at this learning rate trails them.
"""
from __future__ import annotations

import keras

from framework import registry


@registry.register_model("digits_mlp")
def digits_mlp(width: int = 64) -> keras.Model:
    x = keras.Input((64,), name="x")
    h = keras.layers.Dense(width, activation="relu", name="fc1")(x)
    h = keras.layers.Dense(width, activation="relu", name="fc2")(h)
    return keras.Model(x, keras.layers.Dense(10, name="head")(h), name="digits_mlp")


@registry.register_experiment("optimizer_comparison")
def optimizer_comparison() -> dict:
    return {"task": {"model": {"name": "digits_mlp"},
                     "train_data": {"name": "digits", "batch_size": 64, "flatten": True},
                     "eval_data": {"name": "digits", "batch_size": 150, "flatten": True},
                     "metrics": ["accuracy"]},
            "trainer": {"train_steps": 600, "steps_per_loop": 100, "eval_interval": 100, "checkpoint_interval": 600},
            "optimizer": {"name": "adam", "learning_rate": 1e-3}}
