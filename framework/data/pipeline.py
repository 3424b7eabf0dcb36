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

Variable-length elements (unknown dimensions) are padded (`Padding`): features with
`pad_value`, labels with `label_pad_value`, and the weight of a variable-length label becomes
one weight per position (0 at padding), which is the mask of token-level losses and metrics.
Without buckets every batch is padded to the longest element of the source (one static shape);
with `bucket_boundaries` each batch is drawn from one length bucket and padded to its boundary
(at most len(boundaries) + 1 shapes). Both keep the exact resume position and the replica
partition of fixed shapes.
"""
from __future__ import annotations

import dataclasses
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
    # No function call per element where none is needed (docs/design.md#t14): tf.data skips a
    # function that only rearranges its inputs, so the weight 1 is a zipped constant stream and
    # a float32 weight passes as it is (60k examples of 784 floats: 0.5 s to read, not 1.5-2.6 s).
    if len(spec) == 3:
        if spec[2].dtype != tf.float32:
            ds = ds.map(_no_autograph(lambda x, y, w: (x, y, tf.cast(w, tf.float32))),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ones = tf.data.Dataset.from_tensors(tf.constant(1.0, tf.float32)).repeat()
        ds = tf.data.Dataset.zip(ds, ones).map(_no_autograph(lambda xy, w: (xy[0], xy[1], w)))
    return _position_weights(ds)


def _variable(spec: Any) -> bool:
    return any(s.shape.rank is not None and not s.shape.is_fully_defined() for s in tf.nest.flatten(spec))


def _position_weights(ds: tf.data.Dataset) -> tf.data.Dataset:
    """A variable-length label gets one weight per position along its first axis (padding: 0).

    The weight then has the structure of the label (a dict for dict labels); labels of fixed
    shape keep the example's scalar weight.
    """
    y_spec = ds.element_spec[1]
    if not _variable(y_spec) or tf.nest.flatten(ds.element_spec[2])[0].shape.rank:
        return ds

    @_no_autograph
    def expand(x, y, w):
        def one(t: tf.Tensor, s: tf.TensorSpec) -> tf.Tensor:
            if s.shape.rank and not s.shape.is_fully_defined():
                return w * tf.ones(tf.shape(t)[:1], tf.float32)
            return w
        return x, y, tf.nest.map_structure(one, y, y_spec)

    return ds.map(expand, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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
    """Raises ValueError for elements that cannot be batched densely (ragged, sparse, unknown rank)."""
    for spec in tf.nest.flatten(ds.element_spec):
        if not isinstance(spec, tf.TensorSpec) or spec.shape.rank is None:
            raise ValueError(
                f"{name}: expected dense tensors of known rank (unknown dimensions are padded; convert a "
                f"ragged or sparse tensor to a dense one in the dataset factory, e.g. with .to_tensor()); "
                f"got element spec {ds.element_spec}")


@dataclasses.dataclass(frozen=True)
class Padding:
    """How the variable-length elements of one source are batched.

    Attributes:
      values: (x, y, w) structure of padding scalars (features: pad_value, labels:
        label_pad_value, weights: 0).
      shapes: (x, y, w) structure of padded per-example shapes: an unknown dimension becomes its
        maximum over the source (None when the source is infinite: padded per batch).
      boundaries: length-bucket boundaries (empty: no bucketing).
      max_length: the longest element (the largest unknown dimension), None if infinite.
    """

    values: Any
    shapes: Any
    boundaries: tuple = ()
    max_length: int | None = None

    @property
    def bucket_lengths(self) -> list[int]:
        """The padded length of each bucket: its boundary, and the source maximum for the last."""
        return [*self.boundaries, -1 if self.max_length is None else max(self.max_length, self.boundaries[-1])]


def make_padding(source: tf.data.Dataset, *, pad_value: float = 0, label_pad_value: float = 0,
                 boundaries: Any = (), num_examples: int | None = None,
                 name: str = "task.train_data") -> Padding | None:
    """The padding of `source`'s variable-length elements (one pass over a finite source); None
    if every element has one static shape.

    Raises:
      ValueError: bucket boundaries that are not increasing positive integers, or given for a
        source whose elements all have static shapes.
    """
    _check_static(source, name)
    spec = source.element_spec
    boundaries = tuple(boundaries or ())
    if boundaries and (any(not isinstance(b, int) or isinstance(b, bool) or b <= 0 for b in boundaries)
                       or list(boundaries) != sorted(set(boundaries))):
        raise ValueError(f"{name}.bucket_boundaries: expected increasing integers > 0; got {list(boundaries)}")
    if not _variable(spec):
        if boundaries:
            raise ValueError(f"{name}.bucket_boundaries: expected elements with a variable-length dimension "
                             f"(every shape here is static); got element spec {spec}")
        return None

    def value(s: tf.TensorSpec, v: float) -> tf.Tensor:
        return tf.constant("", tf.string) if s.dtype == tf.string else tf.cast(v, s.dtype)

    x, y, w = spec
    values = (tf.nest.map_structure(lambda s: value(s, pad_value), x),
              tf.nest.map_structure(lambda s: value(s, label_pad_value), y),
              tf.nest.map_structure(lambda s: value(s, 0), w))
    n = count(source, name=name) if num_examples is None else num_examples
    maxima = _max_dims(source) if n > 0 else None
    flat = tf.nest.flatten(spec)
    shapes, longest = [], 0
    for i, s in enumerate(flat):
        dims = list(s.shape)
        if maxima is not None:
            dims = [int(maxima[i][j]) if d is None else d for j, d in enumerate(dims)]
            longest = max([longest] + [int(maxima[i][j]) for j, d in enumerate(s.shape) if d is None])
        shapes.append(tf.TensorShape(dims))
    return Padding(values=values, shapes=tf.nest.pack_sequence_as(spec, shapes), boundaries=boundaries,
                   max_length=longest if maxima is not None else None)


def _max_dims(source: tf.data.Dataset) -> list[np.ndarray]:
    """Per flattened component, the elementwise maximum of its shape over the source."""
    spec = tf.nest.flatten(source.element_spec)
    init = tuple(tf.zeros([s.shape.rank], tf.int64) for s in spec)

    @_no_autograph
    def step(acc, elem):
        return tuple(tf.maximum(a, tf.shape(t, out_type=tf.int64)) for a, t in zip(acc, tf.nest.flatten(elem)))

    return [a.numpy() for a in source.reduce(init, step)]


def _length(elem: Any, spec: Any) -> tf.Tensor:
    """An element's length: its largest unknown dimension (over features and labels)."""
    dims = [tf.shape(t, out_type=tf.int64)[j] for t, s in zip(tf.nest.flatten(elem), tf.nest.flatten(spec))
            for j, d in enumerate(s.shape) if d is None]
    return tf.reduce_max(tf.stack(dims))


