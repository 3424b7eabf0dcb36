"""Typed, nested experiment config: defaults, overrides, validation, save and load.

Sections are dataclasses. A *component* section (one that names a registered component:
`task.model`, `task.train_data`, `task.eval_data`, `task.loss`, `optimizer`,
`optimizer.schedule`, each hook) keeps the keys the framework does not own in `kwargs`; they
are passed to the factory and checked against its signature when it is built.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from typing import Any, Mapping, Optional, Union

import yaml
from absl import logging

from framework import atomic, registry


class ConfigError(ValueError):
    """A config key is unknown or a value has the wrong type or range."""


# ----------------------------------------------------------------------------- sections


@dataclasses.dataclass
class Component:
    """Base of sections that name a registered component; unknown keys go to `kwargs`."""

    name: str = ""
    kwargs: dict = dataclasses.field(default_factory=dict)


def own_keys(section: Any) -> list[str]:
    """The keys the framework reads in a section (its dataclass fields but `kwargs`): what an
    unknown key's message offers as corrections (`registry.check_kwargs`)."""
    return [f.name for f in dataclasses.fields(section) if f.name != "kwargs"]


@dataclasses.dataclass
class ModelConfig(Component):
    """`task.model`: the registered model factory and its keyword arguments."""


@dataclasses.dataclass
class DataConfig(Component):
    """`task.train_data` / `task.eval_data`: a registered dataset and how it is batched."""

    batch_size: int = 32  # global batch, over all replicas
    shuffle_buffer: int = 10000
    cache: bool = True
    allow_nonfinite: bool = False  # the pre-flight logs NaN/Inf in this split instead of stopping
    # train_data only: null | balanced | {class: weight} (per-example draw weight by class).
    sampling: Union[None, str, dict] = None
    # Variable-length elements: features are padded with pad_value, labels with
    # label_pad_value (padded positions get weight 0 and never count in losses or metrics).
    pad_value: float = 0.0
    label_pad_value: float = 0.0
    bucket_boundaries: list = dataclasses.field(default_factory=list)  # train only: length buckets


@dataclasses.dataclass
class LossConfig(Component):
    """`task.loss`: a registered loss; the framework always asks it for per-example values."""

    name: str = "sparse_categorical_crossentropy"


