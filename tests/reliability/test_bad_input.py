"""Bad input rejected (B1-B9): exit status 2, one message naming the flag or field and the value,
before training starts. Each case is a `framework.main` command line: a few are their own
`python -m framework.main` process, the rest share one (tests/_cli_batch.py)."""
import fcntl
import json
import math
import os

import pytest

from tests._cli_batch import run_batch
from tests.reliability import _util as U

MIRRORED = ["--cpu_replicas=2", "--strategy=mirrored"]

# (id, extra args, strings the error must contain, whether params.yaml must not exist)
CASES = [
    ("B1_unknown_experiment", ["--experiment=no_such_exp", *U.IMPORTS],
     ["--experiment", "'no_such_exp'", "rel_test"], True),
    ("B2_lr_zero", [*U.BASE, "--params_override=optimizer.learning_rate=0"],
     ["optimizer.learning_rate", "got 0.0"], True),
    ("B2_lr_negative", [*U.BASE, "--params_override=optimizer.learning_rate=-0.1"],
     ["optimizer.learning_rate", "got -0.1"], True),
    ("B2_batch_zero", [*U.BASE, "--params_override=task.train_data.batch_size=0"],
     ["task.train_data.batch_size", "got 0"], True),
    ("B2_unknown_strategy", [*U.BASE, "--strategy=warp_drive"],
     ["--strategy", "warp_drive"], True),
    ("B2_clip_zero", [*U.BASE, "--params_override=optimizer.clip.global_norm=0"],
     ["optimizer.clip.global_norm", "got 0.0"], True),
    ("B2_clip_nan", [*U.BASE, "--params_override=optimizer.clip.global_norm=.nan"],
     ["optimizer.clip.global_norm", "got nan"], True),
    ("B2_clip_value_negative", [*U.BASE, "--params_override=optimizer.clip.value=-1"],
     ["optimizer.clip.value", "-1"], True),
    ("B3_batch_not_divisible_by_replicas", [*U.BASE, *MIRRORED, "--params_override=task.train_data.batch_size=31"],
     ["task.train_data.batch_size", "2 replicas", "got 31"], False),
    ("B4_feature_shape", [*U.BASE, "--params_override=task.train_data.mode=wide"],
     ["task.train_data", "'x'", "[64]", "[65]"], False),
    ("B4_feature_dtype", [*U.BASE, "--params_override=task.train_data.mode=string"],
     ["task.train_data", "'x'", "float32", "string"], False),
    ("B4_eval_feature_shape", [*U.BASE, "--params_override=task.eval_data.mode=wide"],
     ["task.eval_data", "[64]", "[65]"], False),
    ("B5_sparse_label_out_of_range", [*U.BASE, "--params_override=task.train_data.mode=label_oob"],
     ["task.train_data", "label 10", "[0, 10)"], False),
    ("B6_empty_train_dataset", [*U.BASE, "--params_override=task.train_data.mode=empty"],
     ["task.train_data", "empty"], False),
    ("B6_empty_eval_dataset", [*U.BASE, "--params_override=task.eval_data.mode=empty"],
     ["task.eval_data", "empty"], False),
    ("B9_param_group_matches_nothing",
     [*U.BASE, "--params_override={optimizer: {param_groups: [{pattern: '^conv9/', lr_multiplier: 0.1}]}}"],
     ["optimizer.param_groups[0].pattern", "'^conv9/'", "fc1/kernel"], False),
]


