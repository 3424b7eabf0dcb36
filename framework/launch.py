"""Local multi-worker launcher: N worker processes on 127.0.0.1 with free ports and TF_CONFIG.

    python -m framework.launch --workers=2 [--timeout_s=600] -- --experiment=digits_cnn --model_dir=runs/mw

Each worker runs `python -m framework.main <flags> --strategy=multi_worker`. Worker 0 is the
chief: it alone writes into `--model_dir`; the others write to temporary directories that
are removed. If one worker fails or the time limit passes, the others are stopped: the
launcher never hangs and exits non-zero.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import flags


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_configs(ports: Sequence[int]) -> list[str]:
    """One TF_CONFIG per worker (index i) for a cluster of workers on loopback."""
    workers = [f"127.0.0.1:{p}" for p in ports]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
            for i in range(len(ports))]


def launch(*, workers: int, main_args: Sequence[str], timeout_s: float = 600.0,
           python: str = sys.executable, env: dict | None = None, log_dir: str | None = None) -> int:
    """Runs the workers to completion; returns 0 if all succeeded, else the first failure's code.

    Args:
      workers: number of worker processes (>= 1).
      main_args: flags for framework.main (without --strategy).
      timeout_s: bound on the whole run; on expiry every worker is killed.
      python: interpreter.
      env: base environment (default: os.environ).
      log_dir: where `worker-<i>.log` files go (default: inherit stdout/stderr).
    """
    if workers < 1:
        raise ValueError(f"--workers: expected an integer >= 1; got {workers!r}")
    configs = tf_configs(free_ports(workers))
    procs = []
    logs = []
    for i, tf_config in enumerate(configs):
        e = dict(os.environ if env is None else env, TF_CONFIG=tf_config)
        cmd = [python, "-m", "framework.main", *main_args, "--strategy=multi_worker"]
        out = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            out = open(os.path.join(log_dir, f"worker-{i}.log"), "w", encoding="utf-8")
            logs.append(out)
        procs.append(subprocess.Popen(cmd, env=e, stdout=out, stderr=subprocess.STDOUT if out else None))
    deadline = time.monotonic() + timeout_s
    code = 0
    try:
        while True:
            states = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(states) if c not in (None, 0)]
            if failed:
                i, c = failed[0]
                print(f"launch: worker {i} exited with {c}; stopping the others", file=sys.stderr)
                code = c
                break
            if all(c == 0 for c in states):
                break
            if time.monotonic() > deadline:
                print(f"launch: time limit {timeout_s}s reached; stopping all workers", file=sys.stderr)
                code = 124
                break
            time.sleep(0.2)
    finally:
        stop_processes(procs, logs)
    return code


def stop_processes(procs: Sequence[subprocess.Popen], files: Sequence[Any] = ()) -> None:
    """Terminates the processes still running (killed after 10 s), then closes `files`."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for f in files:
        f.close()


def _flag_values() -> flags.FlagValues:
    """The launcher's own flags, in their own FlagValues (framework.main's FLAGS stay untouched)."""
    fv = flags.FlagValues()
    flags.DEFINE_integer("workers", 2, "Worker processes on 127.0.0.1.", lower_bound=1, flag_values=fv)
    flags.DEFINE_float("timeout_s", 600.0, "Bound on the whole run; every worker is killed on expiry.",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_string("log_dir", None, "Directory for worker-<i>.log (default: inherit stdout/stderr).",
                        flag_values=fv)
    return fv


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m framework.launch [--workers=N] [--timeout_s=S] [--log_dir=D] -- <framework.main flags>`.

    Returns the exit status: 0 when every worker succeeded, 2 for a usage error, else the first
    failure's code.
    """
    argv = list(sys.argv if argv is None else ["framework.launch", *argv])
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    fv = _flag_values()
    try:
        extra = fv(own)[1:]
    except flags.Error as e:
        print(f"launch: error: {e}", file=sys.stderr)
        return 2
    rest = extra + rest
    if any(a.startswith("--strategy") for a in rest):
        print(f"launch: error: --strategy is set by the launcher (multi_worker); got {rest!r}", file=sys.stderr)
        return 2
    return launch(workers=fv.workers, main_args=rest, timeout_s=fv.timeout_s, log_dir=fv.log_dir)


if __name__ == "__main__":
    sys.exit(main())