@dataclasses.dataclass
class TaskConfig:
    """`task`: what is learned from what."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train_data: DataConfig = dataclasses.field(default_factory=DataConfig)
    eval_data: DataConfig = dataclasses.field(default_factory=DataConfig)
    # Evaluated once, on the final model, after training (never seen by hooks).
    test_data: DataConfig = dataclasses.field(default_factory=DataConfig)
    # Fraction of the training source held out as the eval set when eval_data names nothing.
    validation_split: Optional[float] = None
    # Set by --mode=cross_validate for each sub-run: {folds: K, index: i} holds fold i out.
    cv_fold: dict = dataclasses.field(default_factory=dict)
    # One loss section, or {output name: loss section} for a model with several outputs.
    loss: Union[LossConfig, dict] = dataclasses.field(default_factory=LossConfig)
    loss_weights: dict = dataclasses.field(default_factory=dict)  # {output name: weight}, default 1
    # A list, or {output name: [metrics]} for a model with several outputs.
    metrics: Union[list, dict] = dataclasses.field(default_factory=lambda: ["accuracy"])
    class_weight: Union[None, str, dict] = None
    # Checkpoint (file prefix or directory) whose weights initialize the model, and rules
    # mapping its variable paths to this model's: [{"from": regex, "to": replacement}].
    init_checkpoint: Optional[str] = None
    init_mapping: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TrainerConfig:
    """`trainer`: how long, how often, and how the compiled loop runs."""

    train_steps: int = 1000
    train_epochs: Optional[float] = None  # overrides train_steps when the train set is finite
    steps_per_loop: int = 100
    eval_interval: int = 500
    eval_steps: Optional[int] = None  # None: the whole eval set, partial last batch included
    checkpoint_interval: int = 500
    max_to_keep: int = 3
    seed: int = 42
    jit_compile: Union[bool, str] = "auto"  # true | false | auto
    # Under a whole-step XLA loop, a fresh run's first loop runs without XLA while XLA
    # compiles in the background (loops.CompileAhead): the first step does not wait for it.
    xla_compile_ahead: bool = True
    deterministic: bool = False  # op determinism (bit-exact resume); slower
    nonfinite: str = "terminate"  # terminate | skip | restore
    max_restores: int = 3
    phases: list = dataclasses.field(default_factory=list)
    freeze_bn_in_frozen_groups: bool = True
    ema_decay: Optional[float] = None  # EMA of the weights; eval, best weights and the export use it
    export: bool = True  # end every run with model_dir/export/ (model.keras + saved_model/)
    preflight_batches: int = 10  # batches of a streaming source the data pre-flight checks (0: none)
    overfit_batches: int = 0  # >0: train on the same first N batches only (a debugging run)


@dataclasses.dataclass
class ScheduleConfig(Component):
    """`optimizer.schedule`: a registered learning-rate schedule."""

    name: str = "constant"


@dataclasses.dataclass
class ClipConfig:
    """`optimizer.clip`: clipping of the aggregated gradient (never per replica)."""

    global_norm: Optional[float] = None
    per_group_norm: Optional[float] = None
    per_variable_norm: Optional[float] = None
    value: Optional[float] = None


@dataclasses.dataclass
class ParamGroupConfig:
    """One entry of `optimizer.param_groups`."""

    pattern: str = ""
    name: Optional[str] = None
    lr_multiplier: float = 1.0
    weight_decay: Optional[float] = None
    trainable: bool = True


@dataclasses.dataclass
class OptimizerConfig(Component):
    """`optimizer`: a registered optimizer plus the framework's gradient pipeline options."""

    name: str = "adam"
    learning_rate: float = 1e-3
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    warmup_steps: int = 0
    layer_decay: Optional[float] = None
    # Blocks for layer_decay (null: numbered layers, else the top-level layers): an ordered list of
    # regexes (block i: the first that matches), or one regex whose first group is the block number.
    layer_decay_blocks: Union[None, str, list] = None
    param_groups: list = dataclasses.field(default_factory=list)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    accumulation_steps: int = 1
    weight_decay: Optional[float] = None
    # Variables whose path matches one of these get no weight decay.
    weight_decay_exclude: list = dataclasses.field(
        default_factory=lambda: [r"bias$", r"(batch_?norm|layer_?norm|normalization)[^/]*/", r"(gamma|beta)$"])


# The distribution strategies by name: the one list the flag, the config check and
# `distribute.make_strategy` use.
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class RuntimeConfig:
    """`runtime`: where and in what precision it runs."""

    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    strategy: str = "default"  # default | one_device | mirrored | multi_worker | tpu
    cpu_replicas: int = 0  # >0: split the CPU into that many logical devices
    num_gpus: int = 0
    tpu: str = ""
    tpu_timeout_s: float = 30.0
    worker_timeout_s: float = 120.0
    initial_loss_scale: float = 32768.0
    # tf.data autotuning of the input pipelines (off: freeing an autotuned iterator can wait up
    # to a minute for its tuning thread; docs/design.md#t12).
    data_autotune: bool = False


@dataclasses.dataclass
class HookConfig(Component):
    """One entry of `hooks`."""


# --- tune: the `--mode=tune` search (framework/tune.py validates and runs it) -----------------


@dataclasses.dataclass
class TuneConfig:
    """`tune`: a hyperparameter search on Optuna (used by `--mode=tune` only).

    `space` maps dotted config keys to `{type: float|int|categorical, low, high, log, step,
    choices}`; `sampler` and `pruner` are a name or `{name, ...kwargs of the Optuna class}`.
    """

    metric: str = "loss"  # an eval metric name (or 'loss')
    direction: str = "auto"  # maximize | minimize | auto (minimize for loss/error/mse/mae)
    trials: int = 20  # finished (complete + pruned) trials for the whole study, over all processes
    sampler: Union[str, dict] = "tpe"  # tpe | random | grid
    pruner: Union[str, dict] = "median"  # median | hyperband | none
    space: dict = dataclasses.field(default_factory=dict)
    study_name: Optional[str] = None  # default: the experiment's name