# Devices are fixed when TensorFlow first starts: the case that asks for replicas, and one case
# of each kind of check (a flag, the data pre-flight), run as their own `python -m
# framework.main` process. The others share one process (tests/_cli_batch.py: one TensorFlow
# import instead of thirteen, about 8-12 s each on 2 cores), run once for all xdist workers.
OWN_PROCESS = {"B1_unknown_experiment", "B3_batch_not_divisible_by_replicas", "B4_feature_shape"}
GOOD = "good_control"


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    """{case id: (result, model_dir)} for every case not in OWN_PROCESS, and a good command line.

    The first xdist worker to ask runs the batch under a lock and leaves its results in the
    directory all workers share; the other reads them (pytest-xdist's recipe for a fixture made
    once per session).
    """
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "bad_input_batch"
    root.mkdir(exist_ok=True)
    cases = [(GOOD, [*U.BASE, "--params_override=trainer.train_steps=2"])]
    cases += [(c[0], c[1]) for c in CASES if c[0] not in OWN_PROCESS]
    with open(root / "lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "results.json"
        if not done.exists():
            results = run_batch([[*args, f"--model_dir={root / name}"] for name, args in cases])
            done.write_text(json.dumps(results), encoding="utf-8")
        results = json.loads(done.read_text(encoding="utf-8"))
    return {name: (r, root / name) for (name, _), r in zip(cases, results)}


def _check_rejected(name, code, out, stderr, d, must, no_params):
    assert code == 2, (name, out[-3000:])
    err = [line for line in stderr.splitlines() if line.startswith("tapeline: error:")]
    assert len(err) == 1, (name, stderr[-3000:])
    for s in must:
        assert s in err[0], (name, s, err[0])
    assert "Traceback" not in stderr, name
    assert "train | step" not in out and not os.path.exists(d / "checkpoint"), name
    if no_params:
        assert not os.path.exists(d / "params.yaml"), name  # refused before anything was written


@pytest.mark.parametrize("name,args,must,no_params", [pytest.param(*c, id=c[0]) for c in CASES])
def test_bad_input_is_rejected_before_training(request, tmp_path, name, args, must, no_params):
    if name in OWN_PROCESS:
        d = tmp_path / "run"
        r = U.cli(*args, f"--model_dir={d}", timeout=180)
        _check_rejected(name, r.returncode, r.out, r.stderr, d, must, no_params)
    else:
        r, d = request.getfixturevalue("batched")[name]
        _check_rejected(name, r["code"], r["stdout"] + r["stderr"], r["stderr"], d, must, no_params)


def test_a_good_command_line_in_the_shared_process_trains_and_its_progress_is_captured(batched):
    # Without this the checks that a bad command line printed no progress line and left no
    # checkpoint would be vacuous.
    r, d = batched[GOOD]
    assert r["code"] == 0 and "train | step 2/2" in r["stderr"], r["stderr"][-3000:]
    assert os.path.exists(d / "checkpoint")


def test_b7_partial_batches_on_two_replicas_give_no_nan(tmp_path):
    """65 eval examples in batches of 64 on 2 replicas (the last replica batch is all padding),
    and a 33-example training set with batch 32: finite loss and metrics, right counts."""
    d = tmp_path / "run"
    over = ("task.eval_data.max_examples=65,task.train_data.max_examples=33,trainer.train_steps=4,"
            "trainer.eval_interval=4,trainer.checkpoint_interval=4")
    r = U.ok(*U.BASE, f"--model_dir={d}", *MIRRORED, f"--params_override={over}")
    assert "MirroredStrategy: 2 replica(s)" in r.out
    m = json.loads((d / "metrics.json").read_text())
    assert m["step"] == 4 and all(math.isfinite(v) for v in m.values())
    assert 0.0 <= m["accuracy"] <= 1.0
    per_class = json.loads((d / "eval_per_class.json").read_text())
    assert sum(c["support"] for c in per_class["classes"]) == 65  # padding never counted
    assert "nan" not in r.out.lower().replace("nonfinite", "")


def test_b8_checkpoint_of_a_different_model_lists_mismatches_and_loads_nothing(tmp_path, stopped_at_8):
    d = U.copy_run(stopped_at_8, tmp_path / "run")
    before = {f: open(os.path.join(d, f), "rb").read() for f in U.ckpt_files(d)}
    trained_with = open(os.path.join(d, "params.yaml"), encoding="utf-8").read()
    r = U.cli(*U.BASE, f"--model_dir={d}", "--params_override=task.model.width=16", timeout=180)
    assert r.returncode == 2, r.out[-3000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("tapeline: error:")][0]
    assert "none can be restored" in err and "a different model" in err
    for s in ("fc1/kernel (64, 16) vs checkpoint fc1/kernel (64, 32)", "fc1/bias (16,)", "head/kernel (16, 10)"):
        assert s in err, s
    assert "train | step" not in r.out and U.restored(r.out) is None
    assert {f: open(os.path.join(d, f), "rb").read() for f in U.ckpt_files(d)} == before
    # The config the checkpoints were trained with stays on record next to the refused one.
    assert open(os.path.join(d, "params.1.yaml"), encoding="utf-8").read() == trained_with


@pytest.mark.slow  # a variant of the test above
def test_b8_checkpoint_with_fewer_variables_is_not_partially_loaded(tmp_path, stopped_at_8):
    """A model with an extra (Dropout RNG) variable: same shapes where they overlap, still refused."""
    d = U.copy_run(stopped_at_8, tmp_path / "run")
    r = U.cli(*U.BASE, f"--model_dir={d}", "--params_override=task.model.dropout=0.2", timeout=180)
    assert r.returncode == 2, r.out[-3000:]
    assert "a different model" in r.stderr and "model has 5, checkpoint 4" in r.stderr
    assert "train | step" not in r.out


@pytest.mark.slow
def test_b8_checkpoint_with_more_variables_is_not_partially_loaded(tmp_path):
    """The checkpoint's model has two more (trailing) variables; the first four have this model's
    shapes. TensorFlow's restore assertion accepts that (extra checkpoint values are allowed) and
    would load the four silently: the framework refuses, naming the extra ones."""
    d = tmp_path / "run"
    U.ok(*U.BASE, f"--model_dir={d}", "--mode=train",
         "--params_override=task.model.tail=true,trainer.train_steps=2,trainer.checkpoint_interval=2")
    r = U.cli(*U.BASE, f"--model_dir={d}", "--mode=train", "--params_override=trainer.train_steps=4", timeout=180)
    assert r.returncode == 2, r.out[-3000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("tapeline: error:")][0]
    assert "a different model" in err and "model has 4, checkpoint 6" in err
    assert "checkpoint variables not in the model: tail/kernel, tail/bias" in err
    assert "train | step" not in r.out
