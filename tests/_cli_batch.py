"""Several `framework.main` command lines in one process: one TensorFlow import for a table of cases.

A bad-input case is a few milliseconds of checking after 8-12 s of process start (mostly the
TensorFlow import): the two tables of them, one process each, cost the default suite about 4 minutes
of worker time. Each command line here gets fresh flags, its own captured stdout and stderr and
its exit status, through the console script's own flag parsing and `main`; anything that
escapes `main` is recorded with its traceback, so a test sees it. Cases that configure devices
(`--cpu_replicas`) need a fresh process: TensorFlow fixes its devices when it first starts.

    python -m tests._cli_batch < cases.json    # [["--experiment=...", ...], ...] -> JSON lines
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_process(argv: Sequence[str]) -> dict[str, Any]:
    """One command line (without the program name): its exit status, stdout and stderr."""
    from absl import logging

    from framework import main as main_lib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main_lib.FLAGS.unparse_flags()
        try:
            rest = main_lib.parse_flags(["tapeline", *argv])
            if main_lib.FLAGS["verbosity"].using_default_value:
                main_lib.FLAGS.verbosity = 0  # INFO, as absl's app.run sets it after parsing
            code = main_lib.main(rest)
        except SystemExit as e:
            code = e.code
        except Exception:  # noqa: BLE001 - recorded with its traceback for the test to fail on
            traceback.print_exc()
            code = "exception"
        logging.flush()
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run_batch(cases: Sequence[Sequence[str]], *, timeout: float = 600) -> list[dict[str, Any]]:
    """Runs every command line of `cases` in one new process; their results, in order."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, "-m", "tests._cli_batch"], input=json.dumps([list(c) for c in cases]),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert p.returncode == 0 and len(results) == len(cases), (p.returncode, p.stderr[-3000:])
    return results


def _main() -> None:
    from absl import logging

    from framework import main as main_lib
    from framework import xla_cache

    xla_cache.configure()  # as the console script does, before TensorFlow starts
    main_lib.FLAGS.set_default("logtostderr", True)
    logging.use_absl_handler()
    cases = json.load(sys.stdin)
    real_stdout = sys.stdout
    for argv in cases:
        real_stdout.write(json.dumps(run_in_process(argv)) + "\n")
        real_stdout.flush()


if __name__ == "__main__":
    _main()
