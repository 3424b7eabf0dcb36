"""Resume in a new process: bit-identical to an uninterrupted run (groups, Adam, dropout); lr_find."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
BASE = ["--experiment=mw_test", "--import=tests._mw_experiment"]
# Several groups, Adam, and a cosine schedule; width 32 MLP on digits.
OVERRIDE = ("trainer.train_steps=12,trainer.steps_per_loop=3,trainer.checkpoint_interval=3,"
            "optimizer.schedule.name=cosine,optimizer.weight_decay=0.01")


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "framework.main", *BASE, *args], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _state(model_dir):
    path = tf.train.latest_checkpoint(str(model_dir))
    reader = tf.train.load_checkpoint(path)
    return path, {k: reader.get_tensor(k) for k, _ in tf.train.list_variables(path)
                  if k.startswith(("model/", "optimizer/", "step/"))}


# The user's default (whole-step XLA here) in the default suite; `false` in a new process is slow-only
# (its in-process twin, tests/test_controller.py::test_resume_equals_straight_run, runs by default).
@pytest.mark.parametrize("jit", ["auto", pytest.param("false", marks=pytest.mark.slow)])
def test_resume_in_new_process_is_bit_identical(tmp_path, jit):
    override = f"{OVERRIDE},trainer.jit_compile={jit}"
    _cli(f"--model_dir={tmp_path / 'straight'}", f"--params_override={override}")
    stop = '{hooks: [{name: test_stop_at, step: 6}]}'
    r1 = _cli(f"--model_dir={tmp_path / 'resumed'}", f"--params_override={override}", f"--params_override={stop}")
    assert "train | step 6/12" in r1.stderr and "train | step 9/12" not in r1.stderr
    assert f"jit_compile={jit == 'auto'}" in r1.stderr  # the path this case is about
    r2 = _cli(f"--model_dir={tmp_path / 'resumed'}", f"--params_override={override}")
    assert "restored" in r2.stderr and "train | step 3/12" not in r2.stderr and "train | step 12/12" in r2.stderr
    pa, a = _state(tmp_path / "straight")
    pb, b = _state(tmp_path / "resumed")
    assert pa.endswith("ckpt-12") and pb.endswith("ckpt-12")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_lr_find_writes_csv_and_png_and_no_checkpoint(tmp_path):
    d = tmp_path / "lr"
    r = _cli(f"--model_dir={d}", "--mode=lr_find")
    rows = list(csv.DictReader(open(d / "lr_find.csv")))
    assert len(rows) >= 20
    lrs = [float(x["learning_rate"]) for x in rows]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # exponential sweep, increasing
    assert (d / "lr_find.png").stat().st_size > 1000
    assert not any(f.startswith("ckpt-") or f == "checkpoint" for f in os.listdir(d))
    assert "suggested learning_rate" in r.stderr
