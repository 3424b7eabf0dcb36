"""Training throughput: tapeline vs the raw compiled step, Keras `fit` and an eager loop.

    python -m benchmarks.overhead            # full sizes (MLP 784-512-512-10 b256, CNN 28x28x1 b128)
    python -m benchmarks.overhead --quick    # tiny sizes, one repetition (CI)

Variants, measured in one process, interleaved, after a warm-up, median of --reps:
  a  raw limit: the same step in a compiled tf.range loop on one fixed batch (XLA and not; best)
  b  tapeline trainer, defaults (jit_compile=auto)
  c  tapeline trainer, tuned (the faster jit setting, longer inner loop)
  d  Keras fit, defaults
  e  Keras fit, steps_per_execution=50, jit_compile=True
  f  eager GradientTape loop
Writes benchmarks/results/overhead.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from benchmarks import common
from framework import config as config_lib
from framework import trainer as trainer_lib


def _raw_loop(kind: str, quick: bool, jit: bool) -> Callable[[int], None]:
    keras.utils.set_random_seed(0)
    model = common.make_model(kind, quick=quick)
    opt = keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    _, _, batch = common.SIZES[kind]
    x, y = common.synthetic(kind, batch)
    x, y = tf.constant(x), tf.constant(y)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit)
    def loop(n):
        for _ in tf.range(n):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)

    return lambda k: loop(tf.constant(k))


def _tapeline(kind: str, quick: bool, jit: Any, steps_per_loop: int) -> Callable[[int], None]:
    _, _, batch = common.SIZES[kind]
    cfg = config_lib.resolve({
        "task": {"model": {"name": "bench_model", "kind": kind, "quick": quick},
                 "train_data": {"name": "bench_data", "kind": kind, "n": 8 * batch, "batch_size": batch},
                 "loss": {"name": "sparse_categorical_crossentropy"}, "metrics": ["accuracy"]},
        "trainer": {"train_steps": 10 ** 9, "steps_per_loop": steps_per_loop, "jit_compile": jit},
        "optimizer": {"name": "adam", "learning_rate": 1e-3}})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    it = iter(t.train_dataset(start_step=0))
    active = list(range(len(t.groups.variables)))

    def run(k: int) -> None:
        t.steps.train_loop(it, k, active)
        t.global_step.numpy()  # the controller's one host copy per loop

    run.jit = t.steps.jit_compile  # type: ignore[attr-defined]
    return run


def _fit(kind: str, quick: bool, tuned: bool) -> Callable[[int], None]:
    keras.utils.set_random_seed(0)
    model = common.make_model(kind, quick=quick)
    _, _, batch = common.SIZES[kind]
    kw = {"steps_per_execution": 50, "jit_compile": True} if tuned else {}
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"], **kw)
    x, y = common.synthetic(kind, 8 * batch)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache().shuffle(8 * batch, seed=0).repeat() \
        .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return lambda k: model.fit(ds, epochs=1, steps_per_epoch=k, verbose=0)


def _eager(kind: str, quick: bool) -> Callable[[int], None]:
    keras.utils.set_random_seed(0)
    model = common.make_model(kind, quick=quick)
    opt = keras.optimizers.Adam(1e-3)
    _, _, batch = common.SIZES[kind]
    x, y = common.synthetic(kind, 8 * batch)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch, drop_remainder=True)
    it = iter(ds)

    def run(k: int) -> None:
        for _ in range(k):
            xb, yb = next(it)
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    return run


def measure(kind: str, *, quick: bool, reps: int, steps: int) -> dict[str, Any]:
    """Steps/s of every variant for one model (interleaved repetitions, medians)."""
    variants: dict[str, Callable[[int], None]] = {
        "a_raw_xla": _raw_loop(kind, quick, True),
        "a_raw": _raw_loop(kind, quick, False),
        "b_tapeline": _tapeline(kind, quick, "auto", steps),
        "c_tapeline_jit": _tapeline(kind, quick, True, steps),
        "c_tapeline_nojit": _tapeline(kind, quick, False, steps),
        "d_fit": _fit(kind, quick, False),
        "e_fit_tuned": _fit(kind, quick, True),
        "f_eager": _eager(kind, quick),
    }
    n_steps = {k: (max(steps // 5, 2) if k == "f_eager" else steps) for k in variants}
    for k, fn in variants.items():  # warm-up: trace, compile, fill pipelines
        fn(min(n_steps[k], 10))
        fn(n_steps[k])
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, fn in variants.items():
            times[k].append(n_steps[k] / common.timed(lambda: fn(n_steps[k])))
    sps = {k: common.median(v) for k, v in times.items()}
    _, _, batch = common.SIZES[kind]
    raw = max(sps["a_raw_xla"], sps["a_raw"])
    out = {"model": kind, "batch": batch, "steps_per_call": steps, "reps": reps, "steps_per_sec": sps,
           "samples": times, "b_jit": bool(variants["b_tapeline"].jit)}
    sps["a_raw_best"] = raw
    sps["c_tapeline"] = max(sps["c_tapeline_jit"], sps["c_tapeline_nojit"])
    out["ratios"] = {k: {"vs_raw": v / raw, "vs_fit": v / sps["d_fit"]} for k, v in sps.items()}
    return out


def table(results: list[dict[str, Any]]) -> str:
    order = ["a_raw_best", "a_raw_xla", "a_raw", "b_tapeline", "c_tapeline", "c_tapeline_jit", "c_tapeline_nojit",
             "d_fit", "e_fit_tuned", "f_eager"]
    head = "| variant | " + " | ".join(f"{r['model']} b{r['batch']}: steps/s (x raw, x fit)" for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for k in order:
        cells = []
        for r in results:
            s = r["steps_per_sec"][k]
            q = r["ratios"][k]
            cells.append(f"{s:.1f} ({q['vs_raw']:.2f}, {q['vs_fit']:.2f})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition (CI)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=100, help="steps per timed call")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--out_dir", default=common.RESULTS)
    a = p.parse_args(argv)
    reps, steps = (1, 5) if a.quick else (a.reps, a.steps)
    results = [measure(k, quick=a.quick, reps=reps, steps=steps) for k in a.models.split(",")]
    data = {"machine": common.machine(), "quick": a.quick, "results": results}
    tab = table(results)
    paths = common.write("overhead_quick" if a.quick else "overhead", data, tab, out_dir=a.out_dir)
    _chart(results, os.path.join(a.out_dir, "overhead_quick.png" if a.quick else "overhead.png"))
    print(tab)
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0


def _chart(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["a_raw_best", "b_tapeline", "c_tapeline", "d_fit", "e_fit_tuned", "f_eager"]
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5))
    axes = np.atleast_1d(axes)
    for ax, r in zip(axes, results):
        ax.barh(keys, [r["steps_per_sec"][k] for k in keys])
        ax.set_title(f"{r['model']} (batch {r['batch']})")
        ax.set_xlabel("steps/s")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
