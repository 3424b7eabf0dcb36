"""`--mode=cross_validate`: K stratified folds of the training source, one sub-run per fold; cv.json,
cv.md, cv.png and (with `--find_label_issues`) cleanlab's label issues from out-of-fold predictions.

Fold i is an ordinary run in `model_dir/fold=<i>/` whose config holds `task.cv_fold: {folds: K,
index: i}`: the trainer carves the same folds from (labels, `trainer.seed`) and evaluates on the
held-out one. A finished fold leaves `cv_fold.json` (its final model's held-out metrics) and
`oof.npz` (held-out indices, labels, predicted probabilities); a rerun skips such folds and
resumes an unfinished one from its checkpoint like any run.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Callable

import numpy as np

from framework import atomic
from framework import summaries as summ


class MissingExtra(ValueError):
    """An optional dependency is not installed (exit 2 with the pip command)."""


class Preempted(RuntimeError):
    """A fold's run stopped on SIGTERM: no fold report is written, a rerun resumes it."""


def fold_override(folds: int, index: int) -> dict[str, Any]:
    """The config a fold's sub-run adds: the held-out fold is its eval set; no other eval or test set."""
    return {"task": {"cv_fold": {"folds": folds, "index": index}, "eval_data": {"name": ""},
                     "validation_split": None, "test_data": {"name": ""}}}


def require_cleanlab() -> Any:
    """Imports cleanlab (the optional extra `tapeline[data]`) or raises MissingExtra."""
    try:
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        raise MissingExtra("--find_label_issues: needs cleanlab; expected it installed (pip install "
                           "tapeline[data]); got ImportError") from None
    return cleanlab


def run(*, folds: int, model_dir: str, run_one: Callable[[dict, str], dict[str, Any]],
        find_label_issues: bool = False) -> dict[str, Any]:
    """Runs (or skips, or resumes) every fold with `run_one(override, sub_dir)`; writes the reports.

    `run_one` returns the run's result with its `controller` (the final model in memory).

    Returns:
      The cv.json content.
    """
    if find_label_issues:
        require_cleanlab()
    results, oof = [], []
    for i in range(folds):
        sub = os.path.join(model_dir, f"fold={i}")
        done = os.path.join(sub, "cv_fold.json")
        if not os.path.exists(done):
            result = run_one(fold_override(folds, i), sub)
            if result["controller"].preempted:
                raise Preempted(f"fold {i} was preempted at step {result['step']}; rerun to resume it")
            _finish_fold(result["controller"], sub)
        else:
            summ.log(f"cross_validate | fold {i} already finished: {done}")
        with open(done, encoding="utf-8") as f:
            results.append(json.load(f))
        with np.load(os.path.join(sub, "oof.npz")) as d:
            oof.append({k: d[k] for k in d.files})
    report = aggregate([r["metrics"] for r in results])
    report["held_out"] = [r["examples"] for r in results]
    summ.write_json(os.path.join(model_dir, "cv.json"), report)
    write_markdown(report, os.path.join(model_dir, "cv.md"))
    plot(report, os.path.join(model_dir, "cv.png"))
    summ.log("cross_validate | " + " | ".join(f"{k} {report['mean'][k]:.4f} ± {report['std'][k]:.4f}"
                                               for k in report["mean"]))
    if find_label_issues:
        n = label_issues(oof, os.path.join(model_dir, "label_issues.csv"))
        summ.log(f"cross_validate | {n} likely label issues in {os.path.join(model_dir, 'label_issues.csv')}")
    return report


def _finish_fold(ctl: Any, sub: str) -> None:
    """The final model's metrics and probabilities on the held-out fold -> cv_fold.json, oof.npz."""
    t = ctl.t
    metrics = ctl.measure(*t.eval_dataset())
    x, y = _held_out_arrays(t.eval_source)
    with t.steps.scored_weights():  # the weights the fold's evaluation scored
        probs = probabilities(t, x)
    with atomic.replacing(os.path.join(sub, "oof.npz"), suffix=".npz") as tmp:  # np.savez adds `.npz` otherwise
        np.savez(tmp, indices=t.eval_indices, labels=y, probs=probs)
    summ.write_json(os.path.join(sub, "cv_fold.json"), {"step": int(t.global_step.numpy()),
                                                        "examples": int(len(t.eval_indices)), "metrics": metrics})


def _held_out_arrays(source: Any) -> tuple[Any, np.ndarray]:
    import tensorflow as tf

    xs, ys = [], []
    for x, y, _ in source.batch(4096):
        xs.append(x)
        ys.append(y.numpy())
    return tf.nest.map_structure(lambda *p: tf.concat(p, 0), *xs), np.concatenate(ys)


