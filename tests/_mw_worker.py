"""One multi-worker process for tests/test_distribute.py (run as a subprocess, TF_CONFIG from env).

    TF_CONFIG='{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}' \
        python tests/_mw_worker.py [--worker_timeout_s=S] [--steps=N]

Builds the strategy with `framework.distribute.make_strategy`, all-reduces `index + 1` over the
workers, then trains a tiny Keras linear model for a few steps with a custom loop in
`strategy.run` (each worker feeds different data; the optimizer all-reduces the gradients, so
the weights must stay identical). Prints one JSON line on stdout:
`{"index": i, "sum": ..., "replicas": ..., "losses": [...], "weights": [[...], ...], "describe": ...,
"jit_auto": ...}`.
If the strategy cannot be built, prints the error on stderr and exits with status 3.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from framework import distribute  # noqa: E402
from framework import jit as jit_lib  # noqa: E402
from framework.config import RuntimeConfig  # noqa: E402


def _train(strategy: tf.distribute.Strategy, index: int, steps: int) -> dict:
    """The all-reduce and the training loop; returns the results to report."""

    @tf.function
    def all_reduce_index() -> tf.Tensor:
        def fn() -> tf.Tensor:
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(float(index + 1)))
        return strategy.run(fn)

    total = float(strategy.experimental_local_results(all_reduce_index())[0])

    per_replica_batch = 4
    global_batch = per_replica_batch * strategy.num_replicas_in_sync
    with strategy.scope():
        keras.utils.set_random_seed(0)  # same initial weights on every worker
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], name="linear")
        optimizer = keras.optimizers.SGD(learning_rate=0.1)
        optimizer.build(model.trainable_variables)

    rng = np.random.default_rng(100 + index)  # different examples on each worker
    true_w = np.array([[1.0], [-2.0], [0.5]], np.float32)

    def replica_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            per_example = tf.reduce_mean(tf.square(model(x, training=True) - y), axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))  # all-reduces (sum)
        return loss

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        per_replica = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    losses = []
    for _ in range(steps):
        x = rng.normal(size=(per_replica_batch, 3)).astype(np.float32)
        y = x @ true_w + 0.25
        losses.append(float(train_step(tf.constant(x), tf.constant(y))))
    return {"index": index, "sum": total, "replicas": strategy.num_replicas_in_sync,
            "losses": losses, "weights": [v.numpy().tolist() for v in model.weights]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker_timeout_s", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    index = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", -1)
    t0 = time.monotonic()
    runtime = RuntimeConfig(strategy="multi_worker", worker_timeout_s=args.worker_timeout_s)
    try:
        strategy = distribute.make_strategy(runtime)
    except (TimeoutError, RuntimeError, ValueError) as e:
        print(f"worker {index}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(3)  # a thread may still be blocked inside TensorFlow: do not wait for it
    setup_s = time.monotonic() - t0
    result = _train(strategy, index, args.steps)
    result["describe"] = distribute.describe(strategy)
    result["jit_auto"] = jit_lib.jit_allowed(strategy, "auto", model_has_conv=False)[0]
    result["setup_s"] = round(setup_s, 2)
    result["total_s"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