def _bucket_shapes(spec: Any, length: tf.Tensor) -> Any:
    """Padded shapes of one bucket: every unknown dimension becomes `length`."""
    def one(s: tf.TensorSpec) -> Any:
        if s.shape.is_fully_defined():
            return s.shape
        return tf.stack([length if d is None else tf.constant(d, tf.int64) for d in s.shape])
    return tf.nest.map_structure(one, spec)


def _bucket_of(length: tf.Tensor, boundaries: tuple) -> tf.Tensor:
    """Bucket k holds lengths in (b[k-1], b[k]]; the last one lengths above b[-1]."""
    return tf.reduce_sum(tf.cast(length > tf.constant(boundaries, tf.int64), tf.int64))


def _bucketed(stream: tf.data.Dataset, padding: Padding, global_batch: int) -> tf.data.Dataset:
    """Global batches each drawn from one length bucket of an example stream, in stream order."""
    spec = stream.element_spec
    lengths = tf.constant(padding.bucket_lengths, tf.int64)

    @_no_autograph
    def key(*elem: Any) -> tf.Tensor:
        return _bucket_of(_length(elem, spec), padding.boundaries)

    @_no_autograph
    def reduce(k: tf.Tensor, window: tf.data.Dataset) -> tf.data.Dataset:
        return window.padded_batch(global_batch, padded_shapes=_bucket_shapes(spec, lengths[k]),
                                   padding_values=padding.values, drop_remainder=True)

    return stream.group_by_window(key, reduce, window_size=global_batch)