@dataclasses.dataclass
class ExperimentConfig:
    """The whole resolved experiment."""

    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    hooks: list = dataclasses.field(default_factory=list)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)


# Element types of list-valued fields that hold sections.
_LIST_ITEM = {
    ("optimizer", "param_groups"): ParamGroupConfig,
    ("", "hooks"): HookConfig,
}


# ----------------------------------------------------------------------------- coercion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Converts `value` to the declared type `tp` of `key` or raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if tp is Any:
        return value
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    if tp in (list, dict) or origin in (list, dict):
        base = origin or tp
        if isinstance(value, base):
            return value
        raise ConfigError(f"{key}: expected {base.__name__}; got {value!r} ({type(value).__name__})")
    raise ConfigError(f"{key}: unsupported declared type {tp!r}")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """An exact type match among the union's members first, then conversions in declared order."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for a in args:
        if a is not type(None) and isinstance(value, a) and not (a is int and isinstance(value, bool)):
            return value
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, key)
        except ConfigError:
            pass
    raise ConfigError(f"{key}: expected {_type_name(tp)}; got {value!r} ({type(value).__name__})")


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ConfigError(f"{key}: expected bool; got {value!r} ({type(value).__name__})")


def _coerce_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected int; got {value!r} (bool)")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f.is_integer():
                return int(f)
    raise ConfigError(f"{key}: expected int; got {value!r} ({type(value).__name__})")


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected float; got {value!r} (bool)")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected float; got {value!r} ({type(value).__name__})")


def _coerce_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected str; got {value!r} ({type(value).__name__})")


_SCALARS = {bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str}


def did_you_mean(key: str, valid: list[str]) -> str:
    """` (did you mean 'x'?)` for the valid key closest to a misspelt `key` (`registry.closest`), else ""."""
    close = registry.closest(key, valid)
    return f" (did you mean {close!r}?)" if close else ""


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _merge_into(obj: Any, data: Mapping[str, Any], path: str) -> None:
    """Applies the mapping `data` onto dataclass instance `obj` in place."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or '<root>'}: expected a mapping; got {data!r} ({type(data).__name__})")
    cls = type(obj)
    fields = _fields(cls)
    hints = _hints(cls)
    is_component = isinstance(obj, Component)
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key == "kwargs" and is_component:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full}: expected a mapping; got {value!r}")
            obj.kwargs.update(value)
            continue
        if key not in fields:
            if is_component:
                obj.kwargs[key] = value
                continue
            valid = sorted(n for n in fields)
            raise ConfigError(
                f"unknown config key {full!r}{did_you_mean(str(key), valid)}; "
                f"valid keys at {path or 'the top level'}: {', '.join(valid)}"
            )
        current = getattr(obj, key)
        if isinstance(obj, TaskConfig) and key == "loss" and (isinstance(current, dict) or _per_output_loss(value)):
            setattr(obj, key, _merge_loss(current, value, full))
            continue
        if dataclasses.is_dataclass(current):
            if value is None:
                raise ConfigError(f"{full}: expected a mapping; got null")
            _merge_into(current, value, full)
            continue
        item_cls = _LIST_ITEM.get((path.split(".")[-1] if path else "", key))
        coerced = _coerce(value, hints[key], full)
        if item_cls is not None:
            coerced = [_item(item_cls, v, f"{full}[{i}]") for i, v in enumerate(coerced)]
        setattr(obj, key, coerced)


def _per_output_loss(value: Any) -> bool:
    """`task.loss` given as {output: loss section}: no 'name' key, every value a section or a name."""
    return isinstance(value, Mapping) and bool(value) and "name" not in value and "kwargs" not in value and \
        all(isinstance(v, (Mapping, str)) for v in value.values())


def _merge_loss(current: Any, value: Any, path: str) -> Any:
    """Merges `value` into `task.loss` when either side maps outputs to loss sections."""
    if not _per_output_loss(value):
        if isinstance(value, Mapping) and "name" in value:  # one section replaces the mapping
            return _item(LossConfig, value, path)
        raise ConfigError(f"{path}: expected a loss section {{name: ...}} or {{output: loss section}}; "
                          f"got {value!r}")
    out = dict(current) if isinstance(current, dict) else {}
    for k, v in value.items():
        key = f"{path}.{k}"
        if isinstance(out.get(k), LossConfig) and isinstance(v, Mapping):
            _merge_into(out[k], v, key)
        else:
            out[k] = _item(LossConfig, v, key)
    return out


