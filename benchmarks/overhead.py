"""Training throughput: tapeline vs the raw compiled step, Keras `fit` and an eager loop.

    python -m benchmarks.overhead            # MLP 784-512-512-10 b256, CNN 28x28x1 b128, Transformer b64
    python -m benchmarks.overhead --quick    # tiny sizes, one repetition (CI)

Variants, measured in one process, interleaved, after a warm-up, median of --reps:
  a  raw limit: the same step on one fixed batch in the fastest bare loop: a compiled loop under
     XLA, a compiled loop without XLA, or a loop of one XLA call per step (where XLA loops are
     slow, as around convolutions on CPU); the best of the three per repetition
  b  tapeline trainer, defaults (jit_compile=auto)
  c  tapeline trainer, tuned (the faster jit setting)
  d  Keras fit, defaults
  e  Keras fit with steps_per_execution=50, with jit_compile=True, and with both; the best of
     {d, e} per repetition is "fit at its best"
  f  eager GradientTape loop
Every variant is timed in its steady state: calls of k, 2k, 2k and k steps in the same
repetition, t(k) and t(2k) each the shorter of its two calls, steps/s = k / (t(2k) - t(k)), so
a fixed cost per call (tapeline's per-loop host reads, the first execution of a `fit()`) does
not count, nor a stall that hits some calls only (`steady_times`); `fit`'s calls are timed from
the start of their first step to the end of their epoch, without the set-up before it and the
freeing of the epoch's iterator after it (`_InFitClock`). The JSON keeps t(k), t(2k) of every
repetition. tapeline's calls include the host reads the
controller makes per loop; the controller's own Python work is measured end to end through the
CLI by `benchmarks/end_to_end.py`. Writes benchmarks/results/overhead.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from benchmarks import common
from framework import trainer as trainer_lib


def raw_loop(kind: str, quick: bool, jit: bool | str) -> Callable[[int], None]:
    """The bare step on one batch: jit True (XLA loop), False (no XLA), or "step" (XLA per step)."""
    keras.utils.set_random_seed(0)
    model = common.make_model(kind, quick=quick)
    opt = keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    _, _, batch = common.SIZES[kind]
    x, y = common.synthetic(kind, batch)
    x, y = tf.constant(x), tf.constant(y)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)

    body = tf.function(step, jit_compile=True) if jit == "step" else step

    @tf.function(jit_compile=jit is True)
    def loop(n):
        for _ in tf.range(n):
            body()

    return lambda k: loop(tf.constant(k))


def _tapeline(kind: str, quick: bool, jit: Any, steps_per_loop: int) -> Callable[[int], None]:
    cfg = common.tapeline_config(kind, quick=quick, steps_per_loop=steps_per_loop, jit=jit)
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    it = iter(t.train_dataset(start_step=0))
    active = list(range(len(t.groups.variables)))

    def run(k: int) -> None:
        # The loop returns its results (step, loss, metrics, ...), copied to the host once: the
        # controller's whole host work per loop.
        t.steps.train_loop(it, k, active)

    run.jit = t.steps.jit_compile  # type: ignore[attr-defined]
    run.group = t.steps.xla_group_steps  # type: ignore[attr-defined]
    run.reason = t.jit_reason  # type: ignore[attr-defined]
    return run


class _InFitClock(keras.callbacks.Callback):
    """The time from the start of a `fit()`'s first step to the end of its epoch.

    It leaves out what `fit` does before its first step (callbacks, the epoch's iterator) and
    after its epoch: above all freeing that iterator, which waits for tf.data's tuning thread to
    wake up (docs/design.md#t12). Measured on the Transformer (2026-12-04, 7 repetitions): whole
    `fit()` calls of 50 and 100 steps that ran 3.8 to 4.1 s and 7.6 to 8.1 s often took 5.11 to
    5.12 s and 10.23 to 10.24 s, the sums of that thread's doubling sleeps (0.01 s x (2^n - 1)),
    and their differences gave `fit` jit_compile=True anything from 11.7 to 20.4 steps/s.
    Only `on_train_batch_begin` and `on_epoch_end` are overridden: a callback with its own
    `on_train_batch_end` would turn off Keras's asynchronous batch-end dispatch and read the
    logs after every step.
    """

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:  # noqa: ARG002 - Keras's signature
        if batch == 0:
            self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002 - Keras's signature
        self.seconds = time.perf_counter() - self.start


def fit_runner(kind: str, quick: bool, **kw: Any) -> Callable[[int], float]:
    """`fit` of k steps with the given `compile` settings (none: Keras's defaults); returns the
    seconds from its first step to the end of its epoch (`_InFitClock`), which `call_seconds`
    takes instead of the call's wall time."""
    model = common.compiled_fit_model(kind, quick=quick, **kw)
    ds = common.fit_dataset(kind)
    clock = _InFitClock()

    def run(k: int) -> float:
        model.fit(ds, epochs=1, steps_per_epoch=k, verbose=0, callbacks=[clock])
        return clock.seconds

    return run


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


FIT_SPE = 50  # fit's steps_per_execution in the (e) variants
# How `fit`'s calls are timed, recorded in the JSON (runs before 2026-12-04 21:00 timed whole calls).
FIT_TIMING = "from their first step to the end of their epoch"
FIT_BEST = ("d_fit", "e_fit_spe", "e_fit_jit", "e_fit_spe_jit")
RAW_BEST = ("a_raw_xla", "a_raw", "a_raw_xla_step")


def steady_times(fn: Callable[[int], None], k: int) -> tuple[float, float]:
    """(t(k), t(2k)) of `fn` in its steady state: each the shorter of two calls, run k, 2k, 2k, k.

    Taking the shorter of two drops a cost that hits some calls and not others. A single k/2k
    pair of whole `fit()` calls once turned such stalls into rates of 3.5 and 82 steps/s for
    `fit` settings that run at about 9; the shorter of two was not enough either (the stall
    came in both calls of a length often enough to move the medians), so `fit`'s calls are now
    timed inside the call (`_InFitClock`) and the stall is outside them. The palindrome order
    also puts any cost of the first call after another variant on a call whose twin follows.
    """
    t1a, t2a, t2b, t1b = (call_seconds(fn, n) for n in (k, 2 * k, 2 * k, k))
    return min(t1a, t1b), min(t2a, t2b)


def call_seconds(fn: Callable[[int], Any], k: int) -> float:
    """The seconds of one call `fn(k)`: what `fn` returns if it times itself (a float, as
    `fit_runner`'s calls do), else the call's wall time."""
    t0 = time.perf_counter()
    own = fn(k)
    wall = time.perf_counter() - t0
    return own if isinstance(own, float) else wall


def steady_rate(fn: Callable[[int], None], k: int) -> float:
    """Steps/s of `fn` in its steady state: k / (t(2k) - t(k)) (`steady_times`)."""
    t1, t2 = steady_times(fn, k)
    return k / (t2 - t1) if t2 > t1 else 2 * k / t2  # noise made them equal: the plain rate


def measure(kind: str, *, quick: bool, reps: int, steps: int) -> dict[str, Any]:
    """Steady-state steps/s of every variant for one model (interleaved repetitions, medians)."""
    variants: dict[str, Callable[[int], None]] = {
        "a_raw_xla": raw_loop(kind, quick, True),
        "a_raw": raw_loop(kind, quick, False),
        "a_raw_xla_step": raw_loop(kind, quick, "step"),
        "b_tapeline": _tapeline(kind, quick, "auto", steps),
        "c_tapeline_jit": _tapeline(kind, quick, True, steps),
        "c_tapeline_nojit": _tapeline(kind, quick, False, steps),
        "d_fit": fit_runner(kind, quick),
        "e_fit_spe": fit_runner(kind, quick, steps_per_execution=FIT_SPE, jit_compile=False),
        "e_fit_jit": fit_runner(kind, quick, jit_compile=True),
        "e_fit_spe_jit": fit_runner(kind, quick, steps_per_execution=FIT_SPE, jit_compile=True),
        "f_eager": _eager(kind, quick),
    }
    # Steps per timed call: fewer where one step is slow (the eager loop; XLA around convolutions
    # on CPU, about 50x slower) so that every variant takes a comparable time.
    n_steps = {k: steps for k in variants}
    n_steps["f_eager"] = max(steps // 5, 2)
    if kind == "cnn" and not quick:
        for k in ("a_raw_xla", "c_tapeline_jit", "e_fit_jit", "e_fit_spe_jit"):
            n_steps[k] = max(steps // 10, 2) if k == "a_raw_xla" else max(steps // 2, 2)
    for k, fn in variants.items():  # warm-up: trace, compile (both call lengths), fill pipelines
        fn(min(n_steps[k], 10))
        fn(n_steps[k])
        fn(2 * n_steps[k])
    times: dict[str, list[float]] = {k: [] for k in variants}
    calls: dict[str, list[list[float]]] = {k: [] for k in variants}  # [t(k), t(2k)] per repetition
    for r in range(reps):
        for k, fn in variants.items():
            t1, t2 = steady_times(fn, n_steps[k])
            calls[k].append([t1, t2])
            times[k].append(n_steps[k] / (t2 - t1) if t2 > t1 else 2 * n_steps[k] / t2)
        print(f"overhead: {kind} repetition {r + 1}/{reps}", flush=True)
    b = variants["b_tapeline"]
    _, _, batch = common.SIZES[kind]
    return summarize({"model": kind, "batch": batch, "steps_per_call": n_steps, "reps": reps,
                      "samples": times, "call_seconds": calls, "b_jit": bool(b.jit),
                      "b_xla_group_steps": int(b.group), "b_jit_reason": b.reason,
                      "fit_timing": FIT_TIMING})


# The combined rows: each is the variant of its set with the highest median in this run (its
# samples, unchanged). A per-repetition maximum over noisy variants would be biased upward.
BEST_OF = {"a_raw_best": RAW_BEST, "c_tapeline": ("c_tapeline_jit", "c_tapeline_nojit"), "e_fit_best": FIT_BEST}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians, best variants, ratios and targets of one model's measured samples.

    `raw` holds what `measure` recorded (model, batch, steps_per_call, reps, samples per
    variant, call_seconds, the (b) plan); the result adds steps_per_sec, examples_per_sec,
    best_variant (per combined row), ratios and targets. Also re-aggregates a saved JSON
    (`--from_json`).
    """
    out = {k: v for k, v in raw.items() if k not in ("steps_per_sec", "examples_per_sec", "ratios", "targets")}
    times = {k: v for k, v in raw["samples"].items() if k not in BEST_OF}
    medians = {k: common.median(v) for k, v in times.items()}
    best = {row: max(members, key=lambda k: medians[k]) for row, members in BEST_OF.items()}
    for row, k in best.items():
        times[row] = times[k]
    sps = {k: common.median(v) for k, v in times.items()}
    out.update(samples=times, steps_per_sec=sps, best_variant=best, fit_best_variant=best["e_fit_best"],
               examples_per_sec={k: v * raw["batch"] for k, v in sps.items()})

    def ratio(k: str, ref: str) -> float:
        # Median of the per-repetition ratios: variants of one repetition ran back to back, so
        # this cancels the machine's slow drifts, which a ratio of medians does not.
        return common.median([x / y for x, y in zip(times[k], times[ref])])

    out["ratios"] = {k: {"vs_raw": ratio(k, "a_raw_best"), "vs_fit": ratio(k, "d_fit"),
                         "vs_fit_best": ratio(k, "e_fit_best")} for k in sps}
    fit_target = {"mlp": 1.5, "transformer": 1.2}.get(raw["model"])
    out["targets"] = {
        "b_vs_raw >= 0.95": out["ratios"]["b_tapeline"]["vs_raw"],
        "b_vs_fit_best >= 1.0": out["ratios"]["b_tapeline"]["vs_fit_best"],
        **({f"b_vs_fit >= {fit_target}": out["ratios"]["b_tapeline"]["vs_fit"]} if fit_target else {}),
    }
    return out


LABELS = {
    "a_raw_best": "(a) raw limit, best", "a_raw_xla": "(a) raw limit, XLA loop", "a_raw": "(a) raw limit, no XLA",
    "a_raw_xla_step": "(a) raw limit, one XLA call per step",
    "b_tapeline": "(b) tapeline defaults", "c_tapeline": "(c) tapeline tuned, best",
    "c_tapeline_jit": "(c) tapeline jit_compile=true", "c_tapeline_nojit": "(c) tapeline jit_compile=false",
    "d_fit": "(d) Keras fit defaults", "e_fit_best": "(e) Keras fit at its best",
    "e_fit_spe": "(e) Keras fit, steps_per_execution=50", "e_fit_jit": "(e) Keras fit, jit_compile=True",
    "e_fit_spe_jit": "(e) Keras fit, steps_per_execution=50 + jit_compile",
    "f_eager": "(f) eager GradientTape loop",
}


def profile(kind: str, *, quick: bool, steps: int, log_dir: str) -> None:
    """Traces `steps` steps of tapeline's defaults (b) after a warm-up with the TF profiler."""
    run = _tapeline(kind, quick, "auto", steps)
    run(steps)
    run(steps)
    tf.profiler.experimental.start(log_dir)
    try:
        run(steps)
    finally:
        tf.profiler.experimental.stop()
    print(f"profile of {steps} steps of (b) on {kind}: {log_dir}")


def table(results: list[dict[str, Any]]) -> str:
    order = list(LABELS)
    head = "| variant | " + " | ".join(
        f"{r['model']} b{r['batch']}: steps/s | x (a) | x (d) | x (e) best" for r in results) + " |"
    lines = [head, "|---" * (4 * len(results) + 1) + "|"]
    for k in order:
        cells = []
        for r in results:
            s, q = r["steps_per_sec"][k], r["ratios"][k]
            cells.append(f"{s:.1f} | {q['vs_raw']:.2f} | {q['vs_fit']:.2f} | {q['vs_fit_best']:.2f}")
        lines.append(f"| {LABELS[k]} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in results:
        lines.append(f"{r['model']}: (b) chose jit_compile={r['b_jit']} ({r['b_jit_reason']}), "
                     f"{r['b_xla_group_steps']} step(s) per XLA call; raw limit: "
                     f"{LABELS[r['best_variant']['a_raw_best']].removeprefix('(a) raw limit, ')}; fit at its best: "
                     f"{LABELS[r['fit_best_variant']].removeprefix('(e) ').removeprefix('(d) ')}. Targets: "
                     + "; ".join(f"{k}: {v:.2f} {'met' if v >= float(k.split('>= ')[1]) else 'MISSED'}"
                                 for k, v in r["targets"].items()))
    timing = results[0].get("fit_timing", "whole fit() calls")
    lines.append(f"\nSteady-state steps/s (k / (t(2k) - t(k)), each time the shorter of two calls, run k, 2k, "
                 f"2k, k; fit's calls timed {timing}), medians of {results[0]['reps']} interleaved repetitions after a "
                 f"warm-up (ratios: medians of the per-repetition ratios); k per call: "
                 + "; ".join(f"{r['model']}: " + ", ".join(f"{k}={v}" for k, v in r["steps_per_call"].items())
                             for r in results) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition (CI)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=100, help="steps per timed call")
    p.add_argument("--models", default="mlp,cnn,transformer")
    p.add_argument("--out_dir", default=common.RESULTS)
    p.add_argument("--name", default="overhead", help="result files <name>.{json,md,png} (quick: <name>_quick)")
    p.add_argument("--from_json", default="",
                   help="no timing: rebuild <name>.{json,md,png} from the samples of a recorded <name>.json")
    p.add_argument("--profile_steps", type=int, default=0,
                   help="only profile: N steps of (b) per model under the TensorBoard profiler into "
                        "<out_dir>/profile/<model> (view with tensorboard --logdir; needs tensorboard-plugin-profile)")
    a = p.parse_args(argv)
    common.quiet()
    if a.profile_steps:
        for k in a.models.split(","):
            profile(k, quick=a.quick, steps=a.profile_steps, log_dir=os.path.join(a.out_dir, "profile", k))
        return 0
    reps, steps = (1, 5) if a.quick else (a.reps, a.steps)
    if not a.quick and not a.from_json and steps % FIT_SPE:
        # fit with steps_per_execution runs whole executions: k and 2k steps must be multiples
        # of it, or the steady-state difference of those variants counts steps that never ran.
        p.error(f"--steps: expected a multiple of {FIT_SPE} (fit's steps_per_execution); got {steps}")
    if a.from_json:  # re-aggregate a recorded run (its samples, machine and date) with this code
        with open(a.from_json, encoding="utf-8") as f:
            data = json.load(f)
        data["results"] = [summarize(r) for r in data["results"]]
        results = data["results"]
    else:
        results = [measure(k, quick=a.quick, reps=reps, steps=steps) for k in a.models.split(",")]
        data = {"machine": common.machine(), "quick": a.quick, "results": results}
    tab = table(results)
    name = f"{a.name}_quick" if a.quick else a.name
    paths = common.write(name, data, tab, out_dir=a.out_dir)
    _chart(results, os.path.join(a.out_dir, f"{name}.png"))
    print(tab)
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0


def _chart(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["a_raw_best", "b_tapeline", "c_tapeline", "d_fit", "e_fit_best", "f_eager"]
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 3.5))
    axes = np.atleast_1d(axes)
    for ax, r in zip(axes, results):
        ax.barh([LABELS[k] for k in keys], [r["steps_per_sec"][k] for k in keys],
                color=["#888", "#d62728", "#ff9896", "#1f77b4", "#aec7e8", "#bbb"])
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{r['model']} (batch {r['batch']})")
        ax.set_xlabel("steps/s")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
