"""The XLA plan of a run: where `jit_compile` applies, how many steps share one XLA call, and why.

Every `trainer.jit_compile` rule lives here (docs/design.md#t5):

* `jit_allowed`: true | false | "auto" for this strategy and model. XLA on the replica function
  inside `strategy.run` fails under a multi-replica MirroredStrategy ("Trying to access resource
  ... located in device CPU:1 from device CPU:0"), and on CPU it slows convolutions down.
* whole step or forward/backward only: on one device without a Mirrored / MultiWorkerMirrored or
  TPU strategy (TPU compiles by itself) XLA covers the whole step (forward, backward,
  statistics, update); elsewhere, when allowed, only the forward and backward pass.
* steps per XLA call: under whole-step XLA several steps share one call (a compiled while
  loop over stacked batches), except around convolutions (an XLA loop around a conv layer ran
  ~50x slower on CPU), for attention under a Keras padding mask (the text Transformer ran at
  0.78x of one step per call in the loop) and for batches of different lengths (they cannot be
  stacked).

`plan` applies them all and returns one frozen `JitPlan`; `Steps` only reads it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from framework import distribute as dist
from framework import layers as layers_lib

# Steps per XLA call when the whole step is compiled; measured in benchmarks/overhead.py (MLP on
# CPU: ~7% faster than one step per call).
GROUP_STEPS = 8

# Layer types XLA slows down on CPU (and around which an XLA loop is slow). Types, not names:
# a user's layer is judged by the Keras layers it is made of (`layers.walk` reaches them).
CONV_LAYERS: tuple[type, ...] = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
    keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
    keras.layers.ConvLSTM1D, keras.layers.ConvLSTM2D, keras.layers.ConvLSTM3D,
)

# Layers that attend over a sequence. With a Keras padding mask (`MASK_SOURCES`) the attention
# step ran slower inside an XLA while loop than as one XLA call per step: the benchmarks' text
# Transformer (2 blocks, d=64, batch 64 x 128 bytes) at 9.5 vs 12.1 steps/s, medians of 3 on
# this CPU; the same model without `mask_zero` at 12.5 vs 11.9 (grouping helps there).
ATTENTION_LAYERS: tuple[type, ...] = (
    keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention, keras.layers.Attention,
    keras.layers.AdditiveAttention,
)


@dataclasses.dataclass(frozen=True)
class JitPlan:
    """Where XLA runs in the compiled step.

    Attributes:
      whole_step: XLA over the whole step (forward, backward, statistics, update).
      forward_backward: XLA only around the per-replica forward and backward pass.
      group_steps: optimizer steps per XLA call (1 unless `whole_step`).
      compile_ahead: a fresh run's first loop runs without XLA while the whole-step XLA loop
        compiles (`loops.CompileAhead`; one step per call: only without convolutions and
        with fixed batch shapes).
      reason: why, for the log.
    """

    whole_step: bool = False
    forward_backward: bool = False
    group_steps: int = 1
    reason: str = "trainer.jit_compile=false"
    compile_ahead: bool = False

    @property
    def enabled(self) -> bool:
        """Whether any part of the step is compiled with XLA (`trainer.jit_compile` resolved)."""
        return self.whole_step or self.forward_backward


def has_conv(model: keras.Model) -> bool:
    """Whether `model` (or a layer nested in it) is a convolution layer (`CONV_LAYERS`)."""
    return any(isinstance(layer, CONV_LAYERS) for layer in layers_lib.walk(model))


def masked_attention(model: keras.Model) -> bool:
    """Whether `model` has an attention layer (`ATTENTION_LAYERS`) and a layer that makes a
    padding mask (`Embedding(mask_zero=True)` or `Masking`), nested layers included."""
    layers = list(layers_lib.walk(model))
    masks = any(isinstance(layer, keras.layers.Masking)
                or (isinstance(layer, keras.layers.Embedding) and layer.mask_zero) for layer in layers)
    return masks and any(isinstance(layer, ATTENTION_LAYERS) for layer in layers)


def jit_allowed(strategy: tf.distribute.Strategy, requested: bool | str, *,
                model_has_conv: bool) -> tuple[bool, str]:
    """Resolves `trainer.jit_compile` (true | false | "auto") for this strategy and model.

    Args:
      strategy: the strategy the replica function runs under.
      requested: the config value.
      model_has_conv: whether the model has convolution layers (XLA slows them on CPU).

    Returns:
      (use XLA on the replica function, reason to log).

    Raises:
      ValueError: `true` under a Mirrored / MultiWorkerMirrored strategy with > 1 replica, where
        XLA on the replica function fails (docs/design.md#t5: variables on another device), or a value
        other than true / false / "auto".
    """
    name = dist.strategy_name(strategy)
    multi = dist.multi_replica(strategy)
    if requested is True:
        if multi:
            raise ValueError(
                f"trainer.jit_compile: XLA on the replica function fails under {name} with "
                f"{strategy.num_replicas_in_sync} replicas (variables live on another device); use auto "
                f"or false; got True")
        return True, "trainer.jit_compile=true"
    if requested is False:
        return False, "trainer.jit_compile=false"
    if requested != "auto":
        raise ValueError(f"trainer.jit_compile: expected true | false | auto; got {requested!r}")
    if multi:
        return False, (f"jit_compile=auto -> off: XLA on the replica function fails under {name} with "
                       f"{strategy.num_replicas_in_sync} replicas")
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return False, "jit_compile=auto -> off: TPUStrategy compiles with XLA anyway"
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if model_has_conv and not on_gpu:
        return False, "jit_compile=auto -> off: XLA measured slower for convolutions on CPU"
    if model_has_conv:
        return True, "jit_compile=auto -> on: convolutions on GPU"
    return True, f"jit_compile=auto -> on: no convolutions ({'GPU' if on_gpu else 'CPU'})"


def whole_step_possible(strategy: tf.distribute.Strategy) -> bool:
    """One device, no Mirrored / MultiWorkerMirrored (docs/design.md#t5) or TPU strategy."""
    other = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy)
    return strategy.num_replicas_in_sync == 1 and not isinstance(strategy, other)


def plan(strategy: tf.distribute.Strategy, setting: bool | str, model: keras.Model,
         padding: Any = None, *, compile_ahead: bool = False) -> JitPlan:
    """The XLA plan for `model` under `strategy` with `trainer.jit_compile = setting`.

    Args:
      strategy: the run's strategy.
      setting: `trainer.jit_compile` (true | false | "auto").
      model: the built model.
      padding: the training data's `pipeline.Padding` (None: fixed-shape batches). Length buckets,
        or per-batch padding of an infinite source, give batches that cannot be stacked.
      compile_ahead: `trainer.xla_compile_ahead` (applies under whole-step XLA).

    Raises:
      ValueError: as `jit_allowed`.
    """
    conv = has_conv(model)
    jit, reason = jit_allowed(strategy, setting, model_has_conv=conv)
    whole = jit and whole_step_possible(strategy)
    group = GROUP_STEPS if whole and not conv else 1
    if group > 1 and masked_attention(model):
        group, reason = 1, f"{reason}; one step per XLA call: attention under a padding mask"
    varying = padding is not None and (padding.boundaries or padding.max_length is None)
    if group > 1 and varying:
        group = 1  # batches of different lengths cannot be stacked into one XLA call
    # One step per XLA call compiles ahead without convolutions only: its conditional (loops.
    # _single_xla_step) was measured at the bare step's speed on the text Transformer, not
    # around a conv layer, which XLA runs slowly in a loop on CPU. Batches of varying shapes
    # compile per shape: nothing to compile ahead.
    ahead = compile_ahead and whole and (group > 1 or not (conv or varying))
    if ahead:
        reason = f"{reason}; a fresh run's first loop runs without XLA while XLA compiles (trainer.xla_compile_ahead)"
    return JitPlan(whole_step=whole, forward_backward=jit and not whole, group_steps=group, reason=reason,
                   compile_ahead=ahead)
