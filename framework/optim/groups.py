"""Parameter groups: which group owns each variable, its LR multiplier, weight decay, freezing.

One optimizer updates every variable; the framework passes each variable its own learning
rate (`base_lr(step) x group multiplier x layer-decay factor x plateau factor`) and applies
decoupled weight decay per group itself. Multipliers live in a variable, so changing them
(phases, layer decay) never retraces; the set of frozen groups is part of the trace, so
freezing or unfreezing costs exactly one retrace. A frozen group is not touched at all: its
weights and optimizer slots stay bit-identical.

Layer-wise LR decay counts blocks, as in BEiT/ELECTRA and timm: the variables before the first
block (embeddings) are at depth 0, block i at depth i + 1, the variables after the last block
(the head) at the top; a variable's rate is scaled by `layer_decay ** (top - depth)`. Blocks are
the numbered layers of the model (`transformer_layer_3`, `block_3`, `layers.3`, `layers_3`, ...;
see `_BLOCK_RX`), else its top-level layers; `optimizer.layer_decay_blocks` names them
explicitly (an ordered list of regexes, or one regex whose first group is the block number).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

import numpy as np

from framework import atomic
from framework.config import OptimizerConfig

DEFAULT_GROUP = "default"

# A numbered block in a variable path: a block word, an optional '.' or '_', the number, then the
# end of a path component. Group 1 is the block's name (its identity), group 2 its number.
_BLOCK_RX = re.compile(r"(?:^|[/_.])((?:transformer_layer|encoder_layer|decoder_layer|blocks?|layers?)[._]?(\d+))"
                       r"(?=$|[/._])")


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
    depth: list[int]  # layer-decay depth of each variable (0 = embeddings; blocks; the head on top)
    num_layers: int  # depths in use: the top (head) is num_layers - 1
    decay_exempt: list[bool]  # variable excluded from weight decay by pattern
    layer_decay: float | None = None

    def index(self, name: str) -> int:
        """The position of the group called `name` in `groups`."""
        for i, g in enumerate(self.groups):
            if g.name == name:
                return i
        raise ValueError(f"unknown parameter group {name!r}; groups: {', '.join(g.name for g in self.groups)}")

    def names(self) -> list[str]:
        """The group names, in config order (`default` last)."""
        return [g.name for g in self.groups]

    def multipliers(self, *, group_multipliers: Sequence[float], layer_decay: float | None) -> np.ndarray:
        """Per-variable LR multipliers: group multiplier x layer_decay ** (layers above it)."""
        out = np.array([group_multipliers[g] for g in self.group_of], dtype=np.float32)
        if layer_decay is not None and layer_decay != 1.0:
            out *= np.array([layer_decay ** (self.num_layers - 1 - d) for d in self.depth], np.float32)
        return out

    def lr_curves(self) -> dict[str, int | None]:
        """Learning-rate curves for the summaries: name -> a variable whose rate it shows.

        One curve per group (`<group>`): the rate of its variable nearest the head, i.e. the
        group's highest rate (None for an empty group: its rate is base x group multiplier).
        With layer decay on, also one curve per depth: `depth_<d>`, or `<group>/depth_<d>` when
        several groups hold variables.
        """
        out: dict[str, int | None] = {}
        for g in self.groups:
            out[g.name] = max(g.indices, key=lambda i: (self.depth[i], -i)) if g.indices else None
        if self.layer_decay is not None and self.layer_decay != 1.0:
            filled = [g for g in self.groups if g.indices]
            for g in filled:
                for i in sorted(g.indices, key=lambda i: (self.depth[i], i)):
                    name = f"depth_{self.depth[i]}" if len(filled) == 1 else f"{g.name}/depth_{self.depth[i]}"
                    out.setdefault(name, i)
        return out

    def weight_decays(self, *, default: float | None) -> np.ndarray:
        """Per-variable decoupled weight-decay rates (0 where excluded)."""
        out = []
        for g, exempt in zip(self.group_of, self.decay_exempt):
            wd = self.groups[g].weight_decay
            wd = default if wd is None else wd
            out.append(0.0 if (exempt or not wd) else float(wd))
        return np.array(out, dtype=np.float32)

    def table(self) -> list[dict]:
        """Rows (group, pattern, variables, parameters, multiplier, weight_decay, trainable, paths),
        each with `per_variable`: every variable's path, layer-decay depth and LR multiplier."""
        rows = []
        mult = self.multipliers(group_multipliers=[g.lr_multiplier for g in self.groups],
                                layer_decay=self.layer_decay)
        for g in self.groups:
            params = int(sum(int(np.prod(self.variables[i].shape)) for i in g.indices))
            rows.append({"group": g.name, "pattern": g.pattern, "variables": len(g.indices),
                         "parameters": params, "lr_multiplier": g.lr_multiplier,
                         "weight_decay": g.weight_decay, "trainable": g.trainable,
                         "paths": [self.variables[i].path for i in g.indices],
                         "per_variable": [{"path": self.variables[i].path, "depth": self.depth[i],
                                           "lr_multiplier": float(mult[i])} for i in g.indices]})
        return rows

    def format(self) -> str:
        """The group table, then each variable's group, layer-decay depth and LR multiplier."""
        rows = self.table()
        lines = [f"{'group':<16} {'variables':>9} {'parameters':>11} {'lr_mult':>8}  {'trainable':<9} pattern"]
        for r in rows:
            lines.append(f"{r['group']:<16} {r['variables']:>9} {r['parameters']:>11,} "
                         f"{r['lr_multiplier']:>8g}  {str(r['trainable']):<9} {r['pattern'] or '(unmatched)'}")
        decay = "off" if self.layer_decay is None else f"{self.layer_decay:g}"
        lines.append(f"\n{'depth':>5} {'lr_mult':>9}  {'group':<16} variable (layer_decay {decay}, "
                     f"top depth {self.num_layers - 1})")
        mult = self.multipliers(group_multipliers=[g.lr_multiplier for g in self.groups],
                                layer_decay=self.layer_decay)
        for i, v in enumerate(self.variables):
            lines.append(f"{self.depth[i]:>5} {mult[i]:>9.4g}  {self.groups[self.group_of[i]].name:<16} {v.path}")
        return "\n".join(lines)

    def write(self, path: str) -> None:
        """Writes the table (per group and per variable: depth, multiplier) to `path` as JSON, atomically."""
        atomic.write_text(path, json.dumps(self.table(), indent=1))


