"""Parameter groups: frozen groups untouched, multipliers scale updates, layer decay, bad patterns."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import registry
from framework import trainer as trainer_lib
from framework.config import OptimizerConfig, ParamGroupConfig
from framework.optim import groups as groups_lib
from tests import _components as C

JIT = pytest.mark.parametrize("jit", ["auto", False], ids=["auto", "nojit"])  # the default, and off


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


@JIT
def test_group_with_multiplier_zero_stays_bit_identical(jit):
    t = _trainer({"name": "adamw", "learning_rate": 0.05, "weight_decay": 0.1,
                  "param_groups": [{"pattern": "^hidden/", "lr_multiplier": 0.0}]}, trainer={"jit_compile": jit})
    before = {v.path: v.numpy().copy() for v in t.model.trainable_variables}
    _run(t, 5)
    for v in t.model.trainable_variables:
        if v.path.startswith("hidden/"):
            np.testing.assert_array_equal(v.numpy(), before[v.path])
        else:
            assert not np.array_equal(v.numpy(), before[v.path]), v.path


@JIT
def test_sgd_group_update_is_multiplier_times_base_update(jit):
    base = _trainer({"name": "sgd", "learning_rate": 0.1}, trainer={"jit_compile": jit})
    half = _trainer({"name": "sgd", "learning_rate": 0.1,
                     "param_groups": [{"pattern": "^out/", "lr_multiplier": 0.25}]}, trainer={"jit_compile": jit})
    w0 = {v.path: v.numpy().copy() for v in base.model.trainable_variables}
    _run(base, 1)
    _run(half, 1)
    for vb, vh in zip(base.model.trainable_variables, half.model.trainable_variables):
        du_base = vb.numpy() - w0[vb.path]
        du_half = vh.numpy() - w0[vh.path]
        m = 0.25 if vb.path.startswith("out/") else 1.0
        np.testing.assert_allclose(du_half, m * du_base, rtol=1e-5, atol=1e-7)


@JIT
def test_layer_decay_update_is_decay_power_times_base_update(jit):
    """What the compiled step applied: with SGD, one step's update of each layer is
    0.5 ** (layers above it) times the update without layer decay (hidden: 0.5, out: 1)."""
    base = _trainer({"name": "sgd", "learning_rate": 0.1}, trainer={"jit_compile": jit})
    decayed = _trainer({"name": "sgd", "learning_rate": 0.1, "layer_decay": 0.5}, trainer={"jit_compile": jit})
    assert decayed.groups.num_layers == 2  # hidden, out
    w0 = {v.path: v.numpy().copy() for v in base.model.trainable_variables}
    _run(base, 1)
    _run(decayed, 1)
    for vb, vd in zip(base.model.trainable_variables, decayed.model.trainable_variables):
        m = 0.5 if vb.path.startswith("hidden/") else 1.0
        np.testing.assert_allclose(vd.numpy() - w0[vb.path], m * (vb.numpy() - w0[vb.path]), rtol=1e-5, atol=1e-7,
                                   err_msg=vb.path)


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


@JIT
def test_accumulation_equals_one_larger_batch(jit):
    # 2 micro-batches of 8 == one batch of 16 (the same examples, SGD, no shuffling).
    big = _trainer({"name": "sgd", "learning_rate": 0.1},
                   task={"train_data": {"key": "groups", "batch_size": 16, "shuffle_buffer": 0}},
                   trainer={"jit_compile": jit})
    acc = _trainer({"name": "sgd", "learning_rate": 0.1, "accumulation_steps": 2},
                   task={"train_data": {"key": "groups", "batch_size": 8, "shuffle_buffer": 0}},
                   trainer={"jit_compile": jit})
    _run(big, 3)
    _run(acc, 3)
    for a, b in zip(big.model.trainable_variables, acc.model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert int(acc.optimizer.iterations.numpy()) == 3


# ----------------------------------------------------------------------------- layer decay counts blocks


class _Block(keras.layers.Layer):
    """A Transformer encoder block with the sub-layers (and names) of keras-hub's."""

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(2, dim // 2, name="self_attention")
        self.attention_norm = keras.layers.LayerNormalization(name="self_attention_layer_norm")
        self.intermediate = keras.layers.Dense(2 * dim, activation="relu", name="feedforward_intermediate_dense")
        self.output_dense = keras.layers.Dense(dim, name="feedforward_output_dense")
        self.output_norm = keras.layers.LayerNormalization(name="feedforward_layer_norm")

    def call(self, x):
        x = self.attention_norm(x + self.attention(x, x))
        return self.output_norm(x + self.output_dense(self.intermediate(x)))


if "test_tiny_transformer" not in registry.MODELS:
    @registry.register_model("test_tiny_transformer")
    def _tiny_transformer(vocab=11, length=6, dim=8, blocks=2, units=2, inputs=None):
        del inputs  # the shared test config passes it
        ids = keras.Input((length,), dtype="int32", name="token_ids")
        h = keras.layers.Embedding(vocab, dim, name="token_embedding")(ids)
        h = keras.layers.LayerNormalization(name="embeddings_layer_norm")(h)
        for i in range(blocks):
            h = _Block(dim, name=f"transformer_layer_{i}")(h)
        h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
        h = keras.layers.Dense(dim, activation="tanh", name="pooled_dense")(h)
        return keras.Model(ids, keras.layers.Dense(units, name="logits")(h), name="tiny_bert")


def _transformer_trainer(tmp_path, **optimizer):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, (32, 6)).astype(np.int32)
    C.set_arrays("tiny_bert", x, (x[:, 0] > 5).astype(np.int32))
    cfg = C.make_config(task={"model": {"name": "test_tiny_transformer"}, "train_data": {"key": "tiny_bert"},
                              "eval_data": {"name": ""}, "metrics": []},
                        trainer={"train_steps": 2, "steps_per_loop": 2, "checkpoint_interval": 100, "export": False},
                        optimizer={"name": "adamw", "learning_rate": 1e-3, "layer_decay": 0.8, **optimizer})
    t = trainer_lib.build(cfg, tf.distribute.get_strategy())
    return t, controller_lib.Controller(trainer=t, model_dir=str(tmp_path))