def probabilities(trainer: Any, x: Any, batch: int = 1024) -> np.ndarray:
    """[N, classes] predicted probabilities (a single-logit binary model gives [1 - p, p])."""
    import tensorflow as tf

    from framework import losses as losses_lib

    from_logits = losses_lib.loss_from_logits(trainer.loss_fn)
    n = int(tf.nest.flatten(x)[0].shape[0])
    out = []
    for s in range(0, n, batch):
        part = tf.nest.map_structure(lambda a, s=s: a[s:s + batch], x)
        out.append(np.asarray(trainer.model(part, training=False), np.float64))
    z = np.concatenate(out).reshape(n, -1)
    if z.shape[1] == 1:
        p = 1 / (1 + np.exp(-z[:, 0])) if from_logits else z[:, 0]
        return np.stack([1 - p, p], axis=1)
    if from_logits:
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)
    return z


def aggregate(fold_metrics: list[dict[str, float]]) -> dict[str, Any]:
    """{"folds": [...], "mean": {m: v}, "std": {m: v}} over the metrics every fold has (std: ddof=0)."""
    names = [k for k in fold_metrics[0] if all(k in f for f in fold_metrics)]
    values = {k: np.array([f[k] for f in fold_metrics], np.float64) for k in names}
    return {"folds": [dict(f) for f in fold_metrics], "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std()) for k, v in values.items()}}


def write_markdown(report: dict[str, Any], path: str) -> None:
    """Writes `cv.md`: one row per fold, then the mean and standard deviation of every metric."""
    names = list(report["mean"])
    lines = ["| fold | held-out examples | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for i, (f, n) in enumerate(zip(report["folds"], report.get("held_out", [""] * len(report["folds"])))):
        lines.append(f"| {i} | {n} | " + " | ".join(f"{f[k]:.4f}" for k in names) + " |")
    lines.append("| mean ± std | | " + " | ".join(f"{report['mean'][k]:.4f} ± {report['std'][k]:.4f}"
                                                    for k in names) + " |")
    atomic.write_text(path, "\n".join(lines) + "\n\nEach fold's metrics are its final model's on its held-out fold; "
                      "std is the population standard deviation over folds.\n")


def plot(report: dict[str, Any], path: str) -> None:
    """One panel per metric: the fold values as bars, the mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["mean"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 1, 3), squeeze=False)
    for ax, k in zip(axes[0], names):
        vals = [f[k] for f in report["folds"]]
        ax.bar(range(len(vals)), vals, color="#4c72b0")
        ax.axhline(report["mean"][k], color="red", linestyle="--")
        ax.set_title(f"{k}: {report['mean'][k]:.3f} ± {report['std'][k]:.3f}", fontsize=8)
        ax.set_xlabel("fold")
        ax.set_xticks(range(len(vals)))
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)


def label_issues(oof: list[dict[str, np.ndarray]], path: str) -> int:
    """Out-of-fold probabilities -> cleanlab -> label_issues.csv ranked most suspicious first.

    Columns: example (index in the training source), given_label, suggested_label (the
    out-of-fold argmax), score (cleanlab's label quality, lower is more suspicious).

    Returns:
      The number of issues written.
    """
    from framework.data import split as split_lib

    cleanlab = require_cleanlab()
    idx = np.concatenate([o["indices"] for o in oof])
    order = np.argsort(idx)
    labels = split_lib.class_ids(np.concatenate([o["labels"] for o in oof])[order])
    if labels is None:
        raise ValueError("--find_label_issues: expected class-id labels (classification); got other labels")
    probs = np.concatenate([o["probs"] for o in oof])[order]
    idx = idx[order]
    # n_jobs=1: by default cleanlab forks a multiprocessing.Pool, and forking a process whose
    # TensorFlow thread pools are running can deadlock the children (CI hung 600 s in
    # Pool.terminate). One process ranks 10^5 examples of 10 classes in well under a second.
    issues = cleanlab.filter.find_label_issues(labels, probs, return_indices_ranked_by="self_confidence",
                                               n_jobs=1)
    scores = cleanlab.rank.get_label_quality_scores(labels, probs)
    with atomic.open_text(path) as f:
        w = csv.writer(f)
        w.writerow(["example", "given_label", "suggested_label", "score"])
        for j in issues:
            w.writerow([int(idx[j]), int(labels[j]), int(probs[j].argmax()), f"{scores[j]:.6f}"])
    return len(issues)
