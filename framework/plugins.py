"""Loads experiment modules: the built-in `experiments` package and third-party plugins.

The registry is the ground floor and imports nothing above it; the entry point (`main`,
scripts, the test suite) calls `load_experiments()` once before it looks an experiment up.
Packages outside this repository add theirs through the `tapeline.experiments` entry-point
group, for example in their `setup.cfg`:

    [options.entry_points]
    tapeline.experiments =
        my_lab = my_lab.experiments

Each entry names a module or a package; a package's public sub-modules are imported too.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil

GROUP = "tapeline.experiments"
_BUILTIN = "experiments"  # this repository's package (also declared in setup.cfg's GROUP)


def _import_tree(name: str) -> None:
    module = importlib.import_module(name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if not info.name.startswith("_"):
            importlib.import_module(f"{name}.{info.name}")


@functools.cache
def load_experiments() -> tuple[str, ...]:
    """Imports every experiment module once; returns the module names it loaded from.

    Raises:
      framework.registry.RegistryError: two modules register the same name (the message
        names both).
    """
    names = [ep.value for ep in importlib.metadata.entry_points(group=GROUP)]
    if _BUILTIN not in names:
        # A source checkout that is not installed has no entry-point metadata: the package
        # beside `framework/` is still the built-in one.
        names.insert(0, _BUILTIN)
    loaded = []
    for name in names:
        try:
            _import_tree(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a missing dependency inside the module is a real error
                raise
            continue
        loaded.append(name)
    return tuple(loaded)
