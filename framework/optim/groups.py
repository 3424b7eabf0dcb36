"""Parameter groups: which group owns each variable, its LR multiplier, weight decay, freezing.

One optimizer updates every variable; the framework passes each variable its own learning
rate (`base_lr(step) x group multiplier x layer-decay factor x plateau factor`) and applies
decoupled weight decay per group itself. Multipliers live in a variable, so changing them
(phases, layer decay) never retraces; the set of frozen groups is part of the trace, so
freezing or unfreezing costs exactly one retrace. A frozen group is not touched at all: its
weights and optimizer slots stay bit-identical.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import numpy as np

from framework.config import OptimizerConfig

DEFAULT_GROUP = "default"


@dataclasses.dataclass
class Group:
    """A resolved parameter group."""

    name: str
    pattern: str | None
    indices: list[int]  # positions in the variable list
    lr_multiplier: float
    weight_decay: float | None
    trainable: bool


@dataclasses.dataclass
class GroupTable:
    """All groups over one ordered list of trainable variables."""

    variables: list[Any]
    groups: list[Group]
    group_of: list[int]  # group index of each variable
    depth: list[int]  # layer depth of each variable (0 = nearest the input)
    num_layers: int
    decay_exempt: list[bool]  # variable excluded from weight decay by pattern

    def index(self, name: str) -> int:
        for i, g in enumerate(self.groups):
            if g.name == name:
                return i
        raise ValueError(f"unknown parameter group {name!r}; groups: {', '.join(g.name for g in self.groups)}")

    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def multipliers(self, *, group_multipliers: Sequence[float], layer_decay: float | None) -> np.ndarray:
        """Per-variable LR multipliers: group multiplier x layer_decay ** (layers above it)."""
        out = np.array([group_multipliers[g] for g in self.group_of], dtype=np.float32)
        if layer_decay is not None and layer_decay != 1.0:
            out *= np.array([layer_decay ** (self.num_layers - 1 - d) for d in self.depth], np.float32)
        return out

    def weight_decays(self, *, default: float | None) -> np.ndarray:
        """Per-variable decoupled weight-decay rates (0 where excluded)."""
        out = []
        for v, g, exempt in zip(self.variables, self.group_of, self.decay_exempt):
            wd = self.groups[g].weight_decay
            wd = default if wd is None else wd
            out.append(0.0 if (exempt or not wd) else float(wd))
        return np.array(out, dtype=np.float32)

    def table(self) -> list[dict]:
        """Rows (group, pattern, variables, parameters, multiplier, weight_decay, trainable)."""
        rows = []
        for g in self.groups:
            params = int(sum(int(np.prod(self.variables[i].shape)) for i in g.indices))
            rows.append({"group": g.name, "pattern": g.pattern, "variables": len(g.indices),
                         "parameters": params, "lr_multiplier": g.lr_multiplier,
                         "weight_decay": g.weight_decay, "trainable": g.trainable,
                         "paths": [self.variables[i].path for i in g.indices]})
        return rows

    def format(self) -> str:
        lines = [f"{'group':<16} {'variables':>9} {'parameters':>11} {'lr_mult':>8}  {'trainable':<9} pattern"]
        for r in self.table():
            lines.append(f"{r['group']:<16} {r['variables']:>9} {r['parameters']:>11,} "
                         f"{r['lr_multiplier']:>8g}  {str(r['trainable']):<9} {r['pattern'] or '(unmatched)'}")
        return "\n".join(lines)

    def write(self, path: str) -> None:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.table(), f, indent=1)
        os.replace(tmp, path)


def _layer_key(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


def resolve(variables: Sequence[Any], cfg: OptimizerConfig) -> GroupTable:
    """Assigns every trainable variable to exactly one group (first matching pattern wins).

    Args:
      variables: the model's trainable variables, in model order (input side first).
      cfg: the optimizer section.

    Raises:
      ValueError: a pattern is not a valid regular expression or matches no variable (trap 4:
        paths start with the model's name in Sequential and subclassed models only); the
        message names the pattern and lists the variable paths.
    """
    variables = list(variables)
    paths = [v.path for v in variables]
    groups: list[Group] = []
    compiled = []
    used = set()
    for i, g in enumerate(cfg.param_groups):
        name = g.name or f"group{i}"
        if name in used or name == DEFAULT_GROUP:
            raise ValueError(f"optimizer.param_groups[{i}].name: duplicate or reserved group name {name!r}")
        used.add(name)
        try:
            compiled.append(re.compile(g.pattern))
        except re.error as e:
            raise ValueError(f"optimizer.param_groups[{i}].pattern: not a valid regular expression ({e}); "
                             f"got {g.pattern!r}") from None
        groups.append(Group(name=name, pattern=g.pattern, indices=[], lr_multiplier=g.lr_multiplier,
                            weight_decay=g.weight_decay, trainable=g.trainable and g.lr_multiplier != 0))
    default = Group(name=DEFAULT_GROUP, pattern=None, indices=[], lr_multiplier=1.0,
                    weight_decay=None, trainable=True)
    group_of = []
    for vi, p in enumerate(paths):
        for gi, rx in enumerate(compiled):
            if rx.search(p):
                groups[gi].indices.append(vi)
                group_of.append(gi)
                break
        else:
            default.indices.append(vi)
            group_of.append(len(groups))
    for i, g in enumerate(groups):
        if not g.indices:
            shown = ", ".join(paths[:12]) + (", ..." if len(paths) > 12 else "")
            raise ValueError(
                f"optimizer.param_groups[{i}].pattern {g.pattern!r} matches no trainable variable "
                f"(patterns are searched in variable.path; Sequential and subclassed models prefix "
                f"paths with the model name, functional ones do not); variable paths: {shown}")
    groups.append(default)  # kept even when empty so `learning_rate/default` always exists
    layers: dict[str, int] = {}
    for p in paths:
        layers.setdefault(_layer_key(p), len(layers))
    depth = [layers[_layer_key(p)] for p in paths]
    exempt_rx = [re.compile(x) for x in cfg.weight_decay_exclude]
    exempt = [any(rx.search(p) for rx in exempt_rx) for p in paths]
    return GroupTable(variables=variables, groups=groups, group_of=group_of, depth=depth,
                      num_layers=max(len(layers), 1), decay_exempt=exempt)
