"""Components for the reliability scenarios (imported with --import=tests.reliability._rel_experiment).

`rel_test`: a width-32 MLP (optional dropout) on flattened digits, Adam with two parameter
groups, deterministic ops; 16 steps of 2-step loops, a checkpoint every 4 steps, an eval every 8.
`rel_data` can be made wrong on purpose (shape, dtype, label range, empty) or slow to evaluate.
Hooks slow a run down (`rel_sleep`) or fail one multi-worker process (`rel_raise`) so a test can
interrupt it at a chosen point with a real signal.
"""
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from framework import registry
from framework.data import bundled

if "rel_test" not in registry.EXPERIMENTS:
    @registry.register_model("rel_mlp")
    def rel_mlp(width: int = 32, dropout: float = 0.0, inputs: int = 64, tail: bool = False) -> keras.Model:
        """`tail` adds a last Dense(10): the same first four variables plus two more."""
        x = keras.Input((inputs,), name="x")
        h = keras.layers.Dense(width, activation="relu", name="fc1")(x)
        if dropout:
            h = keras.layers.Dropout(dropout, name="drop")(h)
        out = keras.layers.Dense(10, name="head")(h)
        if tail:
            out = keras.layers.Dense(10, name="tail")(out)
        return keras.Model(x, out, name="rel_mlp")

    @registry.register_dataset("rel_data")
    def rel_data(split: str, mode: str = "ok", max_examples: int | None = None,
                 eval_delay_ms: float = 0.0) -> tf.data.Dataset:
        """Flattened digits; `mode` breaks it: wide (65 features), string (features), label_oob, empty."""
        x, y = bundled.load_arrays("digits", split, test_fraction=0.25, seed=0)
        x = (x.reshape(-1, 64) / 16.0).astype(np.float32)
        y = y.astype(np.int32)
        if max_examples is not None:
            x, y = x[:max_examples], y[:max_examples]
        if mode == "wide":
            x = np.concatenate([x, np.zeros([len(x), 1], np.float32)], 1)
        elif mode == "label_oob" and split == "train":
            y = y.copy()
            y[5] = 10  # a 10-class model: class ids are 0..9
        elif mode == "empty":
            x, y = x[:0], y[:0]
        if mode == "string":
            ds = tf.data.Dataset.from_tensor_slices((x.astype(str)[:, 0], y))
        else:
            ds = tf.data.Dataset.from_tensor_slices((x, y))
        if eval_delay_ms and split == "eval":
            delay = eval_delay_ms / 1000.0

            def slow(v):
                time.sleep(delay)
                return v

            ds = ds.map(lambda a, b: (tf.ensure_shape(tf.numpy_function(slow, [a], tf.float32), [64]), b))
        return ds

    @registry.register_experiment("rel_test")
    def rel_test() -> dict:
        return {"task": {"model": {"name": "rel_mlp"},
                         "train_data": {"name": "rel_data", "batch_size": 32},
                         "eval_data": {"name": "rel_data", "batch_size": 64},
                         "metrics": ["accuracy"]},
                "trainer": {"train_steps": 16, "steps_per_loop": 2, "eval_interval": 8, "checkpoint_interval": 4,
                            "max_to_keep": 10, "jit_compile": False, "deterministic": True},
                "optimizer": {"name": "adam", "learning_rate": 0.005,
                              "param_groups": [{"pattern": "^fc1/", "lr_multiplier": 0.5}]}}

    @registry.register_hook("rel_sleep")
    def rel_sleep(seconds: float = 0.3, event: str = "train_loop_end"):
        """Sleeps `seconds` on `event` (gives a test time to send a signal at a known point)."""
        def hook(ev, ctx):
            if ev == event:
                print(f"rel_sleep: {event} at step {ctx.step}", flush=True)
                time.sleep(seconds)
        return hook

    @registry.register_hook("rel_raise")
    def rel_raise(step: int = 4, worker_index: int = 1):
        """Raises in the multi-worker process `worker_index` once it reaches `step`."""
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
        mine = int(task.get("index", 0)) == worker_index

        def hook(ev, ctx):
            if mine and ev == "train_loop_end" and ctx.step >= step:
                raise RuntimeError(f"rel_raise: injected failure in worker {worker_index} at step {ctx.step}")
        return hook
