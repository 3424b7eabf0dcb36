"""Name -> factory registries, one per component kind, and the `register_*` decorators.

Experiment modules register their components here by explicit name. A duplicate name raises;
a lookup miss lists what is registered. This module imports nothing of the framework at load
time; the framework's own components (losses, metrics, optimizers, ...) are imported on the
first lookup. Experiment modules are loaded by the entry point (`framework.plugins`), and
`import_module` adds a user's module by its importable name (never a file path).
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class RegistryError(KeyError, ValueError):
    """A registry lookup or registration failed; the message says what exists."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message.
        return str(self.args[0]) if self.args else ""


class Registry:
    """A mapping from explicit names to factories of one kind of component."""

    def __init__(self, *, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Returns a decorator registering its argument under `name`.

        Raises:
          RegistryError: `name` is not a non-empty string or is already registered.
        """
        if not isinstance(name, str) or not name:
            raise RegistryError(f"register_{self.kind} needs a non-empty name; got {name!r}")

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name] is not factory:
                previous = self._entries[name]
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by "
                    f"{getattr(previous, '__module__', '?')}.{getattr(previous, '__qualname__', '?')}); "
                    f"got a second one from {getattr(factory, '__module__', '?')}."
                    f"{getattr(factory, '__qualname__', '?')}"
                )
            self._entries[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """Returns the factory registered as `name`.

        Raises:
          RegistryError: nothing is registered under `name`; lists the registered names.
        """
        import_builtin_components()
        if name not in self._entries:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: "
                f"{', '.join(sorted(self._entries)) or '(none)'}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        """Returns the registered names, sorted."""
        import_builtin_components()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        import_builtin_components()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unregister(self, name: str) -> None:
        """Removes `name` (for tests that register throwaway components)."""
        self._entries.pop(name, None)


EXPERIMENTS = Registry(kind="experiment")
MODELS = Registry(kind="model")
DATASETS = Registry(kind="dataset")
LOSSES = Registry(kind="loss")
OPTIMIZERS = Registry(kind="optimizer")
SCHEDULES = Registry(kind="schedule")
METRICS = Registry(kind="metric")
HOOKS = Registry(kind="hook")

register_experiment = EXPERIMENTS.register
register_model = MODELS.register
register_dataset = DATASETS.register
register_loss = LOSSES.register
register_optimizer = OPTIMIZERS.register
register_schedule = SCHEDULES.register
register_metric = METRICS.register
register_hook = HOOKS.register

# Modules of the framework that register built-in components. Imported lazily on the first
# lookup, because registry.py is the bottom floor and may not import upwards at module load.
_BUILTIN_MODULES = (
    "framework.losses",
    "framework.metrics",
    "framework.optim.optimizers",
    "framework.optim.schedules",
    "framework.data.bundled",
    "framework.data.files",
    "framework.hooks",
)
@functools.cache
def import_builtin_components() -> None:
    """Imports the framework modules that register built-in components (once)."""
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # Only tolerate the module itself being absent (a partial install), never a
            # missing dependency inside it.
            if e.name != module:
                raise


def import_module(name: str) -> Any:
    """Imports a user's experiment module by importable module name.

    Raises:
      ValueError: `name` looks like a file path rather than a module name.
    """
    if not isinstance(name, str) or not _MODULE_NAME.match(name):
        raise ValueError(
            "--import takes an importable module name such as 'my_pkg.my_experiments', "
            f"never a file path; got {name!r}"
        )
    return importlib.import_module(name)


def accepted_kwargs(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    """Returns (keyword names `factory` accepts, whether it takes **kwargs)."""
    sig = inspect.signature(factory)
    names: set[str] = set()
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    return names, var_kw


def closest(key: str, valid: Sequence[str]) -> str | None:
    """The valid name closest to a misspelt `key` (difflib, ratio >= 0.6), or None."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return match[0] if match else None


def check_kwargs(factory: Callable[..., Any], kwargs: Mapping[str, Any], *, section: str,
                 reserved: tuple[str, ...] = (), section_keys: Sequence[str] = ()) -> None:
    """Raises ValueError naming any key in `kwargs` that `factory` does not accept.

    Args:
      factory: the registered callable.
      kwargs: keyword arguments the config would pass.
      section: the config section they come from, for the message (e.g. 'task.model').
      reserved: parameter names the framework passes itself (not from the config).
      section_keys: the keys the framework itself reads in this section (`optimizer.learning_rate`):
        listed in the message and offered as corrections, since a misspelt one lands here.
    """
    names, var_kw = accepted_kwargs(factory)
    if var_kw:
        return
    unknown = sorted(set(kwargs) - names)
    if unknown:
        allowed = sorted(names - set(reserved))
        own = sorted(set(section_keys) - {"kwargs"})
        hints = [f"{m!r} for {k!r}" for k in unknown for m in [closest(k, own + allowed)] if m]
        raise ValueError(
            f"{section}: unknown key(s) {', '.join(unknown)} for "
            f"{getattr(factory, '__name__', factory)!s}"
            + (f" (did you mean {', '.join(hints)}?)" if hints else "")
            + (f"; the section's keys: {', '.join(own)}" if own else "")
            + f"; {getattr(factory, '__name__', 'it')!s} accepts: {', '.join(allowed) or '(nothing)'}; "
            f"got {dict(kwargs)!r}"
        )


def build(registry: Registry, name: str, kwargs: Mapping[str, Any], *, section: str,
          extra: Mapping[str, Any] | None = None, section_keys: Sequence[str] = ()) -> Any:
    """Looks up `name`, checks `kwargs` against its signature and calls it.

    Args:
      registry: where to look.
      name: the registered name.
      kwargs: the section's keys the framework does not own.
      section: config path for messages.
      extra: arguments the framework adds (passed only if the factory accepts them).
      section_keys: the section's own keys, for the message of an unknown key (`check_kwargs`).
    """
    factory = registry.get(name)
    check_kwargs(factory, kwargs, section=section, reserved=tuple(extra or ()), section_keys=section_keys)
    call = dict(kwargs)
    if extra:
        names, var_kw = accepted_kwargs(factory)
        for k, v in extra.items():
            if (k in names or var_kw) and k not in call:
                call[k] = v
    return factory(**call)