def train_stream(source: tf.data.Dataset, *, global_batch: int, seed: int, shuffle_buffer: int,
                 cache: bool, start_batch: int = 0, num_examples: int | None = None,
                 name: str = "task.train_data", augment: Callable | None = None,
                 sample_weights: np.ndarray | None = None, padding: Padding | None = None,
                 arrays: tuple[tf.Tensor, ...] | None = None) -> tf.data.Dataset:
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
      padding: how variable-length elements are padded and bucketed (`make_padding`; made with
        the defaults when None and the source has unknown dimensions). With buckets the stream
        is rebuilt from its start and `start_batch` batches are skipped (bucketing reorders
        examples, so a position in batches is not a position in examples).
      arrays: the whole source already read (`tf.nest.flatten` of its (x, y, w) elements
        batched, all n rows in source order), used instead of reading it again where the
        stream is held in memory (fixed shapes only).
    """
    _check_static(source, name)
    n = count(source, name=name) if num_examples is None else num_examples
    if padding is None and _variable(source.element_spec):
        padding = make_padding(source, num_examples=n, name=name)
    if sample_weights is not None or (cache and augment is None and 0 < n
                                      and _nbytes(source, n, padding) <= IN_MEMORY_BYTES and tf.executing_eagerly()):
        if sample_weights is not None:
            _check_sampling(source, n, padding, name)
        return _indexed_stream(source, n=n, global_batch=global_batch, seed=seed,
                               shuffle=shuffle_buffer > 1, start_batch=start_batch, sample_weights=sample_weights,
                               augment=augment if sample_weights is not None else None, padding=padding,
                               arrays=arrays)
    bucketed = padding is not None and bool(padding.boundaries)
    if bucketed:
        start_batch, skip_batches = 0, start_batch
    if cache:
        source = source.cache()
    if n > 0:
        stream = _epochs(source, n=n, seed=seed, shuffle_buffer=shuffle_buffer, augment=augment,
                         start=start_batch * global_batch)
        ds = _batch(stream, global_batch, padding)
    else:
        if shuffle_buffer > 1:
            source = source.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = _batch(source.repeat(), global_batch, padding).skip(start_batch)
    return ds.skip(skip_batches) if bucketed else ds


def _check_sampling(source: tf.data.Dataset, n: int, padding: Padding | None, name: str) -> None:
    """Raises ValueError if weighted sampling cannot draw from `source` (too large, or bucketed)."""
    if not can_sample(source, n, padding):
        raise ValueError(f"{name}.sampling: needs a finite source of at most {IN_MEMORY_BYTES // 2**20} MiB "
                         f"(it is drawn from in memory); got {n} examples of "
                         f"{_nbytes(source, max(n, 0), padding):,} bytes")
    if padding is not None and padding.boundaries:
        raise ValueError(f"{name}.sampling: expected no bucket_boundaries with class-balanced sampling "
                         f"(buckets reorder the drawn examples); got {list(padding.boundaries)}")


def _epochs(source: tf.data.Dataset, *, n: int, seed: int, shuffle_buffer: int, augment: Callable | None,
            start: int) -> tf.data.Dataset:
    """The unbatched stream of epochs of a finite source (n > 0), from example position `start`.

    Epoch e is shuffled with a seed of (seed, e) and augmented with (seed, e, position), so the
    stream is a function of the position only (exact resume).
    """
    buffer = min(n, shuffle_buffer) if shuffle_buffer > 0 else 0
    first_epoch, offset = divmod(start, n)

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

    return tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(epoch).skip(offset)


def can_sample(source: tf.data.Dataset, n: int, padding: Padding | None = None) -> bool:
    """Whether `task.train_data.sampling` can draw from `source` (finite, held in memory)."""
    return 0 < n and _nbytes(source, n, padding) <= IN_MEMORY_BYTES


def _batch(stream: tf.data.Dataset, global_batch: int, padding: Padding | None) -> tf.data.Dataset:
    if padding is None:
        return stream.batch(global_batch, drop_remainder=True)
    if padding.boundaries:
        return _bucketed(stream, padding, global_batch)
    return stream.padded_batch(global_batch, padded_shapes=padding.shapes, padding_values=padding.values,
                               drop_remainder=True)


def _nbytes(source: tf.data.Dataset, n: int, padding: Padding | None = None) -> int:
    shapes = tf.nest.flatten(padding.shapes) if padding is not None else \
        [s.shape for s in tf.nest.flatten(source.element_spec)]
    if padding is not None and padding.boundaries:
        shapes = [[padding.bucket_lengths[-1] if d is None else d for d in _in_memory_shape(s, padding)]
                  for s in tf.nest.flatten(source.element_spec)]
    if any(d is None or d < 0 for s in shapes for d in s):
        return 2**62  # unknown maximum (an infinite source): never held in memory
    return n * sum(int(np.prod(s)) * t.dtype.size for s, t in zip(shapes, tf.nest.flatten(source.element_spec)))


def _in_memory_shape(s: tf.TensorSpec, padding: Padding) -> list:
    """Shape a bucketed source is held at: unknown dimensions at the last bucket's length."""
    return [padding.bucket_lengths[-1] if d is None else d for d in s.shape]


