"""Atomic file writes: a reader never sees a half-written file, a failed write leaves the old one.

Every file a run leaves beside its checkpoints (params.yaml, metrics.json, reports, tables,
plots, exported models, benchmark results) is written through `replacing`: to a temporary path
in the same directory, then renamed over the target (`os.replace` is atomic on POSIX within a
filesystem). This is the one place that does so; `write_text`, `write_json`, `open_text` and
`save_figure` are its shorthands for the common writers.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import IO, Any, Iterator


def _remove(tmp: str) -> None:
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.lexists(tmp):
        os.remove(tmp)


@contextlib.contextmanager
def replacing(path: str, *, suffix: str = "", fsync: bool = False) -> Iterator[str]:
    """Yields a temporary path beside `path`; when the block succeeds it replaces `path`.

    For writers that need a path rather than a file object: `np.savez`, matplotlib's
    `savefig`, Keras's `model.save`, `model.export` / `tf.saved_model.save` of a directory.

    Args:
      path: the final file or directory.
      suffix: ending of the temporary name, for writers that infer the format from it
        (`.png` for matplotlib, `.keras` for Keras, `.npz` for NumPy).
      fsync: flush the temporary file to disk before the rename (files a resume relies on).

    On an exception the temporary file (or directory) is removed and `path` is untouched.
    """
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    _remove(tmp)  # a leftover of an earlier process with this pid (a directory writer wants none)
    try:
        yield tmp
        if fsync and os.path.isfile(tmp):
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if os.path.isdir(tmp) and os.path.isdir(path):
            shutil.rmtree(path)  # a directory cannot be replaced while it has entries
        os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def open_text(path: str, *, fsync: bool = False) -> Iterator[IO[str]]:
    """Yields a text file (UTF-8, no newline translation: what `csv` wants) that replaces `path` on success.

    Args:
      path: the final file.
      fsync: flush the file to disk before the rename.
    """
    with replacing(path, fsync=fsync) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        yield f


def write_text(path: str, text: str, *, fsync: bool = False) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with open_text(path, fsync=fsync) as f:
        f.write(text)


def write_json(path: str, data: Any) -> None:
    """Writes `data` as indented JSON (with a final newline) to `path` atomically."""
    write_text(path, json.dumps(data, indent=1) + "\n")


def save_figure(fig: Any, path: str, **savefig_kwargs: Any) -> None:
    """Saves a matplotlib figure to `path` atomically (the format from `path`'s extension).

    Args:
      fig: a `matplotlib.figure.Figure`.
      path: the final image file, e.g. `tune.png`.
      **savefig_kwargs: passed on to `fig.savefig` (e.g. `dpi=120`).
    """
    with replacing(path, suffix=os.path.splitext(path)[1]) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
