"""Security checks (S1-S4): no code from file paths, outputs inside model_dir, safe model loading,
no network server started by the tool."""
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import sweep
from framework.hooks import export as export_lib
from tests.reliability import _util as U


def _evil(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.py"
    path.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    return path, marker


@pytest.mark.parametrize("flag", ["experiment", "import"])
def test_s1_file_paths_are_refused_and_never_executed(tmp_path, flag):
    evil, marker = _evil(tmp_path)
    for value in (os.path.relpath(evil, U.ROOT),):  # '../../tmp/.../evil.py'; absolute ones fail alike
        args = [f"--{flag}={value}", f"--model_dir={tmp_path / 'run'}"]
        if flag == "import":
            args.append("--experiment=rel_test")
        r = U.cli(*args, timeout=120)
        assert r.returncode == 2, r.out[-2000:]
        assert f"--{flag}" in r.stderr and "never a file path" in r.stderr and repr(value) in r.stderr
        assert "Traceback" not in r.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "params.yaml").exists()


@pytest.mark.parametrize("combo", [
    {"task.model.name": "../../escape"}, {"a": "/etc/passwd"}, {"a": ".."}, {"..": "x"},
    {"a": "x/../../y"}, {"a": "..\\..\\win"}, {"a": "."}, {"a": "\x00nul"}, {"a": "ü/é"},
])
def test_s2_sweep_run_names_stay_inside_model_dir(tmp_path, combo):
    name = sweep.run_name(combo)
    assert name and "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
    root = os.path.realpath(tmp_path)
    assert os.path.dirname(os.path.realpath(os.path.join(root, name))) == root


@pytest.mark.parametrize("subdir", ["../out", "/tmp/abs_export", "a/../../b", "..", ".", "", "a/..\\..\\b"])
def test_s2_export_subdir_outside_model_dir_is_refused(subdir):
    with pytest.raises(ValueError, match=r"export\.subdir.*got"):
        export_lib.export(subdir=subdir)
    export_lib.export(subdir="export/v1")  # a plain relative one is fine


def test_s2_cli_export_outside_model_dir_is_refused(tmp_path):
    d = tmp_path / "m" / "run"
    r = U.cli(*U.BASE, f"--model_dir={d}", "--params_override={hooks: [{name: export, subdir: ../escaped}]}",
              timeout=120)
    assert r.returncode == 2 and "export.subdir" in r.stderr and "'../escaped'" in r.stderr, r.out[-2000:]
    assert not (tmp_path / "m" / "escaped").exists() and "train | step" not in r.out


@pytest.mark.slow
def test_s2_sweep_with_dotdot_value_writes_only_inside_model_dir(tmp_path):
    outer = tmp_path / "outer"
    d = outer / "sweep"
    # `mode` is a free-form dataset kwarg (an unknown mode is a plain dataset): the run trains.
    r = U.ok(*U.BASE, f"--model_dir={d}", "--sweep=task.train_data.mode=../../escape",
             "--params_override=trainer.train_steps=2,trainer.eval_interval=2,trainer.checkpoint_interval=2")
    assert "sweep of 1 runs done" in r.out
    assert os.listdir(outer) == ["sweep"]
    subs = [s for s in os.listdir(d) if os.path.isdir(d / s)]
    assert len(subs) == 1 and ".." not in subs[0]
    assert (d / subs[0] / "checkpoint").exists()
    for root, _, files in os.walk(tmp_path):
        for f in files:
            assert os.path.realpath(os.path.join(root, f)).startswith(os.path.realpath(d) + os.sep)


def test_s3_exported_keras_model_loads_with_safe_mode(tmp_path):
    d = tmp_path / "run"
    U.ok(*U.BASE, f"--model_dir={d}", "--mode=train",
         "--params_override={trainer: {train_steps: 4, checkpoint_interval: 4}, hooks: [{name: export}]}")
    path = d / "export" / "model.keras"
    model = keras.models.load_model(str(path), safe_mode=True)  # no lambda / pickled code needed
    x = np.random.default_rng(0).random((3, 64)).astype(np.float32)
    y = np.asarray(model(x))
    assert y.shape == (3, 10) and np.all(np.isfinite(y))
    # The export holds the final weights of the run.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(d)))
    kernel = reader.get_tensor("model/0/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(model.get_layer("fc1").kernel.numpy(), kernel)
    assert (d / "export" / "saved_model" / "saved_model.pb").exists()


def test_s4_the_tool_starts_no_tensorboard_or_other_server():
    """tapeline only writes event files and prints `tensorboard --logdir DIR` for the user to run;
    TensorBoard run that way binds to localhost unless given --bind_all / --host."""
    pattern = re.compile(r"tensorboard\.program|TensorBoard\(|\bprogram\.TensorBoard|bind_all|"
                         r"socket\.socket|\.bind\(|\.listen\(|http\.server|socketserver|0\.0\.0\.0|Popen\([^)]*tensorboard",
                         re.I)
    allowed = {os.path.join("framework", "launch.py")}  # picks free loopback ports for local workers
    hits = []
    for root, _, files in os.walk(os.path.join(U.ROOT, "framework")):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(root, f), U.ROOT)
            for n, line in enumerate(open(os.path.join(root, f), encoding="utf-8"), 1):
                if pattern.search(line) and rel not in allowed:
                    hits.append(f"{rel}:{n}: {line.strip()}")
    assert hits == []
    launch = open(os.path.join(U.ROOT, "framework", "launch.py"), encoding="utf-8").read()
    assert '"127.0.0.1"' in launch and "0.0.0.0" not in launch  # local workers on loopback only
