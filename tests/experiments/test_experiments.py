"""The experiments library: every registered experiment runs end to end on a few steps, and the
components each one is about do what its docstring says (transfer phases, init_checkpoint,
the image folder pipeline and its augmentation, the imbalanced split, sweeps)."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from framework import checkpoint as ckpt_lib
from framework import controller as controller_lib
from framework import main as main_lib
from framework import plugins, registry
from framework import trainer as trainer_lib
from framework.data import bundled, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

plugins.load_experiments()
# The built-in experiments (test modules imported earlier in the session register their own).
NAMES = sorted(n for n in registry.EXPERIMENTS.names()
               if registry.EXPERIMENTS.get(n).__module__.startswith("experiments."))
IMAGE_EXPERIMENTS = {"image_folder": "digit_images", "image_folder_tfrecord": "digit_tfrecords"}

# A few steps of everything: two compiled loops, one evaluation on two batches, one checkpoint.
SMALL = ["trainer.train_steps=4", "trainer.steps_per_loop=2", "trainer.eval_interval=4",
         "trainer.checkpoint_interval=4", "trainer.eval_steps=2", "task.train_data.batch_size=8"]
# transfer_digits' three phases squeezed into the 4 steps (each loop ends at a phase start).
SMALL_PHASES = json.dumps({"trainer": {"phases": [
    {"start_step": 0, "trainable": {"bottom": False, "top": False}},
    {"start_step": 2, "trainable": {"top": True}, "lr_multiplier": {"top": 0.1}},
    {"start_step": 3, "trainable": {"bottom": True}, "lr_multiplier": {"top": 0.7, "bottom": 0.49}}]}})


def _resolve(name: str, *overrides: str):
    return main_lib.resolve_config(experiment=name, imports=[], config_files=[], overrides=[*SMALL, *overrides],
                                   runtime_flags={})


def _run(name: str, model_dir: str, *overrides: str) -> dict:
    cfg = _resolve(name, *overrides)
    result = main_lib.run(cfg, model_dir=model_dir, mode="train_and_eval")
    with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["step"] == result["step"] == 4, (name, metrics)
    return metrics


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Image folders / TFRecords written once for the module (never under the repo's runs/)."""
    return str(tmp_path_factory.mktemp("experiment_data"))


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory):
    """A digits_pretrain run of 4 steps: the init_checkpoint of transfer_digits here."""
    d = str(tmp_path_factory.mktemp("pretrain"))
    _run("digits_pretrain", d)
    return d


def _data_overrides(name: str, data_root: str) -> list[str]:
    if name not in IMAGE_EXPERIMENTS:
        return []
    d = os.path.join(data_root, IMAGE_EXPERIMENTS[name])
    return [f"task.train_data.data_dir={d}", f"task.eval_data.data_dir={d}"]


def test_the_library_is_registered():
    assert {"digits_cnn", "linear_regression", "sine_regression", "optimizer_comparison", "digits_augment",
            "digits_separable", "digits_pretrain", "transfer_digits", "imbalanced_cancer", "regularized_mlp",
            "imbalanced_cancer_protocol",
            "image_folder", "image_folder_tfrecord"} <= set(NAMES)


# Each docstring experiment builds its corpus by importing stdlib modules (about 45 s on a slow
# 2-core VM): byte_lm keeps a text model in the default suite, these two run with --slow.
SLOW_EXPERIMENTS = {"docstring_family", "docstring_tags"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EXPERIMENTS else n
                                  for n in NAMES])
def test_experiment_runs_a_few_steps_end_to_end(name, tmp_path, data_root, request):
    overrides = _data_overrides(name, data_root)
    if name == "transfer_digits":
        pre = request.getfixturevalue("pretrain_dir")
        overrides += [f"task.init_checkpoint={pre}", SMALL_PHASES]
    metrics = _run(name, str(tmp_path), *overrides)
    values = {k: v for k, v in metrics.items() if k != "step"}
    assert "loss" in values and values, metrics
    assert all(math.isfinite(v) for v in values.values()), metrics
    assert os.path.exists(tmp_path / "params.yaml") and (tmp_path / "checkpoint").exists()
    if name in IMAGE_EXPERIMENTS:  # the data went where the override said, not into runs/
        assert os.listdir(os.path.join(data_root, IMAGE_EXPERIMENTS[name]))


# ----------------------------------------------------------------------------------- transfer


def _transfer_trainer(pretrain_dir, *overrides):
    phases = json.dumps({"trainer": {"phases": [
        {"start_step": 0, "trainable": {"bottom": False, "top": False}},
        {"start_step": 4, "trainable": {"top": True}, "lr_multiplier": {"top": 0.1}},
        {"start_step": 8, "trainable": {"bottom": True}, "lr_multiplier": {"top": 0.7, "bottom": 0.49}}]}})
    cfg = _resolve("transfer_digits", "trainer.train_steps=12", f"task.init_checkpoint={pretrain_dir}", phases,
                   *overrides)
    return trainer_lib.build(cfg, tf.distribute.get_strategy())


