"""Start-up and memory: time to the first step and peak RSS, tapeline vs Keras `fit`; RSS growth.

    python -m benchmarks.startup            # MLP and CNN first step; MLP RSS at steps 1k and 10k
    python -m benchmarks.startup --quick    # tiny MLP; RSS at steps 50 and 200 (CI)

Each measurement runs in a fresh process (nothing imported, traced or cached before it):
  first step   import, build (model, optimizer, data checks), then one training step, which
               includes tracing and compiling the step; peak RSS after it. tapeline: its trainer
               with defaults, one compiled inner-loop call of 1 step; fit: `compile` then
               `fit(steps_per_epoch=1)`. Only the synthetic NumPy arrays exist beforehand.
               Where tapeline runs the whole step under XLA, its first call runs without XLA
               while XLA compiles in the background (`trainer.xla_compile_ahead`); "XLA step
               ready" is when that compile has finished (from the start of the build), and
               "next step" is the step after it, under XLA.
               The "tapeline" (cold) row gets an empty persistent XLA cache of its own, as the
               CLI's default cache gives a first run (it includes writing the entries).
               Where tapeline's step is XLA-compiled, a third row ("tapeline warm-cache") times
               it with XLA's persistent compilation cache (TF_XLA_FLAGS=
               --tf_xla_persistent_cache_directory=DIR) filled by one earlier process: what a
               resumed or repeated run of the same model pays.
  growth       a real run to N steps: tapeline through its Controller (summaries, log line,
               checkpoint at the end), Keras `fit` with defaults; RSS sampled along the way,
               compared at the first and last mark; steps/s between the marks (so the
               controller's per-loop work is included, start-up is not).
Writes benchmarks/results/startup.{json,md,png}.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

_T0 = time.perf_counter()  # before TensorFlow is imported (the child's own start)
WARM = "tapeline warm-cache"  # tapeline with a persistent XLA cache filled by an earlier process
FRESH = object()  # marks the cold runs: each gets an empty persistent XLA cache (the CLI's default)


# ----------------------------------------------------------------------------- children


def _xla_cache_entries() -> int | None:
    """Files in the persistent XLA cache named by TF_XLA_FLAGS (None without one)."""
    flag = "--tf_xla_persistent_cache_directory="
    path = next((f[len(flag):] for f in os.environ.get("TF_XLA_FLAGS", "").split() if f.startswith(flag)), None)
    return None if path is None else len(os.listdir(path)) if os.path.isdir(path) else 0


def _first_step(framework: str, kind: str, quick: bool) -> dict[str, Any]:
    cache_entries = _xla_cache_entries()  # before anything compiles
    import tensorflow as tf

    from benchmarks import common

    common.quiet()
    t_import = time.perf_counter()
    common.synthetic(kind, 8 * common.SIZES[kind][2])  # the data exist before the clock starts
    if framework == "tapeline":
        from framework import trainer as trainer_lib

        t0 = time.perf_counter()
        t = trainer_lib.build(common.tapeline_config(kind, quick=quick), tf.distribute.get_strategy())
        it = iter(t.train_dataset(start_step=0))
        active = list(range(len(t.groups.variables)))
        t1 = time.perf_counter()
        t.steps.train_loop(it, 1, active)  # returns its results, copied to the host (as the controller's)
        t2 = time.perf_counter()
        t.steps.settle()  # the XLA compile that compile-ahead runs in the background, if any
        jit = bool(t.steps.jit_compile)
        xla_ready = time.perf_counter() - t0 if jit else None
        t_next = time.perf_counter()
        t.steps.train_loop(it, 1, active)
        second = time.perf_counter() - t_next  # the next step alone
    else:
        t0 = time.perf_counter()
        model = common.compiled_fit_model(kind, quick=quick)
        ds = common.fit_dataset(kind)
        t1 = time.perf_counter()
        model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
        t2 = time.perf_counter()
        model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
        t3 = time.perf_counter()
        jit = bool(model.jit_compile)
        xla_ready = t2 - t0 if jit else None
        second = t3 - t2
    return {"framework": framework, "model": kind, "jit": jit, "import_s": t_import - _T0, "build_s": t1 - t0,
            "first_step_s": t2 - t1, "to_first_step_s": t2 - t0, "second_step_s": second, "xla_ready_s": xla_ready,
            "peak_rss_mb": common.peak_rss_mb(), "rss_mb": common.rss_mb(), "xla_cache_entries_at_start": cache_entries}


def _growth(framework: str, kind: str, quick: bool, marks: list[int]) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from benchmarks import common

    common.quiet()
    total = marks[-1]
    every = max(1, min(100, marks[0] // 5))
    series: list[tuple[int, float]] = []
    clock: dict[int, float] = {}
    t0 = time.perf_counter()
    if framework == "tapeline":
        from framework import controller as controller_lib
        from framework import trainer as trainer_lib

        cfg = common.tapeline_config(kind, quick=quick, steps_per_loop=every, train_steps=total,
                                     checkpoint_interval=10 ** 9, eval_interval=10 ** 9)

        def hook(event: str, ctx: Any) -> None:
            if event == "train_loop_end":
                step = ctx.step
                series.append((step, common.rss_mb()))
                clock[step] = time.perf_counter()

        with tempfile.TemporaryDirectory(prefix="tapeline-startup-") as model_dir:
            t = trainer_lib.build(cfg, tf.distribute.get_strategy())
            controller_lib.Controller(trainer=t, model_dir=model_dir, hooks=[hook]).train(evaluate=False)
    else:
        class Rss(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:  # noqa: ARG002 - Keras API
                if (batch + 1) % every == 0:
                    series.append((batch + 1, common.rss_mb()))
                    clock[batch + 1] = time.perf_counter()

        model = common.compiled_fit_model(kind, quick=quick)
        model.fit(common.fit_dataset(kind), epochs=1, steps_per_epoch=total, verbose=0, callbacks=[Rss()])
    elapsed = time.perf_counter() - t0
    at = {str(m): next((r for s, r in series if s >= m), float("nan")) for m in marks}
    s0 = next(s for s, _ in series if s >= marks[0])
    s1 = series[-1][0]
    rate = (s1 - s0) / (clock[s1] - clock[s0]) if s1 > s0 else float("nan")
    first, last = at[str(marks[0])], at[str(marks[-1])]
    return {"framework": framework, "model": kind, "marks": marks, "steps_per_loop": every,
            "rss_at_mb": at, "growth_mb": last - first,
            "growth_per_1k_steps_mb": (last - first) / (total - marks[0]) * 1000,
            "peak_rss_mb": common.peak_rss_mb(), "series": series, "steps_per_sec": rate,
            "wall_s": elapsed}


# ----------------------------------------------------------------------------- parent


def _break_even(first: list[dict[str, Any]], growth: list[dict[str, Any]]) -> list[str]:
    """When tapeline's later first step is repaid by its steady-state speed (growth runs' steps/s)."""
    out = []
    for m in sorted({r["model"] for r in growth}):
        def pick(rows, fw):
            return next((r for r in rows if r["model"] == m and r["framework"] == fw), None)
        tp, fi, gt, gf = pick(first, "tapeline"), pick(first, "fit"), pick(growth, "tapeline"), pick(growth, "fit")
        if not (tp and fi and gt and gf):
            continue
        later = tp["to_first_step_s"] - fi["to_first_step_s"]
        saved = 1.0 / gf["steps_per_sec"] - 1.0 / gt["steps_per_sec"]  # seconds per step
        if later <= 0:
            out.append(f"\n{m}: tapeline reaches its first step {-later:.2f} s sooner than Keras fit.")
        elif saved > 0:
            out.append(f"\n{m}: tapeline's first step comes {later:.2f} s later; at the steady-state speeds above "
                       f"({gt['steps_per_sec']:.1f} vs {gf['steps_per_sec']:.1f} steps/s) it is ahead of Keras fit "
                       f"after {later / saved:,.0f} steps.")
    return out


def table(first: list[dict[str, Any]], growth: list[dict[str, Any]]) -> str:
    lines = ["| model | framework | build s | first step s (trace + compile) | to first step s | next step s "
             "| XLA step ready s | peak RSS MiB | import s |", "|---" * 9 + "|"]
    for r in first:
        ready = r.get("xla_ready_s")  # absent in a JSON written before compile-ahead
        lines.append(f"| {r['model']} | {r['framework']}{' (XLA)' if r['jit'] else ''} | {r['build_s']:.2f} "
                     f"| {r['first_step_s']:.2f} | {r['to_first_step_s']:.2f} | {r['second_step_s']:.3f} "
                     f"| {'-' if ready is None else f'{ready:.2f}'} | {r['peak_rss_mb']:.0f} | {r['import_s']:.2f} |")
    models = sorted({r["model"] for r in first}, key=[r["model"] for r in first].index)
    for m in models:
        tp = next((r for r in first if r["model"] == m and r["framework"] == "tapeline"), None)
        fi = next((r for r in first if r["model"] == m and r["framework"] == "fit"), None)
        if tp and fi:
            ratio = tp["to_first_step_s"] / fi["to_first_step_s"]
            lines.append(f"\n{m}: tapeline's time to first step is {ratio:.2f}x "
                         f"Keras fit's; peak RSS {tp['peak_rss_mb'] / fi['peak_rss_mb']:.2f}x.")
        warm = next((r for r in first if r["model"] == m and r["framework"] == WARM), None)
        if warm and fi:
            lines.append(f"\n{m}: with a warm persistent XLA cache (a later run of the same model with "
                         f"TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR) it is "
                         f"{warm['to_first_step_s'] / fi['to_first_step_s']:.2f}x.")
    if growth:
        marks = growth[0]["marks"]
        lines += ["", f"| model | framework | RSS MiB at step {marks[0]} | RSS MiB at step {marks[-1]} "
                      f"| growth MiB | per 1k steps MiB | steps/s (steps {marks[0]}-{marks[-1]}) |",
                  "|---" * 7 + "|"]
        for r in growth:
            a, b = r["rss_at_mb"][str(marks[0])], r["rss_at_mb"][str(marks[-1])]
            lines.append(f"| {r['model']} | {r['framework']} | {a:.1f} | {b:.1f} | {r['growth_mb']:+.1f} "
                         f"| {r['growth_per_1k_steps_mb']:+.2f} | {r['steps_per_sec']:.1f} |")
        lines += _break_even(first, growth)
    return "\n".join(lines)


def _chart(first: list[dict[str, Any]], growth: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [f"{r['model']} {r['framework']}" for r in first]
    axes[0].barh(labels, [r["build_s"] for r in first], label="build")
    axes[0].barh(labels, [r["first_step_s"] for r in first], left=[r["build_s"] for r in first],
                 label="first step (trace + compile)")
    axes[0].set_xlabel("seconds")
    axes[0].set_title("time to first step")
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8)
    for r in growth:
        xs, ys = zip(*r["series"]) if r["series"] else ((), ())
        axes[1].plot(xs, ys, label=f"{r['model']} {r['framework']}")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("RSS MiB")
    axes[1].set_title("memory over a run")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny MLP, RSS at 50 and 200 steps (CI)")
    p.add_argument("--models", default=None, help="first-step models (default mlp,cnn,transformer; quick: mlp)")
    p.add_argument("--growth_models", default="mlp", help="models of the RSS-growth runs ('' to skip)")
    p.add_argument("--marks", default=None, help="RSS marks in steps (default 1000,10000; quick: 50,200)")
    p.add_argument("--reps", type=int, default=3, help="fresh processes per first-step measurement (median)")
    p.add_argument("--timeout_s", type=float, default=1800.0)
    p.add_argument("--out_dir", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.reps = 1
    marks = [int(m) for m in (a.marks or ("50,200" if a.quick else "1000,10000")).split(",")]
    if a.child:
        what, framework, kind = a.child.split(":")
        res = (_first_step(framework, kind, a.quick) if what == "first"
               else _growth(framework, kind, a.quick, marks))
        from benchmarks import common

        common.write_json(a.result, res)
        return 0

    from benchmarks import common

    out_dir = a.out_dir or common.RESULTS
    models = (a.models or ("mlp" if a.quick else "mlp,cnn,transformer")).split(",")
    growth_models = [m for m in a.growth_models.split(",") if m]
    flags = ["--quick"] if a.quick else []
    first, growth = [], []
    with tempfile.TemporaryDirectory(prefix="tapeline-startup-") as tmp:
        for kind in models:
            # A persistent XLA cache (TF reads the flag from the environment at start): a first
            # process fills it, the timed ones load the compiled step from it.
            cache_env = dict(os.environ, TF_XLA_FLAGS=f"--tf_xla_persistent_cache_directory={tmp}/xla-{kind}")
            primed = common.run_child("benchmarks.startup", ["--child", f"first:tapeline:{kind}", *flags],
                                      timeout_s=a.timeout_s, env=cache_env,
                                      result_path=os.path.join(tmp, f"first-prime-{kind}.json"))
            # row label -> (the child's framework, its environment; None: this process's;
            # FRESH: an empty persistent XLA cache of its own, as the CLI's default gives a first run)
            runs = {"tapeline": ("tapeline", FRESH), "fit": ("fit", None)}
            if primed["jit"]:
                runs[WARM] = ("tapeline", cache_env)
            samples: dict[str, list[dict[str, Any]]] = {label: [] for label in runs}
            for rep in range(a.reps):
                for i, (label, (fw, env)) in enumerate(runs.items()):  # interleaved fresh processes
                    if env is FRESH:
                        env = dict(os.environ, TF_XLA_FLAGS=f"--tf_xla_persistent_cache_directory="
                                                            f"{tmp}/xla-cold-{kind}-{rep}")
                    samples[label].append(common.run_child(
                        "benchmarks.startup", ["--child", f"first:{fw}:{kind}", *flags], timeout_s=a.timeout_s,
                        env=env, result_path=os.path.join(tmp, f"first-{i}-{kind}-{rep}.json")))
            for fw, rs in samples.items():
                med = dict(rs[0], framework=fw)
                for k in ("import_s", "build_s", "first_step_s", "to_first_step_s", "second_step_s",
                          "peak_rss_mb", "rss_mb"):
                    med[k] = common.median([r[k] for r in rs])
                ready = [r["xla_ready_s"] for r in rs if r.get("xla_ready_s") is not None]
                med["xla_ready_s"] = common.median(ready) if ready else None
                med["samples"] = rs
                first.append(med)
            print(f"startup: first step of {kind} done", flush=True)
        for kind in growth_models:
            for fw in ("tapeline", "fit"):
                growth.append(common.run_child(
                    "benchmarks.startup", ["--child", f"growth:{fw}:{kind}", f"--marks={','.join(map(str, marks))}",
                                           *flags], timeout_s=a.timeout_s,
                    result_path=os.path.join(tmp, f"growth-{fw}-{kind}.json")))
            print(f"startup: growth of {kind} done", flush=True)
    data = {"machine": common.machine(), "quick": a.quick, "reps": a.reps, "first_step": first, "growth": growth}
    tab = table(first, growth)
    name = "startup_quick" if a.quick else "startup"
    paths = common.write(name, data, tab, out_dir=out_dir)
    _chart(first, growth, os.path.join(out_dir, f"{name}.png"))
    print(tab)
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
