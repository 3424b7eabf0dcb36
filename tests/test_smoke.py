"""--mode=smoke (two steps, one eval batch, checkpoint round trip, export) leaves only smoke.json
and fails, naming the stage, on a broken model; trainer.overfit_batches repeats N batches and
reports whether the loss fell."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import main as main_lib
from framework import smoke
from framework import trainer as trainer_lib
from tests import _components as C
from tests import _data_experiment  # noqa: F401 - registers the data_* experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "framework.main", "--import=tests._data_experiment", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _resolve(name, *overrides):
    return main_lib.resolve_config(experiment=name, imports=[], config_files=[], overrides=list(overrides),
                                   runtime_flags={})


@pytest.mark.parametrize("jit", ["auto", "false"])
def test_smoke_passes_and_leaves_only_smoke_json(tmp_path, jit):
    d = str(tmp_path / "run")
    os.makedirs(d)
    result = main_lib.run(_resolve("data_blobs", f"trainer.jit_compile={jit}"), model_dir=d, mode="smoke")
    assert os.listdir(d) == ["smoke.json"]  # no checkpoint, events, params.yaml or export
    report = json.loads(open(os.path.join(d, "smoke.json"), encoding="utf-8").read())
    assert report == result["smoke"] and report["ok"] and report["step"] == 2
    assert set(report["seconds"]) == {"train", "checkpoint", "export"}
    assert 0 <= report["eval"]["accuracy"] <= 1
    assert not os.path.exists(report["scratch"])  # the temporary directory is gone too
    # A real run in the same model_dir afterwards starts from step 0.
    _data_experiment.STARTS.clear()
    main_lib.run(_resolve("data_blobs", "trainer.train_steps=20", "hooks=[{name: record_start}]"), model_dir=d,
                 mode="train_and_eval")
    assert _data_experiment.STARTS == [0]


def test_smoke_cli_fails_on_a_model_broken_in_training(tmp_path):
    r = _cli("--experiment=data_broken", f"--model_dir={tmp_path}", "--mode=smoke")
    assert r.returncode == 1
    assert "smoke failed at train" in r.stderr and "deliberately broken" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == ["smoke.json"]
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert not report["ok"] and "train" in report["error"]


def test_smoke_fails_at_export_for_a_model_unloadable_in_safe_mode(tmp_path):
    cfg = _resolve("data_lambda")
    with pytest.raises(smoke.SmokeError, match="smoke failed at export"):
        main_lib.run(cfg, model_dir=str(tmp_path), mode="smoke")
    assert os.listdir(tmp_path) == ["smoke.json"]


@pytest.mark.parametrize("lr, fell", [(0.5, True), (1e-7, False)])
def test_overfit_batches_repeats_the_same_batches_and_reports(tmp_path, lr, fell, caplog):
    x, y = C.toy_classification(n=96)
    C.set_arrays("overfit", x, y)
    cfg = C.make_config(task={"model": {"hidden": 32}, "train_data": {"key": "overfit"},
                              "eval_data": {"key": "overfit"}},
                        trainer={"train_steps": 60, "steps_per_loop": 10, "overfit_batches": 2,
                                 "jit_compile": "auto"},
                        optimizer={"name": "adam", "learning_rate": lr})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    xs = [b[0].numpy() for b, _ in zip(iter(t.train_dataset(start_step=0)), range(6))]
    for i in range(2, 6):
        np.testing.assert_array_equal(xs[i], xs[i % 2])  # batches 0, 1, 0, 1, ...
    assert not np.array_equal(xs[0], xs[1])
    resumed = next(iter(t.train_dataset(start_step=3)))[0].numpy()
    np.testing.assert_array_equal(resumed, xs[1])
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.train(evaluate=False)
    report = json.loads((tmp_path / "overfit.json").read_text())
    assert report["batches"] == 2 and report["overfit"] is fell and ctl.overfit == report
    assert (report["last_loss"] <= 0.5 * report["first_loss"]) is fell
    if not fell:
        assert "could not overfit 2 batch(es)" in caplog.text
