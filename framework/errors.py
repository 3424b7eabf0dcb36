"""The first line of an error, for one-line messages that name what failed without a traceback.

Ground floor: imports nothing of the framework, so any module (and the entry point) can use it.
"""
from __future__ import annotations

import re

# TensorFlow prefixes errors raised inside a graph with the function they came from.
_TF_PREFIX = re.compile(r"^\{\{[^}]*\}\}\s*")


def first_line(e: BaseException | str, limit: int = 400) -> str:
    """The first line of an error's message (or of a text), at most `limit` characters.

    Leading and trailing white space and TensorFlow's `{{function_node ...}}` prefix are dropped.
    An error with an empty message gives its class name (`ValueError`), an empty text gives "".

    Args:
      e: the exception, or its text.
      limit: the most characters returned (a message can be a whole dump of a graph or tensor).

    Returns:
      One line without a newline.
    """
    text = _TF_PREFIX.sub("", str(e).strip())
    if not text:
        return "" if isinstance(e, str) else type(e).__name__
    return text.splitlines()[0].rstrip()[:limit]
