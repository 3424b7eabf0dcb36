"""Several outputs: dict labels, a loss per output with weights, metrics per output, logged names, errors."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import trainer as trainer_lib
from framework.data import pipeline
from tests import _seq_components as S

TASK = {"model": {"name": "two_head"}, "train_data": {"kind": "dict", "shuffle_buffer": 0},
        "eval_data": {"kind": "dict", "n": 13},
        "loss": {"cls": {"name": "sparse_categorical_crossentropy", "from_logits": True}, "reg": {"name": "mse"}},
        "loss_weights": {"cls": 1.0, "reg": 0.5},
        "metrics": {"cls": ["accuracy"], "reg": ["mae"]}}


def _cfg(jit=False, **task):
    return S.seq_config(task={**TASK, **task}, trainer={"jit_compile": jit})


def _hand(model, batches):
    """Per-output means over the real (weight > 0) examples, by hand."""
    ce, se, ae, hit, n = 0.0, 0.0, 0.0, 0.0, 0.0
    for x, y, w in batches:
        out = model(x, training=False)
        logits = out["cls"].numpy().astype(np.float64)
        reg = out["reg"].numpy()[:, 0].astype(np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        yc, yr, w = y["cls"].numpy(), y["reg"].numpy(), w.numpy()
        ce += float((-logp[np.arange(len(yc)), yc] * w).sum())
        se += float((((reg - yr) ** 2) * w).sum())
        ae += float((np.abs(reg - yr) * w).sum())
        hit += float(((np.argmax(logits, -1) == yc) * w).sum())
        n += float(w.sum())
    return {"cls/loss": ce / n, "reg/loss": se / n, "loss": ce / n + 0.5 * se / n, "cls/accuracy": hit / n,
            "reg/mae": ae / n}


@pytest.mark.parametrize("jit", [False, "auto"])
def test_dict_outputs_losses_metrics_and_update_match_hand_and_fit(tmp_path, jit):
    t = trainer_lib.build(_cfg(jit), tf.distribute.get_strategy())
    batch = next(iter(t.train_dataset(start_step=0)))
    expected = _hand(t.model, [batch])
    ref = S.two_head()
    ref.set_weights(t.model.get_weights())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    result = t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, list(range(len(t.groups.variables))))
    got = ctl._train_values(result)  # the values the log and TensorBoard get
    for k in ("loss", "cls/loss", "reg/loss", "cls/accuracy", "reg/mae"):
        assert got[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-7), k
    # The update equals Keras fit with the same per-output losses and loss weights.
    x, y, _ = batch
    ref.compile(optimizer=keras.optimizers.SGD(0.1), loss_weights={"cls": 1.0, "reg": 0.5},
                loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      "reg": keras.losses.MeanSquaredError()})
    ref.fit(x.numpy(), {k: v.numpy() for k, v in y.items()}, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(t.model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_eval_names_in_metrics_json_and_per_class_report(tmp_path):
    t = trainer_lib.build(_cfg(), tf.distribute.get_strategy())
    ctl = controller_lib.Controller(trainer=t, model_dir=str(tmp_path))
    ctl.train(evaluate=True)
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        saved = json.load(f)
    batches = list(pipeline.eval_batches(t.eval_source, global_batch=8, cache=False)[0])  # 13 + 3 weight-0 rows
    expected = _hand(t.model, batches)
    assert set(saved) == {"step", "loss", "cls/loss", "reg/loss", "cls/accuracy", "reg/mae"}
    for k, v in expected.items():
        assert saved[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    assert os.path.exists(os.path.join(tmp_path, "eval_per_class.cls.json"))


def test_class_weights_per_output(tmp_path):
    t = trainer_lib.build(_cfg(class_weight={"cls": {0: 3.0}}), tf.distribute.get_strategy())
    assert t.steps.class_weights == {"cls": [3.0, 1.0]}
    batch = next(iter(t.train_dataset(start_step=0)))
    x, y, _ = batch
    out = t.model(x)
    logits = out["cls"].numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    yc = y["cls"].numpy()
    cw = np.where(yc == 0, 3.0, 1.0)
    ce = float((-logp[np.arange(8), yc] * cw).sum() / 8)
    result = t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, list(range(len(t.groups.variables))))
    assert result.output_losses["cls/loss"] == pytest.approx(ce, rel=1e-5)


@pytest.mark.parametrize("task,message", [
    ({"loss": {"cls": {"name": "mse"}, "foo": {"name": "mse"}}},
     r"task.loss: expected output names of the model \['cls', 'reg'\]; got \['foo'\]"),
    ({"loss": {"cls": {"name": "sparse_categorical_crossentropy"}}},
     r"task.loss: expected a loss section for every output \['cls', 'reg'\]; got none for \['reg'\]"),
    ({"loss_weights": {"cls": 1.0, "bar": 2.0}}, r"task.loss_weights: expected output names .*got \['bar'\]"),
    ({"metrics": {"baz": ["mae"]}}, r"task.metrics: expected output names .*got \['baz'\]"),
    ({"class_weight": "balanced"}, r"task.class_weight: expected \{output: .*got 'balanced'"),
])
def test_mapping_errors_name_the_key(task, message):
    cfg = _cfg()
    for k, v in task.items():
        setattr(cfg.task, k, v if k != "loss" else _cfg(loss=v).task.loss)
    with pytest.raises(ValueError, match=message):
        trainer_lib.build(cfg, tf.distribute.get_strategy())


def test_one_loss_for_several_outputs_and_a_mapping_for_one_are_errors():
    cfg = S.seq_config(task={"model": {"name": "two_head"}, "train_data": {"kind": "dict"},
                             "eval_data": {"name": ""}})
    with pytest.raises(ValueError, match=r"task.loss: expected \{output: loss section\} for the outputs "
                                         r"\['cls', 'reg'\].*got one loss 'sparse_categorical_crossentropy'"):
        trainer_lib.build(cfg, tf.distribute.get_strategy())
    cfg = S.seq_config(task={"loss": {"cls": {"name": "mse"}}, "eval_data": {"name": ""}})
    with pytest.raises(ValueError, match=r"task.loss: expected one loss section for model 'seq_lstm'"):
        trainer_lib.build(cfg, tf.distribute.get_strategy())
    with pytest.raises(ValueError, match=r"task.loss_weights: expected task.loss to map output names"):
        S.seq_config(task={"loss_weights": {"cls": 2.0}})


def test_export_and_reload_safe_mode(tmp_path):
    t = trainer_lib.build(_cfg(), tf.distribute.get_strategy())
    path = str(tmp_path / "m.keras")
    t.model.save(path)
    back = keras.saving.load_model(path, safe_mode=True)
    x = np.array([[3, 4, 5, 0], [1, 2, 3, 4]], np.int32)
    for k in ("cls", "reg"):
        np.testing.assert_allclose(back(x)[k].numpy(), t.model(x)[k].numpy(), rtol=1e-6)
