"""Where tapeline's step spends the time the raw limit does not: ablations of its step.

    python -m benchmarks.ablation                # MLP: 7 interleaved repetitions of 100 steps
    python -m benchmarks.ablation --model cnn    # the CNN (no XLA, as `auto` picks): ablation_cnn
    python -m benchmarks.ablation --model transformer --reps 5 --steps 50   # ablation_transformer
    python -m benchmarks.ablation --quick        # tiny MLP, 1 repetition (CI)

Each variant is tapeline's trainer on the overhead benchmark's model (for the MLP and the
Transformer XLA on, for the CNN off, as `auto` picks), with one thing removed or changed, to
attribute the gap to the raw limit of `overhead.py`:
  default        as shipped (MLP: 8 steps per XLA call; Transformer: 1, under its padding mask)
  group_1/16/32  steps per XLA call (jit.GROUP_STEPS)
  cond_update    (MLP, Transformer) the optimizer update inside a conditional (tf.cond on "step is finite"),
                 as before the gated writes of Steps.gated_update (a select in every write)
  gated_update   (CNN) the other way round: the gated writes instead of the conditional that a
                 step without whole-step XLA uses
  no_grad_stats  no gradient-norm statistics: this also drops the non-finite gradient check,
                 which comes from the norm's sums (so not a valid configuration, only a measurement)
  no_metrics     no training metric (accuracy)
  fixed_batch    the same batch every step instead of the tf.data pipeline (an iterator over a
                 cached, repeated single batch)
  element_pipeline  the per-example tf.data pipeline (shuffle, batch) that sources too large to
                 hold in memory get, instead of the in-memory batching by index
  step_in_raw_loop  tapeline's step (the same trainer, statistics, metrics, guarded update) in the
                 raw limit's loop: one while loop over all the steps on one fixed batch (one XLA
                 call for the MLP and the Transformer, plain TensorFlow for the CNN)
  raw_limit      (a) of overhead.py: the plain Keras step in that loop
  grad_norm_alone  (MLP) not a step: only the global gradient norm (a sum of squares over tensors
                 of the MLP's gradient shapes) in that loop; 1000 / its steps/s is the norm's ms
The last two split the gap to the raw limit into the step's own work (step_in_raw_loop vs
raw_limit) and the inner loop with its input (default vs step_in_raw_loop).
Timed per compiled inner-loop call plus the step read, as in `overhead.py`. Writes
benchmarks/results/ablation{,_cnn}.{json,md,png}. Only for measurement: it patches framework internals.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import tensorflow as tf

from benchmarks import common, overhead
from framework import jit as jit_lib
from framework import step as step_lib
from framework import trainer as trainer_lib
from framework.config import ClipConfig
from framework.data import pipeline

VARIANTS = {
    "mlp": ("default", "group_1", "group_16", "group_32", "cond_update", "no_grad_stats", "no_metrics",
            "fixed_batch", "element_pipeline", "step_in_raw_loop", "raw_limit", "grad_norm_alone"),
    # No XLA: no steps per XLA call to vary, and the update is a conditional already.
    "cnn": ("default", "gated_update", "no_grad_stats", "no_metrics", "fixed_batch", "element_pipeline",
            "step_in_raw_loop", "raw_limit"),
    # One step per XLA call under the padding mask (jit.plan): no steps per call to vary.
    "transformer": ("default", "cond_update", "no_grad_stats", "no_metrics", "fixed_batch", "step_in_raw_loop",
                    "raw_limit"),
}
XLA = {"mlp": True, "cnn": False, "transformer": True}  # as `jit_compile: auto` picks for each


def _no_stats(grads: Any, *, groups: Any, clip: Any) -> tuple[list, dict]:  # noqa: ARG001 - clip_gradients's signature
    return list(grads), {"grad_norm": tf.constant(0.0), "grad_norm_clipped": tf.constant(0.0),
                         "grads_finite": tf.constant(True)}


def _step_in_raw_loop(t: Any, it: Any, active: tuple[int, ...]) -> Callable[[int], None]:
    steps, batch = t.steps, next(it)

    @tf.function(jit_compile=steps.jit_compile, autograph=False)
    def loop(n: tf.Tensor) -> None:
        def body(j: tf.Tensor) -> tuple[tf.Tensor]:
            steps.strategy.run(steps._replica_train, args=([batch], active, t.global_step.read_value()))  # noqa: SLF001
            t.global_step.assign_add(1)
            return (j + 1,)
        tf.while_loop(lambda j: j < n, body, (tf.constant(0),))

    def run(k: int) -> None:
        steps.train_meters.reset()
        loop(tf.constant(k))
        t.global_step.numpy()

    return run


def _grad_norm_alone(quick: bool) -> Callable[[int], None]:
    model = common.make_model("mlp", quick=quick)
    grads = [tf.random.normal(v.shape) for v in model.trainable_variables]

    @tf.function(jit_compile=True, autograph=False)
    def loop(n: tf.Tensor) -> tf.Tensor:
        def body(j: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            # Scaled by the counter so XLA cannot hoist the reduction out of the loop.
            scaled = [g * (1.0 + tf.cast(j, tf.float32) * 1e-9) for g in grads]
            _, stats = step_lib.clipping.clip_gradients(scaled, groups=[0] * len(scaled),
                                                        clip=ClipConfig())
            return j + 1, total + stats["grad_norm"]
        return tf.while_loop(lambda j, _: j < n, body, (tf.constant(0), tf.constant(0.0)))[1]

    loop(tf.constant(2))
    return lambda k: loop(tf.constant(k)).numpy()


def _variant(name: str, kind: str, quick: bool) -> Callable[[int], None]:
    if name == "grad_norm_alone":
        return _grad_norm_alone(quick)
    if name == "raw_limit":
        return overhead.raw_loop(kind, quick, XLA[kind])  # the faster of the two (overhead.md)
    real_clip, real_group = step_lib.clipping.clip_gradients, jit_lib.GROUP_STEPS
    real_bytes = pipeline.IN_MEMORY_BYTES
    try:
        if name == "element_pipeline":
            pipeline.IN_MEMORY_BYTES = 0
        if name.startswith("group_"):
            jit_lib.GROUP_STEPS = int(name.split("_")[1])
        if name == "no_grad_stats":
            step_lib.clipping.clip_gradients = _no_stats
        cfg = common.tapeline_config(kind, quick=quick, jit=XLA[kind])
        if name == "no_metrics":
            cfg.task.metrics = []
        t = trainer_lib.build(cfg, tf.distribute.get_strategy())
        if name in ("cond_update", "gated_update"):
            t.steps.update.gated = name == "gated_update"  # read when the step is traced (below)
        if name == "fixed_batch":
            one = next(iter(t.train_dataset(start_step=0)))
            ds = tf.data.Dataset.from_tensors(one).cache().repeat()
            it = iter(ds)
        else:
            it = iter(t.train_dataset(start_step=0))
        active = list(range(len(t.groups.variables)))
        if name == "step_in_raw_loop":
            in_raw = _step_in_raw_loop(t, it, tuple(active))
            in_raw(2)  # trace + compile
            return in_raw

        def run(k: int) -> None:
            t.steps.train_loop(it, k, active)  # returns the loop's results, copied to the host once

        run(2)  # trace + compile while the patches are in force
        return run
    finally:
        step_lib.clipping.clip_gradients = real_clip
        jit_lib.GROUP_STEPS = real_group
        pipeline.IN_MEMORY_BYTES = real_bytes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny MLP, 1 repetition (CI)")
    p.add_argument("--model", default="mlp", choices=sorted(VARIANTS))
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out_dir", default=common.RESULTS)
    a = p.parse_args(argv)
    common.quiet()
    reps, steps = (1, 5) if a.quick else (a.reps, a.steps)
    variants = VARIANTS[a.model]
    runs = {v: _variant(v, a.model, a.quick) for v in variants}
    for fn in runs.values():  # warm-up: the first call traces (and, under compile-ahead, runs without
        fn(steps)             # XLA while XLA compiles); the second waits for that compile
        fn(steps)
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(reps):
        for v, fn in runs.items():  # interleaved
            samples[v].append(steps / common.timed(lambda fn=fn: fn(steps)))
    sps = {v: common.median(s) for v, s in samples.items()}
    lines = ["| variant | steps/s | x default | ms per step |", "|---|---|---|---|"]
    lines += [f"| {v} | {sps[v]:.1f} | {sps[v] / sps['default']:.2f} | {1000 / sps[v]:.2f} |" for v in variants]
    model = {"mlp": "MLP 784-512-512-10", "cnn": "CNN conv32-conv64-fc128",
             "transformer": "Transformer text encoder (length 128)"}[a.model]
    model = f"tiny {a.model.upper()} (quick)" if a.quick else model
    lines.append(f"\n{model}, batch {common.SIZES[a.model][2]}, XLA {'on' if XLA[a.model] else 'off'}; medians "
                 f"of {reps} interleaved repetitions of {steps} steps. no_grad_stats also drops the non-finite "
                 "check (measurement only)"
                 + ("; grad_norm_alone is not a step: its ms per step is the gradient norm's own cost."
                    if "grad_norm_alone" in variants else "."))
    table = "\n".join(lines)
    data = {"machine": common.machine(), "quick": a.quick, "steps_per_sec": sps, "samples": samples}
    name = ("ablation" if a.model == "mlp" else f"ablation_{a.model}") + ("_quick" if a.quick else "")
    paths = common.write(name, data, table, out_dir=a.out_dir)
    _chart(sps, os.path.join(a.out_dir, f"{name}.png"), title=f"tapeline {a.model.upper()} step: ablations")
    print(table)
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0


def _chart(sps: dict[str, float], path: str, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    steps = [v for v in sps if v != "grad_norm_alone"]  # not a step: off the scale
    ax.barh(steps, [sps[v] for v in steps], color=["#d62728"] + ["#aaa"] * (len(steps) - 1))
    ax.set_xlabel("steps/s")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
