"""Checkpoint manager: everything a resume needs, restore-or-init, fallback past a corrupt file.

A checkpoint holds the step, every model variable by position (Keras's Dropout RNG
`seed_generator_state` variables included: a plain `Checkpoint(model=...)` misses them,
docs/design.md#t9) with their paths for transfer learning, the
optimizer, the trainer's own state variables and the hooks' state as a JSON string. The input
position is not saved: the pipeline is a deterministic function of the step (docs/design.md#t10).

Writes are safe against interruption: `tf.train.CheckpointManager` writes the `ckpt-N.*` files
first and updates the `checkpoint` index last, so a crash mid-write leaves the index pointing at
the previous complete checkpoint. A checkpoint that exists but cannot be read is reported and
the previous one is tried; a run never silently starts from scratch when checkpoints exist.
A checkpoint is never written with a non-finite (NaN or inf) value in a model, optimizer or
trainer-state variable: `save` refuses, naming the variables, and the previous one stays latest.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

import tensorflow as tf
from absl import logging

from framework.errors import first_line


class CheckpointError(RuntimeError):
    """Checkpoints exist in model_dir but none of them can be restored, or a save failed."""



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
        self._objects = dict(objects)
        self._hook_json = tf.Variable("{}", dtype=tf.string, trainable=False, name="hook_state")
        self._get_hook_state = get_hook_state
        self._set_hook_state = set_hook_state
        self.checkpoint = tf.train.Checkpoint(hook_state=self._hook_json, **objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        """The newest complete checkpoint's path prefix (None before the first save)."""
        return self.manager.latest_checkpoint

    def save(self, step: int) -> str:
        """Writes checkpoint `ckpt-<step>` and returns its path.

        Raises:
          CheckpointError: a saved variable holds NaN or inf (nothing is written), or the write failed.
        """
        bad = self.non_finite()
        if bad:
            raise CheckpointError(
                f"refusing to write checkpoint ckpt-{step} in {self.directory}: non-finite values in "
                f"{len(bad)} variable(s): {', '.join(bad[:8])}{', ...' if len(bad) > 8 else ''}; the latest "
                f"complete checkpoint is still {self.latest or 'none'}")
        if self._get_hook_state is not None:
            self._hook_json.assign(json.dumps(self._get_hook_state()))
        previous = self.latest
        try:
            return self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            raise CheckpointError(
                f"cannot write checkpoint ckpt-{step} in {self.directory} ({first_line(e)}); the latest "
                f"complete checkpoint is still {previous or 'none'}") from None

    def non_finite(self) -> list[str]:
        """Names of the floating-point variables to be saved that hold a NaN or inf."""
        named = list(_float_variables(self._objects))
        if not named:
            return []
        finite = tf.stack([tf.reduce_all(tf.math.is_finite(v)) for _, v in named]).numpy()  # one host copy
        return [name for (name, _), ok in zip(named, finite) if not ok]

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
                # A different model is refused before anything is assigned (no partial load).
                mismatch = self._model_mismatch(path)
                if mismatch:
                    errors.append(f"{path}: a different model: {mismatch}")
                    logging.error("cannot restore %s", errors[-1])
                    continue
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as e:  # noqa: BLE001 - any unreadable file: try the previous one
                # (a truncated data file raises IndexError, a garbage index an OpError, ...)
                errors.append(f"{path}: {type(e).__name__}: {first_line(e)}")
                logging.error("cannot restore %s (%s); trying the previous checkpoint", path, errors[-1])
                continue
            if self._set_hook_state is not None:
                self._set_hook_state(json.loads(self._hook_json.numpy().decode("utf-8")))
            return path
        raise CheckpointError(
            f"{self.directory}: {len(candidates)} checkpoint(s) listed but none can be restored; refusing "
            f"to start from scratch over them (move them away to start over); got: {'; '.join(errors)}")

    def _model_mismatch(self, path: str) -> str:
        """'' if the model variables saved at `path` fit this run's (count and shapes), else the list.

        Raises:
          Exception: the checkpoint cannot be read (the caller treats it as unreadable).
        """
        variables = self._objects.get("model")
        if not isinstance(variables, (list, tuple)):
            return ""
        reader = tf.train.load_checkpoint(path)
        shapes = reader.get_variable_to_shape_map()
        saved = sorted(int(k.split("/")[1]) for k in shapes if re.fullmatch(r"model/\d+" + re.escape(_SUFFIX), k))
        try:
            saved_paths = json.loads(reader.get_tensor("model_paths" + _SUFFIX).decode("utf-8"))
        except Exception:  # noqa: BLE001 - older checkpoints: positions only
            saved_paths = [f"model/{i}" for i in saved]
        names = [f"model/{i}" for i in range(len(variables))]
        if isinstance(self._objects.get("model_paths"), tf.Variable):
            names = json.loads(self._objects["model_paths"].numpy().decode("utf-8"))
        problems = []
        for i, v in enumerate(variables):
            key = f"model/{i}{_SUFFIX}"
            name = names[i] if i < len(names) else f"model/{i}"
            if key not in shapes:
                problems.append(f"{name} {tuple(v.shape)} not in the checkpoint")
            elif tuple(shapes[key]) != tuple(v.shape):
                other = saved_paths[i] if i < len(saved_paths) else key
                problems.append(f"{name} {tuple(v.shape)} vs checkpoint {other} {tuple(shapes[key])}")
        extra = [saved_paths[i] if i < len(saved_paths) else f"model/{i}" for i in saved if i >= len(variables)]
        if extra:
            problems.append(f"checkpoint variables not in the model: {', '.join(map(str, extra[:8]))}")
        if not problems:
            return ""
        head = (f"{len(problems) - bool(extra) + len(extra)} mismatched variable(s) (model has "
                f"{len(variables)}, checkpoint {len(saved)}): ")
        return head + "; ".join(problems[:12]) + ("; ..." if len(problems) > 12 else "")


def _float_variables(objects: Mapping[str, Any]) -> Any:
    """(name, variable) for every floating-point variable in the checkpoint's objects."""
    paths = None
    if isinstance(objects.get("model_paths"), tf.Variable):
        paths = json.loads(objects["model_paths"].numpy().decode("utf-8"))
    for key, obj in objects.items():
        if hasattr(obj, "variables") and not isinstance(obj, (tf.Variable, list, tuple, dict)):
            obj = list(obj.variables)  # an optimizer
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) \
            else [(None, obj)]
        for i, v in items:
            if isinstance(v, (list, tuple, dict)):
                yield from _float_variables({f"{key}/{i}": v})
                continue
            name = paths[i] if key == "model" and paths and isinstance(i, int) and i < len(paths) else \
                getattr(v, "path", None) or getattr(v, "name", "?")
            v = v.value if hasattr(v, "value") and not isinstance(v, tf.Variable) else v  # Keras -> TF
            if isinstance(v, tf.Variable) and v.dtype.is_floating:
                yield f"{key} {name}", v


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
                         f"({first_line(e)}); got {path!r}") from None
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