def _values(model, prefix):
    return {v.path: v.numpy().copy() for v in model.variables
            if v.path.startswith(prefix) and "seed_generator" not in v.path}


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def _all_changed(a, b):
    return all(not np.array_equal(a[k], b[k]) for k in a)


def test_transfer_phases_freeze_what_they_say(tmp_path, pretrain_dir):
    t = _transfer_trainer(pretrain_dir)
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.restore()  # the initial weights from the pretraining checkpoint
    blocks = {p: _values(t.model, p) for p in ("block1_", "block2_", "block3_", "head/")}

    # Phase 1 (steps 0-4): head only; the body's weights and BN statistics do not move.
    t.total_steps = 4
    ctl.train(evaluate=False)
    after1 = {p: _values(t.model, p) for p in blocks}
    for p in ("block1_", "block2_", "block3_"):
        assert _same(after1[p], blocks[p]), f"{p} changed in phase 1"
    assert _all_changed(after1["head/"], blocks["head/"])
    for i in (1, 2, 3):  # batch norm of a frozen group runs in inference mode
        assert not t.model.get_layer(f"block{i}_bn").trainable

    # Phase 2 (steps 4-8): the top block joins at x0.1; the bottom stays frozen.
    t.total_steps = 8
    ctl.train(evaluate=False)
    after2 = {p: _values(t.model, p) for p in blocks}
    assert _same(after2["block1_"], blocks["block1_"]) and _same(after2["block2_"], blocks["block2_"])
    assert _all_changed(after2["block3_"], after1["block3_"])  # kernel, gamma, beta, moving stats
    assert t.model.get_layer("block3_bn").trainable and not t.model.get_layer("block1_bn").trainable
    lrs = t.group_lrs(7)
    assert lrs["top"] == pytest.approx(0.1 * lrs["default"]) and lrs["bottom"] == 0.0

    # Phase 3 (steps 8-12): everything, with the per-block decay 0.7 / 0.49.
    t.total_steps = 12
    ctl.train(evaluate=False)
    after3 = {p: _values(t.model, p) for p in blocks}
    assert _all_changed(after3["block1_"], after2["block1_"]) and _all_changed(after3["block2_"], after2["block2_"])
    assert all(t.model.get_layer(f"block{i}_bn").trainable for i in (1, 2, 3))
    lrs = t.group_lrs(11)
    assert lrs["top"] == pytest.approx(0.7 * lrs["default"]) and lrs["bottom"] == pytest.approx(0.49 * lrs["default"])


def test_init_checkpoint_loads_the_body_by_path_and_leaves_the_head(tmp_path, pretrain_dir):
    t = _transfer_trainer(pretrain_dir)
    fresh_head = _values(t.model, "head/")
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(pretrain_dir))
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    paths = json.loads(reader.get_tensor("model_paths" + suffix).decode("utf-8"))
    saved = {p: reader.get_tensor(f"model/{i}{suffix}") for i, p in enumerate(paths)}

    before = {v.path: v.numpy().copy() for v in t.model.variables if v.path.startswith("block")}
    assert all(not np.array_equal(before[p], saved[p]) for p in before)  # 4 pretraining steps moved them all
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    assert ctl.restore() == 0
    body = {v.path: v.numpy() for v in t.model.variables
            if v.path.startswith("block") and "seed_generator" not in v.path}
    assert len(body) == 15  # 3 x (conv kernel, gamma, beta, moving mean, moving variance)
    for p, value in body.items():
        np.testing.assert_array_equal(value, saved[p], err_msg=p)
    head = _values(t.model, "head/")
    assert _same(head, fresh_head)  # the mapping rule sent the old head nowhere
    assert not np.array_equal(head["head/kernel"], saved["head/kernel"])
    # The same by the public function, with and without the rule.
    loaded = ckpt_lib.load_weights(t.model, pretrain_dir, mapping=t.cfg.task.init_mapping)
    assert sorted(loaded) == sorted(body)
    assert sorted(ckpt_lib.load_weights(t.model, pretrain_dir)) == sorted([*body, "head/kernel", "head/bias"])


# ----------------------------------------------------------------------------------- images


