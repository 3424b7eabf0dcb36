"""Iterator release: how long freeing a used input iterator takes, with tf.data autotuning on and off.

    python -m benchmarks.iterator_release            # 16 iterators per setting, used for 75 s
    python -m benchmarks.iterator_release --quick    # 2 per setting, 3 s (CI)

Both settings run in one process, side by side: `--iterators` iterators of the loops' in-memory
pipeline (`pipeline.train_stream` then `pipeline.finalize`, as the trainer builds them) per
setting, read in turns (one batch each, then a 50 ms pause) for `--age` seconds, then freed one
by one, the two settings interleaved; each release is timed. With autotuning on, an iterator's
optimization thread sleeps for a period that doubles up to 60 s, and freeing the iterator waited
for that sleep (docs/design.md#t12): what `runtime.data_autotune` (default false) avoids.
Writes benchmarks/results/iterator_release.{json,md,png}.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import tensorflow as tf

from benchmarks import common
from framework.data import pipeline

SETTINGS = {"autotune off (default)": False, "autotune on": True}


def _iterator(arrays: tuple[np.ndarray, np.ndarray], autotune: bool, seed: int) -> Any:
    source = pipeline.with_weights(tf.data.Dataset.from_tensor_slices(arrays))
    stream = pipeline.train_stream(source, global_batch=256, seed=seed, shuffle_buffer=2048, cache=True)
    return iter(pipeline.finalize(stream, autotune=autotune))


def measure(*, iterators: int, age_s: float) -> dict[str, Any]:
    """Release seconds of every iterator, per setting (see the module docstring)."""
    arrays = common.synthetic("mlp", 2048)  # one copy: every iterator reads the same examples
    its = {name: [_iterator(arrays, on, seed=k) for k in range(iterators)] for name, on in SETTINGS.items()}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < age_s:
        for group in its.values():
            for it in group:
                next(it)
        time.sleep(0.05)
    release: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for k in range(iterators):
        for name, group in its.items():
            t = time.perf_counter()
            group[k] = None  # the last reference: the iterator is freed here
            release[name].append(time.perf_counter() - t)
    return {"iterators": iterators, "age_s": age_s, "release_s": release}


def table(data: dict[str, Any]) -> str:
    lines = ["| setting | iterators | released in > 1 s | longest release s | total release s |",
             "|---|---|---|---|---|"]
    for name, xs in data["release_s"].items():
        lines.append(f"| {name} | {len(xs)} | {sum(x > 1.0 for x in xs)} | {max(xs):.2f} | {sum(xs):.2f} |")
    lines.append(f"\nEach iterator was read for {data['age_s']:g} s (one batch of 256 in turn, a 50 ms pause "
                 f"per round), then freed; the settings interleaved in one process.")
    return "\n".join(lines)


def _chart(data: dict[str, Any], path: str) -> None:
    with common.chart(path, figsize=(6, 3)) as (_, ax):
        for i, (name, xs) in enumerate(data["release_s"].items()):
            ax.scatter(np.full(len(xs), i) + np.linspace(-0.2, 0.2, len(xs)), xs, s=12, label=name)
        ax.set_xticks(range(len(data["release_s"])), list(data["release_s"]))
        ax.set_ylabel("release s")
        ax.set_title("freeing a used tf.data iterator")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 iterators per setting, 3 s (CI)")
    p.add_argument("--iterators", type=int, default=16)
    p.add_argument("--age", type=float, default=75.0, help="seconds each iterator is read before it is freed")
    p.add_argument("--out_dir", default=common.RESULTS)
    a = p.parse_args(argv)
    common.quiet()
    n, age = (2, 3.0) if a.quick else (a.iterators, a.age)
    data = {"machine": common.machine(), "quick": a.quick, **measure(iterators=n, age_s=age)}
    name = "iterator_release_quick" if a.quick else "iterator_release"
    common.publish(name, data, table(data), out_dir=a.out_dir, chart=lambda path: _chart(data, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
