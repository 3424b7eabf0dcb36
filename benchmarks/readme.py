"""Copies the latest result tables into benchmarks/README.md and README.md (numbers come only from runs).

    python -m benchmarks.readme     # after the benchmark scripts have written benchmarks/results/

Each `<!-- results:NAME -->` ... `<!-- /results:NAME -->` block of the README is replaced by the
contents of `benchmarks/results/NAME.md` (machine line and table) as the script wrote it.
"""
from __future__ import annotations

import os
import re
import sys

from framework import atomic

HERE = os.path.dirname(os.path.abspath(__file__))


def splice(readme: str, results_dir: str) -> tuple[str, list[str]]:
    """The README text with every results block refreshed; also the names that were found."""
    found = []

    def repl(m: re.Match) -> str:
        name = m.group(1)
        path = os.path.join(results_dir, f"{name}.md")
        if not os.path.exists(path):
            return m.group(0)
        found.append(name)
        with open(path, encoding="utf-8") as f:
            body = f.read().strip()
        return f"<!-- results:{name} -->\n{body}\n<!-- /results:{name} -->"

    out = re.sub(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", repl, readme, flags=re.S)
    return out, found


def main(argv: list[str] | None = None) -> int:  # noqa: ARG001 - the scripts' main(argv) form
    for path in (os.path.join(HERE, "README.md"), os.path.join(os.path.dirname(HERE), "README.md")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        out, found = splice(text, os.path.join(HERE, "results"))
        atomic.write_text(path, out)
        print(f"{os.path.relpath(path, os.path.dirname(HERE))}: refreshed {', '.join(found) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
