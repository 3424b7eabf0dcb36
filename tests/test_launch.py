"""Multi-worker on loopback: 2 worker processes equal one device; chief-only outputs; no hangs."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from framework import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
ARGS = ["--experiment=mw_test", "--import=tests._mw_experiment"]


def _weights(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    paths = json.loads(reader.get_tensor("model_paths/.ATTRIBUTES/VARIABLE_VALUE").decode())
    return {p: reader.get_tensor(f"model/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i, p in enumerate(paths)}


def test_two_workers_equal_one_device_and_only_chief_writes(tmp_path):
    one = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "framework.main", *ARGS, f"--model_dir={one}"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    mw = tmp_path / "mw"
    before = set(os.listdir("/tmp"))
    code = launch.launch(workers=2, main_args=[*ARGS, f"--model_dir={mw}"], timeout_s=240, env=ENV,
                         log_dir=str(tmp_path / "logs"))
    logs = "".join((tmp_path / "logs" / f).read_text() for f in sorted(os.listdir(tmp_path / "logs")))
    assert code == 0, logs[-3000:]
    a, b = _weights(one), _weights(mw)
    for p in a:
        if "seed_generator" not in p:
            np.testing.assert_allclose(b[p], a[p], rtol=1e-5, atol=1e-6, err_msg=p)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((mw / "metrics.json").read_text())
    assert m2["step"] == 12 and m2["accuracy"] == pytest.approx(m1["accuracy"], abs=1e-6)
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert "MultiWorkerMirroredStrategy: 2 replica(s)" in logs
    # The end-of-run export: in the chief's model_dir (the other worker's went to its scratch dir).
    assert (mw / "export" / "model.keras").exists() and (mw / "export" / "saved_model" / "saved_model.pb").exists()
    # Worker 1 wrote into a temporary directory that is gone.
    leftovers = [d for d in set(os.listdir("/tmp")) - before if d.startswith("tapeline-worker-")]
    assert leftovers == []


def test_a_failing_worker_stops_the_others(tmp_path):
    t0 = time.monotonic()
    # Worker arguments that fail at config time in both; the launcher must return non-zero fast.
    code = launch.launch(workers=2, main_args=[*ARGS, f"--model_dir={tmp_path}", "--params_override=trainer.x=1"],
                         timeout_s=120, env=ENV, log_dir=str(tmp_path / "logs"))
    assert code != 0
    assert time.monotonic() - t0 < 120


def test_lonely_worker_times_out_naming_peers(tmp_path):
    port_self, port_peer = launch.free_ports(2)
    tf_config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{port_self}", f"127.0.0.1:{port_peer}"]},
                            "task": {"type": "worker", "index": 0}})
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "framework.main", *ARGS, f"--model_dir={tmp_path}",
                        "--strategy=multi_worker", "--params_override=runtime.worker_timeout_s=8"],
                       cwd=ROOT, env=dict(ENV, TF_CONFIG=tf_config), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"127.0.0.1:{port_peer}" in r.stderr and "worker_timeout_s" in r.stderr
    assert time.monotonic() - t0 < 90  # bounded, never a silent hang (docs/design.md#t8)


def test_launcher_flags_are_absl_and_bad_ones_exit_2(capsys):
    assert launch.main(["--workers=0", "--", *ARGS]) == 2
    assert "--workers=0" in capsys.readouterr().err
    assert launch.main(["--workerz=2", "--", *ARGS]) == 2
    assert "workerz" in capsys.readouterr().err
    assert launch.main(["--workers=1", "--", *ARGS, "--strategy=mirrored"]) == 2
    assert "--strategy is set by the launcher" in capsys.readouterr().err
