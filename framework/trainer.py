"""Builds one run from a resolved config: data, model, loss, metrics, optimizer, groups, steps.

Every Keras object is created inside `strategy.scope()` and the optimizer is built eagerly on
the trainable variables before anything is traced (docs/design.md#t2). Checks that need the
data (the data pre-flight, label range, shapes) run here, before the first compiled step.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from framework import errors, registry
from framework import jit as jit_lib
from framework import losses as losses_lib
from framework import outputs as outputs_lib
from framework.config import ExperimentConfig, own_keys
from framework.data import inspect, pipeline, preflight
from framework.optim import groups as groups_lib
from framework.optim import optimizers as optimizers_lib
from framework.optim import schedules as schedules_lib
from framework.step import Steps


@dataclasses.dataclass
class Trainer:
    """Everything built for one run (the controller drives it)."""

    cfg: ExperimentConfig
    strategy: tf.distribute.Strategy
    model: keras.Model
    loss_fn: Any
    optimizer: keras.optimizers.Optimizer
    groups: groups_lib.GroupTable
    steps: Steps
    global_step: tf.Variable
    lr_multipliers: tf.Variable
    lr_factor: tf.Variable
    schedule: Callable[[Any], Any]
    total_steps: int
    num_train_examples: int
    num_classes: int | None
    train_source: tf.data.Dataset
    eval_source: tf.data.Dataset | None
    num_eval_examples: int
    batches_per_step: int
    jit_reason: str
    # Positions in the training source of the eval examples carved out by task.validation_split
    # or task.cv_fold (None when eval_data is its own source).
    eval_indices: np.ndarray | None = None
    # Per-example draw weights of task.train_data.sampling (None: a plain permutation per epoch).
    sample_weights: np.ndarray | None = None
    # Class -> frequency among the first epoch's draws (logged and summarized by the controller).
    sampled_frequencies: dict[int, float] | None = None
    train_padding: pipeline.Padding | None = None
    eval_padding: pipeline.Padding | None = None
    heads: list = dataclasses.field(default_factory=list)
    # The training augmentation `augment((x, y, w), seed)` the dataset factory returned (or None).
    train_augment: Callable | None = None
    # The training split as the pre-flight read it whole (an in-memory source), flattened (x, y, w)
    # tensors: the in-memory pipeline batches them by index instead of reading the source again.
    train_arrays: tuple[tf.Tensor, ...] | None = None

    def train_dataset(self, *, start_step: int) -> Any:
        """Distributed training batches positioned at `start_step` (exact resume)."""
        d = self.cfg.task.train_data
        n = self.num_train_examples

        overfit = self.cfg.trainer.overfit_batches
        start_batch = start_step * self.batches_per_step

        def make() -> tf.data.Dataset:
            ds = pipeline.train_stream(
                self.train_source, global_batch=d.batch_size, seed=self.cfg.trainer.seed,
                shuffle_buffer=d.shuffle_buffer, cache=d.cache, num_examples=n,
                start_batch=0 if overfit else start_batch,
                augment=self.train_augment, sample_weights=self.sample_weights,
                padding=self.train_padding, arrays=self.train_arrays)
            if overfit:
                # The same first N global batches, over and over (cached: augmentation frozen too).
                ds = ds.take(overfit).cache().repeat().skip(start_batch % overfit)
            return ds

        return self._distribute(make)

    def eval_dataset(self) -> tuple[Any, int]:
        """(distributed eval batches, number of batches to run)."""
        d = self.cfg.task.eval_data
        holder = {}

        def make() -> tf.data.Dataset:
            ds, nb = pipeline.eval_batches(self.eval_source, global_batch=d.batch_size, cache=d.cache,
                                           num_examples=self.num_eval_examples, padding=self.eval_padding)
            holder["n"] = nb
            return ds

        ds = self._distribute(make)
        nb = math.ceil(self.num_eval_examples / d.batch_size)
        if self.cfg.trainer.eval_steps is not None:
            nb = min(nb, self.cfg.trainer.eval_steps)
        return ds, nb

    def test_dataset(self) -> tuple[Any, int]:
        """(distributed test batches, number of batches): `task.test_data`, read here for the first time."""
        d = self.cfg.task.test_data
        source = _dataset(d, "test", "task.test_data").dataset
        n = pipeline.count(source, name="task.test_data")
        if n < 0:
            raise ValueError("task.test_data: the test dataset is infinite; it must be finite")
        check_inputs(self.model, source.element_spec[0], name="task.test_data")
        one = self.heads[0] if len(self.heads) == 1 and self.heads[0].key is None else None
        if one is not None and one.sparse:
            pipeline.check_sparse_labels(pipeline.labels_array(source), num_classes=one.units,
                                         name="task.test_data")
        padding = pipeline.make_padding(source, pad_value=d.pad_value, label_pad_value=d.label_pad_value,
                                        num_examples=n, name="task.test_data")

        def make() -> tf.data.Dataset:
            return pipeline.eval_batches(source, global_batch=d.batch_size, cache=d.cache, num_examples=n,
                                         name="task.test_data", padding=padding)[0]

        return self._distribute(make), math.ceil(n / d.batch_size)

    def _distribute(self, make: Callable[[], tf.data.Dataset]) -> Any:
        """`make()`'s global batches split over the replicas, autotuned as `runtime.data_autotune` says."""
        return pipeline.distribute(self.strategy, make, autotune=self.cfg.runtime.data_autotune)

    def group_lrs(self, step: int) -> dict[str, float]:
        """Current learning rate of every parameter group (for summaries and the log)."""
        base = float(self.schedule(tf.constant(step, tf.int64))) * float(self.lr_factor.numpy())
        mult = self.lr_multipliers.numpy()
        out = {}
        for name, i in self.groups.lr_curves().items():
            group = self.groups.groups[self.groups.index(name)] if i is None else None
            out[name] = base * float(mult[i]) if group is None else base * group.lr_multiplier
        return out


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One split as a dataset factory gives it: the (x, y, w) source and its training augmentation."""

    dataset: tf.data.Dataset
    # augment((x, y, w), seed) -> (x, y, w), run per epoch after the cache (train split only; else None).
    augment: Callable | None = None


def _dataset(cfg_section: Any, split: str, section: str) -> DataSource:
    """Calls the section's dataset factory: its source with per-example weights, and its augmentation."""
    factory = registry.DATASETS.get(cfg_section.name)
    registry.check_kwargs(factory, cfg_section.kwargs, section=section, reserved=("split",),
                          section_keys=own_keys(cfg_section))
    ds = factory(split=split, **cfg_section.kwargs)
    augment = None
    if isinstance(ds, tuple) and len(ds) == 2 and callable(ds[1]):
        # (dataset, augment): augment((x, y, w), seed) runs per epoch after the cache.
        ds, augment = ds
    if not isinstance(ds, tf.data.Dataset):
        raise ValueError(f"{section}: dataset factory {cfg_section.name!r} must return a tf.data.Dataset "
                         f"(or (dataset, augment_fn)); got {type(ds).__name__}")
    return DataSource(dataset=pipeline.with_weights(ds), augment=augment if split == "train" else None)


