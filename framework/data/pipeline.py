"""The input pipeline: seeded shuffle, global batches, exact resume position, replica slices.

Training reads a continuous stream of examples: epoch `e` is the source shuffled with a seed
derived from (`seed`, `e`), epochs follow each other, and global batch `b` is examples
`[b*G, (b+1)*G)` of that stream. A cached source that fits in memory (and has no augmentation)
is held as whole arrays and each epoch is a full permutation of their row indices, batched as
index vectors and gathered: no per-example work in tf.data, which on a 2-core CPU competes with
the step itself (measured in benchmarks/ablation.py). A resumed run therefore rebuilds the stream at the position
of its first unconsumed batch and sees exactly the batches an uninterrupted run would (a
tf.distribute iterator cannot be checkpointed: docs/design.md#t10).

Evaluation covers the whole set once: the last batch is padded with weight-0 examples to a
full global batch, so every eval batch has one static shape (one trace, no empty replica
batch, no NaN) and the padding never counts in the loss or the metrics.

Under a strategy each replica takes its slice of the same global batch, so N replicas see
exactly the examples one device would.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import tensorflow as tf

# Sources of unknown cardinality are counted once up to this many elements.
_COUNT_LIMIT = 10_000_000
# Cached sources up to this size are held as arrays and batched by index (`_indexed_stream`).
IN_MEMORY_BYTES = 512 * 2**20


_no_autograph = tf.autograph.experimental.do_not_convert


def with_weights(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Maps (x, y) or (x, y, w) elements to (x, y, w) with a float32 per-example weight."""
    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            "a dataset factory must return an unbatched dataset of (features, label) or "
            f"(features, label, sample_weight); got elements {spec}")
    # The framework's own dataset functions have no Python control flow on tensors: AutoGraph
    # conversion would only add start-up time (~20-40 ms per function). User functions convert.
    if len(spec) == 3:
        return ds.map(_no_autograph(lambda x, y, w: (x, y, tf.cast(w, tf.float32))),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.map(_no_autograph(lambda x, y: (x, y, tf.constant(1.0, tf.float32))),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def count(ds: tf.data.Dataset, *, name: str) -> int:
    """Number of elements of a finite dataset (counted once if TF does not know it).

    Raises:
      ValueError: the dataset is infinite, or empty (B6), naming it.
    """
    n = int(ds.cardinality().numpy())
    if n == tf.data.INFINITE_CARDINALITY:
        return -1
    if n == tf.data.UNKNOWN_CARDINALITY:
        n = int(ds.take(_COUNT_LIMIT).reduce(tf.constant(0, tf.int64), lambda c, _: c + 1).numpy())
    if n == 0:
        raise ValueError(f"{name}: the dataset is empty (0 examples); check its source and kwargs")
    return n


def _check_static(ds: tf.data.Dataset, name: str) -> None:
    for spec in tf.nest.flatten(ds.element_spec):
        if not spec.shape.is_fully_defined():
            raise ValueError(
                f"{name}: every element must have a fully defined static shape (resize or pad in "
                f"the dataset factory) so batches keep one shape; got element spec {ds.element_spec}")


def train_stream(source: tf.data.Dataset, *, global_batch: int, seed: int, shuffle_buffer: int,
                 cache: bool, start_batch: int = 0, num_examples: int | None = None,
                 name: str = "task.train_data", augment: Callable | None = None,
                 sample_weights: np.ndarray | None = None) -> tf.data.Dataset:
    """Infinite dataset of global batches, positioned at global batch `start_batch`.

    Args:
      source: unbatched (x, y, w) dataset (see `with_weights`).
      global_batch: examples per global batch (all replicas).
      seed: shuffle seed; epoch e uses a seed derived from (seed, e).
      shuffle_buffer: shuffle buffer (a finite source smaller than it is shuffled whole).
      cache: cache the decoded source in memory.
      start_batch: the first global batch to yield (resume position).
      num_examples: the source's size if finite (counted when None), -1 if infinite.
      name: config section, for messages.
      augment: optional `fn((x, y, w), seed) -> (x, y, w)` applied after the cache, with a
        stateless seed of (epoch, position in epoch): each epoch sees new augmentations and a
        resumed run sees exactly the ones an uninterrupted run would.
      sample_weights: optional per-example draw weights (`sampling_weights`): each epoch is then
        n draws with replacement in proportion to them instead of a permutation (needs an
        in-memory source: see `can_sample`).
    """
    _check_static(source, name)
    n = count(source, name=name) if num_examples is None else num_examples
    if sample_weights is not None or (cache and augment is None and 0 < n and _nbytes(source, n) <= IN_MEMORY_BYTES
                                      and tf.executing_eagerly()):
        if sample_weights is not None and not can_sample(source, n):
            raise ValueError(f"{name}.sampling: needs a finite source of at most {IN_MEMORY_BYTES // 2**20} MiB "
                             f"(it is drawn from in memory); got {n} examples of {_nbytes(source, max(n, 0)):,} bytes")
        return _indexed_stream(source, n=n, global_batch=global_batch, seed=seed,
                               shuffle=shuffle_buffer > 1, start_batch=start_batch, sample_weights=sample_weights,
                               augment=augment if sample_weights is not None else None)
    if cache:
        source = source.cache()
    if n > 0:
        buffer = min(n, shuffle_buffer) if shuffle_buffer > 0 else 0
        position = start_batch * global_batch
        first_epoch, offset = divmod(position, n)

        @_no_autograph
        def epoch(e: tf.Tensor) -> tf.data.Dataset:
            ds = source
            if buffer > 1:
                # A fixed per-epoch seed makes epoch e the same permutation in every run.
                ds = source.shuffle(buffer, seed=tf.cast(seed, tf.int64) * 1_000_003 + e,
                                    reshuffle_each_iteration=False)
            if augment is not None:
                ds = ds.enumerate().map(
                    lambda i, elem: augment(elem, tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + e, i])),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return ds

        stream = tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(epoch).skip(offset)
        ds = stream.batch(global_batch, drop_remainder=True)
    else:
        if shuffle_buffer > 1:
            source = source.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = source.repeat().batch(global_batch, drop_remainder=True).skip(start_batch)
    return ds


def can_sample(source: tf.data.Dataset, n: int) -> bool:
    """Whether `task.train_data.sampling` can draw from `source` (finite, held in memory)."""
    return 0 < n and _nbytes(source, n) <= IN_MEMORY_BYTES


def _nbytes(source: tf.data.Dataset, n: int) -> int:
    return n * sum(int(np.prod(s.shape)) * s.dtype.size for s in tf.nest.flatten(source.element_spec))


def _indexed_stream(source: tf.data.Dataset, *, n: int, global_batch: int, seed: int, shuffle: bool,
                    start_batch: int, sample_weights: np.ndarray | None = None,
                    augment: Callable | None = None) -> tf.data.Dataset:
    """`train_stream` for a cached in-memory source: the same stream contract, batched by index.

    Epoch e is the permutation of the n rows drawn with the stateless seed (`seed`, e) (the
    whole source, whatever the shuffle buffer: it only bounds the memory of streamed sources),
    or with `sample_weights` the n weighted draws of `draw_epoch(seed, e)`. `augment` (only
    with sampling) runs per example after the gather, seeded like `train_stream`'s.
    """
    arrays = tuple(tf.nest.flatten(next(iter(source.batch(n)))))  # one read of the source
    structure = source.element_spec
    first_epoch, offset = divmod(start_batch * global_batch, n)
    cdf = None if sample_weights is None else sampling_cdf(sample_weights)

    @_no_autograph
    def order(e: tf.Tensor) -> tf.Tensor:
        ids = tf.range(n, dtype=tf.int64)
        if cdf is not None:
            ids = draw_epoch(cdf, seed=seed, epoch=e)
        elif shuffle:
            ids = tf.random.experimental.stateless_shuffle(ids, seed=tf.stack([tf.constant(seed, tf.int64), e]))
        # The resume position: the first epoch starts at its first unconsumed example.
        start = tf.where(tf.equal(e, first_epoch), tf.constant(offset, tf.int64), 0)
        if augment is None:
            return ids[start:]
        pos = tf.range(start, n, dtype=tf.int64)
        keys = tf.stack([tf.fill(tf.shape(pos), tf.constant(seed, tf.int64) * 1_000_003 + e), pos], axis=1)
        return ids[start:], keys

    @_no_autograph
    def gather(ids: tf.Tensor, keys: Any = None) -> Any:
        batch = tf.nest.pack_sequence_as(structure, [tf.gather(a, ids) for a in arrays])
        return batch if keys is None else (batch, keys)

    ids = tf.data.Dataset.range(first_epoch, tf.int64.max).map(order)
    ds = ids.rebatch(global_batch, drop_remainder=True).map(
        gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is None:
        return ds
    return ds.unbatch().map(lambda elem, key: augment(elem, key),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
        global_batch, drop_remainder=True)


def sampling_weights(spec: Any, labels: np.ndarray, *, name: str = "task.train_data.sampling") -> np.ndarray:
    """Per-example draw weights for `task.train_data.sampling` (null gives None).

    `balanced` weighs each example by 1/(its class's count), so every class present is drawn
    equally often; `{class: weight}` multiplies the draw weight of that class's examples (others
    keep 1), so `{1: 5}` draws class-1 examples five times as often as in the source.

    Raises:
      ValueError: labels that are not one class id per example, or weights leaving nothing to draw.
    """
    from framework.data import split as split_lib

    ids = split_lib.class_ids(labels)
    if ids is None:
        raise ValueError(f"{name}: expected class-id labels (one integer per example); got labels of shape "
                         f"{list(np.shape(labels))} dtype {np.asarray(labels).dtype}")
    counts = np.bincount(ids)
    if spec == "balanced":
        w = 1.0 / counts[ids]
    else:
        per_class = np.ones(max(len(counts), 1 + max(int(k) for k in spec)))
        for k, v in spec.items():
            per_class[int(k)] = float(v)
        w = per_class[ids]
    if not np.any(w > 0):
        raise ValueError(f"{name}: the weights give every training example probability 0; got {spec!r}")
    return w.astype(np.float64)


def sampling_cdf(weights: np.ndarray) -> tf.Tensor:
    """The cumulative draw distribution of per-example weights (float64, last entry 1)."""
    p = np.asarray(weights, np.float64)
    c = np.cumsum(p / p.sum())
    c[-1] = 1.0
    return tf.constant(c, tf.float64)


def draw_epoch(cdf: tf.Tensor, *, seed: int, epoch: Any) -> tf.Tensor:
    """Epoch `epoch`'s n weighted draws with replacement (int64 row ids): a function of (seed, epoch).

    Inverse-CDF sampling of stateless uniforms seeded by (seed, epoch): O(n log n), the same
    indices in every run, so a resumed run skips to exactly the batches it had not consumed.
    """
    n = tf.shape(cdf, out_type=tf.int64)[0]
    e = tf.cast(epoch, tf.int64)
    # A seed distinct from the permutation's (seed, e) stream.
    u = tf.random.stateless_uniform(tf.reshape(n, [1]), seed=tf.stack([tf.constant(seed, tf.int64) + 7919, e]),
                                    dtype=tf.float64)
    ids = tf.searchsorted(cdf, u, side="right", out_type=tf.int64)
    return tf.minimum(ids, n - 1)


def eval_batches(source: tf.data.Dataset, *, global_batch: int, cache: bool,
                 num_examples: int | None = None, name: str = "task.eval_data") -> tuple[tf.data.Dataset, int]:
    """Finite dataset of global batches covering `source` once, padded with weight-0 examples.

    Returns:
      (dataset, number of batches).
    """
    _check_static(source, name)
    n = count(source, name=name) if num_examples is None else num_examples
    if n < 0:
        raise ValueError(f"{name}: the eval dataset is infinite; set trainer.eval_steps or make it finite")
    if cache:
        source = source.cache()
    pad = (-n) % global_batch
    if pad:
        zero = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), source.element_spec)
        padding = tf.data.Dataset.from_tensors(zero).repeat(pad)
        source = source.concatenate(padding)
    return source.batch(global_batch, drop_remainder=True), math.ceil(n / global_batch)


