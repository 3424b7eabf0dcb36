"""--mode=inspect: the data report's counts against hand-built datasets, and its TensorBoard images."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2

from framework import main as main_lib
from framework.data import inspect
from tests import _components as C
from tests.data import _inspect_components as D

N_TRAIN, N_EVAL, CLASS_COUNTS = D.N_TRAIN, D.N_EVAL, D.CLASS_COUNTS
TRAIN_DUPLICATES, TRAIN_NONFINITE, EVAL_OVERLAP = D.TRAIN_DUPLICATES, D.TRAIN_NONFINITE, D.EVAL_OVERLAP


def _inspect(tmp_path, **task):
    cfg = C.make_config(task={"train_data": {"name": "inspect_hand_built", "batch_size": 8},
                              "eval_data": {"name": "inspect_hand_built", "batch_size": 8}, **task})
    result = main_lib.run(cfg, model_dir=str(tmp_path), mode="inspect")
    return json.loads((tmp_path / "data_report.json").read_text()), result


def _has(warnings, severity, *words):
    return any(w["severity"] == severity and all(s in w["message"] for s in words) for w in warnings)


def test_report_counts_on_hand_built_data(tmp_path):
    report, _ = _inspect(tmp_path)
    train, ev = report["splits"]["train"], report["splits"]["eval"]
    assert train["examples"] == N_TRAIN and ev["examples"] == N_EVAL
    assert train["class_counts"] == CLASS_COUNTS
    assert train["duplicates"] == TRAIN_DUPLICATES and ev["duplicates"] == 0
    assert train["nonfinite"] == len(TRAIN_NONFINITE) and train["first_nonfinite"] == TRAIN_NONFINITE[0]
    assert ev["nonfinite"] == 0
    assert report["overlap"] == {"train/eval": EVAL_OVERLAP}
    x = train["features"]["x"]
    assert x["shape"] == [3] and x["dtype"] == "float32" and x["nonfinite"] == 2
    assert x["constant_columns"] == [2] and x["constant"] is False
    assert x["range_ratio"] > 100
    train_x = D.hand_built()[0][0].astype(np.float64)
    finite = train_x[np.isfinite(train_x)]
    assert x["min"] == pytest.approx(finite.min()) and x["max"] == pytest.approx(finite.max())
    assert x["mean"] == pytest.approx(finite.mean()) and x["std"] == pytest.approx(finite.std())
    assert train["labels_outside_outputs"] == 1  # the one example of class 3 for 3 outputs


def test_report_warnings_name_each_problem(tmp_path):
    report, result = _inspect(tmp_path)
    w = report["warnings"]
    assert _has(w, "error", "train", "2 example(s)", "NaN/Inf", "first: example 30", "allow_nonfinite")
    assert _has(w, "error", "train", "1 label(s)", "3 output(s)")
    assert _has(w, "warning", "imbalanced", "40", "class 3: 1", "task.class_weight: balanced",
                "task.train_data.sampling: balanced")
    assert _has(w, "warning", "eval: 4 of 20", "also occur in train")
    assert _has(w, "warning", "constant column", "[2]")
    assert _has(w, "warning", "unscaled", "column 1")
    assert [s for s in ("error", "warning", "info") if any(x["severity"] == s for x in w)] == \
        sorted({x["severity"] for x in w}, key=["error", "warning", "info"].index)
    # The console summary carries every warning; the markdown report too.
    assert all(any(x["message"] in line for line in result["summary"]) for x in w)
    md = (tmp_path / "data_report.md").read_text()
    assert "| train | 60 | 2 | 3 |" in md and "train/eval 4" in md


def test_class_weight_turns_the_imbalance_warning_into_a_note(tmp_path):
    report, _ = _inspect(tmp_path, class_weight="balanced")
    assert _has(report["warnings"], "info", "imbalanced", "compensated by task.class_weight: balanced")
    assert not _has(report["warnings"], "warning", "imbalanced")


def test_inspect_leaves_no_checkpoint_and_trains_nothing(tmp_path, monkeypatch):
    from framework import trainer as trainer_lib

    def no_training_build(*a, **k):
        raise AssertionError("--mode=inspect built a training run")

    monkeypatch.setattr(trainer_lib, "build", no_training_build)
    _inspect(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["data_report.json", "data_report.md", "inspect"]
    assert not glob.glob(str(tmp_path / "**" / "ckpt-*"), recursive=True)


def test_model_that_cannot_be_built_skips_the_label_check_with_a_note(tmp_path):
    report, _ = _inspect(tmp_path, model={"name": "inspect_broken"})
    assert _has(report["warnings"], "info", "label range not checked", "could not be built")
    assert "labels_outside_outputs" not in report["splits"]["train"]


def test_dict_features_one_hot_labels_and_a_test_split():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 2)).astype(np.float32)
    b = (1e4 * rng.normal(size=30)).astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[np.repeat([0, 1, 2], [10, 15, 5])]
    train = inspect.SplitArrays(x={"a": a, "b": b}, y=onehot, w=np.ones(30, np.float32))
    test = inspect.SplitArrays(x={"a": a[:6], "b": b[:6] + 1.0}, y=onehot[:6], w=np.ones(6, np.float32))
    report = inspect.build_report({"train": train, "test": test}, kind="categorical", units=3)
    assert report["splits"]["train"]["class_counts"] == {"0": 10, "1": 15, "2": 5}
    assert set(report["splits"]["train"]["features"]) == {"a", "b"}
    assert report["splits"]["train"]["features"]["b"]["shape"] == []
    assert report["overlap"] == {"train/test": 0}  # feature b differs in every test row
    assert _has(report["warnings"], "warning", "features look unscaled", "'b'", "'a'")
    assert not _has(report["warnings"], "warning", "imbalanced")  # 15 / 5 = 3, not above 3


def test_regression_target_statistics():
    rng = np.random.default_rng(2)
    y = rng.normal(3.0, 2.0, size=(40, 1)).astype(np.float32)
    arrays = inspect.SplitArrays(x=rng.normal(size=(40, 4)).astype(np.float32), y=y, w=np.ones(40, np.float32))
    report = inspect.build_report({"train": arrays}, kind="regression", units=1)
    t = report["splits"]["train"]["target"]
    ref = y.astype(np.float64)
    assert (t["min"], t["max"]) == (pytest.approx(ref.min()), pytest.approx(ref.max()))
    assert (t["mean"], t["std"]) == (pytest.approx(ref.mean()), pytest.approx(ref.std()))
    assert "class_counts" not in report["splits"]["train"]


def _event_images(logdir):
    out = {}
    for f in glob.glob(os.path.join(logdir, "events*")):
        for rec in tf.data.TFRecordDataset(f):
            for v in event_pb2.Event.FromString(rec.numpy()).summary.value:
                if v.metadata.plugin_data.plugin_name == "images":
                    out[v.tag] = tf.io.decode_png(v.tensor.string_val[2]).numpy()
    return out


def test_image_grids_in_tensorboard_and_per_class_augmented_stats(tmp_path):
    cfg = C.make_config(task={"model": {"name": "test_linear", "inputs": 16},
                              "train_data": {"name": "inspect_images", "batch_size": 4},
                              "eval_data": {"name": ""}})
    main_lib.run(cfg, model_dir=str(tmp_path), mode="inspect")
    images = _event_images(str(tmp_path / "inspect"))
    assert set(images) == {"train/x/raw", "train/x/augmented"}
    raw, aug = images["train/x/raw"].astype(int), images["train/x/augmented"].astype(int)
    assert raw.shape == aug.shape == (1 * 5 + 1, 8 * 5 + 1, 1)  # one row of 8 tiles of 4x4, 1-pixel gaps
    x = np.linspace(0.0, 1.0, 8 * 4 * 4).reshape(8, 4, 4, 1) ** 2
    for i in range(8):
        tile_raw = raw[1:5, 1 + 5 * i:5 + 5 * i]
        tile_aug = aug[1:5, 1 + 5 * i:5 + 5 * i]
        # Raw tiles are the images on the raw range [min, max]; augmented = 1 - flipped, same scale.
        np.testing.assert_allclose(tile_raw, np.round(255 * (x[i] - x.min()) / (x.max() - x.min())), atol=1)
        np.testing.assert_allclose(tile_aug, np.round(255 * (1 - x[i][:, ::-1] - x.min()) / (x.max() - x.min())),
                                   atol=1)
    report = json.loads((tmp_path / "data_report.json").read_text())
    per_class = report["splits"]["train"]["images"]["x"]["per_class"]
    for c, idx in (("0", slice(0, 3)), ("1", slice(3, 8))):
        assert per_class[c]["raw"]["mean"] == pytest.approx(x[idx].mean(), rel=1e-5)
        assert per_class[c]["augmented"]["mean"] == pytest.approx(1 - x[idx].mean(), rel=1e-5)
        assert per_class[c]["augmented"]["std"] == pytest.approx(x[idx].std(), rel=1e-4)


def test_test_split_is_reported_with_its_overlap(tmp_path):
    # `task.test_data` (a DataConfig like eval_data) is read with split="test" when configured.
    cfg = C.make_config(task={"train_data": {"name": "inspect_hand_built", "batch_size": 8},
                              "eval_data": {"name": ""}})
    if not hasattr(cfg.task, "test_data"):
        from framework.config import DataConfig

        cfg.task.test_data = DataConfig()
    cfg.task.test_data.name = "inspect_hand_built"  # split "test" gives the eval arrays
    main_lib.run(cfg, model_dir=str(tmp_path), mode="inspect")
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert set(report["splits"]) == {"train", "test"}
    assert report["splits"]["test"]["examples"] == N_EVAL
    assert report["overlap"] == {"train/test": EVAL_OVERLAP}
    assert _has(report["warnings"], "warning", "test: 4 of 20", "also occur in train")


def test_infinite_source_is_inspected_on_its_first_batches(tmp_path):
    x, y = C.toy_classification(n=50)
    C.set_arrays("inspect_inf", x, y)
    cfg = C.make_config(task={"train_data": {"name": "inspect_repeat", "batch_size": 8}, "eval_data": {"name": ""}},
                        trainer={"preflight_batches": 3})
    main_lib.run(cfg, model_dir=str(tmp_path), mode="inspect")
    report = json.loads((tmp_path / "data_report.json").read_text())
    train = report["splits"]["train"]
    # The first 3 batches of 8: 24 rows of a 50-row source repeated, so no duplicates yet.
    assert train["examples"] == 24 and train["infinite"] is True and train["duplicates"] == 0
    assert _has(report["warnings"], "info", "first 24 examples only (an infinite source)")


def test_cli_prints_the_summary_and_writes_the_report(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-m", "framework.main", "--import=tests.data._inspect_components",
                        "--experiment=inspect_hand_built", f"--model_dir={tmp_path}", "--mode=inspect"],
                       cwd=root, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert out[0] == "train: 60 examples, 2 non-finite, 3 duplicates; classes 0: 40, 1: 12, 2: 7, 3: 1"
    assert "overlap: train/eval 4" in out
    assert any(line.startswith("[error] train: 2 example(s) have NaN/Inf") for line in out)
    assert out[-1].startswith(f"tapeline: data report {tmp_path}/data_report.json")
    assert sorted(os.listdir(tmp_path)) == ["data_report.json", "data_report.md", "inspect"]
