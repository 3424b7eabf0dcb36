"""Checkpoint manager: everything a resume needs, restore-or-init, fallback past a corrupt file.

A checkpoint holds the step, every model variable by position (Keras's Dropout RNG
`seed_generator_state` variables included: a plain `Checkpoint(model=...)` misses them,
DESIGN.md trap 9) with their paths for transfer learning, the
optimizer, the trainer's own state variables and the hooks' state as a JSON string. The input
position is not saved: the pipeline is a deterministic function of the step (trap 10).

Writes are safe against interruption: `tf.train.CheckpointManager` writes the `ckpt-N.*` files
first and updates the `checkpoint` index last, so a crash mid-write leaves the index pointing at
the previous complete checkpoint. A checkpoint that exists but cannot be read is reported and
the previous one is tried; a run never silently starts from scratch when checkpoints exist.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

import tensorflow as tf
from absl import logging


class CheckpointError(RuntimeError):
    """Checkpoints exist in model_dir but none of them can be restored."""


class Checkpointer:
    """Saves and restores one run's state under `directory`.

    Args:
      directory: the run's model_dir.
      objects: trackables to save by name (model, optimizer, step, ...).
      max_to_keep: checkpoints kept on disk.
      get_hook_state: returns the hooks' state (JSON-serializable) at save time.
      set_hook_state: receives it back after a restore.
    """

    def __init__(self, *, directory: str, objects: Mapping[str, Any], max_to_keep: int,
                 get_hook_state: Callable[[], Any] | None = None,
                 set_hook_state: Callable[[Any], None] | None = None) -> None:
        self.directory = directory
        self._hook_json = tf.Variable("{}", dtype=tf.string, trainable=False, name="hook_state")
        self._get_hook_state = get_hook_state
        self._set_hook_state = set_hook_state
        self.checkpoint = tf.train.Checkpoint(hook_state=self._hook_json, **objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self, step: int) -> str:
        """Writes checkpoint `ckpt-<step>` and returns its path."""
        if self._get_hook_state is not None:
            self._hook_json.assign(json.dumps(self._get_hook_state()))
        return self.manager.save(checkpoint_number=step)

    def restore_or_init(self) -> str | None:
        """Restores the newest readable checkpoint; returns its path, or None for a fresh run.

        Raises:
          CheckpointError: checkpoints are listed but none can be read (never start over
            silently on top of a run's history).
        """
        candidates = list(reversed(self.manager.checkpoints))
        if not candidates:
            orphans = [f for f in os.listdir(self.directory) if f.startswith("ckpt-")] \
                if os.path.isdir(self.directory) else []
            if orphans:
                # Data files without an index: a first save was interrupted. Nothing complete
                # exists, so a fresh start loses nothing; say so.
                logging.warning("model_dir has checkpoint files without an index (%s); starting fresh",
                                ", ".join(sorted(orphans)[:4]))
            return None
        errors = []
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, ValueError, AssertionError) as e:
                errors.append(f"{path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                logging.error("cannot restore %s (%s); trying the previous checkpoint", path, errors[-1])
                continue
            if self._set_hook_state is not None:
                self._set_hook_state(json.loads(self._hook_json.numpy().decode("utf-8")))
            return path
        raise CheckpointError(
            f"{self.directory}: {len(candidates)} checkpoint(s) listed but none can be restored; refusing "
            f"to start from scratch over them (move them away to start over); got: {'; '.join(errors)}")


def model_objects(model: Any) -> dict[str, Any]:
    """Checkpoint entries for a model: its variables by position, and their paths as JSON.

    Positions (not paths) identify variables for resume: Keras auto-names layers and RNG
    seed generators with process-wide counters, so paths can differ between two builds in
    one process. The stored paths let `load_weights` map variables into another model.
    """
    variables = [v.value if hasattr(v, "value") else v for v in model.variables]
    paths = tf.Variable(json.dumps([v.path for v in model.variables]), dtype=tf.string, trainable=False,
                        name="model_paths")
    return {"model": variables, "model_paths": paths}


_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def load_weights(model: Any, path: str, *, mapping: list[Mapping[str, str]] | None = None) -> list[str]:
    """Initializes `model` from the variables of a tapeline checkpoint (transfer learning).

    Variables are matched by path; `mapping` rules `{"from": regex, "to": replacement}` rewrite
    this model's paths into the checkpoint's before matching. Shapes must agree.

    Returns:
      Paths of the model variables that were loaded.

    Raises:
      ValueError: the path is not a tapeline checkpoint, or no variable matched (naming both).
    """
    if os.path.isdir(path):
        found = tf.train.latest_checkpoint(path)
        if found is None:
            raise ValueError(f"task.init_checkpoint: no checkpoint in directory; got {path!r}")
        path = found
    try:
        reader = tf.train.load_checkpoint(path)
        paths = json.loads(reader.get_tensor("model_paths" + _SUFFIX).decode("utf-8"))
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"task.init_checkpoint: not a readable tapeline checkpoint "
                         f"({str(e).splitlines()[0]}); got {path!r}") from None
    shapes = reader.get_variable_to_shape_map()
    by_path = {p: f"model/{i}{_SUFFIX}" for i, p in enumerate(paths)}
    loaded, mismatched = [], []
    for v in model.variables:
        if "seed_generator" in v.path:
            continue  # RNG state belongs to a run, not to the weights
        p = v.path
        for rule in mapping or []:
            p = re.sub(rule["from"], rule["to"], p)
        key = by_path.get(p)
        if key is None:
            continue
        if tuple(shapes[key]) != tuple(v.shape):
            mismatched.append(f"{v.path} {tuple(v.shape)} vs {p} {tuple(shapes[key])}")
            continue
        v.assign(reader.get_tensor(key))
        loaded.append(v.path)
    if not loaded:
        raise ValueError(f"task.init_checkpoint: no variable of the model matches the checkpoint; model paths "
                         f"like {[v.path for v in model.variables][:4]}, checkpoint paths like {paths[:4]}"
                         f"{'; shape mismatches: ' + '; '.join(mismatched[:4]) if mismatched else ''}; got {path!r}")
    return loaded