def _preflight(cfg: ExperimentConfig, train_source: tf.data.Dataset, n_train: int,
               eval_source: tf.data.Dataset | None, n_eval: int) -> preflight.Result:
    """The data pre-flight on train and eval (never the test split), before the model exists."""
    t = cfg.task
    sources = {"train": preflight.Source(key="task.train_data", section=t.train_data, dataset=train_source,
                                         num_examples=n_train)}
    if eval_source is not None:
        sources["eval"] = preflight.Source(key="task.eval_data", section=t.eval_data, dataset=eval_source,
                                           num_examples=n_eval)
    return preflight.run(sources, batches=cfg.trainer.preflight_batches,
                         label_kind=losses_lib.section_label_kind(t.loss), compensated_by=balancing(cfg))


def balancing(cfg: ExperimentConfig) -> str | None:
    """The config that counters class imbalance (class weights or balanced sampling), if any."""
    if cfg.task.class_weight is not None:
        cw = cfg.task.class_weight
        return f"task.class_weight: {cw if isinstance(cw, str) else 'given'}"
    sampling = getattr(cfg.task.train_data, "sampling", None)
    return f"task.train_data.sampling: {sampling if isinstance(sampling, str) else 'given'}" if sampling else None


def data_source(section: Any, split: str, key: str) -> tuple[tf.data.Dataset, Callable | None]:
    """(the (x, y, w) source of one split as the trainer reads it, its training augmentation or None)."""
    src = _dataset(section, split, key)
    return src.dataset, src.augment