def replica_slices(ds: tf.data.Dataset, ctx: tf.distribute.InputContext) -> tf.data.Dataset:
    """From global batches, the per-replica batches of this input pipeline's replicas, in order.

    `distribute_datasets_from_function` hands consecutive elements of a worker's dataset to its
    local replicas in turn, so yielding the worker's slices of each global batch in replica
    order gives replica r rows [r*b, (r+1)*b) of every global batch.
    """
    replicas = ctx.num_replicas_in_sync
    pipelines = ctx.num_input_pipelines
    if replicas == 1:
        return ds
    local = replicas // pipelines
    first = ctx.input_pipeline_id * local

    @_no_autograph
    def split(*elem: Any) -> Any:
        def one(t: tf.Tensor) -> tf.Tensor:
            shape = tf.shape(t)
            per = t.shape[0] // replicas
            t = tf.reshape(t, tf.concat([[replicas, per], shape[1:]], 0))
            return t[first:first + local]
        return tuple(tf.nest.map_structure(one, e) for e in elem)

    return ds.map(split, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def distribute(strategy: tf.distribute.Strategy, make: Callable[[], tf.data.Dataset]) -> Any:
    """Distributes global batches from `make()` so replicas partition each global batch."""

    def fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = replica_slices(make(), ctx)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        options.deterministic = True
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(
        fn, options=tf.distribute.InputOptions(experimental_fetch_to_device=True))


def subset(source: tf.data.Dataset, indices: np.ndarray, *, num_examples: int) -> tf.data.Dataset:
    """The elements of a finite `source` at `indices` (sorted), in source order, cardinality known."""
    mask = np.zeros(num_examples, bool)
    mask[np.asarray(indices, np.int64)] = True
    keep = tf.constant(mask)
    ds = source.enumerate().filter(_no_autograph(lambda i, elem: tf.gather(keep, i)))
    ds = ds.map(_no_autograph(lambda i, elem: elem), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.apply(tf.data.experimental.assert_cardinality(int(mask.sum())))


def labels_array(source: tf.data.Dataset, *, limit: int = 2_000_000) -> np.ndarray:
    """All labels of a finite (x, y, w) dataset as a NumPy array (for checks and class weights)."""
    ys = source.map(_no_autograph(lambda x, y, w: y)).take(limit).batch(65536)
    parts = [b.numpy() for b in ys]
    return np.concatenate(parts) if parts else np.zeros([0])


def check_sparse_labels(labels: np.ndarray, *, num_classes: int, name: str) -> None:
    """Raises ValueError if a sparse label is outside [0, num_classes) (docs/design.md#t7: silent NaN on GPU)."""
    if labels.size == 0:
        return
    flat = labels.reshape(-1)
    if not np.issubdtype(flat.dtype, np.integer):
        if not np.all(np.equal(np.mod(flat, 1), 0)):
            bad = flat[np.mod(flat, 1) != 0][0]
            raise ValueError(f"{name}: sparse labels must be integer class ids; got {bad.item()!r}")
    bad = np.nonzero((flat < 0) | (flat >= num_classes))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}: label {flat[i].item()!r} at example {i} is outside [0, {num_classes}) for a model with "
            f"{num_classes} outputs ({bad.size} such labels); got labels in "
            f"[{flat.min().item()!r}, {flat.max().item()!r}]")
