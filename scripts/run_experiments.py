#!/usr/bin/env python
"""Runs every experiment's documented command(s), checks each stated result, writes the table.

    python scripts/run_experiments.py                          # all of them (~10-15 min, 2 CPU cores)
    python scripts/run_experiments.py --only digits_cnn        # one (repeatable, or a comma list)
    python scripts/run_experiments.py --runs_dir /tmp/exp --readme /tmp/exp/README.md

Each experiment's command(s) are the ones its module docstring gives (sweeps and the transfer
pretrain -> fine-tune -> from-scratch control included), run as `python -m framework.main ...`
subprocesses from the repository root into `--runs_dir` (default runs/experiments; each
experiment's directories are removed first unless `--keep`, so every time shown is a real run).
The stated result is then checked from what the runs left on disk: `metrics.json`, `sweep.csv`,
TensorBoard event files and checkpoints. Results accumulate in `<runs_dir>/results.json`, so
`--only` updates one row of the table; `--readme` (default experiments/README.md) is rewritten
from all results known in that runs dir. Exit status 1 if any checked result is not met.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import glob
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the checks import framework/experiments in this process


@dataclasses.dataclass
class Run:
    """One `python -m framework.main` command: its run directory (under runs_dir) and flags."""

    dir: str
    flags: list[str]


@dataclasses.dataclass
class Check:
    measured: str  # one line for the table
    passed: bool
    details: str = ""  # markdown shown under the table


@dataclasses.dataclass
class Spec:
    name: str
    stated: str
    runs: Callable[[str], list[Run]]  # runs_dir -> the commands, in order
    check: Callable[[str], Check]  # runs_dir -> the checked result


# ------------------------------------------------------------------------------------- readers


def read_metrics(run_dir: str) -> dict[str, float]:
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


def read_sweep(sweep_dir: str) -> list[dict[str, Any]]:
    """sweep.csv rows, numbers converted."""
    with open(os.path.join(sweep_dir, "sweep.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v) if k != "run" else v
            except (TypeError, ValueError):
                pass
    return rows


def read_scalars(run_dir: str, kind: str) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of `run_dir/<kind>/` (train or eval): {tag: [(step, value), ...]}."""
    import tensorflow as tf

    out: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, kind, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name != "scalars":
                    continue
                out.setdefault(v.tag, {})[int(event.step)] = float(tf.make_ndarray(v.tensor))
    return {tag: sorted(d.items()) for tag, d in out.items()}


