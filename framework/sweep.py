"""Sweeps: one sub-run per combination of `--sweep` values; sweep.csv, sweep.md and a curve plot.

    --sweep='optimizer.name=sgd,adam,rmsprop'                    one key
    --sweep='optimizer.name=sgd,adam;optimizer.learning_rate=1e-3,1e-2'   ';' separates keys

Sub-runs live in `model_dir/<key>=<value>[,<key>=<value>]/` and each logs its hyperparameters to
TensorBoard's hparams plugin, so the runs show side by side. A sweep re-run resumes or skips
finished sub-runs like any run.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import re
from typing import Any, Callable, Sequence

import yaml

from framework import atomic

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_SAFE = re.compile(r"[^A-Za-z0-9_.=,+-]")


def _scalar(text: str) -> Any:
    """A YAML scalar, with numbers YAML 1.1 reads as strings ('1e-3') read as floats."""
    if not text.strip():
        return ""
    value = yaml.safe_load(text)
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def parse(text: str) -> list[tuple[str, list[Any]]]:
    """`a.b=1,2;c=x,y` -> [("a.b", [1, 2]), ("c", ["x", "y"])] (values read as YAML scalars)."""
    out = []
    for part in [p for p in text.split(";") if p.strip()]:
        if "=" not in part:
            raise ValueError(f"--sweep: expected 'dotted.key=v1,v2[;key=...]'; got {text!r}")
        key, values = part.split("=", 1)
        key = key.strip()
        vals = [_scalar(v) for v in values.split(",")]
        if not key or not vals or any(v == "" for v in vals):
            raise ValueError(f"--sweep: empty key or value in {part!r}; got {text!r}")
        out.append((key, vals))
    if not out:
        raise ValueError(f"--sweep: no key=values given; got {text!r}")
    return out


def combinations(spec: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the parsed sweep values, in order, as {key: value} dicts."""
    keys = [k for k, _ in spec]
    return [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in spec])]


def run_name(combo: dict[str, Any]) -> str:
    """Directory name of a sub-run: `key=value[,key=value]`, restricted to safe characters."""
    name = ",".join(f"{k}={v}" for k, v in combo.items())
    name = _SAFE.sub("_", name)
    if name.startswith(".") or ".." in name:  # never escape model_dir
        name = name.replace("..", "__").lstrip(".")
    return name


def override(combo: dict[str, Any]) -> str:
    """The combination as a YAML override mapping."""
    nested: dict[str, Any] = {}
    for key, value in combo.items():
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return json.dumps(nested)


def run(*, text: str, model_dir: str, run_one: Callable[[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs every combination with `run_one(override, sub_dir)`; writes the sweep report.

    Returns:
      One row per sub-run: the combination, final step, last eval metrics.
    """
    spec = parse(text)
    rows = []
    for combo in combinations(spec):
        sub = os.path.join(model_dir, run_name(combo))
        result = run_one(override(combo), sub)
        rows.append({"run": run_name(combo), **combo, "step": result.get("step"),
                     **{f"eval_{k}": v for k, v in (result.get("eval") or {}).items()},
                     "_history": result.get("history", [])})
    write_report(rows, [k for k, _ in spec], model_dir)
    return rows


def write_report(rows: Sequence[dict[str, Any]], keys: Sequence[str], model_dir: str) -> None:
    """Writes `sweep.csv`, `sweep.md` and `sweep.png` for the finished sub-runs."""
    cols = ["run", *keys, "step"] + sorted({k for r in rows for k in r if k.startswith("eval_")})
    with atomic.open_text(os.path.join(model_dir, "sweep.csv")) as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    atomic.write_text(os.path.join(model_dir, "sweep.md"), "\n".join(lines) + "\n")
    _plot(rows, os.path.join(model_dir, "sweep.png"))


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = [(r["run"], r.get("_history") or []) for r in rows]
    metrics = sorted({k for _, h in hist for e in h for k in e if k != "step"})
    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for name, h in hist:
            pts = [(e["step"], e[m]) for e in h if m in e]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_title(f"eval {m}")
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic.save_figure(fig, path)
    plt.close(fig)
