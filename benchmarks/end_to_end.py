"""End to end through the CLI: tapeline's steady state in a real `python -m framework.main` run.

    python -m benchmarks.end_to_end            # MLP, CNN, Transformer (~6 min)
    python -m benchmarks.end_to_end --quick    # tiny steps, one repetition (CI)

For each model, per repetition, interleaved:
  cli   two real CLI runs (`--mode=train`, defaults, a checkpoint at the end) of N1 and N2 steps
        in fresh model directories, timed as whole processes: steps/s = (N2 - N1) / (T2 - T1).
        Start-up, tracing, compiling and the final checkpoint cancel in the difference (an
        untimed first run fills a persistent XLA cache both timed runs load from); the
        controller's per-loop work (host reads, summaries, the log line) is included.
  raw   the raw limit of `overhead.py` (the best of the three bare loops on one fixed batch,
        steady state), measured in a fresh process of its own;
  fit   Keras `fit` with its defaults, steady state, in a fresh process.
Ratios are medians of the per-repetition ratios. Writes benchmarks/results/end_to_end.{json,md,png}.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

STEPS = {"mlp": (300, 1300), "cnn": (100, 400), "transformer": (100, 400)}
QUICK_STEPS = (10, 40)


def _child(spec: str, quick: bool) -> dict[str, Any]:
    """`raw:<kind>` or `fit:<kind>`: one steady-state rate, measured in this fresh process."""
    from benchmarks import common, overhead

    common.quiet()
    what, kind = spec.split(":")
    k = 5 if quick else 100
    if what == "raw":
        loops = [overhead.raw_loop(kind, quick, jit) for jit in (True, False, "step")]
    else:
        loops = [overhead.fit_runner(kind, quick)]
    rates = []
    for fn in loops:
        if kind == "cnn" and not quick and fn is loops[0] and what == "raw":
            rates.append(0.0)  # the XLA loop around convolutions (~50x slower here): never the best
            continue
        fn(min(k, 10))
        fn(k)
        fn(2 * k)
        rates.append(overhead.steady_rate(fn, k))
    return {"steps_per_sec": max(rates), "all": rates}


def _cli_seconds(kind: str, steps: int, quick: bool, tmp: str) -> float:
    """Wall time of one real CLI run of `steps` steps (a fresh model_dir)."""
    model_dir = tempfile.mkdtemp(prefix=f"cli-{kind}-{steps}-", dir=tmp)
    over = f"trainer.train_steps={steps},trainer.steps_per_loop={10 if quick else 100}"
    if quick:
        over += ",task.model.quick=true"
    cmd = [sys.executable, "-m", "framework.main", "--import=benchmarks.common", f"--experiment=bench_{kind}",
           f"--model_dir={model_dir}", "--mode=train", f"--params_override={over}"]
    # A persistent XLA cache of this benchmark's own, filled by an untimed first run (`measure`):
    # both timed runs then load the compiled step alike and the compile cancels in T2 - T1.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TAPELINE_XLA_CACHE=os.path.join(tmp, "xla-cache"))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}:\n{p.stderr[-3000:]}")
    return dt


def measure(kind: str, *, quick: bool, reps: int, tmp: str) -> dict[str, Any]:
    """CLI steady-state steps/s of one model, with the raw limit and fit measured alongside."""
    from benchmarks import common

    n1, n2 = QUICK_STEPS if quick else STEPS[kind]
    flags = ["--quick"] if quick else []
    cli, raw, fit = [], [], []
    _cli_seconds(kind, n1, quick, tmp)  # untimed: fills the XLA cache the timed runs share
    for r in range(reps):
        t1 = _cli_seconds(kind, n1, quick, tmp)
        t2 = _cli_seconds(kind, n2, quick, tmp)
        cli.append((n2 - n1) / (t2 - t1) if t2 > t1 else n2 / t2)
        for what, out in (("raw", raw), ("fit", fit)):
            res = common.run_child("benchmarks.end_to_end", ["--child", f"{what}:{kind}", *flags], timeout_s=1200,
                                   result_path=os.path.join(tmp, f"{what}-{kind}-{r}.json"))
            out.append(res["steps_per_sec"])
        print(f"end_to_end: {kind} repetition {r + 1}/{reps}", flush=True)
    ratio = lambda a, b: common.median([x / y for x, y in zip(a, b)])
    return {"model": kind, "steps": [n1, n2], "reps": reps,
            "steps_per_sec": {"cli": common.median(cli), "raw": common.median(raw), "fit": common.median(fit)},
            "samples": {"cli": cli, "raw": raw, "fit": fit},
            "ratios": {"cli_vs_raw": ratio(cli, raw), "cli_vs_fit": ratio(cli, fit)}}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| model | steps (N1, N2) | tapeline CLI steps/s | raw limit steps/s | fit defaults steps/s | "
             "CLI / raw | CLI / fit |", "|---|---|---|---|---|---|---|"]
    for r in results:
        s, q = r["steps_per_sec"], r["ratios"]
        lines.append(f"| {r['model']} | {r['steps'][0]}, {r['steps'][1]} | {s['cli']:.1f} | {s['raw']:.1f} | "
                     f"{s['fit']:.1f} | {q['cli_vs_raw']:.2f} | {q['cli_vs_fit']:.2f} |")
    lines.append(f"\nCLI: (N2 - N1) / (T2 - T1) over two whole `python -m framework.main --mode=train` runs "
                 f"(defaults); raw and fit: steady state in fresh processes; medians of {results[0]['reps']} "
                 f"interleaved repetitions (ratios: medians of the per-repetition ratios). Target: CLI / raw >= 0.95.")
    return "\n".join(lines)


def _chart(results: list[dict[str, Any]], path: str) -> None:
    from benchmarks import common

    with common.chart(path, figsize=(6.5, 3.2)) as (_, ax):
        names = [r["model"] for r in results]
        for i, (k, c) in enumerate((("raw", "#888"), ("cli", "#d62728"), ("fit", "#1f77b4"))):
            ax.bar([j + 0.27 * (i - 1) for j in range(len(names))], [r["steps_per_sec"][k] for r in results], 0.27,
                   label={"raw": "raw limit", "cli": "tapeline CLI", "fit": "fit defaults"}[k], color=c)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("steps/s (steady state)")
        ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny steps, 1 repetition (CI)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", default="mlp,cnn,transformer")
    p.add_argument("--out_dir", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        from benchmarks import common

        common.write_json(a.result, _child(a.child, a.quick))
        return 0
    from benchmarks import common

    out_dir = a.out_dir or common.RESULTS
    reps = 1 if a.quick else a.reps
    with tempfile.TemporaryDirectory(prefix="tapeline-e2e-") as tmp:
        results = [measure(k, quick=a.quick, reps=reps, tmp=tmp) for k in a.models.split(",")]
    data = {"machine": common.machine(), "quick": a.quick, "results": results}
    tab = table(results)
    name = "end_to_end_quick" if a.quick else "end_to_end"
    common.publish(name, data, tab, out_dir=out_dir, chart=lambda path: _chart(results, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