def checkpoint_weights(run_dir: str) -> dict[str, Any]:
    """{variable path: value} of the newest checkpoint of a run."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    reader = tf.train.load_checkpoint(path)
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    paths = json.loads(reader.get_tensor("model_paths" + suffix).decode("utf-8"))
    return {p: reader.get_tensor(f"model/{i}{suffix}") for i, p in enumerate(paths)}


def _section_kwargs(section: dict) -> tuple[str, dict]:
    owned = {"name", "batch_size", "shuffle_buffer", "cache", "sampling"}
    return section["name"], {k: v for k, v in section.items() if k not in owned}


def train_fit(run_dir: str) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a run's final weights on its training split, inference mode.

    The model and the training data are rebuilt from the run's params.yaml (no augmentation,
    no dropout), and the weights are loaded by variable path from the newest checkpoint.
    """
    import numpy as np
    import yaml

    from framework import checkpoint as ckpt_lib
    from framework import plugins, registry

    plugins.load_experiments()
    with open(os.path.join(run_dir, "params.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    model_name, model_kwargs = _section_kwargs(cfg["task"]["model"])
    data_name, data_kwargs = _section_kwargs(cfg["task"]["train_data"])
    model = registry.MODELS.get(model_name)(**model_kwargs)
    ds = registry.DATASETS.get(data_name)(split="train", **data_kwargs)
    if isinstance(ds, tuple):  # (dataset, augment): the raw images
        ds = ds[0]
    xs, ys = [], []
    for elem in ds.batch(512).as_numpy_iterator():
        xs.append(elem[0])
        ys.append(elem[1])
    x, y = np.concatenate(xs), np.concatenate(ys).reshape(-1)
    model(x[:1], training=False)
    ckpt_lib.load_weights(model, run_dir)
    logits = np.asarray(model.predict(x, batch_size=512, verbose=0), np.float64)
    if logits.shape[-1] == 1:  # binary, logits (the loss's from_logits default)
        z = logits[:, 0]
        pred = (z > 0).astype(int)
        loss = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    else:
        pred = logits.argmax(-1)
        m = logits.max(-1, keepdims=True)
        log_p = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        loss = -log_p[np.arange(len(y)), y]
    return float((pred == y).mean()), float(loss.mean())


def count_params(model_name: str) -> int:
    from framework import plugins, registry

    plugins.load_experiments()
    return int(registry.MODELS.get(model_name)().count_params())


def _sweep_runs(sweep_dir: str) -> dict[str, dict[str, Any]]:
    """{value of the swept key: row} (one key per sweep here)."""
    return {r["run"].split("=", 1)[1]: {**r, "dir": os.path.join(sweep_dir, r["run"])} for r in read_sweep(sweep_dir)}


def _f(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}f}"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- checks


def check_digits_cnn(rd: str) -> Check:
    m = read_metrics(os.path.join(rd, "digits_cnn"))
    return Check(f"accuracy {_f(m['accuracy'])} (step {m['step']})", m["accuracy"] >= 0.97)


def check_linear(rd: str) -> Check:
    w = checkpoint_weights(os.path.join(rd, "linear_regression"))
    slope, intercept = float(w["line/kernel"].reshape(-1)[0]), float(w["line/bias"].reshape(-1)[0])
    m = read_metrics(os.path.join(rd, "linear_regression"))
    ok = abs(slope - 2.0) <= 0.02 * 2.0 and abs(intercept - 1.0) <= 0.05
    return Check(f"slope {slope:.4f} ({abs(slope - 2) / 2:.2%} off), intercept {intercept:.4f}; "
                 f"eval MSE {m['mse']:.4f}", ok)


def check_sine(rd: str) -> Check:
    m = read_metrics(os.path.join(rd, "sine_regression"))
    return Check(f"held-out MSE {m['mse']:.5f}", m["mse"] <= 0.01)


def check_optimizers(rd: str) -> Check:
    runs = _sweep_runs(os.path.join(rd, "optimizer_comparison"))
    acc = {k: r["eval_accuracy"] for k, r in runs.items()}
    ok = acc["adam"] >= 0.95 and acc["rmsprop"] >= 0.95 and acc["sgd"] < min(acc["adam"], acc["rmsprop"])
    # Loss per step range: the mean training loss of each 100-step loop (TensorBoard train/loss).
    curves = {k: read_scalars(r["dir"], "train")["loss"] for k, r in runs.items()}
    evals = {k: dict(read_scalars(r["dir"], "eval")["accuracy"]) for k, r in runs.items()}
    steps = [s for s, _ in curves["adam"]]
    ranges = [f"{a + 1}-{b}" for a, b in zip([0] + steps[:-1], steps)]
    rows = []
    for k in ("sgd", "adam", "rmsprop"):
        loss = dict(curves[k])
        rows.append([k] + [_f(loss[s]) for s in steps] + [_f(runs[k]["eval_loss"]), _f(acc[k])])
    details = ("Mean training loss per step range (one compiled loop each) and the final eval metrics:\n\n"
               + _md_table(["optimizer"] + [f"loss {r}" for r in ranges] + ["eval loss", "eval accuracy"], rows)
               + "\n\nEval accuracy at every evaluation:\n\n"
               + _md_table(["optimizer"] + [f"step {s}" for s in sorted(evals['adam'])],
                           [[k] + [_f(evals[k][s]) for s in sorted(evals["adam"])]
                            for k in ("sgd", "adam", "rmsprop")]))
    return Check("eval accuracy " + ", ".join(f"{k} {_f(acc[k])}" for k in ("sgd", "adam", "rmsprop")), ok, details)


def read_tune(tune_dir: str) -> list[dict[str, Any]]:
    """tune.csv rows (number, state, parameters, metric, steps, seconds), numbers converted."""
    with open(os.path.join(tune_dir, "tune.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v) if k not in ("state", "run_dir", "note", "optimizer.name") else v
            except (TypeError, ValueError):
                pass
    return rows


def check_tuned(rd: str) -> Check:
    rows = read_tune(os.path.join(rd, "optimizer_tuned"))
    done = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    best = max(done, key=lambda r: r["accuracy"])
    grid = ""
    grid_dir = os.path.join(rd, "optimizer_comparison")
    if os.path.exists(os.path.join(grid_dir, "sweep.csv")):
        g = max(read_sweep(grid_dir), key=lambda r: r["eval_accuracy"])
        grid = f" vs the grid's best {_f(g['eval_accuracy'])} ({g['run']}, learning rate 1e-3)"
    table = _md_table(["trial", "state", "optimizer", "learning rate", "eval accuracy", "steps run"],
                      [[int(r["number"]), r["state"], r["optimizer.name"], f"{r['optimizer.learning_rate']:.3g}",
                        _f(r["accuracy"]), int(r["steps"])] for r in rows])
    details = (f"{len(rows)} trials (TPE, 4 random start-up trials; median pruning from step 200 against the "
               "trials before at the same step). Eval accuracy of a pruned trial is at the step it was stopped:\n\n"
               + table)
    return Check(f"best eval accuracy {_f(best['accuracy'])} (trial {int(best['number'])}: {best['optimizer.name']}, "
                 f"learning rate {best['optimizer.learning_rate']:.3g}){grid}; {len(pruned)} of {len(rows)} trials "
                 f"pruned", best["accuracy"] >= 0.97 and len(pruned) >= 1, details)


def _fit_table(rd: str, sub: str, label: str) -> tuple[dict[str, dict[str, float]], str]:
    """Per sweep value: train accuracy/loss (inference mode) and eval accuracy/loss, and a table."""
    runs = _sweep_runs(os.path.join(rd, sub))
    out, rows = {}, []
    for key in ("False", "True"):
        r = runs[key]
        train_acc, train_loss = train_fit(r["dir"])
        logged = read_scalars(r["dir"], "train")["accuracy"][-1][1]
        out[key] = {"train_acc": train_acc, "train_loss": train_loss, "eval_acc": r["eval_accuracy"],
                    "eval_loss": r["eval_loss"], "acc_gap": train_acc - r["eval_accuracy"],
                    "loss_gap": r["eval_loss"] - train_loss}
        o = out[key]
        rows.append([f"{label}={key}", _f(o["train_acc"]), _f(logged), _f(o["eval_acc"]), _f(o["acc_gap"]),
                     _f(o["train_loss"]), _f(o["eval_loss"]), _f(o["loss_gap"])])
    details = ("Train figures are the final weights on the training split in inference mode (no dropout, "
               "no augmentation); the accuracy logged during training (last loop, dropout/augmentation active) is "
               "shown for reference. Accuracy gap = train - eval accuracy; loss gap = eval - train "
               "cross-entropy.\n\n"
               + _md_table(["run", "train accuracy", "logged train accuracy", "eval accuracy", "accuracy gap",
                            "train loss", "eval loss", "loss gap"], rows))
    return out, details


def check_augment(rd: str) -> Check:
    f, details = _fit_table(rd, "digits_augment", "augment")
    ok = all(f[k]["eval_acc"] >= 0.98 and abs(f[k]["acc_gap"]) <= 0.02 for k in f)
    return Check(f"eval accuracy {_f(f['False']['eval_acc'])} without / {_f(f['True']['eval_acc'])} with; "
                 f"accuracy gap {_f(f['False']['acc_gap'])} / {_f(f['True']['acc_gap'])}", ok, details)


def check_regularized(rd: str) -> Check:
    f, details = _fit_table(rd, "regularized_mlp", "regularize")
    return Check(f"loss gap {_f(f['False']['loss_gap'])} without / {_f(f['True']['loss_gap'])} with "
                 f"(eval loss {_f(f['False']['eval_loss'])} / {_f(f['True']['eval_loss'])}); eval accuracy "
                 f"{_f(f['False']['eval_acc'])} / {_f(f['True']['eval_acc'])}",
                 f["True"]["loss_gap"] < f["False"]["loss_gap"], details)


def check_separable(rd: str) -> Check:
    m = read_metrics(os.path.join(rd, "digits_separable"))
    sep, cnn = count_params("digits_separable_net"), count_params("digits_cnn")
    ratio = cnn / sep
    return Check(f"accuracy {_f(m['accuracy'])}; {sep:,} parameters vs digits_cnn {cnn:,} ({ratio:.1f}x fewer)",
                 m["accuracy"] >= 0.95 and ratio >= 3)


def check_transfer(rd: str) -> Check:
    pre = read_metrics(os.path.join(rd, "digits_pretrain"))
    ft = read_metrics(os.path.join(rd, "transfer_digits"))
    sc = read_metrics(os.path.join(rd, "transfer_digits_scratch"))
    hist = {name: read_scalars(os.path.join(rd, name), "eval")["accuracy"]
            for name in ("transfer_digits", "transfer_digits_scratch")}
    steps = [s for s, _ in hist["transfer_digits"]]
    details = ("Eval accuracy on digits 5-9 (300 training labels) at each phase boundary:\n\n"
               + _md_table(["run"] + [f"step {s}" for s in steps],
                           [[n] + [_f(v) for _, v in hist[n]] for n in hist]))
    head_only = dict(hist["transfer_digits"])[150]  # the end of phase 1 (head only, frozen body)
    ok = head_only >= 0.5 and ft["accuracy"] >= 0.97 and ft["accuracy"] >= sc["accuracy"] - 0.02
    return Check(f"head only after phase 1 {_f(head_only)}; fine-tuned {_f(ft['accuracy'])} vs from scratch "
                 f"{_f(sc['accuracy'])} (pretrain on 0-4: {_f(pre['accuracy'])})", ok, details)


def check_imbalanced(rd: str) -> Check:
    """The reported metrics are those of the restored best weights: the eval at the best AUC."""
    runs = _sweep_runs(os.path.join(rd, "imbalanced_cancer"))
    names = ("precision", "recall", "f1", "auc", "auc_pr", "accuracy")
    best = {}
    rows = []
    for key in ("None", "balanced"):
        ev = read_scalars(runs[key]["dir"], "eval")
        auc = ev["auc"]
        i = max(range(len(auc)), key=lambda j: (auc[j][1], -j))  # first best, as early stopping keeps it
        step = auc[i][0]
        best[key] = {n: dict(ev[n])[step] for n in names}
        last_step = int(runs[key]["step"])
        rows.append([f"class_weight={key}", step, last_step] + [_f(best[key][n]) for n in names])
    details = ("Metrics of the restored best weights (the evaluation with the best AUC; early stopping "
               "restores them), malignant = positive class, eval split at its natural ratio:\n\n"
               + _md_table(["run", "best step", "last step"] + list(names), rows))
    b, n = best["balanced"], best["None"]
    return Check(f"malignant recall: none {_f(n['recall'])}, balanced {_f(b['recall'])}; "
                 f"F1 {_f(n['f1'])} / {_f(b['f1'])}; AUC {_f(n['auc'])} / {_f(b['auc'])}",
                 b["recall"] > n["recall"], details)


_PROTOCOL_VARIANTS = {"neither": ("None", "None"), "class weights": ("balanced", "None"),
                      "sampling": ("None", "balanced"), "both": ("balanced", "balanced")}


def check_protocol(rd: str) -> Check:
    """Test-set metrics (read once, after restore-best) of the four class-balance variants."""
    root = os.path.join(rd, "imbalanced_cancer_protocol")
    names = ("precision", "recall", "f1", "auc", "auc_pr", "accuracy")
    test, rows = {}, []
    for label, (cw, sp) in _PROTOCOL_VARIANTS.items():
        sub = os.path.join(root, f"task.class_weight={cw},task.train_data.sampling={sp}")
        with open(os.path.join(sub, "test_metrics.json"), encoding="utf-8") as f:
            test[label] = json.load(f)
        val = read_metrics(sub)
        rows.append([label, test[label]["step"], _f(val["auc"])] + [_f(test[label][n]) for n in names])
    details = ("Test split (the untouched held-out quarter, natural ratio ~37% malignant), evaluated once at the "
               "end on the restored best weights; the validation set is 25% of the 10:1 training source, carved "
               "stratified (73 examples, 7 malignant), and drives early stopping only:\n\n"
               + _md_table(["variant", "final step", "validation auc (last eval)"] + [f"test {n}" for n in names],
                           rows))
    r = {k: v["recall"] for k, v in test.items()}
    ok = r["sampling"] > r["neither"] and r["class weights"] > r["neither"]
    return Check("test malignant recall: " + ", ".join(f"{k} {_f(v)}" for k, v in r.items())
                 + "; test F1: " + ", ".join(f"{k} {_f(v['f1'])}" for k, v in test.items()), ok, details)


def check_images(name: str) -> Callable[[str], Check]:
    def check(rd: str) -> Check:
        m = read_metrics(os.path.join(rd, name))
        return Check(f"accuracy {_f(m['accuracy'])}", m["accuracy"] >= 0.9)

    return check


# ------------------------------------------------------------------------------------- specs


def check_docstring_family(rd: str) -> Check:
    m = read_metrics(os.path.join(rd, "docstring_family"))
    return Check(f"eval accuracy {_f(m['accuracy'])} (step {m['step']})", m["accuracy"] >= 0.65)


def check_byte_lm(rd: str) -> Check:
    import math

    m = read_metrics(os.path.join(rd, "byte_lm"))
    bpb = m["loss"] / math.log(2.0)
    return Check(f"held-out {bpb:.3f} bits per byte (token accuracy {_f(m['accuracy'])}, step {m['step']})",
                 bpb <= 4.0)


def check_docstring_tags(rd: str) -> Check:
    plain = read_metrics(os.path.join(rd, "docstring_tags_unweighted"))
    weighted = read_metrics(os.path.join(rd, "docstring_tags"))
    ok = weighted["recall"] > plain["recall"] and weighted["f1"] > plain["f1"] and \
        min(plain["auc"], weighted["auc"]) >= 0.60
    rows = [[name, _f(m["recall"]), _f(m["precision"]), _f(m["f1"]), _f(m["f1_micro"]), _f(m["auc"])]
            for name, m in (("unweighted", plain), ("pos_weight", weighted))]
    return Check(f"macro recall {_f(plain['recall'])} -> {_f(weighted['recall'])}, macro F1 {_f(plain['f1'])} -> "
                 f"{_f(weighted['f1'])} with pos_weight; macro AUC "
                 f"{_f(plain['auc'])} / {_f(weighted['auc'])}", ok,
                 _md_table(["loss", "macro recall", "macro precision", "macro F1", "micro F1", "macro AUC"], rows))


def _run(name: str, rd: str, *flags: str, exp: str | None = None) -> Run:
    d = os.path.join(rd, name)
    return Run(d, [f"--experiment={exp or name}", f"--model_dir={d}", *flags])


def _data_dirs(rd: str, sub: str) -> str:
    d = os.path.join(rd, "data", sub)
    return f"--params_override=task.train_data.data_dir={d},task.eval_data.data_dir={d}"


SPECS = [
    Spec("digits_cnn", "eval accuracy >= 0.97", lambda rd: [_run("digits_cnn", rd)], check_digits_cnn),
    Spec("linear_regression", "slope within 2% of 2, intercept within 0.05 of 1",
         lambda rd: [_run("linear_regression", rd)], check_linear),
    Spec("sine_regression", "held-out MSE <= 0.01", lambda rd: [_run("sine_regression", rd)], check_sine),
    Spec("optimizer_comparison", "Adam and RMSprop reach eval accuracy >= 0.95; plain SGD trails both",
         lambda rd: [_run("optimizer_comparison", rd, "--sweep=optimizer.name=sgd,adam,rmsprop")],
         check_optimizers),
    Spec("optimizer_tuned", "TPE + median pruning over optimizer x learning rate (12 trials) finds eval accuracy "
         ">= 0.97; the pruner stops at least one trial",
         lambda rd: [_run("optimizer_tuned", rd, "--mode=tune")], check_tuned),
    Spec("digits_augment", "both runs reach eval accuracy >= 0.98 with a train/eval accuracy gap <= 0.02 "
         "(on 8x8 digits augmentation does not shrink the gap)",
         lambda rd: [_run("digits_augment", rd, "--sweep=task.model.augment=false,true")], check_augment),
    Spec("digits_separable", "eval accuracy >= 0.95 with >= 3x fewer parameters than digits_cnn",
         lambda rd: [_run("digits_separable", rd)], check_separable),
    Spec("transfer_digits", "head only on the frozen pretrained body (phase 1) >= 0.5 (chance 0.2); fine-tuned "
         ">= 0.97 and at least from-scratch - 0.02 on the same 300 labels (it does not reliably beat it)",
         lambda rd: [_run("digits_pretrain", rd),
                     _run("transfer_digits", rd, f"--params_override=task.init_checkpoint={rd}/digits_pretrain"),
                     _run("transfer_digits_scratch", rd,
                          "--params_override={task: {init_checkpoint: null}, trainer: {phases: []}}",
                          exp="transfer_digits")],
         check_transfer),
    Spec("imbalanced_cancer", "balanced class weights raise malignant recall over the unweighted run",
         lambda rd: [_run("imbalanced_cancer", rd, "--sweep=task.class_weight=null,balanced")], check_imbalanced),
    Spec("imbalanced_cancer_protocol", "on the test set read once, balanced sampling and balanced class weights "
         "each raise malignant recall over neither",
         lambda rd: [_run("imbalanced_cancer_protocol", rd,
                          "--sweep=task.class_weight=null,balanced;task.train_data.sampling=null,balanced")],
         check_protocol),
    Spec("regularized_mlp", "dropout + batch norm + L2 has the smaller overfitting gap in loss "
         "(eval - train cross-entropy); eval accuracy about the same",
         lambda rd: [_run("regularized_mlp", rd, "--sweep=task.model.regularize=false,true")], check_regularized),
    Spec("image_folder", "eval accuracy >= 0.9",
         lambda rd: [_run("image_folder", rd, _data_dirs(rd, "digit_images"))], check_images("image_folder")),
    Spec("image_folder_tfrecord", "eval accuracy >= 0.9",
         lambda rd: [_run("image_folder_tfrecord", rd, _data_dirs(rd, "digit_tfrecords"))],
         check_images("image_folder_tfrecord")),
    Spec("docstring_family", "eval accuracy >= 0.65 (4 packages; the largest is 0.47 of eval)",
         lambda rd: [_run("docstring_family", rd)], check_docstring_family),
    Spec("byte_lm", "held-out bits per byte <= 4.0, below a unigram byte model (4.7)",
         lambda rd: [_run("byte_lm", rd)], check_byte_lm),
    Spec("docstring_tags",
         "pos_weight raises macro recall and macro F1 over the unweighted run; macro AUC >= 0.60 both (chance 0.5)",
         lambda rd: [_run("docstring_tags", rd),
                     _run("docstring_tags_unweighted", rd, "--params_override=task.loss.pos_weight=null",
                          exp="docstring_tags")],
         check_docstring_tags),
]


# ------------------------------------------------------------------------------------- driver


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {"cpu": cpu, "cores": str(cores), "python": platform.python_version(), "os": platform.platform(),
            "tensorflow": version("tensorflow"), "keras": version("keras")}


def display(cmd_flags: list[str], runs_dir: str) -> str:
    shown = [f.replace(os.path.abspath(runs_dir), runs_dir) for f in cmd_flags]
    return "python -m framework.main " + " ".join(shlex.quote(f) for f in shown)


def run_spec(spec: Spec, runs_dir: str, *, keep: bool, timeout: float, check_only: bool = False,
             previous: dict[str, Any] | None = None) -> dict[str, Any]:
    runs = spec.runs(runs_dir)
    if check_only:  # re-check existing outputs; the time of the run that made them stays
        return {**_checked(spec, runs_dir, "", (previous or {}).get("seconds", float("nan"))),
                "date": (previous or {}).get("date", datetime.date.today().isoformat()),
                "commands": [display(r.flags, runs_dir) for r in runs]}
    if not keep:
        for r in runs:
            shutil.rmtree(r.dir, ignore_errors=True)
    os.makedirs(runs_dir, exist_ok=True)
    log_path = os.path.join(runs_dir, f"{spec.name}.log")
    t0 = time.monotonic()
    error = ""
    with open(log_path, "w", encoding="utf-8") as log:
        for r in runs:
            cmd = [sys.executable, "-m", "framework.main", *r.flags]
            log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
            log.flush()
            print(f"[{spec.name}] {display(r.flags, runs_dir)}", flush=True)
            try:
                rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc, error = -1, f"timed out after {timeout:.0f}s"
            if rc != 0:
                error = error or f"exit status {rc}; see {log_path}"
                break
    seconds = time.monotonic() - t0
    return {**_checked(spec, runs_dir, error, seconds), "commands": [display(r.flags, runs_dir) for r in runs],
            "date": datetime.date.today().isoformat()}


def _checked(spec: Spec, runs_dir: str, error: str, seconds: float) -> dict[str, Any]:
    if error:
        check = Check(f"FAILED TO RUN: {error}", False)
    else:
        try:
            check = spec.check(runs_dir)
        except Exception as e:  # noqa: BLE001 - a missing output is a failed result, reported
            check = Check(f"CHECK FAILED: {type(e).__name__}: {e}", False)
    print(f"[{spec.name}] {'PASS' if check.passed else 'FAIL'}: {check.measured} ({seconds:.0f}s)", flush=True)
    return {"stated": spec.stated, "measured": check.measured, "passed": check.passed, "details": check.details,
            "seconds": round(seconds, 1)}


def write_readme(path: str, results: dict[str, dict[str, Any]], info: dict[str, str], runs_dir: str) -> None:
    order = [s.name for s in SPECS if s.name in results]
    total = sum(results[n]["seconds"] for n in order)
    dates = sorted({results[n]["date"] for n in order})
    lines = [
        "# Experiments: commands, stated results, measured results",
        "",
        "Generated by `python scripts/run_experiments.py` from real runs (do not edit by hand). Each",
        "experiment is a module in `experiments/` whose docstring gives its command and expected result;",
        "the script runs those commands as subprocesses, checks the stated result from the outputs",
        "(metrics.json, sweep.csv, event files, checkpoints) and rewrites this file. The same checks as",
        "tests: `pytest tests/experiments -m slow` (full digits_cnn run) and",
        "`pytest tests/experiments -m 'not slow'` (every experiment for a few steps).",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} CPU cores (shared with other work while measured), "
        f"no GPU; {info['os']}",
        f"- Software: Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}",
        f"- Date: {', '.join(dates)}; runs in `{runs_dir}`; total wall time {total / 60:.1f} min "
        "(including process start-up, tracing and data preparation)",
        "",
        "| experiment | command | stated result | measured | pass | time |",
        "|---|---|---|---|---|---|",
    ]
    for n in order:
        r = results[n]
        cmds = "<br>".join(f"`{c}`" for c in r["commands"])
        lines.append(f"| {n} | {cmds} | {r['stated']} | {r['measured']} | {'yes' if r['passed'] else '**no**'} "
                     f"| {r['seconds']:.0f} s |")
    details = [(n, results[n]["details"]) for n in order if results[n].get("details")]
    if details:
        lines += ["", "## Details", ""]
        for n, d in details:
            lines += [f"### {n}", "", d, ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", default=[], help="experiment name(s); repeatable or comma-separated")
    p.add_argument("--runs_dir", default="runs/experiments", help="where the runs go (default runs/experiments)")
    p.add_argument("--readme", default=os.path.join(ROOT, "experiments", "README.md"),
                   help="the generated table (default experiments/README.md); '' to skip")
    p.add_argument("--keep", action="store_true", help="reuse existing run directories (finished runs skip)")
    p.add_argument("--check_only", action="store_true",
                   help="run nothing: re-check the existing outputs in --runs_dir and rewrite the table")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    args = p.parse_args(argv)
    names = [n for o in args.only for n in o.split(",") if n]
    known = [s.name for s in SPECS]
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"--only: unknown experiment(s) {unknown}; known: {', '.join(known)}")
    runs_dir = args.runs_dir if os.path.isabs(args.runs_dir) else os.path.relpath(
        os.path.join(os.getcwd(), args.runs_dir), ROOT)
    abs_runs = os.path.join(ROOT, runs_dir)
    os.makedirs(abs_runs, exist_ok=True)
    results_path = os.path.join(abs_runs, "results.json")
    results: dict[str, Any] = {}
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
    os.chdir(ROOT)  # commands and paths are relative to the repository root
    for spec in SPECS:
        if names and spec.name not in names:
            continue
        results[spec.name] = run_spec(spec, runs_dir, keep=args.keep, timeout=args.timeout,
                                      check_only=args.check_only, previous=results.get(spec.name))
        with open(results_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    if args.readme:
        write_readme(args.readme, results, machine(), runs_dir)
        print(f"wrote {args.readme}")
    chosen = [s.name for s in SPECS if not names or s.name in names]
    failed = [n for n in chosen if not results[n]["passed"]]
    if failed:
        print(f"not met: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
