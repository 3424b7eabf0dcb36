"""framework.jit: one plan for where XLA runs; framework.update: which optimizers get gated writes."""
import types

import keras
import pytest
import tensorflow as tf

from framework import jit as jit_lib
from framework import update as update_lib
from framework.optim import optimizers as optimizers_lib


def _dense():
    inp = keras.Input((4,))
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(8)(inp)))


class _Block(keras.layers.Layer):
    """A user's layer made of a convolution (its name says nothing about it)."""

    def __init__(self):
        super().__init__()
        self.inner = keras.layers.Conv1D(2, 3)

    def call(self, x):
        return self.inner(x)


class _ConvolutionalLookingName(keras.layers.Layer):
    """Named like a convolution, but dense: judged by type, it is not one."""

    def call(self, x):
        return x * 2.0


def _with(layer, shape):
    inp = keras.Input(shape)
    return keras.Model(inp, keras.layers.Flatten()(layer(inp)))


def test_has_conv_is_by_layer_type():
    assert not jit_lib.has_conv(_dense())
    assert jit_lib.has_conv(_with(keras.layers.Conv2D(2, 3), (8, 8, 1)))
    assert jit_lib.has_conv(_with(keras.layers.DepthwiseConv2D(3), (8, 8, 2)))
    assert jit_lib.has_conv(_with(keras.layers.SeparableConv1D(2, 3), (8, 2)))
    assert jit_lib.has_conv(_with(keras.layers.Conv2DTranspose(2, 3), (8, 8, 1)))
    assert jit_lib.has_conv(_with(_Block(), (8, 2)))
    assert not jit_lib.has_conv(_with(_ConvolutionalLookingName(), (8, 2)))


def test_plan_on_one_device():
    default = tf.distribute.get_strategy()
    dense = jit_lib.plan(default, "auto", _dense())
    assert dense == jit_lib.JitPlan(whole_step=True, forward_backward=False, group_steps=jit_lib.GROUP_STEPS,
                                    reason=dense.reason) and dense.enabled
    off = jit_lib.plan(default, False, _dense())
    assert not off.enabled and off.group_steps == 1 and off.reason == "trainer.jit_compile=false"
    conv = jit_lib.plan(default, True, _with(keras.layers.Conv2D(2, 3), (8, 8, 1)))
    assert conv.whole_step and conv.group_steps == 1  # no XLA loop around convolutions
    buckets = types.SimpleNamespace(boundaries=(4, 8), max_length=None)  # a pipeline.Padding's fields
    assert jit_lib.plan(default, "auto", _dense(), buckets).group_steps == 1  # lengths cannot be stacked
    fixed = types.SimpleNamespace(boundaries=(), max_length=12)  # one padded length: stackable
    assert jit_lib.plan(default, "auto", _dense(), fixed).group_steps == jit_lib.GROUP_STEPS
    with pytest.raises(ValueError, match=r"trainer.jit_compile: expected true \| false \| auto; got 'yes'"):
        jit_lib.plan(default, "yes", _dense())


def _attention(*, mask_zero, masking=False):
    inp = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(10, 4, mask_zero=mask_zero)(inp)
    if masking:
        h = keras.layers.Masking()(h)
    h = keras.layers.MultiHeadAttention(2, 2)(h, h)
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h)))


def test_attention_under_a_padding_mask_gets_one_step_per_xla_call():
    default = tf.distribute.get_strategy()
    masked = jit_lib.plan(default, "auto", _attention(mask_zero=True))
    assert masked.whole_step and masked.group_steps == 1
    assert masked.reason.endswith("one step per XLA call: attention under a padding mask")
    assert jit_lib.plan(default, "auto", _attention(mask_zero=False, masking=True)).group_steps == 1
    unmasked = jit_lib.plan(default, "auto", _attention(mask_zero=False))
    assert unmasked.group_steps == jit_lib.GROUP_STEPS and "mask" not in unmasked.reason
    inp = keras.Input((6,), dtype="int32")  # a mask without attention keeps the XLA loop
    pooled = keras.Model(inp, keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4, mask_zero=True)(inp)))
    assert jit_lib.plan(default, "auto", pooled).group_steps == jit_lib.GROUP_STEPS
    assert jit_lib.plan(default, False, _attention(mask_zero=True)).group_steps == 1


def test_writes_through_assign_is_a_type_rule():
    assert update_lib.writes_through_assign(keras.optimizers.Adam())
    assert update_lib.writes_through_assign(keras.optimizers.SGD())
    assert update_lib.writes_through_assign(optimizers_lib.Nadam())
    assert not update_lib.writes_through_assign(keras.optimizers.Muon())

    class OwnAdam(keras.optimizers.Adam):  # a subclass may write as it likes
        pass

    assert not update_lib.writes_through_assign(OwnAdam())
