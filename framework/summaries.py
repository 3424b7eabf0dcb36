"""TensorBoard writers for `train/` and `eval/`, the config as text, the per-loop log line.

Everything here runs in Python between compiled inner loops, on values already copied to the
host once per loop.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Mapping

import tensorflow as tf
from absl import logging

from framework import atomic


def format_duration(seconds: float) -> str:
    """'1h02m', '1m02s', '12s'."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    if abs(v) >= 1000 or abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4f}"


def log_line(kind: str, *, step: int, total: int, values: Mapping[str, float],
             examples_per_sec: float | None = None, eta_s: float | None = None) -> str:
    """The greppable per-loop line: `train | step 300/2000 | loss 0.123 | ... | 5,120 ex/s | eta 1m02s`."""
    parts = [kind, f"step {step}/{total}"]
    parts += [f"{k} {_fmt(float(v))}" for k, v in values.items()]
    if examples_per_sec is not None:
        parts.append(f"{examples_per_sec:,.0f} ex/s")
    if eta_s is not None:
        parts.append(f"eta {format_duration(eta_s)}")
    return " | ".join(parts)


class LiveLine:
    """A terminal's progress line: a `live` line redraws it in place, the next plain line ends it first.

    It remembers whether a live line is pending (the cursor is still on it), so that a plain log
    line starts on a line of its own. Off a terminal (files, CI, pipes) every line is a plain
    greppable log line.

    Args:
      stream: where live lines are drawn; `sys.stderr` (looked up at each call) when None.
    """

    def __init__(self, *, stream: Any = None) -> None:
        self._stream = stream
        self.pending = False

    def log(self, line: str, *, live: bool = False) -> None:
        """Logs one line; with `live` on a terminal, redraws the progress line instead."""
        stream = self._stream or sys.stderr
        if live and hasattr(stream, "isatty") and stream.isatty():
            stream.write("\r\033[K" + line)
            stream.flush()
            self.pending = True
            return
        self.end()
        logging.info("%s", line)

    def end(self) -> None:
        """Ends a pending live line (the cursor moves to a new line); nothing otherwise."""
        if self.pending:
            (self._stream or sys.stderr).write("\n")
            self.pending = False


class Summaries:
    """Scalar writers for the `train` and `eval` runs of one model_dir, and the run's log line.

    Args:
      model_dir: the run's directory (the writers' sub-directories go under it).
      live: the progress line the run's `log` redraws (a new one on `sys.stderr` when None).
    """

    def __init__(self, *, model_dir: str, live: LiveLine | None = None) -> None:
        self.model_dir = model_dir
        self.live = live or LiveLine()
        self._writers: dict[str, Any] = {}

    def log(self, line: str, *, live: bool = False) -> None:
        """Logs one line of the run; `live` lines redraw one progress line on a terminal (see LiveLine)."""
        self.live.log(line, live=live)

    def writer(self, run: str) -> Any:
        """The TensorBoard writer of one sub-directory (`train`, `eval`, `test`), made on first use."""
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(os.path.join(self.model_dir, run))
        return self._writers[run]

    def scalars(self, run: str, step: int, values: Mapping[str, float]) -> None:
        """Writes one scalar per tag at `step` under `run` (train or eval)."""
        w = self.writer(run)
        with w.as_default(step=step):
            for tag, v in values.items():
                tf.summary.scalar(tag, float(v))
        w.flush()

    def text(self, run: str, tag: str, text: str, step: int = 0) -> None:
        """Writes `text` as a TensorBoard text summary `tag` of `split` at `step`."""
        w = self.writer(run)
        with w.as_default(step=step):
            # Markdown code block keeps YAML indentation in TensorBoard's text plugin.
            tf.summary.text(tag, "```\n" + text + "\n```")
        w.flush()

    def hparams(self, values: Mapping[str, Any]) -> None:
        """Logs a sub-run's hyperparameters for TensorBoard's hparams plugin."""
        from tensorboard.plugins.hparams import api as hp

        clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in values.items()}
        with self.writer("train").as_default():
            hp.hparams(clean)

    def image(self, run: str, tag: str, png: bytes, step: int) -> None:
        """Writes one PNG image."""
        w = self.writer(run)
        with w.as_default(step=step):
            tf.summary.image(tag, tf.io.decode_png(png)[None])
        w.flush()

    def close(self) -> None:
        """Flushes and closes every writer; ends a pending live line."""
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        self.live.end()


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """Writes JSON atomically (a reader never sees a half-written file)."""
    atomic.write_json(path, data)


def log(line: str, *, live: bool = False, stream: Any = None) -> None:
    """Logs one line; with `live` on a terminal, redraws a single progress line instead.

    Off a terminal (files, CI, pipes) every line is a plain greppable log line. Nothing is
    remembered between calls: a run logs through `Summaries.log`, whose `LiveLine` knows when a
    live line is pending and ends it before the next plain line.
    """
    LiveLine(stream=stream).log(line, live=live)


def confusion_image(cm: Any) -> bytes:
    """The confusion matrix as a PNG (rows: true class, columns: predicted)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(cm)
    n = cm.shape[0]
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 2 + 0.45 * n))
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]:g}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def per_class_table(rows: list[dict]) -> str:
    """The per-class report as a Markdown table (class, precision, recall, F1, support)."""
    lines = ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']:g} |"
              for r in rows]
    return "\n".join(lines)