def _indexed_stream(source: tf.data.Dataset, *, n: int, global_batch: int, seed: int, shuffle: bool,
                    start_batch: int, sample_weights: np.ndarray | None = None,
                    augment: Callable | None = None, padding: Padding | None = None,
                    arrays: tuple[tf.Tensor, ...] | None = None) -> tf.data.Dataset:
    """`train_stream` for a cached in-memory source: the same stream contract, batched by index.

    Epoch e is the permutation of the n rows drawn with the stateless seed (`seed`, e) (the
    whole source, whatever the shuffle buffer: it only bounds the memory of streamed sources),
    or with `sample_weights` the n weighted draws of `draw_epoch(seed, e)`. `augment` (only
    with sampling) runs per example after the gather, seeded like `train_stream`'s.
    Variable-length rows are held padded to the source maximum (to the last bucket's length
    with buckets; a batch is then cut to its bucket's length).
    """
    structure = source.element_spec
    if padding is None and arrays is not None:
        _check_arrays(arrays, structure, n)
    elif padding is None:
        arrays = tuple(tf.nest.flatten(next(iter(source.batch(n)))))  # one read of the source
    else:
        shapes = padding.shapes if not padding.boundaries else tf.nest.map_structure(
            lambda s: tf.TensorShape(_in_memory_shape(s, padding)), structure)
        arrays = tuple(tf.nest.flatten(next(iter(source.padded_batch(
            n, padded_shapes=shapes, padding_values=padding.values)))))
        if padding.boundaries:
            return _indexed_buckets(source, arrays, structure, n=n, global_batch=global_batch, seed=seed,
                                    shuffle=shuffle, start_batch=start_batch, padding=padding)
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


def _check_arrays(arrays: tuple[tf.Tensor, ...], structure: Any, n: int) -> None:
    """Raises ValueError if `arrays` are not n rows of each (x, y, w) component of `structure`."""
    specs = tf.nest.flatten(structure)
    got = [(a.dtype, tuple(a.shape)) for a in arrays]
    want = [(s.dtype, (n, *s.shape)) for s in specs]
    if got != want:
        raise ValueError(f"train_stream: arrays must be the whole source, {want}; got {got}")


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