def _item(cls: type, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    obj = cls()
    if isinstance(value, str) and issubclass(cls, Component):
        value = {"name": value}
    _merge_into(obj, value, path)
    return obj


def to_dict(cfg: Any) -> Any:
    """Returns a plain nested dict (component kwargs flattened into their section)."""
    if dataclasses.is_dataclass(cfg):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if f.name == "kwargs" and isinstance(cfg, Component):
                continue
            out[f.name] = to_dict(v)
        if isinstance(cfg, Component):
            for k, v in cfg.kwargs.items():
                out[k] = to_dict(v)
        return out
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def from_dict(data: Mapping[str, Any] | ExperimentConfig | None) -> ExperimentConfig:
    """Builds an ExperimentConfig from defaults plus a nested mapping (or copies a config)."""
    cfg = ExperimentConfig()
    if data is None:
        return cfg
    if isinstance(data, ExperimentConfig):
        data = to_dict(data)
    _merge_into(cfg, data, "")
    return cfg


def merge(cfg: ExperimentConfig, data: Mapping[str, Any]) -> ExperimentConfig:
    """Applies `data` onto a copy of `cfg`; returns the copy."""
    out = from_dict(to_dict(cfg))
    _merge_into(out, data, "")
    return out


# ----------------------------------------------------------------------------- overrides


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Splits on `sep` outside brackets, braces and quotes."""
    parts, depth, quote, buf = [], 0, "", []
    for ch in text:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if buf:
        parts.append("".join(buf))
    return [p.strip() for p in parts if p.strip()]


def parse_override(text: str) -> dict[str, Any]:
    """Parses `--params_override`: a YAML/JSON mapping or `a.b=1,c.d=x` dotted pairs.

    Values of dotted pairs are read as YAML scalars / flow collections; the declared type of
    the key converts them later (so `optimizer.learning_rate=1e-3` becomes a float).
    """
    text = text.strip()
    if not text:
        return {}
    looks_dotted = "=" in text and not text.startswith("{") and ":" not in text.split("=", 1)[0]
    if not looks_dotted:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--params_override: not valid YAML/JSON ({e}); got {text!r}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                "--params_override: expected a YAML/JSON mapping or 'a.b=1,c.d=x' pairs; "
                f"got {text!r}")
        return data
    out: dict[str, Any] = {}
    for pair in _split_top_level(text):
        if "=" not in pair:
            raise ConfigError(f"--params_override: expected 'dotted.key=value'; got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"--params_override: bad key {key!r} in {pair!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):
            value = raw.strip()  # keep the text as typed (e.g. '1e-3'); typing converts it
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--params_override: {key!r} sets inside a value given earlier")
        node[parts[-1]] = value
    return out


def load_file(path: str) -> dict[str, Any]:
    """Reads a YAML or JSON config file into a mapping."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config_file: no such file; got {path!r}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"--config_file: cannot parse {path!r}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config_file: expected a mapping at the top of {path!r}; got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- validation


def _positive(value: Any, key: str, *, allow_zero: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    bad = value is None or (isinstance(value, float) and not math.isfinite(value)) or (
        value < 0 if allow_zero else value <= 0)
    if bad:
        want = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}: expected a finite number {want}; got {value!r}")


def validate_runtime(r: RuntimeConfig) -> None:
    """The checks of `runtime` that need neither TensorFlow nor the machine (the one home of
    these rules; `distribute.check_runtime` adds those that look at the environment).

    Raises:
      ConfigError: naming the key, what was expected and the value received.
    """
    if r.precision not in PRECISIONS:
        raise ConfigError(f"runtime.precision: expected {' | '.join(PRECISIONS)}; got {r.precision!r}")
    if r.strategy not in STRATEGIES:
        raise ConfigError(f"runtime.strategy (--strategy): expected one of {' | '.join(STRATEGIES)}; "
                          f"got {r.strategy!r}")
    for key in ("cpu_replicas", "num_gpus"):
        v = getattr(r, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"runtime.{key} (--{key}): expected an integer >= 0; got {v!r}")
    if r.cpu_replicas > 0 and r.num_gpus > 0:
        raise ConfigError(f"runtime.cpu_replicas and runtime.num_gpus: set at most one of them; got "
                          f"cpu_replicas={r.cpu_replicas}, num_gpus={r.num_gpus}")
    for key in ("tpu_timeout_s", "worker_timeout_s"):
        v = getattr(r, key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ConfigError(f"runtime.{key}: expected a number of seconds > 0; got {v!r}")
    if r.strategy == "multi_worker" and r.cpu_replicas > 1:
        raise ConfigError(
            "runtime.cpu_replicas > 1 with runtime.strategy=multi_worker is not supported (each "
            "worker process runs one CPU replica; start more workers instead); got "
            f"cpu_replicas={r.cpu_replicas}")


def _check_layer_decay_blocks(spec: Any) -> None:
    """`optimizer.layer_decay_blocks`: null, a regex with a group, or a non-empty list of regexes."""
    key = "optimizer.layer_decay_blocks"
    if spec is None:
        return
    items = [spec] if isinstance(spec, str) else spec
    if not items or not all(isinstance(x, str) and x for x in items):
        raise ConfigError(f"{key}: expected a regex or a non-empty list of regexes; got {spec!r}")
    for i, x in enumerate(items):
        where = key if isinstance(spec, str) else f"{key}[{i}]"
        try:
            rx = re.compile(x)
        except re.error as e:
            raise ConfigError(f"{where}: expected a valid regular expression ({e}); got {x!r}") from None
        if isinstance(spec, str) and rx.groups < 1:
            raise ConfigError(f"{key}: expected one regex whose first group is the block number "
                              f"(or a list of regexes); got {spec!r}")


def _check_class_weight(cw: Any, key: str) -> None:
    """`key`: null, 'balanced' or {class id: weight >= 0} (class weights and sampling weights)."""
    if isinstance(cw, str) and cw != "balanced":
        raise ConfigError(f"{key}: expected null, 'balanced' or {{class: weight}}; got {cw!r}")
    if isinstance(cw, dict):
        for k, v in cw.items():
            try:
                int(k)
                ok = float(v) >= 0 and math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"{key}: expected int class -> weight >= 0; got {k!r}: {v!r}")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Checks ranges and choices that need no TensorFlow; returns `cfg`.

    Raises:
      ConfigError: naming the key, the value received and what was expected.
    """
    t, tr, o = cfg.task, cfg.trainer, cfg.optimizer
    if not t.model.name:
        raise ConfigError("task.model.name: expected a registered model name; got ''")
    if not t.train_data.name:
        raise ConfigError("task.train_data.name: expected a registered dataset name; got ''")
    _validate_trainer(t, tr, o)
    _validate_optimizer(o)
    validate_runtime(cfg.runtime)
    _validate_class_weights(t.class_weight)
    _validate_data_protocol(t, tr)
    for i, h in enumerate(cfg.hooks):
        if not h.name:
            raise ConfigError(f"hooks[{i}].name: expected a registered hook name; got {h.name!r}")
    _validate_outputs(t)
    _validate_buckets(t)
    return cfg


def _validate_trainer(t: TaskConfig, tr: TrainerConfig, o: OptimizerConfig) -> None:
    """The counts (batch sizes, intervals, accumulation) and the `trainer` section's choices."""
    for key, v in (("task.train_data.batch_size", t.train_data.batch_size),
                   ("task.eval_data.batch_size", t.eval_data.batch_size),
                   ("trainer.steps_per_loop", tr.steps_per_loop),
                   ("trainer.eval_interval", tr.eval_interval),
                   ("trainer.checkpoint_interval", tr.checkpoint_interval),
                   ("trainer.max_to_keep", tr.max_to_keep),
                   ("optimizer.accumulation_steps", o.accumulation_steps)):
        if v <= 0:
            raise ConfigError(f"{key}: expected an integer > 0; got {v!r}")
    if tr.preflight_batches < 0:
        raise ConfigError(f"trainer.preflight_batches: expected an integer >= 0; got {tr.preflight_batches!r}")
    if tr.train_steps < 0:
        raise ConfigError(f"trainer.train_steps: expected an integer >= 0; got {tr.train_steps!r}")
    if tr.train_epochs is not None:
        _positive(tr.train_epochs, "trainer.train_epochs")
    if tr.eval_steps is not None and tr.eval_steps <= 0:
        raise ConfigError(f"trainer.eval_steps: expected null or an integer > 0; got {tr.eval_steps!r}")
    if tr.nonfinite not in ("terminate", "skip", "restore"):
        raise ConfigError(f"trainer.nonfinite: expected terminate | skip | restore; got {tr.nonfinite!r}")
    if isinstance(tr.jit_compile, str) and tr.jit_compile != "auto":
        raise ConfigError(f"trainer.jit_compile: expected true | false | auto; got {tr.jit_compile!r}")
    if tr.ema_decay is not None and not 0.0 < tr.ema_decay < 1.0:
        raise ConfigError(f"trainer.ema_decay: expected null or a number in (0, 1); got {tr.ema_decay!r}")


def _validate_optimizer(o: OptimizerConfig) -> None:
    """Learning rate, warmup, layer decay, clipping thresholds, weight decay and parameter groups."""
    _positive(o.learning_rate, "optimizer.learning_rate")
    if o.warmup_steps < 0:
        raise ConfigError(f"optimizer.warmup_steps: expected an integer >= 0; got {o.warmup_steps!r}")
    if o.layer_decay is not None and not 0.0 < o.layer_decay <= 1.0:
        raise ConfigError(f"optimizer.layer_decay: expected null or a number in (0, 1]; got {o.layer_decay!r}")
    _check_layer_decay_blocks(o.layer_decay_blocks)
    for k in ("global_norm", "per_group_norm", "per_variable_norm", "value"):
        _positive(getattr(o.clip, k), f"optimizer.clip.{k}", allow_none=True)
    _positive(o.weight_decay, "optimizer.weight_decay", allow_zero=True, allow_none=True)
    for i, g in enumerate(o.param_groups):
        if not g.pattern:
            raise ConfigError(f"optimizer.param_groups[{i}].pattern: expected a regular expression; got {g.pattern!r}")
        _positive(g.lr_multiplier, f"optimizer.param_groups[{i}].lr_multiplier", allow_zero=True)
        _positive(g.weight_decay, f"optimizer.param_groups[{i}].weight_decay", allow_zero=True, allow_none=True)


def _validate_class_weights(cw: Any) -> None:
    """`task.class_weight`: one spec, or {output: spec} for a model with several outputs."""
    # {output: spec} for a model with several outputs (every value null, 'balanced' or a mapping).
    per_output = isinstance(cw, dict) and bool(cw) and all(v is None or isinstance(v, (str, dict)) for v in cw.values())
    for where, spec in ((cw.items() if per_output else [(None, cw)])):
        _check_class_weight(spec, "task.class_weight" if where is None else f"task.class_weight.{where}")


def _validate_outputs(t: TaskConfig) -> None:
    """`task.metrics` (a list, or {output: list}) and `task.loss_weights` (only with per-output losses)."""
    lists = t.metrics.items() if isinstance(t.metrics, dict) else [(None, t.metrics)]
    for out, ms in lists:
        where = "task.metrics" if out is None else f"task.metrics.{out}"
        if not isinstance(ms, list):
            raise ConfigError(f"{where}: expected a list of metrics; got {ms!r}")
        for i, m in enumerate(ms):
            if not isinstance(m, (str, dict)):
                raise ConfigError(f"{where}[{i}]: expected a metric name or {{name: ...}}; got {m!r}")
    for k, v in t.loss_weights.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"task.loss_weights.{k}: expected a finite number >= 0; got {v!r}")
    if t.loss_weights and not isinstance(t.loss, dict):
        raise ConfigError(f"task.loss_weights: expected task.loss to map output names to loss sections; "
                          f"got a single loss {t.loss.name!r} with loss_weights {t.loss_weights!r}")


