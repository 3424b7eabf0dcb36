"""Faults from the environment: a multi-worker process failing (F10), model_dir full or read-only
at save time (F11)."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from tests.reliability import _util as U

# ------------------------------------------------------------------ F10 one worker fails


def _launch(tmp_path, *main_args, timeout_s=150):
    cmd = [sys.executable, "-m", "framework.launch", "--workers=2", f"--timeout_s={timeout_s}",
           f"--log_dir={tmp_path / 'logs'}", "--", *main_args]
    return U.Proc([], tmp_path / "launch.log", cmd=cmd)


def _workers(launcher: U.Proc) -> dict[int, psutil.Process]:
    out = {}
    for child in psutil.Process(launcher.pid).children():
        try:
            tf_config = json.loads(child.environ().get("TF_CONFIG", "{}"))
        except (psutil.Error, ValueError):
            continue
        out[int(tf_config["task"]["index"])] = child
    return out


def _worker_log(tmp_path, i):
    p = tmp_path / "logs" / f"worker-{i}.log"
    return p.read_text(errors="replace") if p.exists() else ""


@pytest.mark.slow
def test_f10_exception_in_one_worker_stops_all_nonzero_and_bounded(tmp_path):
    t0 = time.monotonic()
    p = _launch(tmp_path, *U.BASE, f"--model_dir={tmp_path / 'run'}",
                "--params_override={hooks: [{name: rel_raise, step: 4, worker_index: 1}]}")
    workers = None
    deadline = time.monotonic() + 60
    while workers is None or len(workers) < 2:
        workers = _workers(p)
        assert time.monotonic() < deadline, p.text()
        time.sleep(0.2)
    code = p.wait(200)
    elapsed = time.monotonic() - t0
    assert code != 0, p.text()
    assert "worker 1 exited with 1; stopping the others" in p.text()
    assert "rel_raise: injected failure in worker 1" in _worker_log(tmp_path, 1)
    assert "train | step" in _worker_log(tmp_path, 0)  # the chief was training when its peer failed
    assert elapsed < 150  # never a hang
    for w in workers.values():
        assert not w.is_running() or w.status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_f10_sigkill_of_one_worker_stops_all_nonzero_and_bounded(tmp_path):
    t0 = time.monotonic()
    p = _launch(tmp_path, *U.BASE, f"--model_dir={tmp_path / 'run'}",
                "--params_override={hooks: [{name: rel_sleep, seconds: 0.3}]}")
    deadline = time.monotonic() + 150
    while "train | step 4/16" not in _worker_log(tmp_path, 0):
        assert time.monotonic() < deadline and p.p.poll() is None, p.text() + _worker_log(tmp_path, 0)
        time.sleep(0.1)
    workers = _workers(p)
    workers[1].send_signal(signal.SIGKILL)
    code = p.wait(120)
    assert code != 0
    assert "worker 1 exited with -9; stopping the others" in p.text()
    assert time.monotonic() - t0 < 200
    for w in workers.values():
        assert not w.is_running() or w.status() == psutil.STATUS_ZOMBIE
    # The chief kept its last complete checkpoint.
    assert U.latest_step(tmp_path / "run") in (None, 4, 8, 12)


# ------------------------------------------------------------------ F11 model_dir full / read-only


def _mount(*args):
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = _mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); see tests/reliability/README.md (F11)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path, leave: int = 0):
    """Fills the filesystem of `path` with one file until ENOSPC, then frees `leave` bytes."""
    filler = os.path.join(path, "filler.bin")
    with open(filler, "wb", buffering=0) as f:
        for chunk in (64 * 1024, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        if leave:
            f.truncate(max(0, f.tell() - leave))
    return filler


def _check_failed_write(p, d, *, checkpoint_write: bool):
    assert p.wait(120) == 2, p.text()[-3000:]
    text = p.text()
    err = [line for line in text.splitlines() if line.startswith("tapeline: error:")]
    assert len(err) == 1, text[-3000:]
    if checkpoint_write:
        assert "cannot write checkpoint ckpt-8" in err[0], err[0]
    else:  # the first write to fail may be an event file or the checkpoint: either is named
        assert "cannot write" in err[0] and str(d) in err[0], err[0]
    assert f"latest complete checkpoint is still {d}/ckpt-4" in err[0], err[0]
    assert "Traceback" not in text


@pytest.mark.slow
@pytest.mark.parametrize("leave", [0, 12 * 1024], ids=["full", "almost_full"])
def test_f11_full_model_dir_at_save_time_is_a_clear_error_and_keeps_previous(tmp_path, tiny_tmpfs, reference, leave):
    d = tiny_tmpfs / "run"
    args = [*U.BASE, f"--model_dir={d}", "--mode=train", "--params_override={hooks: [{name: rel_sleep, seconds: 0.5}]}"]
    p = U.Proc(args, tmp_path / "first.log")
    p.wait_for(rf"saved {d}/ckpt-4")
    filler = _fill(tiny_tmpfs, leave=leave)
    # With room left for the small event-file appends, the checkpoint itself is what fails.
    _check_failed_write(p, d, checkpoint_write=bool(leave))
    assert "No space left on device" in p.text()
    assert U.latest_step(d) == 4
    os.remove(filler)
    r = U.ok(*args)
    assert U.restored(r.out) == (f"{d}/ckpt-4", 4)  # the previous checkpoint is intact
    U.assert_contiguous(U.train_steps(r.out), 4)
    U.assert_same_final_state(d, reference)


@pytest.mark.slow
def test_f11_read_only_model_dir_at_save_time_is_a_clear_error_and_keeps_previous(tmp_path, tiny_tmpfs, reference):
    d = tiny_tmpfs / "run"
    args = [*U.BASE, f"--model_dir={d}", "--mode=train", "--params_override={hooks: [{name: rel_sleep, seconds: 0.5}]}"]
    p = U.Proc(args, tmp_path / "first.log")
    p.wait_for(rf"saved {d}/ckpt-4")
    # Over-mount model_dir with a read-only view of itself: new files there fail with EROFS
    # (the event files the process already holds open keep working).
    for cmd in (["--bind", str(d), str(d)], ["-o", "remount,bind,ro", str(d)]):
        r = _mount(*cmd)
        if r.returncode != 0:
            p.kill()
            pytest.skip(f"cannot make a read-only bind mount ({r.stderr.strip()})")
    try:
        _check_failed_write(p, d, checkpoint_write=True)
        assert "Read-only file system" in p.text()
        assert U.latest_step(d) == 4
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)
    r = U.ok(*args)
    assert U.restored(r.out) == (f"{d}/ckpt-4", 4)
    U.assert_contiguous(U.train_steps(r.out), 4)
    U.assert_same_final_state(d, reference)