def _indexed_buckets(source: tf.data.Dataset, arrays: tuple, structure: Any, *, n: int, global_batch: int,
                     seed: int, shuffle: bool,
                     start_batch: int, padding: Padding) -> tf.data.Dataset:
    """Bucketed batches by index: row ids are grouped by bucket (the same grouping as
    `_bucketed` over the example stream), then gathered and cut to the bucket's length."""
    flat_spec = tf.nest.flatten(structure)
    lengths = tf.constant(padding.bucket_lengths, tf.int64)
    row_length = next(iter(source.map(_no_autograph(lambda *e: _length(e, structure))).batch(n))).numpy()
    bucket = tf.constant(np.sum(row_length[:, None] > np.asarray(padding.boundaries)[None, :], axis=1), tf.int64)

    @_no_autograph
    def order(e: tf.Tensor) -> tf.Tensor:
        ids = tf.range(n, dtype=tf.int64)
        if shuffle:
            ids = tf.random.experimental.stateless_shuffle(ids, seed=tf.stack([tf.constant(seed, tf.int64), e]))
        return ids

    @_no_autograph
    def reduce(k: tf.Tensor, window: tf.data.Dataset) -> tf.data.Dataset:
        return window.batch(global_batch, drop_remainder=True).map(lambda ids: (k, ids))

    @_no_autograph
    def gather(k: tf.Tensor, ids: tf.Tensor) -> Any:
        size = lengths[k]
        ids = tf.ensure_shape(ids, [global_batch])  # a static batch dimension (replica slices)
        out = []
        for a, s in zip(arrays, flat_spec):
            t = tf.gather(a, ids)
            if not s.shape.is_fully_defined():
                cut = [-1] + [size if d is None else -1 for d in s.shape]
                t = tf.slice(t, tf.zeros([len(cut)], tf.int64), tf.stack([tf.cast(c, tf.int64) for c in cut]))
                t = tf.ensure_shape(t, [global_batch, *s.shape])
            out.append(t)
        return tf.nest.pack_sequence_as(structure, out)

    ids = tf.data.Dataset.range(0, tf.int64.max).map(order).unbatch()
    ids = ids.group_by_window(lambda i: tf.gather(bucket, i), reduce, window_size=global_batch)
    return ids.skip(start_batch).map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def eval_batches(source: tf.data.Dataset, *, global_batch: int, cache: bool,
                 num_examples: int | None = None, name: str = "task.eval_data",
                 padding: Padding | None = None) -> tuple[tf.data.Dataset, int]:
    """Finite dataset of global batches covering `source` once, padded with weight-0 examples.

    Variable-length elements are padded to the source maximum (`padding`; made with the
    defaults when None): one static shape, one trace.

    Returns:
      (dataset, number of batches).
    """
    _check_static(source, name)
    n = count(source, name=name) if num_examples is None else num_examples
    if n < 0:
        raise ValueError(f"{name}: the eval dataset is infinite; set trainer.eval_steps or make it finite")
    if padding is None and _variable(source.element_spec):
        padding = make_padding(source, num_examples=n, name=name)
    if cache:
        source = source.cache()
    pad = (-n) % global_batch
    if pad and padding is not None:
        # Weight-0 copies of the first example, not empty sequences: a masked model's output on
        # a sequence with no real position can be NaN (a masked average over nothing).
        rows = source.take(1).map(_no_autograph(lambda x, y, w: (x, y, tf.nest.map_structure(tf.zeros_like, w))))
        source = source.concatenate(rows.repeat(pad))
    elif pad:
        zero = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), source.element_spec)
        rows = tf.data.Dataset.from_tensors(zero).repeat(pad)
        source = source.concatenate(rows)
    if padding is not None:
        return source.padded_batch(global_batch, padded_shapes=padding.shapes, padding_values=padding.values,
                                   drop_remainder=True), math.ceil(n / global_batch)
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