def output_units(cfg: ExperimentConfig, x_spec: Any) -> int:
    """Builds the model (no strategy, nothing traced) only to read its number of outputs."""
    model = _make_model(cfg)
    units = _output_units(model)
    if units is None:
        units = int(model(outputs_lib.dummy_features(x_spec), training=False).shape[-1])
    return int(units)


def _make_model(cfg: ExperimentConfig) -> keras.Model:
    """Calls the `task.model` factory (in the caller's strategy scope) and checks it gave a keras.Model."""
    m = cfg.task.model
    model = registry.build(registry.MODELS, m.name, m.kwargs, section="task.model", section_keys=own_keys(m))
    if not isinstance(model, keras.Model):
        raise ValueError(f"task.model: factory {m.name!r} must return a keras.Model; got {type(model).__name__}")
    return model


def _output_units(model: keras.Model) -> int | None:
    shape = model.outputs[0].shape if getattr(model, "outputs", None) else None
    return None if shape is None else shape[-1]


def class_weight_vector(spec: Any, labels: np.ndarray, num_classes: int) -> list[float] | None:
    """Per-class weights from `task.class_weight` (null, 'balanced' or {class: weight}).

    `labels` are class ids, or one-hot / probability rows [N, C] whose argmax is the class (as
    Keras's `fit` reads them for `class_weight`).
    """
    if spec is None:
        return None
    if spec == "balanced":
        if labels.ndim >= 2 and labels.shape[-1] == num_classes > 1:
            labels = np.argmax(labels, axis=-1)
        counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=num_classes).astype(np.float64)
        n = counts.sum()
        return [float(n / (num_classes * c)) if c else 0.0 for c in counts]
    out = [1.0] * num_classes
    for k, v in spec.items():
        k = int(k)
        if not 0 <= k < num_classes:
            raise ValueError(f"task.class_weight: class {k} is outside [0, {num_classes}); got {spec!r}")
        out[k] = float(v)
    return out


