"""Parameter groups: frozen groups untouched, multipliers scale updates, layer decay, bad patterns."""
import numpy as np
import pytest
import tensorflow as tf

from framework import trainer as trainer_lib
from framework.config import OptimizerConfig, ParamGroupConfig
from framework.optim import groups as groups_lib
from tests import _components as C


def _trainer(optimizer, task=None, trainer=None):
    x, y = C.toy_classification(n=64)
    C.set_arrays("groups", x, y)
    t = {"model": {"hidden": 8}, "train_data": {"key": "groups"}, "eval_data": {"name": ""}}
    t.update(task or {})
    return trainer_lib.build(C.make_config(task=t, optimizer=optimizer, trainer=trainer or {}),
                             tf.distribute.get_strategy())


def _run(t, n):
    active = [i for i, g in enumerate(t.groups.group_of) if t.groups.groups[g].trainable]
    t.steps.train_loop(iter(t.train_dataset(start_step=0)), n, active)


def test_group_with_multiplier_zero_stays_bit_identical():
    t = _trainer({"name": "adamw", "learning_rate": 0.05, "weight_decay": 0.1,
                  "param_groups": [{"pattern": "^hidden/", "lr_multiplier": 0.0}]})
    before = {v.path: v.numpy().copy() for v in t.model.trainable_variables}
    _run(t, 5)
    for v in t.model.trainable_variables:
        if v.path.startswith("hidden/"):
            np.testing.assert_array_equal(v.numpy(), before[v.path])
        else:
            assert not np.array_equal(v.numpy(), before[v.path]), v.path


def test_sgd_group_update_is_multiplier_times_base_update():
    base = _trainer({"name": "sgd", "learning_rate": 0.1})
    half = _trainer({"name": "sgd", "learning_rate": 0.1,
                     "param_groups": [{"pattern": "^out/", "lr_multiplier": 0.25}]})
    w0 = {v.path: v.numpy().copy() for v in base.model.trainable_variables}
    _run(base, 1)
    _run(half, 1)
    for vb, vh in zip(base.model.trainable_variables, half.model.trainable_variables):
        du_base = vb.numpy() - w0[vb.path]
        du_half = vh.numpy() - w0[vh.path]
        m = 0.25 if vb.path.startswith("out/") else 1.0
        np.testing.assert_allclose(du_half, m * du_base, rtol=1e-5, atol=1e-7)


def test_layer_decay_multipliers_follow_the_formula():
    t = _trainer({"name": "sgd", "learning_rate": 0.1, "layer_decay": 0.5})
    table = t.groups
    assert table.num_layers == 2  # hidden, out
    mult = t.lr_multipliers.numpy()
    for i, v in enumerate(table.variables):
        depth = 0 if v.path.startswith("hidden/") else 1
        assert mult[i] == pytest.approx(0.5 ** (table.num_layers - 1 - depth))


def test_pattern_matching_nothing_raises_naming_it():
    class V:
        def __init__(self, path, shape=(2,)):
            self.path, self.shape = path, shape

    cfg = OptimizerConfig(param_groups=[ParamGroupConfig(pattern="^backbone/")])
    with pytest.raises(ValueError, match=r"\^backbone/.*matches no trainable variable.*net/dense/kernel"):
        groups_lib.resolve([V("net/dense/kernel")], cfg)


def test_every_variable_in_exactly_one_group_first_match_wins():
    class V:
        def __init__(self, path):
            self.path, self.shape = path, (3,)

    vs = [V("a/kernel"), V("a/bias"), V("b/kernel")]
    cfg = OptimizerConfig(param_groups=[ParamGroupConfig(pattern="kernel", name="k"),
                                        ParamGroupConfig(pattern="^a/", name="a")])
    table = groups_lib.resolve(vs, cfg)
    assert [table.groups[g].name for g in table.group_of] == ["k", "a", "k"]
    assert table.names() == ["k", "a", "default"]


def test_group_table_written_to_model_dir(tmp_path):
    t = _trainer({"name": "sgd", "param_groups": [{"pattern": "^out/", "name": "head"}]})
    t.groups.write(str(tmp_path / "param_groups.json"))
    import json
    rows = json.loads((tmp_path / "param_groups.json").read_text())
    assert [r["group"] for r in rows] == ["head", "default"]
    assert rows[0]["parameters"] == 8 * 3 + 3


def test_accumulation_equals_one_larger_batch():
    # 2 micro-batches of 8 == one batch of 16 (the same examples, SGD, no shuffling).
    big = _trainer({"name": "sgd", "learning_rate": 0.1},
                   task={"train_data": {"key": "groups", "batch_size": 16, "shuffle_buffer": 0}})
    acc = _trainer({"name": "sgd", "learning_rate": 0.1, "accumulation_steps": 2},
                   task={"train_data": {"key": "groups", "batch_size": 8, "shuffle_buffer": 0}})
    _run(big, 3)
    _run(acc, 3)
    for a, b in zip(big.model.trainable_variables, acc.model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert int(acc.optimizer.iterations.numpy()) == 3