def distribute(strategy: tf.distribute.Strategy, make: Callable[[], tf.data.Dataset], *,
               autotune: bool = False) -> Any:
    """Distributes global batches from `make()` so replicas partition each global batch.

    Args:
      strategy: the run's strategy.
      make: builds the dataset of global batches.
      autotune: tf.data's autotuning (`runtime.data_autotune`). Off by default: an iterator
        with it keeps an optimization thread that sleeps for a period doubling up to 60 s, and
        freeing the iterator waited for that sleep to end (docs/design.md#t12): up to 60 s
        (benchmarks/iterator_release.py); in-process trials, folds and sweeps free old iterators.
        `AUTOTUNE` parallelism then starts, and stays, at TensorFlow's default (the cores, up
        to 16); measured on 2 cores: the same batches/s for the in-memory and per-example pipelines.
    """

    def fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return finalize(replica_slices(make(), ctx), autotune=autotune)

    return strategy.distribute_datasets_from_function(
        fn, options=tf.distribute.InputOptions(experimental_fetch_to_device=True))


def finalize(ds: tf.data.Dataset, *, autotune: bool = False) -> tf.data.Dataset:
    """A replica's batches as the loops read them: deterministic, not auto-sharded (the replica
    slices are taken already), tf.data autotuning as `autotune` says (`distribute`), prefetched."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    options.autotune.enabled = autotune
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def subset(source: tf.data.Dataset, indices: np.ndarray, *, num_examples: int) -> tf.data.Dataset:
    """The elements of a finite `source` at `indices` (sorted), in source order, cardinality known."""
    mask = np.zeros(num_examples, bool)
    mask[np.asarray(indices, np.int64)] = True
    # The mask is zipped in and the filter returns it unchanged, so tf.data calls no function
    # for it per element, as it would for a lookup of the position (docs/design.md#t14).
    ds = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(mask), source)
    ds = _rearranged(ds.filter(_no_autograph(lambda keep, _elem: keep)), lambda _keep, elem: elem)
    return ds.apply(tf.data.experimental.assert_cardinality(int(mask.sum())))


def _rearranged(ds: tf.data.Dataset, fn: Callable) -> tf.data.Dataset:
    """`ds.map(fn)` for an `fn` that only picks and rearranges components (so it works on a batch).

    tf.data turns even such a map into a parallel map that costs per element what a function
    call does (docs/design.md#t14), so where every component has a fixed shape it runs once per
    batch of up to 1024 elements (at most 16 MiB: the batch is held while it is cut up again).
    The cardinality is not kept.
    """
    specs = tf.nest.flatten(ds.element_spec)
    if not all(isinstance(s, tf.TensorSpec) and s.shape.is_fully_defined() for s in specs):
        return ds.map(_no_autograph(fn))
    size = sum(max(int(np.prod(s.shape)), 1) * s.dtype.size for s in specs)
    return ds.batch(max(1, min(1024, 2**24 // size))).map(_no_autograph(fn)).unbatch()


def labels_array(source: tf.data.Dataset, *, limit: int = 2_000_000) -> Any:
    """All labels of a finite (x, y, w) dataset as a NumPy array (for checks and class weights).

    Dict (or tuple) labels give a dict (tuple) of arrays; a variable-length label gives the
    flat array of its real positions (no padding).
    """
    spec = source.element_spec[1]
    ys = _rearranged(source.take(limit), lambda _x, y, _w: y)

    def one(s: tf.TensorSpec, leaf: tf.data.Dataset) -> np.ndarray:
        if not s.shape.is_fully_defined():
            leaf = leaf.map(_no_autograph(lambda t: tf.reshape(t, [-1]))).unbatch()
        parts = [b.numpy() for b in leaf.batch(65536)]
        return np.concatenate(parts) if parts else np.zeros([0])

    if not isinstance(spec, (dict, tuple, list)):
        return one(spec, ys)
    leaves = tf.nest.flatten(spec)
    arrays = [one(s, _rearranged(ys, lambda *y, i=i: tf.nest.flatten(y)[i])) for i, s in enumerate(leaves)]
    return tf.nest.pack_sequence_as(spec, arrays)


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
