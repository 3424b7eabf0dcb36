"""Every layer of a Keras model, nested ones included (Keras 3 has no public recursive walk)."""
from __future__ import annotations

from typing import Iterator

import keras


def walk(model: keras.layers.Layer, *, include_self: bool = True) -> Iterator[keras.layers.Layer]:
    """Yields `model` (unless `include_self` is False) and every layer nested in it, once each.

    It is Keras's own traversal (`Layer._flatten_layers`), kept behind this one name so that a
    change of that private API is fixed in one place.
    """
    yield from model._flatten_layers(include_self=include_self)  # noqa: SLF001 - see the docstring
