"""The CLI: an end-to-end run on a few steps and each early error (before TensorFlow builds)."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from framework import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "framework.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_end_to_end(tmp_path):
    d = tmp_path / "run"
    over = ("trainer.train_steps=20,trainer.steps_per_loop=10,trainer.eval_interval=20,"
            "trainer.checkpoint_interval=20,optimizer.learning_rate=2e-3")
    r = _cli("--experiment=digits_cnn", f"--model_dir={d}", f"--params_override={over}", "--alsologtostderr")
    assert r.returncode == 0, r.stderr[-3000:]
    params = yaml.safe_load((d / "params.yaml").read_text())
    assert params["trainer"]["train_steps"] == 20
    assert params["optimizer"]["learning_rate"] == pytest.approx(2e-3)
    assert isinstance(params["optimizer"]["learning_rate"], float)
    assert (d / "checkpoint").exists() and any(f.startswith("ckpt-20") for f in os.listdir(d))
    assert any(f.startswith("events") for f in os.listdir(d / "train"))
    assert any(f.startswith("events") for f in os.listdir(d / "eval"))
    m = json.loads((d / "metrics.json").read_text())
    assert m["step"] == 20 and 0.0 <= m["accuracy"] <= 1.0
    assert "train | step 20/20 | loss" in r.stderr
    assert f"tensorboard --logdir {d}" in r.stdout
    # The same command again: a finished run exits 0 without training.
    r2 = _cli("--experiment=digits_cnn", f"--model_dir={d}", f"--params_override={over}", "--alsologtostderr")
    assert r2.returncode == 0 and "already finished" in r2.stderr and "train | step" not in r2.stderr


def test_cli_unknown_experiment_lists_registered(tmp_path):
    r = _cli("--experiment=nope", f"--model_dir={tmp_path}", timeout=120)
    assert r.returncode == 2
    assert "nope" in r.stderr and "digits_cnn" in r.stderr
    assert not os.path.exists(tmp_path / "params.yaml")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(main_lib.UserError, match=r"trainer\.train_stepz.*train_steps"):
        main_lib.resolve_config(experiment="digits_cnn", imports=[], config_files=[],
                                overrides=["trainer.train_stepz=3"], runtime_flags={})


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(main_lib.UserError, match=r"trainer\.train_steps: expected int; got 'abc'"):
        main_lib.resolve_config(experiment="digits_cnn", imports=[], config_files=[],
                                overrides=["trainer.train_steps=abc"], runtime_flags={})


def test_config_files_then_override_apply_in_order(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("trainer: {train_steps: 5, seed: 1}\n")
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"trainer": {"train_steps": 6}}))
    cfg = main_lib.resolve_config(experiment="digits_cnn", imports=[], config_files=[str(a), str(b)],
                                  overrides=["{trainer: {seed: 9}}"], runtime_flags={"cpu_replicas": 2})
    assert (cfg.trainer.train_steps, cfg.trainer.seed, cfg.runtime.cpu_replicas) == (6, 9, 2)


def test_import_takes_module_names_not_paths():
    with pytest.raises((main_lib.UserError, ValueError), match="never a file path"):
        main_lib.resolve_config(experiment="digits_cnn", imports=["experiments/digits_cnn.py"], config_files=[],
                                overrides=[], runtime_flags={})


def test_unwritable_model_dir(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(main_lib.UserError, match="--model_dir"):
        main_lib.check_model_dir(str(f / "sub"))


def test_cli_bad_override_exits_2_before_building(tmp_path):
    r = _cli("--experiment=digits_cnn", f"--model_dir={tmp_path}", "--params_override=trainer.nope=1", timeout=120)
    assert r.returncode == 2 and "trainer.nope" in r.stderr
    assert not os.path.exists(tmp_path / "params.yaml")


def test_cli_misspelt_optimizer_key_exits_2_with_the_key_it_meant(tmp_path):
    r = _cli("--experiment=digits_cnn", f"--model_dir={tmp_path}", "--params_override=optimizer.learning_rat=0.1",
             timeout=180)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "optimizer: unknown key(s) learning_rat" in last and "did you mean 'learning_rate'" in last
    assert "Traceback" not in r.stderr


def test_cli_import_of_a_taken_name_exits_2_naming_both_places(tmp_path):
    r = _cli("--experiment=digits_cnn", f"--model_dir={tmp_path}", "--import=tests._dup_experiment", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "--import=tests._dup_experiment" in last and "'digits_cnn' is already registered" in last
    assert "experiments.digits_cnn.digits_cnn" in last and "tests._dup_experiment.digits_cnn" in last
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "params.yaml")


def test_a_run_puts_the_previous_sigterm_handler_back(tmp_path):
    # During the run SIGTERM means "checkpoint and stop"; after it, the process (a notebook, the
    # folds of --mode=cross_validate) must get its own handler again, not a dead controller's.
    import signal

    from tests import _components  # noqa: F401 - registers test_linear / test_arrays

    seen = []

    def own(signum, frame):  # noqa: ARG001 - signal API
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, own)
    try:
        x, y = _components.toy_classification(n=32)
        _components.set_arrays("sigterm", x, y)
        cfg = _components.make_config(task={"train_data": {"key": "sigterm"}, "eval_data": {"name": ""}},
                                      trainer={"train_steps": 4, "steps_per_loop": 2})
        result = main_lib.run(cfg, model_dir=main_lib.check_model_dir(str(tmp_path / "run")), mode="train")
        assert result["step"] == 4
        assert signal.getsignal(signal.SIGTERM) is own
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM] and not result["controller"].preempted
    finally:
        signal.signal(signal.SIGTERM, previous)
