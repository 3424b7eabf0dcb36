"""Scaling over replicas: tapeline vs Keras `fit` under the same strategy, same global batch.

    python -m benchmarks.scaling            # MLP, CNN, Transformer; 1 device, Mirrored 1/2/4, 2 and 4 workers
    python -m benchmarks.scaling --quick    # tiny MLP, Mirrored over 1/2, 2 workers, 1 repetition (CI)

Every setup runs in its own fresh process (logical devices are fixed per process):
  default      1 device, no strategy (tapeline's jit_compile=auto may pick XLA here)
  mirrored:N   MirroredStrategy over N logical CPU devices (GPUs where present)
  workers:N    MultiWorkerMirroredStrategy, N processes on 127.0.0.1 (TF_CONFIG from framework.launch);
               these also time one all-reduce of the model's gradients (seconds per parameter)
In each process, interleaved, after a warm-up, median of --reps:
  tapeline     tapeline's trainer, defaults (steps_per_loop=100)
  fit          Keras fit, defaults (steps_per_execution=1)
  fit_spe      Keras fit, steps_per_execution=<steps per call> (no XLA: it fails under Mirrored)
Speed-up and efficiency are against the `default` process of the same variant. On logical CPU
devices all replicas share the same cores: no speed-up is possible and the numbers measure the
distribution overhead (splitting batches, per-replica dispatch, all-reduce), not scaling.
From the 1-device step time and the measured all-reduce cost per parameter, the table ends
with an *estimate* of data-parallel efficiency on 8 devices (ring all-reduce, whose time grows
as 2 (N - 1) / N of the data; no overlap of communication with the backward pass), stated with
its inputs. Writes benchmarks/results/scaling.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

VARIANTS = ("tapeline", "fit", "fit_spe")


# ----------------------------------------------------------------------------- child process


def _child(a: argparse.Namespace) -> int:
    """Measures every variant under one setup and writes the JSON result."""
    setup = a.child
    kind, count = (setup.split(":") + ["1"])[:2]
    count = int(count)
    if kind == "mirrored":
        # Before TensorFlow initializes its devices (the imports below do not).
        from framework import distribute as dist

        if not dist.tf.config.list_physical_devices("GPU"):
            dist.setup_logical_cpus(count)
    import tensorflow as tf

    from benchmarks import common
    from framework import config as config_lib
    from framework import distribute as dist
    from framework import trainer as trainer_lib

    common.quiet()
    gpus = tf.config.list_physical_devices("GPU")
    if kind == "default":
        runtime = {}
        strategy = tf.distribute.get_strategy()
    elif kind == "mirrored":
        runtime = {"strategy": "mirrored", **({"num_gpus": count} if gpus else {"cpu_replicas": count})}
        strategy = dist.make_strategy(config_lib.RuntimeConfig(**runtime))
    elif kind == "workers":
        runtime = {"strategy": "multi_worker", "worker_timeout_s": 120.0}
        strategy = dist.make_strategy(config_lib.RuntimeConfig(**runtime))
    else:
        raise ValueError(f"--child: unknown setup {setup!r}")
    steps = a.steps
    out: dict[str, Any] = {"setup": setup, "replicas": strategy.num_replicas_in_sync, "models": {}}
    for model_kind in a.models.split(","):
        _, _, batch = common.SIZES[model_kind]
        # A call of a few seconds at most: the CNN's step is ~4x the MLP's, the Transformer's ~15x.
        divisor = {"cnn": 3, "transformer": 5}.get(model_kind, 1)
        model_steps = max(2, steps // divisor) if not a.quick else steps
        variants: dict[str, Callable[[int], Any]] = {}
        failed: dict[str, str] = {}
        cfg = common.tapeline_config(model_kind, quick=a.quick, steps_per_loop=model_steps,
                                     runtime={k: v for k, v in runtime.items() if k != "worker_timeout_s"})
        t = trainer_lib.build(cfg, strategy)
        it = iter(t.train_dataset(start_step=0))
        active = list(range(len(t.groups.variables)))

        def tapeline(k: int, t=t, it=it, active=active) -> None:
            t.steps.train_loop(it, k, active)
            t.global_step.numpy()

        variants["tapeline"] = tapeline
        for name, kw in (("fit", {}), ("fit_spe", {"steps_per_execution": model_steps})):
            if name == "fit_spe" and kind == "workers":
                # Keras 3.15: steps_per_execution > 1 under MultiWorkerMirroredStrategy with
                # > 1 worker fails ("You must feed a value for placeholder tensor
                # 'while/body/.../while/cond/Placeholder'"): a collective inside the loop's cond.
                failed["fit_spe"] = "Keras 3.15 fails: steps_per_execution > 1 under multi-worker"
                continue
            with strategy.scope():
                model = common.compiled_fit_model(model_kind, quick=a.quick, **kw)
            ds = common.fit_dataset(model_kind, shard=kind == "workers")
            if kind == "workers":
                _patch_symbolic_build(model, strategy, ds)
                _patch_keras_multi_worker_reduce()
            variants[name] = (lambda k, model=model, ds=ds:
                              model.fit(ds, epochs=1, steps_per_epoch=k, verbose=0))
        for fn in variants.values():  # warm-up: trace, compile, fill the pipelines
            fn(min(model_steps, 10))
            fn(model_steps)
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(a.reps):
            for k, fn in variants.items():
                samples[k].append(model_steps / common.timed(lambda fn=fn: fn(model_steps)))
        if kind == "workers":
            out.setdefault("allreduce", {})[model_kind] = _allreduce_cost(strategy, t.model, reps=a.reps)
        out["models"][model_kind] = {
            "batch": batch, "steps_per_call": model_steps, "jit": bool(t.steps.jit_compile),
            "jit_reason": t.jit_reason, "steps_per_sec": {k: common.median(v) for k, v in samples.items()},
            "samples": samples, "failed": failed}
    if a.result:
        common.write_json(a.result, out)
    return 0


def _allreduce_cost(strategy: Any, model: Any, *, reps: int, calls: int = 10) -> dict[str, float]:
    """Seconds of one cross-replica SUM of gradient-shaped tensors of `model` (median over reps)."""
    import tensorflow as tf

    from benchmarks import common

    shapes = [v.shape for v in model.trainable_variables]
    params = int(sum(int(tf.TensorShape(s).num_elements()) for s in shapes))

    @tf.function
    def reduce_all() -> Any:
        def fn() -> Any:
            grads = [tf.ones(s, tf.float32) for s in shapes]
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return strategy.run(fn)

    reduce_all()  # trace and set up the collectives
    per_call = []
    for _ in range(max(reps, 3)):
        per_call.append(common.timed(lambda: [reduce_all() for _ in range(calls)]) / calls)
    s = common.median(per_call)
    return {"params": params, "seconds": s, "seconds_per_param": s / params}


def estimate(rows: list[dict[str, Any]], runs: list[dict[str, Any]], *, devices: int = 8) -> dict[str, Any]:
    """Estimated efficiency on `devices` devices per model, from measured inputs (see the docstring).

    Inputs per model: t_step, tapeline's 1-device step time; c, the all-reduce seconds per
    parameter measured over the most worker processes; P, the parameter count. A ring all-reduce
    moves 2 (N - 1) / N of the data per device, so its time on N devices is scaled from the
    measured one by [2 (N - 1) / N] / [2 (n - 1) / n] (n: measured workers). Efficiency
    = t_step / (t_step + t_allreduce(N)), communication not overlapped (a lower bound).
    """
    worker_runs = [r for r in runs if r["setup"].startswith("workers") and r.get("allreduce")]
    if not worker_runs:
        return {}
    measured = max(worker_runs, key=lambda r: r["replicas"])
    n = measured["replicas"]
    scale = (2 * (devices - 1) / devices) / (2 * (n - 1) / n)
    out = {}
    for row in rows:
        if row["setup"] != "default" or row["model"] not in measured["allreduce"]:
            continue
        ar = measured["allreduce"][row["model"]]
        t_step = 1.0 / row["steps_per_sec"]["tapeline"]
        t_ar = ar["seconds"] * scale
        out[row["model"]] = {"devices": devices, "measured_workers": n, "params": ar["params"],
                             "seconds_per_param": ar["seconds_per_param"], "t_step_s": t_step,
                             "t_allreduce_s": t_ar, "efficiency": t_step / (t_step + t_ar)}
    return out


def _estimate_text(est: dict[str, Any]) -> str:
    if not est:
        return ""
    lines = ["", "", "Estimate (not a measurement) of data-parallel efficiency on 8 devices with this machine's "
             "step time and interconnect: efficiency = t_step / (t_step + t_allreduce(8)), ring all-reduce "
             "scaled from the measured workers, no overlap.", "",
             "| model | parameters | all-reduce s/parameter (measured) | t_step (1 device) | "
             "t_allreduce(8), est. | efficiency on 8, est. |", "|---|---|---|---|---|---|"]
    for model, e in est.items():
        lines.append(f"| {model} | {e['params']:,} | {e['seconds_per_param']:.2e} ({e['measured_workers']} workers) "
                     f"| {e['t_step_s'] * 1e3:.1f} ms | {e['t_allreduce_s'] * 1e3:.1f} ms | {e['efficiency']:.2f} |")
    return "\n".join(lines)


def _patch_symbolic_build(model: Any, strategy: Any, ds: Any) -> None:
    """Works around Keras 3.15 `fit` under MultiWorkerMirroredStrategy with > 1 worker.

    `fit` first takes one distributed batch and `strategy.reduce("MEAN", batch)`s it to build
    the model symbolically; the collective reduce of a PerReplica data batch fails ("Attempt to
    convert a value (PerReplica...) to a Tensor"). The build needs only shapes and dtypes: give
    it a local batch instead.
    """
    import tensorflow as tf

    local = next(iter(ds))

    def build(iterator: Any = None, data_batch: Any = None) -> None:  # noqa: ARG001 - Keras's signature
        with strategy.scope():
            model._symbolic_build(data_batch=tf.nest.map_structure(tf.convert_to_tensor, local))  # noqa: SLF001

    model._maybe_symbolic_build = build  # noqa: SLF001


def _patch_keras_multi_worker_reduce() -> None:
    """Works around Keras 3.15 `fit` under MultiWorkerMirroredStrategy with > 1 worker (2 of 2).

    Each step's logs (loss, metrics: scalars) are reduced across workers with
    `strategy.reduce("MEAN", v, axis=0)`, which fails on a scalar ("Invalid reduction dimension
    0 for input with 0 dimensions"). Reduce scalars with axis=None instead: the same collective
    per output and step that Keras intends.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    original = keras_tf_trainer.reduce_per_replica
    if getattr(original, "_tapeline_patched", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and keras_tf_trainer._collective_all_reduce_multi_worker(strategy):  # noqa: SLF001
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._tapeline_patched = True  # type: ignore[attr-defined]  # noqa: SLF001 - our own marker
    keras_tf_trainer.reduce_per_replica = reduce_per_replica


# ----------------------------------------------------------------------------- parent


def _run_setup(setup: str, a: argparse.Namespace, tmp: str) -> dict[str, Any]:
    from benchmarks import common

    args = ["--child", setup, "--models", a.models, "--reps", str(a.reps), "--steps", str(a.steps)]
    if a.quick:
        args.append("--quick")
    timeout = a.timeout_s
    if not setup.startswith("workers"):
        return common.run_child("benchmarks.scaling", args, timeout_s=timeout,
                                result_path=os.path.join(tmp, f"{setup.replace(':', '_')}.json"))
    from framework import launch

    n = int(setup.split(":")[1])
    configs = launch.tf_configs(launch.free_ports(n))
    procs, paths, logs = [], [], []
    for i, tf_config in enumerate(configs):
        path = os.path.join(tmp, f"workers_{n}_{i}.json")
        log = open(os.path.join(tmp, f"workers_{n}_{i}.log"), "w", encoding="utf-8")
        env = dict(os.environ, TF_CONFIG=tf_config, TF_CPP_MIN_LOG_LEVEL="2")
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.scaling", *args, f"--result={path}"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
        paths.append(path)
        logs.append(log)
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        launch.stop_processes(procs, logs)
    if any(p.returncode != 0 for p in procs) or not os.path.exists(paths[0]):
        with open(os.path.join(tmp, f"workers_{n}_0.log"), encoding="utf-8") as f:
            tail = "\n".join(f.read().strip().splitlines()[-25:])
        raise RuntimeError(f"scaling: {setup} failed (exit codes {[p.returncode for p in procs]}):\n{tail}")
    with open(paths[0], encoding="utf-8") as f:
        return json.load(f)  # the chief's measurement (all workers run in lock-step)


def _derive(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows per (model, setup): steps/s, speed-up, efficiency and overhead vs the default process."""
    rows = []
    base = next(r for r in runs if r["setup"] == "default")
    for model in base["models"]:
        for r in runs:
            m = r["models"][model]
            row = {"model": model, "setup": r["setup"], "replicas": r["replicas"], "batch": m["batch"],
                   "jit": m["jit"], "steps_per_sec": m["steps_per_sec"], "speedup": {}, "efficiency": {},
                   "overhead": {}, "examples_per_sec": {}}
            row["failed"] = m.get("failed", {})
            for v in VARIANTS:
                s, b = m["steps_per_sec"].get(v), base["models"][model]["steps_per_sec"][v]
                ok = s is not None
                row["examples_per_sec"][v] = s * m["batch"] if ok else None
                row["speedup"][v] = s / b if ok else None
                row["efficiency"][v] = s / b / r["replicas"] if ok else None
                row["overhead"][v] = b / s - 1.0 if ok else None  # extra time per step against one device
            sps = m["steps_per_sec"]
            row["tapeline_vs_fit"] = sps["tapeline"] / sps["fit"]
            row["tapeline_vs_fit_spe"] = sps["tapeline"] / sps["fit_spe"] if "fit_spe" in sps else None
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], *, logical_cpus: bool) -> str:
    head = ("| model (global batch) | setup | replicas | tapeline steps/s | fit steps/s | fit spe steps/s "
            "| tapeline / fit | tapeline / fit spe | tapeline speed-up vs 1 device | efficiency "
            f"| {'distribution overhead' if logical_cpus else 'overhead'} (tapeline, fit) |")
    lines = [head, "|---" * 11 + "|"]
    def num(v: Any, fmt: str) -> str:
        return "fails" if v is None else format(v, fmt)

    for r in rows:
        s = r["steps_per_sec"]
        lines.append(
            f"| {r['model']} ({r['batch']}) | {r['setup']}{' (XLA)' if r['jit'] else ''} | {r['replicas']} "
            f"| {s['tapeline']:.1f} | {s['fit']:.1f} | {num(s.get('fit_spe'), '.1f')} | {r['tapeline_vs_fit']:.2f} "
            f"| {num(r['tapeline_vs_fit_spe'], '.2f')} | {r['speedup']['tapeline']:.2f} "
            f"| {r['efficiency']['tapeline']:.2f} | {r['overhead']['tapeline']:+.0%}, {r['overhead']['fit']:+.0%} |")
    failures = sorted({f"{v}: {why}" for r in rows for v, why in r["failed"].items()})
    note = ("\nSpeed-up, efficiency (speed-up / replicas) and overhead (extra time per step) are against the "
            "`default` process (1 device, no strategy) of the same variant. ")
    if logical_cpus:
        note += ("The replicas are logical devices on the same CPU cores: there is no extra compute, so this "
                 "is distribution overhead, not scaling.")
    if failures:
        note += " 'fails': " + "; ".join(failures) + "."
    return "\n".join(lines) + note


def _chart(rows: list[dict[str, Any]], path: str) -> None:
    import numpy as np

    from benchmarks import common

    models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
    with common.chart(path, 1, len(models), figsize=(6 * len(models), 3.8)) as (_, axes):
        for ax, model in zip(np.atleast_1d(axes), models):
            rs = [r for r in rows if r["model"] == model]
            xs = np.arange(len(rs))
            w = 0.27
            for i, v in enumerate(VARIANTS):
                ax.bar(xs + (i - 1) * w, [r["steps_per_sec"].get(v, 0.0) for r in rs], w, label=v)
            ax.set_xticks(xs, [r["setup"] for r in rs])
            ax.set_ylabel("steps/s (same global batch)")
            ax.set_title(f"{model} (global batch {rs[0]['batch']})")
            ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny MLP, Mirrored over 1/2, 2 workers, 1 repetition")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=100,
                   help="steps per timed call (a third for the CNN, a fifth for the Transformer)")
    p.add_argument("--models", default=None, help="default mlp,cnn,transformer (quick: mlp)")
    p.add_argument("--replicas", default=None, help="Mirrored replica counts (default 1,2,4; quick: 1,2)")
    p.add_argument("--workers", default=None, help="multi-worker process counts (default 2,4; quick: 2; 0: skip)")
    p.add_argument("--timeout_s", type=float, default=1800.0, help="bound on each setup's process(es)")
    p.add_argument("--out_dir", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.steps = 1, 5
    a.models = a.models or ("mlp" if a.quick else "mlp,cnn,transformer")
    if a.child:
        return _child(a)

    from benchmarks import common

    out_dir = a.out_dir or common.RESULTS
    counts = [int(c) for c in (a.replicas or ("1,2" if a.quick else "1,2,4")).split(",")]
    workers = [int(w) for w in (a.workers or ("2" if a.quick else "2,4")).split(",") if int(w) > 0]
    setups = ["default"] + [f"mirrored:{c}" for c in counts] + [f"workers:{w}" for w in workers]
    runs = []
    with tempfile.TemporaryDirectory(prefix="tapeline-scaling-") as tmp:
        for s in setups:
            t0 = time.monotonic()
            runs.append(_run_setup(s, a, tmp))
            print(f"scaling: {s} done in {time.monotonic() - t0:.0f}s", flush=True)
    import tensorflow as tf

    logical = not tf.config.list_physical_devices("GPU")
    rows = _derive(runs)
    est = estimate(rows, runs)
    data = {"machine": common.machine(), "quick": a.quick, "logical_cpus": logical, "reps": a.reps,
            "runs": runs, "rows": rows, "estimate_8": est}
    tab = table(rows, logical_cpus=logical) + _estimate_text(est)
    name = "scaling_quick" if a.quick else "scaling"
    common.publish(name, data, tab, out_dir=out_dir, chart=lambda path: _chart(rows, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
