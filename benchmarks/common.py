"""Shared benchmark pieces: models, synthetic data, machine description, result files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from framework import registry

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

SIZES = {
    # name: (input shape, classes, global batch)
    "mlp": ((784,), 10, 256),
    "cnn": ((28, 28, 1), 10, 128),
}


def make_model(kind: str, *, quick: bool = False) -> keras.Model:
    """MLP 784-512-512-10 or a small CNN for 28x28x1 (tiny versions in quick mode)."""
    shape, classes, _ = SIZES[kind]
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
    shape, classes, _ = SIZES[kind]
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, size=n).astype(np.int32)


_DATA: dict[str, tuple[np.ndarray, np.ndarray]] = {}

if "bench_model" not in registry.MODELS:
    @registry.register_model("bench_model")
    def bench_model(kind: str = "mlp", quick: bool = False) -> keras.Model:
        return make_model(kind, quick=quick)

    @registry.register_dataset("bench_data")
    def bench_data(split: str, kind: str = "mlp", n: int = 4096) -> tf.data.Dataset:
        key = f"{kind}-{n}"
        if key not in _DATA:
            _DATA[key] = synthetic(kind, n)
        return tf.data.Dataset.from_tensor_slices(_DATA[key])


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
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
    """Writes `<name>.json` and `<name>.md` (table + machine) under `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{name}.json"), "md": os.path.join(out_dir, f"{name}.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    m = data["machine"]
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(f"Machine: {m['cpu']}, {m['cores']} cores; TensorFlow {m['tensorflow']}, Keras {m['keras']}; "
                f"{m['date']}\n\n{table}\n")
    return paths
