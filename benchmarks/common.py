"""Shared benchmark pieces: models, synthetic data, machine description, result files and charts."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from framework import atomic, registry

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

SIZES = {
    # name: (input shape, classes, global batch)
    "mlp": ((784,), 10, 256),
    "cnn": ((28, 28, 1), 10, 128),
    # Byte sequences of 128 (zero-padded tails of random length: the padding mask is exercised).
    "transformer": ((128,), 4, 64),
}
def make_model(kind: str, *, quick: bool = False) -> keras.Model:
    """MLP 784-512-512-10, a small CNN for 28x28x1, or the text experiments' Transformer encoder
    (2 blocks, d=64, over bytes) (tiny versions in quick mode)."""
    shape, classes, _ = SIZES[kind]
    if kind == "transformer":
        from experiments import text

        return text.text_transformer(outputs=classes, dim=16 if quick else 64, ff=32 if quick else 128,
                                     layers=1 if quick else 2, max_len=shape[0], dropout=0.0)
    inp = keras.Input(shape, name="x")
    if kind == "mlp":
        w = 32 if quick else 512
        h = keras.layers.Dense(w, activation="relu", name="fc1")(inp)
        h = keras.layers.Dense(w, activation="relu", name="fc2")(h)
    else:
        c = 4 if quick else 32
        h = keras.layers.Conv2D(c, 3, activation="relu", name="conv1")(inp)
        h = keras.layers.MaxPooling2D(2)(h)
        h = keras.layers.Conv2D(2 * c, 3, activation="relu", name="conv2")(h)
        h = keras.layers.MaxPooling2D(2)(h)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(4 * c if quick else 128, activation="relu", name="fc")(h)
    out = keras.layers.Dense(classes, name="head")(h)
    return keras.Model(inp, out, name=kind)


def synthetic(kind: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` random examples and labels of the model `kind` (for the Transformer: byte ids with
    zero-padded tails of random length)."""
    shape, classes, _ = SIZES[kind]
    rng = np.random.default_rng(seed)
    if kind == "transformer":
        x = rng.integers(1, 257, size=(n, *shape)).astype(np.int32)
        x[np.arange(shape[0])[None, :] >= rng.integers(8, shape[0] + 1, size=n)[:, None]] = 0
        return x, rng.integers(0, classes, size=n).astype(np.int32)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, size=n).astype(np.int32)


@functools.cache
def _cached_synthetic(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`synthetic(kind, n)` made once per process (every split and run of a benchmark reads the same arrays)."""
    return synthetic(kind, n)

if "bench_model" not in registry.MODELS:
    @registry.register_model("bench_model")
    def bench_model(kind: str = "mlp", quick: bool = False) -> keras.Model:
        return make_model(kind, quick=quick)

    @registry.register_dataset("bench_data")
    def bench_data(split: str, kind: str = "mlp", n: int = 4096) -> tf.data.Dataset:  # noqa: ARG001 - every split
        return tf.data.Dataset.from_tensor_slices(_cached_synthetic(kind, n))

    def _bench_experiment(kind: str) -> Callable[[], dict[str, Any]]:
        def experiment() -> dict[str, Any]:
            _, _, batch = SIZES[kind]
            return {"task": {"model": {"name": "bench_model", "kind": kind},
                             "train_data": {"name": "bench_data", "kind": kind, "n": 8 * batch, "batch_size": batch},
                             "loss": {"name": "sparse_categorical_crossentropy"}, "metrics": ["accuracy"]},
                    "trainer": {"train_steps": 1000, "steps_per_loop": 100, "checkpoint_interval": 10 ** 9},
                    "optimizer": {"name": "adam", "learning_rate": 1e-3}}
        return experiment

    for _kind in SIZES:  # `--import=benchmarks.common --experiment=bench_mlp` (end_to_end.py)
        registry.register_experiment(f"bench_{_kind}")(_bench_experiment(_kind))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:  # the first processor's block is enough
                    break
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    if "cpu family" in fields and "model" in fields:
        # A virtual machine may report only "AMD EPYC": family and model tell two hosts apart
        # (on 2026-12-02 two such VMs differed 3x in the MLP's step time).
        cpu += f" (family {fields['cpu family']}, model {fields['model']})"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write(name: str, data: dict[str, Any], table: str, out_dir: str = RESULTS) -> dict[str, str]:
    """Writes `<name>.json` and `<name>.md` (table + machine) under `out_dir`, each atomically."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{name}.json"), "md": os.path.join(out_dir, f"{name}.md")}
    atomic.write_text(paths["json"], json.dumps(data, indent=1))
    m = data["machine"]
    atomic.write_text(paths["md"], f"Machine: {m['cpu']}, {m['cores']} cores; TensorFlow {m['tensorflow']}, "
                                   f"Keras {m['keras']}; {m['date']}\n\n{table}\n")
    return paths


