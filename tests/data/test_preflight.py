"""The data pre-flight of trainer.build: non-finite data stops the run before anything is built or traced."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from framework import config as config_lib
from framework import registry
from framework import trainer as trainer_lib
from framework.data import pipeline
from tests import _components as C

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_BUILDS = []  # one entry per call of the `preflight_linear` model factory


def _arrays(n=64, nan_at=(), inf_label_at=(), seed=0):
    x, y = C.toy_classification(n=n, seed=seed)
    for i in nan_at:
        x[i, 1] = np.nan
    y = y.astype(np.float32) if inf_label_at else y
    for i in inf_label_at:
        y[i] = np.inf
    return x, y


if "preflight_data" not in registry.DATASETS:
    @registry.register_dataset("preflight_data")
    def preflight_data(split, n: int = 64, nan_at: list = (), eval_nan_at: list = (), infinite: bool = False):
        x, y = _arrays(n, nan_at if split == "train" else eval_nan_at, seed=0 if split == "train" else 1)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        return ds.repeat() if infinite else ds

    @registry.register_model("preflight_linear")
    def preflight_linear(units: int = 3, inputs: int = 3):
        MODEL_BUILDS.append(units)
        return C.test_linear(units=units, inputs=inputs)

    @registry.register_experiment("preflight_nan")
    def preflight_nan():
        return {"task": {"model": {"name": "preflight_linear"},
                         "train_data": {"name": "preflight_data", "batch_size": 8, "nan_at": [7, 12, 40]},
                         "eval_data": {"name": "preflight_data", "batch_size": 16},
                         "loss": {"name": "sparse_categorical_crossentropy"}},
                "trainer": {"train_steps": 10, "steps_per_loop": 5, "checkpoint_interval": 5}}


def _cfg(jit="auto", **data):
    train = {"name": "preflight_data", "batch_size": 8, **data}
    return C.make_config(task={"model": {"name": "preflight_linear"}, "train_data": train,
                               "eval_data": {"name": "preflight_data", "batch_size": 16}},
                         trainer={"jit_compile": jit, "preflight_batches": 3})


@pytest.mark.parametrize("jit", ["auto", False])
def test_nonfinite_features_stop_the_build_before_the_model_exists(jit):
    MODEL_BUILDS.clear()
    with pytest.raises(ValueError) as e:
        trainer_lib.build(_cfg(jit, nan_at=[7, 12, 40]), tf.distribute.get_strategy())
    text = str(e.value)
    assert text.startswith("task.train_data: expected finite features and labels; got 3 example(s)")
    assert "first: example 7" in text and "allow_nonfinite: true" in text
    assert MODEL_BUILDS == []  # nothing built, so nothing traced


def test_nonfinite_eval_labels_name_the_eval_split(monkeypatch):
    x, y = _arrays(32, inf_label_at=[5])
    C.set_arrays("pf_eval_inf", x, y)
    C.set_arrays("pf_ok", *_arrays(32))
    cfg = C.make_config(task={"train_data": {"key": "pf_ok"}, "eval_data": {"key": "pf_eval_inf"}})
    with pytest.raises(ValueError, match=r"^task\.eval_data: .* got 1 example\(s\) .*first: example 5, in label"):
        trainer_lib.build(cfg, tf.distribute.get_strategy())


def test_allow_nonfinite_overrides_and_logs(caplog):
    MODEL_BUILDS.clear()
    with caplog.at_level(logging.WARNING):
        t = trainer_lib.build(_cfg(nan_at=[7], allow_nonfinite=True), tf.distribute.get_strategy())
    assert MODEL_BUILDS == [3] and t.num_train_examples == 64
    assert any("pre-flight" in r.getMessage() and "1 example(s)" in r.getMessage() for r in caplog.records)


def test_streaming_source_is_checked_on_its_first_batches():
    # cache: false streams the source; 3 preflight batches of 8 cover examples 0-23.
    with pytest.raises(ValueError, match=r"got 1 example\(s\) with NaN/Inf values among its first 24 examples "
                                         r"\(a streaming source\) \(first: example 20"):
        trainer_lib.build(_cfg(nan_at=[20], cache=False), tf.distribute.get_strategy())
    # An infinite source likewise.
    cfg = config_lib.merge(_cfg(nan_at=[3], infinite=True), {"trainer": {"train_steps": 5}})
    with pytest.raises(ValueError, match=r"first: example 3"):
        trainer_lib.build(cfg, tf.distribute.get_strategy())
    # A NaN past the checked batches is left to the training loop's non-finite policy.
    t = trainer_lib.build(_cfg(nan_at=[30], cache=False), tf.distribute.get_strategy())
    assert t.num_train_examples == 64


def test_overlap_and_imbalance_are_warnings_in_the_log(caplog):
    x, y = _arrays(64)
    y[:] = 0
    y[:6] = 1  # 58:6, ratio above 3
    ex, ey = x[:10].copy(), y[:10].copy()
    C.set_arrays("pf_imb", x, y)
    C.set_arrays("pf_imb_eval", ex, ey)
    cfg = C.make_config(task={"train_data": {"key": "pf_imb"}, "eval_data": {"key": "pf_imb", "eval_key": "pf_imb_eval"}})
    with caplog.at_level(logging.WARNING):
        trainer_lib.build(cfg, tf.distribute.get_strategy())
    msgs = [r.getMessage() for r in caplog.records if "pre-flight" in r.getMessage()]
    assert any("task.eval_data: 10 of 10 eval examples also occur in the training data" in m for m in msgs)
    assert any("imbalanced" in m and "class 0: 58" in m and "class 1: 6" in m for m in msgs)


def test_labels_are_read_once_for_class_weights_and_the_label_check(monkeypatch):
    calls = []
    real = pipeline.labels_array
    monkeypatch.setattr(pipeline, "labels_array", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = config_lib.merge(_cfg(), {"task": {"class_weight": "balanced"}})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    assert calls == []  # the pre-flight's arrays were reused
    _, y = _arrays(64)
    counts = np.bincount(y, minlength=3)
    assert t.steps.class_weights == pytest.approx(list(64 / (3 * counts)))


def test_preflight_batches_must_be_non_negative():
    with pytest.raises(config_lib.ConfigError, match=r"trainer\.preflight_batches: expected an integer >= 0; got -1"):
        C.make_config(trainer={"preflight_batches": -1})


def test_cli_exits_2_with_split_count_and_first_index(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "framework.main", "--import=tests.data.test_preflight",
                        "--experiment=preflight_nan", f"--model_dir={tmp_path}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "tapeline: error: task.train_data: expected finite features and labels; got 3 example(s)" in r.stderr
    assert "first: example 7" in r.stderr and "Traceback" not in r.stderr
    assert not any(f.startswith("ckpt") or f == "checkpoint" for f in os.listdir(tmp_path))