def _validate_buckets(t: TaskConfig) -> None:
    """`bucket_boundaries`: increasing integers > 0, and only for the training data."""
    for key, d in (("task.train_data", t.train_data), ("task.eval_data", t.eval_data)):
        b = d.bucket_boundaries
        if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in b) or b != sorted(set(b)):
            raise ConfigError(f"{key}.bucket_boundaries: expected increasing integers > 0; got {b!r}")
    if t.eval_data.bucket_boundaries:
        raise ConfigError(f"task.eval_data.bucket_boundaries: expected [] (evaluation pads to the longest "
                          f"eval example); got {t.eval_data.bucket_boundaries!r}")


def _validate_data_protocol(t: TaskConfig, tr: TrainerConfig) -> None:
    """test_data, validation_split, cv_fold, sampling and overfit_batches."""
    if t.test_data.name and t.test_data.batch_size <= 0:
        raise ConfigError(f"task.test_data.batch_size: expected an integer > 0; got {t.test_data.batch_size!r}")
    vs = t.validation_split
    if vs is not None:
        if not (math.isfinite(vs) and 0.0 < vs < 1.0):
            raise ConfigError(f"task.validation_split: expected null or a fraction in (0, 1); got {vs!r}")
        if t.eval_data.name:
            raise ConfigError("task.validation_split: expected null when task.eval_data.name is given (the eval "
                              f"set comes from one or the other); got {vs!r} with eval_data {t.eval_data.name!r}")
    if t.cv_fold:
        k, i = t.cv_fold.get("folds"), t.cv_fold.get("index")
        if set(t.cv_fold) != {"folds", "index"} or not isinstance(k, int) or not isinstance(i, int) \
                or k < 2 or not 0 <= i < k:
            raise ConfigError(f"task.cv_fold: expected {{folds: K >= 2, index: 0..K-1}}; got {t.cv_fold!r}")
        if t.eval_data.name or vs is not None:
            raise ConfigError("task.cv_fold: the held-out fold is the eval set; expected no task.eval_data.name "
                              f"and no task.validation_split; got eval_data {t.eval_data.name!r}, "
                              f"validation_split {vs!r}")
    sp = t.train_data.sampling
    _check_class_weight(sp, "task.train_data.sampling")  # the same form as a class-weight mapping
    if isinstance(sp, dict):
        if not any(float(v) > 0 for v in sp.values()):
            raise ConfigError(f"task.train_data.sampling: expected at least one weight > 0; got {sp!r}")
    for key, d in (("task.eval_data", t.eval_data), ("task.test_data", t.test_data)):
        if d.sampling is not None:
            raise ConfigError(f"{key}.sampling: sampling applies to task.train_data only; got {d.sampling!r}")
    if tr.overfit_batches < 0:
        raise ConfigError(f"trainer.overfit_batches: expected an integer >= 0; got {tr.overfit_batches!r}")