def publish(name: str, data: dict[str, Any], table: str, *, out_dir: str,
            chart: Callable[[str], None]) -> dict[str, str]:
    """A script's results: `<name>.json`, `<name>.md` (see `write`) and `<name>.png` (drawn by
    `chart(path)`) under `out_dir`; prints the table and what was written.

    Returns:
      The paths of the JSON and Markdown files (`{"json": ..., "md": ...}`).
    """
    paths = write(name, data, table, out_dir=out_dir)
    chart(os.path.join(out_dir, f"{name}.png"))
    print(table)
    print(f"wrote {paths['json']} and {paths['md']}")
    return paths


@contextlib.contextmanager
def chart(path: str, *args: Any, **subplots_kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """Yields `(fig, axes)` of `plt.subplots(*args, **subplots_kwargs)` on the Agg backend (no
    display); when the block ends the figure is laid out, saved to `path` atomically and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **subplots_kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        atomic.save_figure(fig, path)
    finally:
        plt.close(fig)


def tapeline_config(kind: str, *, quick: bool, steps_per_loop: int = 100, jit: Any = "auto",
                    train_steps: int = 10 ** 9, batch: int | None = None,
                    runtime: dict[str, Any] | None = None, **trainer: Any) -> Any:
    """The resolved tapeline config of a benchmark run (synthetic data, Adam, accuracy)."""
    from framework import config as config_lib

    _, _, default_batch = SIZES[kind]
    batch = batch or default_batch
    return config_lib.resolve({
        "task": {"model": {"name": "bench_model", "kind": kind, "quick": quick},
                 "train_data": {"name": "bench_data", "kind": kind, "n": 8 * batch, "batch_size": batch},
                 "loss": {"name": "sparse_categorical_crossentropy"}, "metrics": ["accuracy"]},
        "trainer": {"train_steps": train_steps, "steps_per_loop": steps_per_loop, "jit_compile": jit, **trainer},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "runtime": dict(runtime or {})})


def fit_dataset(kind: str, batch: int | None = None, *, shard: bool = False) -> tf.data.Dataset:
    """The Keras `fit` input: the same synthetic examples as tapeline's, batched as Keras does.

    It is the pipeline Keras's own ArrayDataAdapter builds for in-memory arrays (what `fit(x, y)`
    uses): each epoch the row indices are shuffled and cut into batches, and each batch is one
    gather. So `fit` gets the same batch-by-index input as tapeline's in-memory sources, not a
    slower per-example `shuffle().batch()`; the comparison is of the training loops.
    """
    _, _, default_batch = SIZES[kind]
    batch = batch or default_batch
    x, y = (tf.constant(a) for a in synthetic(kind, 8 * batch))
    n = int(x.shape[0])

    @tf.autograph.experimental.do_not_convert
    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        ids = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([e, e]))
        return tf.data.Dataset.from_tensor_slices(tf.reshape(ids[:n // batch * batch], [-1, batch]))

    ds = tf.data.Dataset.range(tf.int64.max).flat_map(epoch).map(
        tf.autograph.experimental.do_not_convert(lambda i: (tf.gather(x, i), tf.gather(y, i))),
        num_parallel_calls=tf.data.AUTOTUNE)
    if shard:  # multi-worker: each worker takes its share of every global batch
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def compiled_fit_model(kind: str, *, quick: bool, **compile_kw: Any) -> keras.Model:
    """A compiled Keras model for `fit` (build it inside the strategy's scope)."""
    keras.utils.set_random_seed(0)
    model = make_model(kind, quick=quick)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  **compile_kw)
    return model


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm", encoding="utf-8") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module: str, args: list[str], *, timeout_s: float, env: dict[str, str] | None = None,
              result_path: str) -> dict[str, Any]:
    """Runs `python -m module args` in a fresh process and returns the JSON it wrote to `result_path`.

    Raises:
      RuntimeError: the child failed or timed out (with the tail of its output).
    """
    cmd = [sys.executable, "-m", module, *args, f"--result={result_path}"]
    e = dict(os.environ if env is None else env)
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as ex:
        raise RuntimeError(f"{' '.join(cmd)}: no result within {timeout_s:g}s") from ex
    if p.returncode != 0 or not os.path.exists(result_path):
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}:\n{tail}")
    with open(result_path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, data: Any) -> None:
    """Writes `data` as indented JSON to `path` atomically (a child's result: the parent reads it whole)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_text(path, json.dumps(data, indent=1))


def quiet() -> None:
    """Less TensorFlow / absl chatter in benchmark output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
