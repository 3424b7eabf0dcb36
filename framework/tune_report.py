"""The report of a study: tune.csv, tune.md, best_params.yaml, tune.png and the HParams experiment.

Rewritten after every run of `--mode=tune` from the study itself (the storage is the record).
"""
from __future__ import annotations

import csv
import os
from typing import Any

import yaml

from framework import atomic
from framework.errors import first_line
from framework.tune import FINISHED, Plan, counts, nest


def rows(study: Any, plan: Plan) -> list[dict[str, Any]]:
    """One row per trial: number, state, params, metric, steps, seconds, run_dir, note."""
    out = []
    for t in study.get_trials(deepcopy=False):
        inter = t.intermediate_values
        value = t.value if t.state.name == "COMPLETE" else (inter[max(inter)] if inter else None)
        steps = t.user_attrs.get("steps", max(inter) if inter else None)
        seconds = t.duration.total_seconds() if t.duration is not None else None
        out.append({"number": t.number, "state": t.state.name.lower(),
                    **{p.key: t.params.get(p.key) for p in plan.space},
                    plan.metric: value, "steps": steps, "seconds": None if seconds is None else round(seconds, 1),
                    "run_dir": t.user_attrs.get("run_dir", ""), "note": t.user_attrs.get("note", "")})
    return out


def best_trial(study: Any) -> Any | None:
    """The best complete trial of the study (None before one completes)."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_trial if done else None


def write_results(study: Any, plan: Plan, model_dir: str) -> dict[str, Any]:
    """Writes tune.csv, tune.md, best_params.yaml, tune.png and the HParams config; returns a summary."""
    table = rows(study, plan)
    cols = ["number", "state", *[p.key for p in plan.space], plan.metric, "steps", "seconds", "run_dir", "note"]
    with atomic.open_text(os.path.join(model_dir, "tune.csv")) as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows([{k: ("" if r[k] is None else r[k]) for k in cols} for r in table])
    c = counts(study)
    best = best_trial(study)
    status = (f"- {plan.direction} eval `{plan.metric}`; sampler {plan.sampler}, pruner {plan.pruner}; "
              f"{sum(c.get(s, 0) for s in FINISHED)} of {plan.trials} trials finished "
              f"({c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} pruned, {c.get('FAIL', 0)} failed, "
              f"{c.get('RUNNING', 0)} running)")
    lines = [f"# tune: study `{plan.study_name}`", "", status]
    if best is not None:
        lines.append(f"- best: trial {best.number} ({best.user_attrs.get('run_dir', '')}), {plan.metric} "
                     f"{best.value:.6g}: " + ", ".join(f"`{k}={_cell(v)}`" for k, v in best.params.items()))
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r[k]) for k in cols) + " |" for r in table]
    atomic.write_text(os.path.join(model_dir, "tune.md"), "\n".join(lines) + "\n")
    if best is not None:
        write_best_params(best, plan, os.path.join(model_dir, "best_params.yaml"))
    plot(study, os.path.join(model_dir, "tune.png"))
    write_hparams_config(plan, model_dir)
    return {"counts": c, "best": None if best is None else {"number": best.number, "value": best.value,
                                                            "params": dict(best.params)}}


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_best_params(best: Any, plan: Plan, path: str) -> None:
    """The best trial's parameters as a nested config override (`--config_file` accepts it)."""
    head = (f"# Best trial {best.number} of study {plan.study_name!r}: {plan.metric}={best.value:.6g} "
            f"({plan.direction}).\n# Use: --config_file={os.path.basename(path)} (with --mode=train_and_eval)\n")
    atomic.write_text(path, head + yaml.safe_dump(nest(best.params), sort_keys=True, default_flow_style=False))


def plot(study: Any, path: str) -> None:
    """tune.png: the optimization history and (with >= 2 complete trials) the parameter importances."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return
    images = []
    ax = ovm.plot_optimization_history(study)
    images.append(_png(ax.figure, io))
    note = ""
    if len(complete) >= 2:
        try:
            images.append(_png(ovm.plot_param_importances(study).figure, io))
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. every complete trial has one value
            note = f"parameter importances unavailable: {first_line(e)}"
    else:
        note = f"parameter importances need >= 2 complete trials; got {len(complete)}"
    fig, axes = plt.subplots(1, len(images), figsize=(7 * len(images), 5), squeeze=False)
    for a, img in zip(axes[0], images):
        a.imshow(plt.imread(img))
        a.axis("off")
    if note:
        fig.text(0.5, 0.01, note, ha="center", fontsize=9)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=120)
    plt.close("all")


def _png(fig: Any, io: Any) -> Any:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    buf.seek(0)
    return buf


def write_hparams_config(plan: Plan, model_dir: str) -> None:
    """The HParams experiment (parameters and eval metrics) at the top of model_dir, once."""
    import glob

    if glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
        return
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    metrics = {plan.metric, "loss"}
    w = tf.summary.create_file_writer(model_dir)
    with w.as_default():
        hp.hparams_config(hparams=[hp.HParam(p.key) for p in plan.space],
                          metrics=[hp.Metric(m, group="eval", display_name=f"eval {m}") for m in sorted(metrics)])
    w.close()
