"""Atomic file writes: a reader never sees a half-written file, a failed write leaves the old one.

Every file a run leaves beside its checkpoints (params.yaml, metrics.json, reports, tables,
plots, exported models) is written through `replacing`: to a temporary path in the same
directory, then renamed over the target (`os.replace` is atomic on POSIX within a filesystem).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Iterator


@contextlib.contextmanager
def replacing(path: str, *, suffix: str = "", fsync: bool = False) -> Iterator[str]:
    """Yields a temporary path beside `path`; when the block succeeds it replaces `path`.

    Args:
      path: the final file or directory.
      suffix: ending of the temporary name, for writers that infer the format from it
        (`.png` for matplotlib, `.keras` for Keras, `.npz` for NumPy).
      fsync: flush the temporary file to disk before the rename (files a resume relies on).

    On an exception the temporary file (or directory) is removed and `path` is untouched.
    """
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
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
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str, *, fsync: bool = False) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with replacing(path, fsync=fsync) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_json(path: str, data: Any) -> None:
    """Writes `data` as indented JSON (with a final newline) to `path` atomically."""
    write_text(path, json.dumps(data, indent=1) + "\n")
