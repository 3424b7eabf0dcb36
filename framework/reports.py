"""The per-output reports written after each evaluation: per-class P/R/F1 with the confusion
matrix, or per-label P/R/F1 with the support of a multi-label output.

Files go to model_dir (`eval_per_class.json`, `eval_per_label.json`; `.<output>` before `.json`
for one output of several), tables and images to TensorBoard's `eval/`.
"""
from __future__ import annotations

import os

import numpy as np

from framework import metrics as metrics_lib
from framework import summaries as summ
from framework.results import ReportValue

# Above this many classes (a byte-level language model has 257) the annotated confusion image
# is unreadable and took ~70 s to draw; the per-class JSON and table are still written.
IMAGE_MAX_CLASSES = 50


def write(report: ReportValue, *, step: int, model_dir: str, summaries: summ.Summaries) -> None:
    """Writes one report of the evaluation at `step` (its kind says which)."""
    prefix = report.report.prefix
    if report.report.kind == "per_class":
        per_class(report.value, step=step, model_dir=model_dir, summaries=summaries, prefix=prefix)
    elif report.report.kind == "per_label":
        per_label(report.value, step=step, model_dir=model_dir, summaries=summaries, prefix=prefix)
    else:
        raise ValueError(f"report.kind: expected per_class | per_label; got {report.report.kind!r}")


def per_class(cm: np.ndarray, *, step: int, model_dir: str, summaries: summ.Summaries, prefix: str = "") -> None:
    """Writes per-class P/R/F1 and the confusion matrix to model_dir and TensorBoard."""
    report = {"step": step, **metrics_lib.per_class(cm)}
    suffix = f".{prefix[:-1]}" if prefix else ""
    summ.write_json(os.path.join(model_dir, f"eval_per_class{suffix}.json"), report)
    if cm.shape[0] <= IMAGE_MAX_CLASSES:
        summaries.image("eval", f"{prefix}confusion_matrix", summ.confusion_image(cm), step)
    summaries.text("eval", f"{prefix}per_class", summ.per_class_table(report["classes"]), step=step)


def per_label(counts: np.ndarray, *, step: int, model_dir: str, summaries: summ.Summaries,
              prefix: str = "") -> None:
    """Writes per-label P/R/F1 and support of a multi-label output."""
    rows = metrics_lib.per_label(counts)
    suffix = f".{prefix[:-1]}" if prefix else ""
    summ.write_json(os.path.join(model_dir, f"eval_per_label{suffix}.json"), {"step": step, "labels": rows})
    table = "| label | precision | recall | f1 | support |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {r['label']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']:g} |"
        for r in rows)
    summaries.text("eval", f"{prefix}per_label", table, step=step)