def _expected_depth(path, blocks=2):
    for i in range(blocks):
        if path.startswith(f"transformer_layer_{i}/"):
            return i + 1
    return 0 if path.startswith(("token_embedding/", "embeddings_layer_norm/")) else blocks + 1


def test_layer_decay_counts_blocks_embeddings_get_decay_cubed(tmp_path):
    t, ctl = _transformer_trainer(tmp_path)
    paths = [v.path for v in t.groups.variables]
    assert sum(p.startswith("transformer_layer_0/") for p in paths) > 10  # many sub-layers per block
    assert t.groups.depth == [_expected_depth(p) for p in paths]
    mult = t.lr_multipliers.numpy()
    head = mult[paths.index("logits/kernel")]
    assert head == pytest.approx(1.0)
    assert mult[paths.index("token_embedding/embeddings")] == pytest.approx(0.8 ** 3 * head, rel=1e-6)
    for p, m in zip(paths, mult):
        assert m == pytest.approx(0.8 ** (3 - _expected_depth(p)), rel=1e-6), p
    # The run writes each variable's depth and multiplier, and logs one LR curve per depth.
    ctl.train(evaluate=False)
    rows = json.loads((tmp_path / "param_groups.json").read_text())
    per_var = {v["path"]: v for r in rows for v in r["per_variable"]}
    assert per_var["token_embedding/embeddings"]["depth"] == 0
    assert per_var["transformer_layer_1/self_attention/query/kernel"]["depth"] == 2
    assert per_var["token_embedding/embeddings"]["lr_multiplier"] == pytest.approx(0.8 ** 3, rel=1e-6)
    text = t.groups.format()
    assert "transformer_layer_0/self_attention/key/kernel" in text and "0.512" in text
    lrs = t.group_lrs(1)
    assert {f"depth_{d}" for d in range(4)} <= set(lrs)
    for d in range(4):
        assert lrs[f"depth_{d}"] == pytest.approx(lrs["depth_3"] * 0.8 ** (3 - d), rel=1e-6)
    assert lrs["default"] == pytest.approx(lrs["depth_3"])  # the group's curve: its top rate