def test_image_folder_pipeline_reads_the_files_it_wrote(data_root):
    from experiments import image_folder as imf

    d = os.path.join(data_root, "digit_images")
    imf.write_digit_images(d)
    for split in ("train", "eval"):
        _, y = bundled.load_arrays("digits", split)
        listed = {c: sorted(os.listdir(os.path.join(d, split, c))) for c in sorted(os.listdir(os.path.join(d, split)))}
        assert sorted(listed) == [str(c) for c in range(10)]
        names = [f for fs in listed.values() for f in fs]
        assert len(names) == len(y)
        assert {os.path.splitext(f)[1] for f in names} == {".png", ".jpg"}
        assert sum(f.endswith(".png") for f in names) == (len(y) + 1) // 2  # even indices
        # The file name is the example's index in the split and its folder is its label.
        for c, fs in listed.items():
            assert all(int(y[int(f.split(".")[0])]) == int(c) for f in fs)

        ds = imf.digit_images(split, data_dir=d, augment=False)
        assert ds.element_spec[0].shape == (16, 16, 1) and ds.element_spec[0].dtype == tf.float32
        xs, ys = zip(*ds.as_numpy_iterator())
        xs, ys = np.stack(xs), np.array(ys).reshape(-1)
        assert len(ys) == len(y)
        np.testing.assert_array_equal(np.bincount(ys, minlength=10), np.bincount(y, minlength=10))
        assert 0.0 <= xs.min() and xs.max() <= 1.0 and xs.max() > 0.5
        # Pixels survive the round trip (PNG exactly up to 8-bit rounding, JPEG approximately).
        x8, _ = bundled.load_arrays("digits", split)
        want = tf.image.resize(x8.reshape(-1, 8, 8, 1)[:2], [16, 16]).numpy().clip(0, 1)
        png = tf.io.decode_png(tf.io.read_file(os.path.join(d, split, str(int(y[0])), "00000.png"))).numpy()
        jpg = tf.io.decode_jpeg(tf.io.read_file(os.path.join(d, split, str(int(y[1])), "00001.jpg"))).numpy()
        assert np.abs(png / 255.0 - want[0]).max() <= 1 / 255 + 1e-6
        assert np.abs(jpg / 255.0 - want[1]).mean() < 0.05

    paths = imf.write_digit_tfrecords(os.path.join(data_root, "digit_tfrecords"))
    for split in ("train", "eval"):
        _, y = bundled.load_arrays("digits", split)
        ds = imf.digit_tfrecords(split, data_dir=os.path.dirname(paths[split]))
        ds = ds[0] if isinstance(ds, tuple) else ds
        got = np.array([int(np.asarray(e[1]).reshape(())) for e in ds.as_numpy_iterator()])
        np.testing.assert_array_equal(got, y)
        assert ds.element_spec[0].shape == (16, 16, 1)


def _image_trainer(data_root):
    d = os.path.join(data_root, "digit_images")
    cfg = _resolve("image_folder", f"task.train_data.data_dir={d}", f"task.eval_data.data_dir={d}")
    return trainer_lib.build(cfg, tf.distribute.get_strategy())


def _first_batches(t, n, start_step=0):
    it = iter(t.train_dataset(start_step=start_step))
    return [tuple(np.asarray(a) for a in next(it)) for _ in range(n)]


def test_augmentation_is_deterministic_per_epoch_and_position(data_root):
    from experiments import image_folder as imf

    # Two builds of the same config: the same first batches, augmentations included.
    a, b = _image_trainer(data_root), _image_trainer(data_root)
    batches_a, batches_b = _first_batches(a, 3), _first_batches(b, 3)
    for ba, bb in zip(batches_a, batches_b):
        for xa, xb in zip(ba, bb):
            np.testing.assert_array_equal(xa, xb)
    # A resumed run (start at step 2) sees exactly batch 2 of the uninterrupted stream.
    for xa, xb in zip(_first_batches(a, 1, start_step=2)[0], batches_a[2]):
        np.testing.assert_array_equal(xa, xb)
    # The augmentation really changes the images.
    raw = pipeline.train_stream(a.train_source, global_batch=8, seed=a.cfg.trainer.seed,
                                shuffle_buffer=a.cfg.task.train_data.shuffle_buffer, cache=False)
    assert not np.array_equal(next(iter(raw))[0].numpy(), batches_a[0][0])

    # Across epochs: without shuffling, epoch e is the same 16 examples with new augmentations.
    source = a.train_source.take(16)
    stream = pipeline.train_stream(source, global_batch=16, seed=7, shuffle_buffer=0, cache=False,
                                   augment=imf.flip_and_rotate)
    it = iter(stream)
    e0, e1 = next(it), next(it)
    np.testing.assert_array_equal(e0[1].numpy(), e1[1].numpy())
    assert not np.array_equal(e0[0].numpy(), e1[0].numpy())
    again = next(iter(pipeline.train_stream(source, global_batch=16, seed=7, shuffle_buffer=0, cache=False,
                                            augment=imf.flip_and_rotate, start_batch=1)))
    np.testing.assert_array_equal(again[0].numpy(), e1[0].numpy())


# ----------------------------------------------------------------------------------- tabular