# ----------------------------------------------------------------------------- resolve / io


def resolve(base: Mapping[str, Any] | ExperimentConfig | None, *, config_files: tuple[str, ...] = (),
            overrides: tuple[str, ...] = ()) -> ExperimentConfig:
    """Experiment defaults, then each config file in order, then each override; validated."""
    cfg = from_dict(base)
    for path in config_files:
        _merge_into(cfg, load_file(path), "")
    for text in overrides:
        _merge_into(cfg, parse_override(text), "")
    return validate(cfg)


def dump_yaml(cfg: ExperimentConfig) -> str:
    """Returns the resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save(cfg: ExperimentConfig, path: str) -> None:
    """Writes `cfg` as YAML to `path` atomically.

    A different config already at `path` (a rerun of the same model_dir with other settings) is
    kept as `<stem>.1.yaml`, `<stem>.2.yaml`, ... (oldest first), never overwritten: the settings
    the existing checkpoints were trained with stay on record even if the new run is refused.
    """
    text = dump_yaml(cfg)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        if old != text:
            stem, ext = os.path.splitext(path)
            n = 1
            while os.path.exists(f"{stem}.{n}{ext}"):
                n += 1
            os.replace(path, f"{stem}.{n}{ext}")
            logging.info("%s differs from this run's config: the previous one is kept as %s", path,
                         f"{stem}.{n}{ext}")
    atomic.write_text(path, text, fsync=True)


def load(path: str) -> ExperimentConfig:
    """Reads a config written by `save`."""
    return validate(from_dict(load_file(path)))
