"""--mode=cross_validate: stratified disjoint covering folds, one resumable sub-run per fold,
cv.json / cv.md / cv.png, and cleanlab's label issues from out-of-fold predictions."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from framework import cross_validate as cv_lib
from framework import main as main_lib
from framework.data import split as split_lib
from tests import _data_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLIPPED = [4, 50, 97, 121]


def test_folds_are_disjoint_covering_and_stratified():
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat([0, 1, 2], [60, 30, 12]))
    folds = split_lib.fold_indices(y, folds=4, seed=42)
    held = [ev for _, ev in folds]
    np.testing.assert_array_equal(np.sort(np.concatenate(held)), np.arange(len(y)))  # covering, disjoint
    for tr, ev in folds:
        assert len(np.intersect1d(tr, ev)) == 0 and len(tr) + len(ev) == len(y)
        counts = np.bincount(y[ev], minlength=3)
        assert counts[0] == 15 and counts[2] == 3 and abs(counts[1] - 7.5) <= 0.5  # every class split evenly
    again = split_lib.fold_indices(y, folds=4, seed=42)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    # Regression targets: plain KFold, still a partition.
    held = [ev for _, ev in split_lib.fold_indices(rng.normal(size=21), folds=4, seed=1)]
    np.testing.assert_array_equal(np.sort(np.concatenate(held)), np.arange(21))
    with pytest.raises(ValueError, match="--folds: stratified folds need every class"):
        split_lib.fold_indices(np.array([0] * 10 + [1] * 2), folds=3, seed=0)


def _runner(calls, extra=()):
    def run_one(override, sub_dir):
        calls.append(sub_dir)
        cfg = main_lib.resolve_config(
            experiment="data_blobs", imports=[], config_files=[], runtime_flags={},
            overrides=[f"task.train_data.flip={FLIPPED}", "hooks=[{name: record_start}]", *extra,
                       json.dumps(override)])
        return main_lib.run(cfg, model_dir=main_lib.check_model_dir(sub_dir), mode="train_and_eval")
    return run_one


def test_cross_validation_reports_resumes_and_finds_flipped_labels(tmp_path):
    d = str(tmp_path)
    calls = []

    def crash_in_fold_1(override, sub_dir):
        # Fold 1 stops at step 20 (its checkpoint stays) and the process "dies" there.
        if sub_dir.endswith("fold=1"):
            _runner(calls, ["hooks=[{name: test_stop_at, step: 20}]"])(override, sub_dir)
            raise KeyboardInterrupt
        return _runner(calls)(override, sub_dir)

    from tests import _mw_experiment  # noqa: F401 - registers test_stop_at
    with pytest.raises(KeyboardInterrupt):
        cv_lib.run(folds=3, model_dir=d, run_one=crash_in_fold_1, find_label_issues=True)
    assert os.path.exists(os.path.join(d, "fold=0", "cv_fold.json"))
    assert not os.path.exists(os.path.join(d, "fold=1", "cv_fold.json"))

    calls.clear()
    _data_experiment.STARTS.clear()
    report = cv_lib.run(folds=3, model_dir=d, run_one=_runner(calls), find_label_issues=True)
    # Fold 0 is skipped, fold 1 resumes from its step-20 checkpoint, fold 2 starts fresh.
    assert [os.path.basename(c) for c in calls] == ["fold=1", "fold=2"]
    assert _data_experiment.STARTS == [20, 0]

    with open(os.path.join(d, "cv.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))
    assert len(saved["folds"]) == 3 and set(saved["mean"]) == set(saved["std"]) == {"loss", "accuracy"}
    accs = [fo["accuracy"] for fo in saved["folds"]]
    assert saved["mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert saved["std"]["accuracy"] == pytest.approx(np.std(accs))
    assert saved["held_out"] == [50, 50, 50]
    assert os.path.getsize(os.path.join(d, "cv.png")) > 0 and "mean ± std" in open(os.path.join(d, "cv.md")).read()

    # The held-out parts of the three sub-runs partition the training set, stratified.
    idx = np.concatenate([np.load(os.path.join(d, f"fold={i}", "oof.npz"))["indices"] for i in range(3)])
    np.testing.assert_array_equal(np.sort(idx), np.arange(150))
    labels = np.load(os.path.join(d, "fold=0", "oof.npz"))["labels"]
    assert np.bincount(labels).max() - np.bincount(labels).min() <= 2

    with open(os.path.join(d, "label_issues.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["example", "given_label", "suggested_label", "score"]
    top = [int(r["example"]) for r in rows[:len(FLIPPED)]]
    assert sorted(top) == FLIPPED  # the deliberately flipped labels rank first
    for r in rows[:len(FLIPPED)]:
        i = int(r["example"])
        assert int(r["given_label"]) == (i % 3 + 1) % 3 and int(r["suggested_label"]) == i % 3


def test_label_issues_rank_in_this_process_without_forking(tmp_path, monkeypatch):
    # Forking a process that runs TensorFlow can deadlock the children (a CI run hung in
    # cleanlab's Pool): the ranking must not start a multiprocessing pool.
    import multiprocessing

    def no_pool(*args, **kwargs):
        raise AssertionError("label_issues started a multiprocessing pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    probs = np.full((120, 3), 0.05)
    probs[np.arange(120), labels] = 0.9
    probs[[3, 77], :] = [0.05, 0.05, 0.9]  # two examples whose given label the model contradicts
    order = rng.permutation(120)
    oof = [{"indices": order[:60], "labels": labels[order[:60]], "probs": probs[order[:60]]},
           {"indices": order[60:], "labels": labels[order[60:]], "probs": probs[order[60:]]}]
    path = str(tmp_path / "label_issues.csv")
    assert cv_lib.label_issues(oof, path) == 2
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["example"]) for r in rows) == [3, 77]
    assert all(r["suggested_label"] == "2" for r in rows)


def test_missing_cleanlab_is_a_clear_error_before_any_fold(tmp_path, monkeypatch):
    for name in ("cleanlab", "cleanlab.filter", "cleanlab.rank"):
        monkeypatch.setitem(sys.modules, name, None)  # `import cleanlab` now raises ImportError
    calls = []
    with pytest.raises(cv_lib.MissingExtra, match=r"pip install tapeline\[data\]") as e:
        cv_lib.run(folds=3, model_dir=str(tmp_path), run_one=_runner(calls), find_label_issues=True)
    assert isinstance(e.value, ValueError)  # main turns it into one line and exit status 2
    assert calls == [] and os.listdir(tmp_path) == []


def test_cli_cross_validate(tmp_path):
    d = tmp_path / "cv"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "framework.main", "--import=tests._data_experiment",
                        "--experiment=data_blobs", f"--model_dir={d}", "--mode=cross_validate", "--folds=2",
                        "--params_override=trainer.train_steps=20,trainer.eval_interval=20"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((d / "cv.json").read_text())
    assert len(report["folds"]) == 2 and "accuracy" in report["mean"]
    for i in range(2):
        params = (d / f"fold={i}" / "params.yaml").read_text()
        assert f"index: {i}" in params and (d / f"fold={i}" / "checkpoint").exists()
    assert "2-fold cross-validation done" in r.stdout and not (d / "label_issues.csv").exists()