def test_layer_decay_blocks_override(tmp_path):
    by_number, _ = _transformer_trainer(tmp_path / "a", layer_decay_blocks=r"^transformer_layer_(\d+)/")
    by_list, _ = _transformer_trainer(tmp_path / "b",
                                      layer_decay_blocks=["^transformer_layer_0/", "^transformer_layer_1/"])
    auto, _ = _transformer_trainer(tmp_path / "c")
    assert by_number.groups.depth == by_list.groups.depth == auto.groups.depth
    # Attention and feed-forward halves as separate blocks: 4 blocks, embeddings at 0.8 ** 5.
    halves = [r"^transformer_layer_0/self_attention", r"^transformer_layer_0/", r"^transformer_layer_1/self_attention",
              r"^transformer_layer_1/"]
    split, _ = _transformer_trainer(tmp_path / "d", layer_decay_blocks=halves)
    paths = [v.path for v in split.groups.variables]
    mult = split.lr_multipliers.numpy()
    assert split.groups.num_layers == 6
    assert mult[paths.index("token_embedding/embeddings")] == pytest.approx(0.8 ** 5, rel=1e-6)
    assert mult[paths.index("transformer_layer_0/feedforward_output_dense/kernel")] == pytest.approx(0.8 ** 3, rel=1e-6)
    assert mult[paths.index("transformer_layer_1/self_attention/query/kernel")] == pytest.approx(0.8 ** 2, rel=1e-6)
    with pytest.raises(ValueError, match=r"layer_decay_blocks\[1\].*'\^nothing/' matches none"):
        _transformer_trainer(tmp_path / "e", layer_decay_blocks=["^transformer_layer_0/", "^nothing/"])


@pytest.mark.parametrize("spec, match", [
    (r"transformer_layer_\d+", "first group is the block number"),
    (["ok", "("], r"layer_decay_blocks\[1\]: expected a valid regular expression"),
    ([], "non-empty list"),
    (3, "expected"),
])
def test_layer_decay_blocks_bad_values_are_config_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        C.make_config(optimizer={"layer_decay": 0.8, "layer_decay_blocks": spec})


@pytest.mark.parametrize("paths, depths", [
    # numbered layers, as keras-hub, timm (`blocks.3`), Keras (`layers_3`) and ResNet (`conv2_block1_`) name them
    (["emb/e", "enc/layers.0/q/kernel", "enc/layers.0/n/gamma", "enc/layers.1/q/kernel", "head/kernel"],
     [0, 1, 1, 2, 3]),
    (["m/emb/e", "m/block_0/a/kernel", "m/block_1/a/kernel", "m/norm/gamma", "m/head/kernel"], [0, 1, 2, 3, 3]),
    (["stem/kernel", "conv2_block1_1_conv/kernel", "conv2_block2_1_conv/kernel", "conv3_block1_1_conv/kernel",
      "predictions/kernel"], [0, 1, 2, 3, 4]),
    # no numbered layers: the top-level layers (a shared model-name prefix skipped; sub-layers not counted)
    (["seq/dense/kernel", "seq/dense/bias", "seq/dense_1/kernel", "seq/dense_1/sub/kernel"], [0, 0, 1, 1]),
    (["hidden/kernel", "hidden/bias", "bn/gamma", "out/kernel"], [0, 0, 1, 2]),
])
def test_layer_depths_from_the_structure(paths, depths):
    assert groups_lib.layer_depths(paths) == depths
