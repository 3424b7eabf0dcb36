"""Helpers for the reliability scenarios: real `python -m framework.main` processes, real signals."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
IMPORTS = ["--import=tests._mw_experiment", "--import=tests.reliability._rel_experiment"]
BASE = ["--experiment=rel_test", *IMPORTS]
TOTAL = 16          # rel_test: trainer.train_steps
INTERVAL = 4        # rel_test: trainer.checkpoint_interval
LOOP = 2            # rel_test: trainer.steps_per_loop
_STEP = re.compile(r"train \| step (\d+)/(\d+)")
_RESTORED = re.compile(r"restored (\S+) \(step (\d+)\)")


def main_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "framework.main", *args]


def cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs framework.main to completion; `.out` holds stdout + stderr."""
    r = subprocess.run(main_cmd(*args), cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    r.out = r.stdout + r.stderr
    return r


def ok(*args: str, **kw) -> subprocess.CompletedProcess:
    r = cli(*args, **kw)
    assert r.returncode == 0, r.out[-4000:]
    return r


class Proc:
    """A framework.main process with its output in a file, for signalling at a chosen point."""

    def __init__(self, args: list[str], log_path: str, env: dict | None = None, cmd: list[str] | None = None):
        self.log_path = str(log_path)
        self._f = open(self.log_path, "w", encoding="utf-8")
        self.p = subprocess.Popen(cmd or main_cmd(*args), cwd=ROOT, env=env or ENV, stdout=self._f,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for(self, pattern: str, timeout: float = 180) -> re.Match:
        """Waits until `pattern` appears in the output; fails if the process exits first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.text())
            if m:
                return m
            if self.p.poll() is not None:
                m = rx.search(self.text())
                if m:
                    return m
                raise AssertionError(f"process exited ({self.p.returncode}) before {pattern!r}:\n{self.text()[-4000:]}")
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"timed out after {timeout}s waiting for {pattern!r}:\n{self.text()[-4000:]}")

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.wait(30)

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"did not exit within {timeout}s:\n{self.text()[-4000:]}") from None
        finally:
            if self.p.poll() is not None:
                self._f.close()

    def __del__(self):  # never leave a child behind
        try:
            if self.p.poll() is None:
                os.kill(self.p.pid, signal.SIGKILL)
        except Exception:  # noqa: BLE001
            pass


def train_steps(text: str) -> list[int]:
    """Steps of the `train | step N/T` log lines, in order."""
    return [int(m.group(1)) for m in _STEP.finditer(text)]


def restored(text: str) -> tuple[str, int] | None:
    m = _RESTORED.search(text)
    return (m.group(1), int(m.group(2))) if m else None


def latest_step(model_dir) -> int | None:
    path = tf.train.latest_checkpoint(str(model_dir))
    return None if path is None else int(path.rsplit("-", 1)[1])


def state(model_dir, step: int | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """(checkpoint path, {key: value}) of the model, optimizer and step in a checkpoint."""
    path = tf.train.latest_checkpoint(str(model_dir)) if step is None else os.path.join(str(model_dir), f"ckpt-{step}")
    reader = tf.train.load_checkpoint(path)
    return path, {k: reader.get_tensor(k) for k, _ in tf.train.list_variables(path)
                  if k.startswith(("model/", "optimizer/", "step/"))}


def assert_same_final_state(model_dir, reference_dir) -> None:
    """Bit-identical model, optimizer and step in the final checkpoints of two runs."""
    pa, a = state(reference_dir)
    pb, b = state(model_dir)
    assert os.path.basename(pa) == os.path.basename(pb) == f"ckpt-{TOTAL}", (pa, pb)
    assert a.keys() == b.keys()
    assert any(k.startswith("model/") for k in a) and any(k.startswith("optimizer/") for k in a)
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=f"{k} differs from the uninterrupted run")


def assert_contiguous(steps: list[int], start: int, end: int = TOTAL, loop: int = LOOP) -> None:
    """The run logged every loop from `start` (exclusive) to `end`: none repeated or skipped."""
    assert steps == list(range(start + loop, end + 1, loop)), (start, end, steps)


def copy_run(src, dst) -> str:
    shutil.copytree(str(src), str(dst))
    return str(dst)


def ckpt_files(model_dir) -> list[str]:
    return sorted(f for f in os.listdir(str(model_dir)) if f.startswith("ckpt-"))
