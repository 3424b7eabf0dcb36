"""TensorBoard tags a run writes, the log line format, and EMA / plateau effects seen in them."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import summaries as summ
from framework import trainer as trainer_lib
from framework.hooks.plateau import ReduceLROnPlateau
from tests import _components as C


def _tags(run_dir):
    tags = {}
    for f in glob.glob(os.path.join(run_dir, "events.*")):
        for e in tf.compat.v1.train.summary_iterator(f):
            for v in e.summary.value:
                tags.setdefault(v.tag, []).append((e.step, tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value))
    return tags


def test_log_line_format():
    line = summ.log_line("train", step=300, total=2000, values={"loss": 0.123, "accuracy": 0.97},
                         examples_per_sec=5120, eta_s=62)
    assert line == "train | step 300/2000 | loss 0.1230 | accuracy 0.9700 | 5,120 ex/s | eta 1m02s"


def test_run_writes_contract_tags(tmp_path):
    x, y = C.toy_classification(n=64)
    C.set_arrays("tags", x, y)
    cfg = C.make_config(task={"model": {"hidden": 8}, "train_data": {"key": "tags"}, "eval_data": {"key": "tags"},
                              "metrics": ["accuracy", "auc"]},
                        optimizer={"name": "adam", "param_groups": [{"pattern": "^hidden/", "name": "body",
                                                                     "lr_multiplier": 0.1}],
                                   "clip": {"global_norm": 1.0}})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    controller_lib.Controller(trainer=t, model_dir=str(tmp_path)).train(evaluate=True)
    train = _tags(tmp_path / "train")
    for tag in ["loss", "accuracy", "auc", "learning_rate/default", "learning_rate/body", "grad_norm",
                "grad_norm_clipped", "grad_norm/body", "grad_norm/default", "clipped_fraction", "steps_per_sec",
                "examples_per_sec", "config", "param_groups"]:
        assert tag in train, (tag, sorted(train))
    lr_body = dict(train["learning_rate/body"])
    lr_default = dict(train["learning_rate/default"])
    assert lr_body[20] == pytest.approx(0.1 * lr_default[20])
    ev = _tags(tmp_path / "eval")
    assert {"loss", "accuracy", "auc"} <= set(ev)
    assert sorted(s for s, _ in ev["loss"]) == [10, 20]


def test_plateau_hook_scales_every_group_lr_in_the_compiled_step(tmp_path):
    x, y = C.toy_classification(n=64)
    C.set_arrays("plat", x, y)
    cfg = C.make_config(task={"train_data": {"key": "plat"}, "eval_data": {"key": "plat"}},
                        trainer={"train_steps": 30, "eval_interval": 5, "steps_per_loop": 5},
                        optimizer={"name": "sgd", "learning_rate": 1e-6})  # too small to improve much
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    hook = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1.0)
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path), hooks=[hook])
    ctl.train(evaluate=True)
    assert len(hook.reductions) >= 3
    assert float(t.lr_factor.numpy()) == pytest.approx(0.5 ** len(hook.reductions))
    lr = dict(_tags(tmp_path / "train")["learning_rate/default"])
    # Written at the end of each loop: the loop after the first reduction runs at half the LR.
    first = hook.reductions[0]
    assert lr[first] == pytest.approx(1e-6, rel=1e-5)
    assert lr[first + 5] == pytest.approx(0.5e-6, rel=1e-5)
    assert t.steps.traces["train"] == 1  # the factor is a variable: no retrace
    # The factor is in the checkpoint: a restart continues with it.
    t2 = trainer_lib.build(cfg, tf.distribute.get_strategy())
    controller_lib.Controller(trainer=t2, model_dir=str(tmp_path), hooks=[ReduceLROnPlateau(monitor="loss")]).restore()
    assert float(t2.lr_factor.numpy()) == float(t.lr_factor.numpy())


def test_ema_weights_are_used_for_eval_and_restored_after(tmp_path):
    x, y = C.toy_classification(n=64)
    C.set_arrays("ema", x, y)
    cfg = C.make_config(task={"train_data": {"key": "ema"}, "eval_data": {"key": "ema"}},
                        trainer={"train_steps": 10, "eval_interval": 10, "ema_decay": 0.9})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    w0 = [v.numpy().copy() for v in t.groups.variables]
    ctl.train(evaluate=False)
    live = [v.numpy().copy() for v in t.groups.variables]
    ema = [e.numpy() for e in t.steps.ema.weights]
    assert not np.allclose(ema[0], live[0]) and not np.allclose(ema[0], w0[0])
    ev = ctl.evaluate()
    for v, w in zip(t.groups.variables, live):
        np.testing.assert_array_equal(v.numpy(), w)  # swapped back after eval
    t.steps.swap_ema()
    logits = t.model(x, training=False).numpy()
    t.steps.swap_ema()
    assert ev["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, 1) == y)), abs=1e-6)


class _Stream:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_is_a_live_line_on_a_terminal_and_plain_lines_otherwise(monkeypatch):
    logged = []
    monkeypatch.setattr(summ.logging, "info", lambda fmt, *a: logged.append(fmt % a))
    tty = _Stream(True)
    line = summ.LiveLine(stream=tty)
    line.log("train | step 1/2", live=True)
    line.log("train | step 2/2", live=True)
    assert tty.text.count("\r") == 2 and "\n" not in tty.text and line.pending and logged == []
    line.log("eval | step 2/2")  # ends the live line first
    assert tty.text.endswith("\n") and not line.pending and logged == ["eval | step 2/2"]
    line.log("eval | again")
    assert tty.text.count("\n") == 1  # nothing pending: no empty line
    pipe = _Stream(False)
    summ.LiveLine(stream=pipe).log("train | step 1/2", live=True)
    assert pipe.text == "" and logged[-1] == "train | step 1/2"


def test_each_run_owns_its_live_line(monkeypatch, tmp_path):
    monkeypatch.setattr(summ.logging, "info", lambda fmt, *a: None)
    tty = _Stream(True)
    a = summ.Summaries(model_dir=str(tmp_path / "a"), live=summ.LiveLine(stream=tty))
    b = summ.Summaries(model_dir=str(tmp_path / "b"))
    a.log("train | step 1/2", live=True)
    assert a.live.pending and not b.live.pending  # no state shared between runs
    a.close()  # a run's end ends its pending live line
    assert tty.text.endswith("\n") and not a.live.pending


def test_the_module_log_redraws_on_a_terminal_and_logs_plain_lines(monkeypatch):
    logged = []
    monkeypatch.setattr(summ.logging, "info", lambda fmt, *a: logged.append(fmt % a))
    tty = _Stream(True)
    summ.log("train | step 1/2", live=True, stream=tty)
    summ.log("cross_validate | fold 0", stream=tty)
    assert tty.text == "\r\033[Ktrain | step 1/2" and logged == ["cross_validate | fold 0"]


def test_per_class_report_and_confusion_image(tmp_path):
    x, y = C.toy_classification(n=64)
    C.set_arrays("pc", x, y)
    cfg = C.make_config(task={"train_data": {"key": "pc"}, "eval_data": {"key": "pc"}})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.train(evaluate=True)
    import json

    import sklearn.metrics
    rep = json.loads((tmp_path / "eval_per_class.json").read_text())
    pred = np.argmax(t.model(x, training=False).numpy(), 1)
    np.testing.assert_array_equal(np.array(rep["confusion_matrix"]), sklearn.metrics.confusion_matrix(y, pred))
    p, r, f, s = sklearn.metrics.precision_recall_fscore_support(y, pred, zero_division=0)
    for i, row in enumerate(rep["classes"]):
        assert row["precision"] == pytest.approx(p[i]) and row["recall"] == pytest.approx(r[i])
        assert row["f1"] == pytest.approx(f[i]) and row["support"] == s[i]
    assert "confusion_matrix" in _tags(tmp_path / "eval")