def test_imbalanced_cancer_train_split_is_one_to_ten():
    from experiments import tabular

    labels = lambda split: np.array([int(y[0]) for _, y in tabular.imbalanced_cancer(split).as_numpy_iterator()])
    train, ev = labels("train"), labels("eval")
    pos, neg = int(train.sum()), int((train == 0).sum())
    assert pos == neg // 10 and 9.5 <= neg / pos <= 10.5
    # Only malignant training examples are dropped; eval keeps the natural ratio.
    _, y_train = bundled.load_arrays("breast_cancer", "train")
    assert neg == int((y_train == 1).sum())
    _, y_eval = bundled.load_arrays("breast_cancer", "eval")
    assert len(ev) == len(y_eval) and ev.sum() == int((y_eval == 0).sum()) and ev.mean() > 0.25
    # The same seed gives the same subset.
    np.testing.assert_array_equal(train, labels("train"))


def test_imbalanced_cancer_protocol_carves_validation_and_tests_once(tmp_path):
    from experiments import tabular

    _run("imbalanced_cancer_protocol", str(tmp_path), "task.train_data.sampling=balanced")
    test = json.loads((tmp_path / "test_metrics.json").read_text())
    assert test["step"] == 4 and all(math.isfinite(v) for v in test.values())
    cfg = _resolve("imbalanced_cancer_protocol")
    assert cfg.task.validation_split == 0.25 and not cfg.task.eval_data.name
    # The test split is the untouched held-out quarter (what imbalanced_cancer evaluates on).
    rows = lambda split: np.concatenate([x for x, _ in tabular.imbalanced_cancer(split).batch(1000)])
    np.testing.assert_array_equal(rows("test"), rows("eval"))


# ----------------------------------------------------------------------------------- sweeps


def test_sweep_writes_report_and_sub_runs(tmp_path):
    d = tmp_path / "sweep"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "framework.main", "--experiment=linear_regression", f"--model_dir={d}",
                        "--sweep=optimizer.learning_rate=0.01,0.05", "--params_override=" + ",".join(SMALL)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = ["optimizer.learning_rate=0.01", "optimizer.learning_rate=0.05"]
    for name in runs:
        m = json.loads((d / name / "metrics.json").read_text())
        assert m["step"] == 4 and math.isfinite(m["mse"])
        assert any(f.startswith("events") for f in os.listdir(d / name / "eval"))
    with open(d / "sweep.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [row["run"] for row in rows] == runs
    assert [float(row["optimizer.learning_rate"]) for row in rows] == [0.01, 0.05]
    assert all(float(row["step"]) == 4 and math.isfinite(float(row["eval_mse"])) for row in rows)
    md = (d / "sweep.md").read_text()
    assert all(name in md for name in runs) and "eval_mse" in md
    assert (d / "sweep.png").stat().st_size > 1000


# Precision/recall/F1 and the confusion matrix run inside the XLA step (jit_compile=auto turns XLA on
# for an MLP): their counts must not use ops XLA cannot compile (bincount, scatter).
def test_imbalanced_cancer_metrics_under_xla(tmp_path):
    metrics = _run("imbalanced_cancer", str(tmp_path), "trainer.jit_compile=true")
    assert all(math.isfinite(v) for v in metrics.values())


# ----------------------------------------------------------------------------------- tuning


@pytest.mark.slow  # a whole study (60-90 s); tests/test_tune.py keeps one end to end in the default suite
def test_optimizer_tuned_runs_a_small_study(tmp_path):
    """The tuned variant's tune section is valid and drives a 2-trial study on the few-step config."""
    from framework import tune, tune_report

    overrides = [*SMALL, json.dumps({"tune": {"trials": 2}})]

    def resolve(extra):
        return main_lib.resolve_config(experiment="optimizer_tuned", imports=[], config_files=[],
                                       overrides=[*overrides, *extra], runtime_flags={})

    def run_trial(override, run_dir, hooks):
        return main_lib.run(resolve([override]), model_dir=main_lib.check_model_dir(run_dir), mode="train_and_eval",
                            extra_hooks=hooks)

    plan = tune.make_plan(resolve([]), experiment="optimizer_tuned", resolve=resolve)
    assert (plan.sampler, plan.pruner, plan.metric, plan.direction) == ("tpe", "median", "accuracy", "maximize")
    study = tune.open_study(plan, tune.default_storage(str(tmp_path)))
    assert tune.work(study, plan, model_dir=str(tmp_path), run_trial=run_trial) == 2
    tune_report.write_results(study, plan, str(tmp_path))
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        assert t.params["optimizer.name"] in ("sgd", "adam", "rmsprop")
        assert 1e-4 <= t.params["optimizer.learning_rate"] <= 1e-1
        assert json.loads((tmp_path / f"trial={t.number}" / "metrics.json").read_text())["accuracy"] == \
            pytest.approx(t.value)
    with open(tmp_path / "tune.csv", newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 2
