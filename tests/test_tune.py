"""--mode=tune through the real CLI: a study end to end, pruning, resume after SIGKILL, two
workers, best_params.yaml through --config_file, and every bad tune input exiting 2 first."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from framework import config as config_lib
from framework import main as main_lib
from framework import tune, tune_report
from tests._cli_batch import run_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--experiment=tune_test", "--import=tests._tune_experiment", "--mode=tune"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _cli(model_dir, *flags, timeout=300):
    return subprocess.run([sys.executable, "-m", "framework.main", *BASE, f"--model_dir={model_dir}", *flags],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def _study(model_dir):
    return optuna.load_study(study_name="tune_test", storage=tune.default_storage(str(model_dir)))


def _csv(model_dir):
    with open(os.path.join(model_dir, "tune.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _hparams_sessions(run_dir):
    import tensorflow as tf

    n = 0
    for f in os.listdir(run_dir):
        if f.startswith("events.out.tfevents"):
            for e in tf.compat.v1.train.summary_iterator(os.path.join(run_dir, f)):
                n += sum(v.metadata.plugin_data.plugin_name == "hparams" for v in e.summary.value)
    return n


def test_a_study_of_three_trials_end_to_end_and_best_params_round_trip(tmp_path):
    # The default jit_compile (auto: whole-step XLA for this dense model on CPU).
    r = _cli(tmp_path, "--params_override=trainer.jit_compile=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    study = _study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    rows = _csv(tmp_path)
    assert [int(row["number"]) for row in rows] == [0, 1, 2]
    for t, row in zip(study.trials, rows):
        run_dir = tmp_path / f"trial={t.number}"
        assert row["run_dir"] == f"trial={t.number}" and row["state"] == "complete"
        # A normal run: its params.yaml holds the sampled values, metrics.json the objective.
        params = _yaml(run_dir / "params.yaml")
        assert params["optimizer"]["name"] == t.params["optimizer.name"] == row["optimizer.name"]
        assert params["optimizer"]["learning_rate"] == t.params["optimizer.learning_rate"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["step"] == 12 and int(row["steps"]) == 12
        assert metrics["accuracy"] == pytest.approx(t.value) == pytest.approx(float(row["accuracy"]))
        assert (run_dir / "checkpoint").exists() and _hparams_sessions(run_dir) == 1
    best = max(study.trials, key=lambda t: t.value)
    md = (tmp_path / "tune.md").read_text()
    assert f"best: trial {best.number}" in md and "3 complete, 0 pruned" in md
    assert (tmp_path / "tune.png").stat().st_size > 10_000
    assert _hparams_sessions(tmp_path) == 1  # the HParams experiment (parameters, eval metrics) over the trials

    # best_params.yaml is a --config_file override that gives the best trial's config.
    cfg = main_lib.resolve_config(experiment="tune_test", imports=["tests._tune_experiment"],
                                  config_files=[str(tmp_path / "best_params.yaml")], overrides=[], runtime_flags={})
    assert cfg.optimizer.name == best.params["optimizer.name"]
    assert cfg.optimizer.learning_rate == best.params["optimizer.learning_rate"]
    # ... the whole optimizer section of the best trial's run, not only the two searched keys.
    assert _yaml(tmp_path / f"trial={best.number}" / "params.yaml")["optimizer"] == config_lib.to_dict(cfg)["optimizer"]

    # Re-running the finished study runs nothing more.
    r = _cli(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(_study(tmp_path).trials) == 3


def test_the_pruner_stops_a_clearly_worse_trial_at_that_evaluation(tmp_path):
    # Trials in a fixed order: two good ones, then one that cannot learn (learning rate 1e-6): its
    # eval accuracy stays that of the initial weights, far below the median of the first two.
    space = {"optimizer.learning_rate": {"type": "float", "low": 1e-6, "high": 0.5},
             "optimizer.name": {"type": "categorical", "choices": ["sgd"]}}
    study = optuna.create_study(storage=tune.default_storage(str(tmp_path)), study_name="tune_test",
                                direction="maximize")
    for lr in (0.3, 0.3, 1e-6):
        study.enqueue_trial({"optimizer.learning_rate": lr, "optimizer.name": "sgd"})
    r = _cli(tmp_path, "--params_override=" + json.dumps({"tune": {"space": space}}))
    assert r.returncode == 0, r.stderr[-3000:]
    trials = _study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert list(trials[2].intermediate_values) == [4]  # reported once, at its first evaluation
    # The pruned run stopped at its first evaluation (step 4 of 12); the others ran to the end.
    assert json.loads((tmp_path / "trial=2" / "metrics.json").read_text())["step"] == 4
    rows = _csv(tmp_path)
    assert [(row["state"], row["steps"]) for row in rows] == [("complete", "12"), ("complete", "12"), ("pruned", "4")]
    assert "1 pruned" in (tmp_path / "tune.md").read_text()


def _wait_for(path, proc, timeout=240):
    t0 = time.monotonic()
    while not os.path.exists(path):
        assert proc.poll() is None, "the study ended before the trial was killed"
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_resume_after_sigkill_mid_trial_adds_no_trial(tmp_path):
    flags = ["--params_override=trainer.train_steps=200,trainer.eval_interval=40,trainer.checkpoint_interval=8,tune.trials=2"]
    cmd = [sys.executable, "-m", "framework.main", *BASE, f"--model_dir={tmp_path}", *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "trial=1" / "ckpt-16.index", proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed = _study(tmp_path).trials
    assert [t.state.name for t in killed] == ["COMPLETE", "RUNNING"]

    r = _cli(tmp_path, *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = _study(tmp_path).trials
    # The killed trial is failed (never counted) and its parameters re-run once, resumed in its
    # own directory from its checkpoint: two finished trials, as asked.
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    retry = trials[2]
    assert retry.params == trials[1].params and retry.system_attrs["failed_trial"] == 1
    assert retry.user_attrs["run_dir"] == "trial=1" and retry.user_attrs["start_step"] >= 16
    assert json.loads((tmp_path / "trial=1" / "metrics.json").read_text())["step"] == 200
    assert not (tmp_path / "trial=2").exists()
    assert "retry of trial 1" in (tmp_path / "tune.md").read_text()


@pytest.mark.slow
def test_sigterm_mid_trial_checkpoints_requeues_and_the_rerun_resumes_it(tmp_path):
    flags = ["--params_override=trainer.train_steps=200,trainer.eval_interval=40,trainer.checkpoint_interval=8,tune.trials=2"]
    cmd = [sys.executable, "-m", "framework.main", *BASE, f"--model_dir={tmp_path}", *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "trial=1" / "ckpt-16.index", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    trials = _study(tmp_path).trials
    # Preempted: checkpointed, failed (not counted) and queued again at once with its parameters.
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "WAITING"]
    stopped_at = tune.latest_step(str(tmp_path / "trial=1"))
    assert 16 <= stopped_at < 200

    r = _cli(tmp_path, *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = _study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params
    assert trials[2].user_attrs["run_dir"] == "trial=1" and trials[2].user_attrs["start_step"] == stopped_at


@pytest.mark.slow  # 26-75 s in CI runs: three processes; the default suite keeps the 3-trial study and admission
def test_two_workers_finish_exactly_the_trials(tmp_path):
    r = _cli(tmp_path, "--tune_workers=2", "--params_override=tune.trials=3,trainer.train_steps=4")
    assert r.returncode == 0, r.stderr[-3000:]
    states = [t.state.name for t in _study(tmp_path).trials]
    assert states == ["COMPLETE"] * 3
    assert "tune: 2 worker processes on" in r.stderr and "worker 1: cpu" in r.stderr
    assert len(_csv(tmp_path)) == 3


def _space(**entries):
    base = {"optimizer.learning_rate": {"type": "float", "low": 1e-3, "high": 0.5, "log": True}}
    return "--params_override=" + json.dumps({"tune": {"space": {**base, **entries}}})


BAD = {
    "unknown_component_key": (_space(**{"optimizer.learnin_rate": {"type": "float", "low": 0.1, "high": 0.2}}),
                              "tune.space: unknown config key 'optimizer.learnin_rate' (did you mean 'learning_rate'?); "
                              "valid keys at optimizer:"),
    "unknown_key": (_space(**{"trainer.stepz": {"type": "int", "low": 1, "high": 2}}),
                    "tune.space: unknown config key 'trainer.stepz'; valid keys at trainer:"),
    "low_above_high": (_space(**{"optimizer.learning_rate": {"type": "float", "low": 0.5, "high": 0.1}}),
                       "tune.space.optimizer.learning_rate: expected low <= high; got low=0.5, high=0.1"),
    "log_nonpositive": (_space(**{"optimizer.learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}),
                        "tune.space.optimizer.learning_rate: a log range needs low > 0; got low=0.0"),
    "sampler": ("--params_override=tune.sampler=cmaes", "tune.sampler: expected one of tpe | random | grid"),
    "pruner": ("--params_override=tune.pruner=asha", "tune.pruner: expected one of median | hyperband | none"),
    "metric": ("--params_override=tune.metric=auc",
               "tune.metric: expected a metric the evaluation produces (loss, accuracy); got 'auc'"),
    "storage": ("--tune_storage=nosuchdb://x/y", "Optuna RDB URL (sqlite:///..., postgresql://..., mysql://...); got 'nosuchdb://x/y'"),
}


def _check_refused(model_dir, name, code, err):
    assert code == 2, (name, code, err[-2000:])
    assert BAD[name][1] in err and "Traceback" not in err, (name, err[-2000:])
    assert not [f for f in os.listdir(model_dir) if f.startswith("trial=")], name
    if name != "storage":
        assert not (model_dir / "study.db").exists(), name  # checked before the study is even opened


def test_bad_tune_input_exits_2_before_any_trial(tmp_path):
    # The table's command lines in one process (tests/_cli_batch.py: one TensorFlow import, not
    # eight); the storage case below runs as its own `python -m framework.main` process.
    names = [n for n in BAD if n != "storage"]
    dirs = {n: tmp_path / n for n in names}
    results = run_batch([[*BASE, f"--model_dir={dirs[n]}", BAD[n][0]] for n in names])
    for n, r in zip(names, results):
        _check_refused(dirs[n], n, r["code"], r["stderr"])


def test_bad_tune_storage_exits_2_from_the_console_script(tmp_path):
    p = _cli(tmp_path, BAD["storage"][0])
    _check_refused(tmp_path, "storage", p.returncode, p.stderr)


def test_core_split_gives_disjoint_shares():
    assert tune.core_split(2, [0, 1]) == [[0], [1]]
    assert tune.core_split(2, [0, 1, 2, 3]) == [[0, 2], [1, 3]]
    assert tune.core_split(3, [0, 1]) == [[0], [1], [0]]  # more workers than cores: shared, stated in the log


def _resolver(*overrides):
    def resolve(extra):
        return main_lib.resolve_config(experiment="tune_test", imports=["tests._tune_experiment"], config_files=[],
                                       overrides=[*overrides, *extra], runtime_flags={})
    return resolve


@pytest.mark.slow  # ~80 s: a grid of real CLI trials; the default suite keeps the 3-trial study
def test_grid_sampler_runs_every_combination_once_like_a_sweep(tmp_path):
    space = {"optimizer.name": {"type": "categorical", "choices": ["sgd", "adam"]},
             "optimizer.learning_rate": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}}
    resolve = _resolver(json.dumps({"tune": {"sampler": "grid", "pruner": "none", "trials": 20, "space": space}}))
    plan = tune.make_plan(resolve([]), experiment="tune_test", resolve=resolve)
    assert plan.trials == 6  # the grid's size, not tune.trials
    study = tune.open_study(plan, tune.default_storage(str(tmp_path)))
    seen = []

    def run_trial(override, run_dir, hooks):  # records what each trial would run
        seen.append(json.loads(override)["optimizer"])
        return {"step": 12, "eval": {"accuracy": 0.5}}

    assert tune.work(study, plan, model_dir=str(tmp_path), run_trial=run_trial) == 6
    combos = sorted((o["name"], round(o["learning_rate"], 6)) for o in seen)
    assert combos == sorted((n, lr) for n in ("sgd", "adam") for lr in (0.1, 0.2, 0.3))


def test_results_with_a_single_complete_trial_plot_history_only(tmp_path):
    resolve = _resolver()
    plan = tune.make_plan(resolve([]), experiment="tune_test", resolve=resolve)
    study = tune.open_study(plan, tune.default_storage(str(tmp_path)))
    study.add_trial(optuna.trial.create_trial(
        params={"optimizer.learning_rate": 0.1, "optimizer.name": "adam"}, value=0.9,
        distributions={"optimizer.learning_rate": optuna.distributions.FloatDistribution(1e-3, 0.5, log=True),
                       "optimizer.name": optuna.distributions.CategoricalDistribution(["sgd", "adam"])}))
    summary = tune_report.write_results(study, plan, str(tmp_path))
    assert summary["best"]["params"] == {"optimizer.learning_rate": 0.1, "optimizer.name": "adam"}
    assert (tmp_path / "tune.png").stat().st_size > 5_000  # the history alone, with a note, no error
    assert _yaml(tmp_path / "best_params.yaml") == {"optimizer": {"learning_rate": 0.1, "name": "adam"}}


def test_admission_counts_finished_and_earlier_running_trials_only(tmp_path):
    """Two machines both start a trial when one slot is left: the later-numbered one is surplus."""
    resolve = _resolver("tune.trials=2")
    plan = tune.make_plan(resolve([]), experiment="tune_test", resolve=resolve)
    study = tune.open_study(plan, tune.default_storage(str(tmp_path)))
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))  # trial 0: complete
    a, b = study.ask(), study.ask()  # trials 1 and 2, running at once
    assert not tune._surplus(study, a.number, plan.trials) and tune._surplus(study, b.number, plan.trials)
    # A live process on this host owns trial 1: the study is full, no worker here starts another.
    a.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})
    study.tell(b, state=optuna.trial.TrialState.FAIL)
    ran = tune.work(study, plan, model_dir=str(tmp_path), run_trial=lambda *args: pytest.fail("must not run"))
    assert ran == 0 and len(study.trials) == 3
    # Once its process is gone, trial 1 is failed and re-queued; the retry runs in trial=1.
    a.set_user_attr("owner", {"host": socket.gethostname(), "pid": 2 ** 22 + 1})
    dirs = []
    tune.work(study, plan, model_dir=str(tmp_path),
              run_trial=lambda override, run_dir, hooks: dirs.append(run_dir) or {"step": 12, "eval": {"accuracy": 0.6}})
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert dirs == [os.path.join(str(tmp_path), "trial=1")]