@dataclasses.dataclass(frozen=True)
class DataParts:
    """The run's data as `build` reads it: sources, sizes, the carved eval set, padding, pre-flight."""

    train: DataSource
    eval_source: tf.data.Dataset | None
    num_train_examples: int  # -1: infinite
    num_eval_examples: int
    eval_indices: np.ndarray | None  # see Trainer.eval_indices
    checked: preflight.Result
    total_steps: int
    train_padding: pipeline.Padding | None
    eval_padding: pipeline.Padding | None


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The model (variables created in the strategy scope), its heads, loss and metrics."""

    model: keras.Model
    heads: list
    loss_fn: Any  # one loss, or {output: loss}
    metrics: outputs_lib.HeadMetrics


@dataclasses.dataclass(frozen=True)
class LabelParts:
    """What the labels decide: class weights and the sampling of `task.train_data.sampling`."""

    class_weights: Any  # one vector, {output: vector} or None
    sample_weights: np.ndarray | None
    sampled_frequencies: dict[int, float] | None


@dataclasses.dataclass(frozen=True)
class OptimParts:
    """The optimizer (built on the trainable variables), its groups, step counter and learning rate."""

    variables: list
    table: groups_lib.GroupTable
    optimizer: keras.optimizers.Optimizer
    global_step: tf.Variable
    lr_factor: tf.Variable
    lr_multipliers: tf.Variable
    schedule: Callable[[Any], Any]
    default_weight_decay: float | None  # for groups without their own (`table.weight_decays`)


def build(cfg: ExperimentConfig, strategy: tf.distribute.Strategy) -> Trainer:
    """Builds the run described by `cfg` under `strategy`."""
    _seed_and_policy(cfg, replicas=strategy.num_replicas_in_sync)
    data = _build_data(cfg)
    built = _build_model(cfg, strategy, data)
    labels = _build_labels(cfg, data, built)
    optim = _build_optimization(cfg, strategy, built.model, data.total_steps)
    steps, reason = _build_steps(cfg, strategy, data, built, labels, optim)
    return Trainer(cfg=cfg, strategy=strategy, model=built.model, loss_fn=built.loss_fn, optimizer=optim.optimizer,
                   groups=optim.table, steps=steps, global_step=optim.global_step,
                   lr_multipliers=optim.lr_multipliers, lr_factor=optim.lr_factor, schedule=optim.schedule,
                   total_steps=data.total_steps, num_train_examples=data.num_train_examples,
                   num_classes=built.heads[0].units, train_source=data.train.dataset, eval_source=data.eval_source,
                   num_eval_examples=data.num_eval_examples, batches_per_step=cfg.optimizer.accumulation_steps,
                   jit_reason=reason, eval_indices=data.eval_indices, sample_weights=labels.sample_weights,
                   sampled_frequencies=labels.sampled_frequencies, train_padding=data.train_padding,
                   eval_padding=data.eval_padding, heads=built.heads, train_augment=data.train.augment,
                   train_arrays=_as_tensors(data.checked.whole.get("train")))


def _as_tensors(arrays: inspect.SplitArrays | None) -> tuple[tf.Tensor, ...] | None:
    """A split read whole as flattened (x, y, w) tensors (None stays None)."""
    if arrays is None:
        return None
    return tuple(tf.convert_to_tensor(a) for a in tf.nest.flatten((arrays.x, arrays.y, arrays.w)))


def _seed_and_policy(cfg: ExperimentConfig, *, replicas: int) -> None:
    """Checks the batch sizes against the replicas; sets determinism, the seed and the precision policy."""
    t, tr = cfg.task, cfg.trainer
    for key, d in (("task.train_data", t.train_data), ("task.eval_data", t.eval_data),
                   ("task.test_data", t.test_data)):
        if d.batch_size % replicas:
            raise ValueError(f"{key}.batch_size: the global batch must divide evenly over "
                             f"{replicas} replicas; got {d.batch_size}")
    if tr.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(tr.seed)
    if cfg.runtime.precision != "float32":
        keras.mixed_precision.set_global_policy(cfg.runtime.precision)
    else:
        keras.mixed_precision.set_global_policy("float32")


def _build_data(cfg: ExperimentConfig) -> DataParts:
    """Reads and counts the sources, carves the eval set, runs the pre-flight, pads (before the model)."""
    t = cfg.task
    if t.test_data.name:  # name and kwargs checked now; the factory itself runs only at the end
        registry.check_kwargs(registry.DATASETS.get(t.test_data.name), t.test_data.kwargs,
                              section="task.test_data", reserved=("split",))
        _check_same_holdout(t)
    train = _dataset(t.train_data, "train", "task.train_data")
    n_train = pipeline.count(train.dataset, name="task.train_data")
    eval_source, n_eval = None, 0
    train_source, eval_source, eval_indices = _carve_eval(cfg, train.dataset, n_train)
    train = DataSource(dataset=train_source, augment=train.augment)
    if eval_indices is not None:
        n_train, n_eval = int(train_source.cardinality()), len(eval_indices)
    if t.eval_data.name:
        eval_source = _dataset(t.eval_data, "eval", "task.eval_data").dataset
        n_eval = pipeline.count(eval_source, name="task.eval_data")
        if n_eval < 0:
            raise ValueError("task.eval_data: the eval dataset is infinite; it must be finite")
    checked = _preflight(cfg, train_source, n_train, eval_source, n_eval)
    total_steps = _total_steps(cfg, n_train)
    train_padding = pipeline.make_padding(
        train_source, pad_value=t.train_data.pad_value, label_pad_value=t.train_data.label_pad_value,
        boundaries=t.train_data.bucket_boundaries, num_examples=n_train, name="task.train_data")
    eval_padding = None if eval_source is None else pipeline.make_padding(
        eval_source, pad_value=t.eval_data.pad_value, label_pad_value=t.eval_data.label_pad_value,
        num_examples=n_eval, name="task.eval_data")
    _log_padding(train_padding, eval_padding)
    return DataParts(train=train, eval_source=eval_source, num_train_examples=n_train, num_eval_examples=n_eval,
                     eval_indices=eval_indices, checked=checked, total_steps=total_steps,
                     train_padding=train_padding, eval_padding=eval_padding)


def _total_steps(cfg: ExperimentConfig, n_train: int) -> int:
    """`trainer.train_steps`, or the optimizer steps of `trainer.train_epochs` over `n_train` examples."""
    tr = cfg.trainer
    if tr.train_epochs is None:
        return tr.train_steps
    if n_train < 0:
        raise ValueError(f"trainer.train_epochs: the training set is infinite; use trainer.train_steps; "
                         f"got train_epochs={tr.train_epochs}")
    per_step = cfg.task.train_data.batch_size * cfg.optimizer.accumulation_steps
    return max(1, math.ceil(tr.train_epochs * n_train / per_step))


def _build_model(cfg: ExperimentConfig, strategy: tf.distribute.Strategy, data: DataParts) -> ModelParts:
    """The model, its variables created in `strategy.scope()` by one call, its heads and metrics."""
    t = cfg.task
    x_spec = data.train.dataset.element_spec[0]
    with strategy.scope():
        model = _make_model(cfg)
        check_inputs(model, x_spec, name="task.train_data")
        if data.eval_source is not None:
            check_inputs(model, data.eval_source.element_spec[0], name="task.eval_data")
        dummy = outputs_lib.dummy_features(x_spec)
        try:
            out = model(dummy, training=False)  # creates every variable inside the scope
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
            raise ValueError(f"task.train_data: features {_spec_text(x_spec)} do not fit model {t.model.name!r}: "
                             f"{errors.first_line(e)}") from None
        heads = outputs_lib.build_heads(t, model, out, data.train.dataset.element_spec[1])
        loss_fn = heads[0].loss_fn if heads[0].key is None else {h.key: h.loss_fn for h in heads}
        head_metrics = outputs_lib.build_metrics(t, heads)
    return ModelParts(model=model, heads=heads, loss_fn=loss_fn, metrics=head_metrics)


def _build_labels(cfg: ExperimentConfig, data: DataParts, built: ModelParts) -> LabelParts:
    """Checks the labels against the heads; the class weights and the sampling weights."""
    class_weights = _check_labels(cfg.task, built.heads, data.train.dataset, data.eval_source,
                                  data.num_train_examples, known=data.checked.labels)
    sample_weights, sampled = _sampling(cfg, data.train.dataset, data.num_train_examples)
    return LabelParts(class_weights=class_weights, sample_weights=sample_weights, sampled_frequencies=sampled)


def _build_optimization(cfg: ExperimentConfig, strategy: tf.distribute.Strategy, model: keras.Model,
                        total_steps: int) -> OptimParts:
    """Parameter groups, the optimizer built eagerly in scope (docs/design.md#t2), step and LR variables."""
    t, o = cfg.task, cfg.optimizer
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError(f"task.model: {t.model.name!r} has no trainable variables")
    table = groups_lib.resolve(variables, o)
    group_mults = [g.lr_multiplier for g in table.groups]
    wd_default = o.weight_decay if o.weight_decay is not None else \
        optimizers_lib.default_weight_decay(o.name, o.kwargs)
    opt_kwargs = {k: v for k, v in o.kwargs.items() if k != "weight_decay" or o.name != "adamw"}
    with strategy.scope():
        optimizer = registry.build(registry.OPTIMIZERS, o.name, opt_kwargs, section="optimizer",
                                   extra={"learning_rate": o.learning_rate}, section_keys=own_keys(o))
        optimizer.build(variables)  # eagerly, in scope, before any trace (docs/design.md#t2)
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        lr_factor = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_factor")
        lr_multipliers = tf.Variable(table.multipliers(group_multipliers=group_mults, layer_decay=o.layer_decay),
                                     trainable=False, name="lr_multipliers")
    schedule = schedules_lib.build(o, total_steps=max(total_steps, 1))
    return OptimParts(variables=variables, table=table, optimizer=optimizer, global_step=global_step,
                      lr_factor=lr_factor, lr_multipliers=lr_multipliers, schedule=schedule,
                      default_weight_decay=wd_default)


def _build_steps(cfg: ExperimentConfig, strategy: tf.distribute.Strategy, data: DataParts, built: ModelParts,
                 labels: LabelParts, optim: OptimParts) -> tuple[Steps, str]:
    """(the compiled steps, why XLA is or is not used): decides XLA and wires every part into `Steps`."""
    t, tr, o = cfg.task, cfg.trainer, cfg.optimizer
    model, loss_fn, heads = built.model, built.loss_fn, built.heads
    head_metrics = built.metrics
    train_padding, class_weights = data.train_padding, labels.class_weights
    optimizer, variables, table = optim.optimizer, optim.variables, optim.table
    wd_default, lr_multipliers, schedule = optim.default_weight_decay, optim.lr_multipliers, optim.schedule
    lr_factor, global_step = optim.lr_factor, optim.global_step
    plan = jit_lib.plan(strategy, tr.jit_compile, model, train_padding, compile_ahead=tr.xla_compile_ahead)
    steps = Steps(strategy=strategy, model=model, loss_fn=loss_fn, optimizer=optimizer, variables=variables,
                  weight_decays=table.weight_decays(default=wd_default), lr_multipliers=lr_multipliers,
                  schedule=schedule, lr_factor=lr_factor, global_step=global_step,
                  global_batch=t.train_data.batch_size, train_metrics=head_metrics.train,
                  eval_metrics=head_metrics.eval, reports=head_metrics.reports,
                  clip=o.clip, group_of=table.group_of, num_groups=len(table.groups),
                  accumulation_steps=o.accumulation_steps, class_weights=class_weights,
                  nonfinite=tr.nonfinite, loss_scaling=cfg.runtime.precision == "mixed_float16",
                  initial_loss_scale=cfg.runtime.initial_loss_scale, ema_decay=tr.ema_decay, jit=plan,
                  loss_weights={h.key: h.weight for h in heads if h.key is not None},
                  output_names=[h.key for h in heads if h.key is not None])
    jit, reason = plan.enabled, plan.reason
    logging.info("model %s: %s parameters; jit_compile=%s (%s)", t.model.name,
                 f"{model.count_params():,}", jit, reason)
    return steps, reason


def _carve_eval(cfg: ExperimentConfig, source: tf.data.Dataset,
                n: int) -> tuple[tf.data.Dataset, tf.data.Dataset | None, np.ndarray | None]:
    """(train source, eval source, eval positions) for task.validation_split / task.cv_fold.

    Without either, returns (source, None, None). The indices depend only on the labels and
    `trainer.seed` (see framework.data.split), so every process carves the same parts.
    """
    from framework.data import split as split_lib

    t = cfg.task
    if t.validation_split is None and not t.cv_fold:
        return source, None, None
    key = "task.validation_split" if t.validation_split is not None else "task.cv_fold"
    if n < 0:
        raise ValueError(f"{key}: the training set is infinite; give task.eval_data instead; got {n} examples")
    labels = pipeline.labels_array(source)
    stratify = losses_lib.section_label_kind(t.loss) != "regression"  # a mapping over outputs: random
    if t.validation_split is not None:
        train_idx, eval_idx = split_lib.validation_indices(labels, fraction=t.validation_split,
                                                           seed=cfg.trainer.seed, stratify=stratify)
    else:
        folds = split_lib.fold_indices(labels, folds=t.cv_fold["folds"], seed=cfg.trainer.seed, stratify=stratify)
        train_idx, eval_idx = folds[t.cv_fold["index"]]
    train = pipeline.subset(source, train_idx, num_examples=n)
    held = pipeline.subset(source, eval_idx, num_examples=n)
    logging.info("%s: %d training and %d eval examples carved from task.train_data (%s, seed %d)", key,
                 len(train_idx), len(eval_idx), "stratified" if stratify else "random", cfg.trainer.seed)
    return train, held, eval_idx


def _sampling(cfg: ExperimentConfig, source: tf.data.Dataset, n: int) -> tuple[np.ndarray | None, dict | None]:
    """(per-example draw weights, class -> frequency drawn in epoch 0) of task.train_data.sampling."""
    spec = cfg.task.train_data.sampling
    if spec is None:
        return None, None
    if not pipeline.can_sample(source, n):
        raise ValueError(f"task.train_data.sampling: needs a finite training set held in memory (at most "
                         f"{pipeline.IN_MEMORY_BYTES // 2**20} MiB); got {n} examples")
    from framework.data import split as split_lib

    labels = pipeline.labels_array(source)
    weights = pipeline.sampling_weights(spec, labels)
    ids = split_lib.class_ids(labels)
    drawn = ids[pipeline.draw_epoch(pipeline.sampling_cdf(weights), seed=cfg.trainer.seed, epoch=0).numpy()]
    k = int(ids.max()) + 1
    freq = np.bincount(drawn, minlength=k) / n
    natural = np.bincount(ids, minlength=k) / n
    sampled = {c: float(freq[c]) for c in range(k)}
    logging.info("task.train_data.sampling=%s: class frequencies drawn in epoch 0: %s (in the source: %s)",
                 spec if isinstance(spec, str) else "given", ", ".join(f"{c}: {f:.3f}" for c, f in sampled.items()),
                 ", ".join(f"{c}: {f:.3f}" for c, f in enumerate(natural)))
    if cfg.task.class_weight is not None:
        logging.warning("task.train_data.sampling and task.class_weight are both set: the class balance is "
                        "corrected twice")
    return weights, sampled


def _log_padding(train: pipeline.Padding | None, evals: pipeline.Padding | None) -> None:
    """States how variable-length batches are padded, and so how many shapes get compiled."""
    if train is not None:
        if train.boundaries:
            lengths = train.bucket_lengths
            logging.info("task.train_data: variable-length elements in %d length buckets, padded to %s: at most "
                         "%d compiled shapes", len(lengths), lengths, len(lengths))
        elif train.max_length is not None:
            logging.info("task.train_data: variable-length elements padded to the longest in the source (%d): "
                         "one compiled shape", train.max_length)
        else:
            logging.warning("task.train_data: variable-length elements of an infinite source are padded per "
                            "batch: under XLA every new length compiles once more (set bucket_boundaries)")
    if evals is not None:
        logging.info("task.eval_data: variable-length elements padded to the longest in the source (%s)",
                     evals.max_length)


def _check_labels(t: Any, heads: list, train_source: tf.data.Dataset, eval_source: tf.data.Dataset | None,
                  n_train: int, *, known: dict | None = None) -> Any:
    """Checks sparse labels per output; returns the class weights (one vector, or per output).

    `known`: labels per split the pre-flight already read (reused for a one-output model).
    """
    multi = heads[0].key is not None
    cw_spec = t.class_weight
    if multi and cw_spec is not None and not (isinstance(cw_spec, dict) and
                                               all(k in {h.key for h in heads} for k in cw_spec)):
        raise ValueError(f"task.class_weight: expected {{output: null | 'balanced' | {{class: weight}}}} for the "
                         f"outputs {[h.key for h in heads]}; got {cw_spec!r}")
    labels_all = eval_all = None
    if known and not multi:
        labels_all, eval_all = known.get("train"), known.get("eval")
    out = {}
    for h in heads:
        spec = cw_spec.get(h.key) if multi and cw_spec is not None else (None if multi else cw_spec)
        sparse = h.sparse
        if not (sparse or spec is not None):
            continue
        if labels_all is None:
            labels_all = pipeline.labels_array(train_source) if n_train > 0 else None
        labels = np.zeros([0], np.int64) if labels_all is None else \
            (labels_all if h.key is None else _label_part(labels_all, h, heads))
        name = "task.train_data" if h.key is None else f"task.train_data (output {h.key!r})"
        if sparse:
            pipeline.check_sparse_labels(labels, num_classes=h.units, name=name)
            if eval_source is not None:
                if eval_all is None:
                    eval_all = pipeline.labels_array(eval_source)
                pipeline.check_sparse_labels(eval_all if h.key is None else _label_part(eval_all, h, heads),
                                             num_classes=h.units, name=name.replace("train_data", "eval_data"))
        if spec is not None:
            ncls = h.units if h.units > 1 else 2
            out[h.key] = class_weight_vector(spec, labels, ncls)
            logging.info("class weights %s(%s): %s", h.prefix, spec if isinstance(spec, str) else "given",
                         ", ".join(f"{i}: {w:.4g}" for i, w in enumerate(out[h.key])))
    if not multi:
        return out.get(None)
    return out or None


def _label_part(labels: Any, head: Any, heads: list) -> np.ndarray:
    if isinstance(labels, dict):
        return labels[head.key]
    return labels[[h.key for h in heads].index(head.key)]


def _spec_text(spec: Any) -> str:
    return str(tf.nest.map_structure(lambda s: f"{s.dtype.name}{list(s.shape)}", spec))


def check_inputs(model: keras.Model, x_spec: Any, *, name: str) -> None:
    """Raises ValueError if the dataset's features cannot feed `model`'s declared inputs (B4).

    Checks functional models (known `model.inputs`): the per-example shape (unknown dims match
    anything) and the dtype kind (strings only into string inputs; floats not into int inputs).
    Names both sides: the dataset's element spec and the model's input.
    """
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return  # subclassed model: its first call reports a mismatch (wrapped by `build`)
    specs = tf.nest.flatten(x_spec)
    if isinstance(x_spec, dict):
        by_name = {getattr(i, "name", None): i for i in inputs}
        pairs = [(k, x_spec[k], by_name[k]) for k in x_spec if k in by_name]
    elif len(specs) == len(inputs):
        pairs = [(getattr(i, "name", f"input {n}"), s, i) for n, (s, i) in enumerate(zip(specs, inputs))]
    else:
        raise ValueError(f"{name}: the dataset has {len(specs)} feature tensor(s) {_spec_text(x_spec)} but model "
                         f"{model.name!r} has {len(inputs)} input(s) "
                         f"{[(i.name, list(i.shape[1:])) for i in inputs]}")
    for input_name, s, inp in pairs:
        if s.shape.rank is None:
            continue  # unknown rank: the pipeline's static-shape check names it
        want = tuple(inp.shape[1:])
        got = tuple(s.shape)
        # Keras adds or drops a trailing dimension of size 1 itself: (n,) feeds Input((n, 1)).
        shape_ok = any(len(a) == len(b) and all(w is None or g is None or w == g for w, g in zip(a, b))
                       for a, b in ((want, got), (want, got + (1,)), (want + (1,), got)))
        want_dtype = tf.as_dtype(getattr(inp, "dtype", None) or "float32")
        bad_dtype = (want_dtype == tf.string) != (s.dtype == tf.string) or \
            (want_dtype.is_integer and s.dtype.is_floating)
        if not shape_ok or bad_dtype:
            raise ValueError(
                f"{name}: features do not match model {model.name!r} input {input_name!r}: expected per-example "
                f"shape {list(want)} dtype {want_dtype.name}; got shape {list(got)} dtype {s.dtype.name} "
                f"(dataset element spec {_spec_text(x_spec)})")


def _check_same_holdout(t: Any) -> None:
    """A test split carved from the same source (`holdout_fraction`, e.g. of a bundled set) must be
    carved the same way for train and eval, or they would hold test examples."""
    hold = t.test_data.kwargs.get("holdout_fraction")
    if not hold:
        return
    for key, d in (("task.train_data", t.train_data), ("task.eval_data", t.eval_data)):
        if d.name == t.test_data.name and d.kwargs.get("holdout_fraction") != hold:
            raise ValueError(f"{key}.holdout_fraction: expected {hold!r}, as task.test_data's (else this split "
                             f"holds test examples); got {d.kwargs.get('holdout_fraction')!r}")