def _fill_positions(block: list[int | None]) -> list[int]:
    """Depths from block numbers (0-based, or None outside any block) in model order.

    Before the first block: 0 (embeddings). Between blocks: the block before. After the last
    block: one above it (the head).
    """
    depth, current, last = [], None, max((b for b in block if b is not None), default=-1)
    for b in block:
        if b is not None:
            current = b
            depth.append(b + 1)
        elif current is None:
            depth.append(0)
        else:
            depth.append(current + 1 if current < last else last + 2)
    return depth


def _top_level_keys(paths: Sequence[str]) -> list[str]:
    """Each path's top-level layer (a leading component shared by all, the model's name, skipped)."""
    parts = [p.split("/") for p in paths]
    skip = int(len({p[0] for p in parts}) == 1 and all(len(p) >= 3 for p in parts))
    return [p[skip] if len(p) > skip + 1 else "/".join(p) for p in parts]


def _override_blocks(paths: Sequence[str], spec: Any) -> list[int | None]:
    """Block numbers from `optimizer.layer_decay_blocks` (see `OptimizerConfig`)."""
    key = "optimizer.layer_decay_blocks"
    if isinstance(spec, str):
        rx = re.compile(spec)
        numbers = []
        for p in paths:
            m = rx.search(p)
            if m is not None and not (m.group(1) or "").isdigit():
                raise ValueError(f"{key}: expected the regex's first group to be the block number; "
                                 f"got {m.group(1)!r} in {p!r}")
            numbers.append(None if m is None else int(m.group(1)))
        rank = {n: r for r, n in enumerate(sorted({n for n in numbers if n is not None}))}
        if not rank:
            raise ValueError(f"{key}: expected a regex matching a variable path; {spec!r} matches none "
                             f"(paths: {', '.join(paths[:12])}{', ...' if len(paths) > 12 else ''})")
        return [None if n is None else rank[n] for n in numbers]
    compiled = [re.compile(x) for x in spec]
    block = [next((k for k, rx in enumerate(compiled) if rx.search(p)), None) for p in paths]
    for k, x in enumerate(spec):
        if k not in block:
            raise ValueError(f"{key}[{k}]: expected a regex matching a variable path (first match wins); "
                             f"{x!r} matches none (paths: {', '.join(paths[:12])}"
                             f"{', ...' if len(paths) > 12 else ''})")
    return block


def layer_depths(paths: Sequence[str], blocks: Any = None) -> list[int]:
    """Layer-decay depth of each variable path (model order): embeddings 0, block i at i + 1, head on top.

    Args:
      paths: variable paths, input side first.
      blocks: `optimizer.layer_decay_blocks` (None: numbered layers found in the paths, else
        the model's top-level layers).

    Raises:
      ValueError: an override regex matches no variable, or its first group is not a number.
    """
    if blocks is not None:
        return _fill_positions(_override_blocks(paths, blocks))
    found = [_BLOCK_RX.search(p) for p in paths]
    if any(found):
        ids: dict[str, int] = {}
        for m in found:
            if m is not None:
                ids.setdefault(m.string[:m.end(1)], len(ids))  # identity: the path up to the number
        return _fill_positions([None if m is None else ids[m.string[:m.end(1)]] for m in found])
    layers: dict[str, int] = {}
    keys = _top_level_keys(paths)
    for k in keys:
        layers.setdefault(k, len(layers))
    return [layers[k] for k in keys]


def resolve(variables: Sequence[Any], cfg: OptimizerConfig) -> GroupTable:
    """Assigns every trainable variable to exactly one group (first matching pattern wins).

    Args:
      variables: the model's trainable variables, in model order (input side first).
      cfg: the optimizer section.

    Raises:
      ValueError: a pattern is not a valid regular expression or matches no variable (docs/design.md#t4:
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
    depth = layer_depths(paths, cfg.layer_decay_blocks)
    exempt_rx = [re.compile(x) for x in cfg.weight_decay_exclude]
    exempt = [any(rx.search(p) for rx in exempt_rx) for p in paths]
    return GroupTable(variables=variables, groups=groups, group_of=group_of, depth=depth,
                      num_layers=max(depth, default=0) + 1, decay_exempt=exempt, layer_decay=cfg.layer_decay)
