"""Tests of framework.distribute: runtime checks, strategies, bounded TPU / multi-worker setup, XLA choice.

Relies on tests/conftest.py splitting the CPU into 2 logical devices. The multi-worker tests run
tests/_mw_worker.py as separate processes on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf

from framework import distribute
from framework import jit as jit_lib
from framework.config import RuntimeConfig

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_mw_worker.py")


def _tf_config(workers: list[str], index: int, task_type: str = "worker") -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": task_type, "index": index}})


def _free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TPU_NAME")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT, **extra)
    return env


def _finish(procs: list[subprocess.Popen], timeout_s: float) -> list[tuple[int, str, str]]:
    """Waits for all processes within one shared deadline; kills (SIGKILL) any left running."""
    deadline = time.monotonic() + timeout_s
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()  # TF ignores SIGTERM while blocked in setup
            stdout, stderr = p.communicate()
            out.append((None, stdout, stderr))
            continue
        out.append((p.returncode, stdout, stderr))
    return out


# ----------------------------------------------------------------------------- check_runtime


@pytest.fixture
def no_cluster_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in ("TF_CONFIG", "TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.mark.parametrize("kwargs, must_contain", [
    (dict(strategy="horovod"), ["runtime.strategy", "'horovod'", "mirrored", "multi_worker"]),
    (dict(cpu_replicas=-1), ["runtime.cpu_replicas", "-1"]),
    (dict(num_gpus=-2), ["runtime.num_gpus", "-2"]),
    (dict(strategy="mirrored", cpu_replicas=2, num_gpus=1), ["runtime.cpu_replicas", "runtime.num_gpus",
                                                             "cpu_replicas=2", "num_gpus=1"]),
    (dict(tpu_timeout_s=0.0), ["runtime.tpu_timeout_s", "0.0"]),
    (dict(worker_timeout_s=-1.0), ["runtime.worker_timeout_s", "-1.0"]),
    (dict(strategy="tpu"), ["no TPU found", "runtime.tpu=''", "TPU_NAME"]),
    (dict(strategy="multi_worker"), ["TF_CONFIG", "unset"]),
])
def test_check_runtime_errors_name_key_and_value(no_cluster_env, kwargs, must_contain):
    with pytest.raises(ValueError) as e:
        distribute.check_runtime(RuntimeConfig(**kwargs))
    for s in must_contain:
        assert s in str(e.value), (s, str(e.value))


@pytest.mark.parametrize("tf_config, must_contain", [
    ("not json", ["TF_CONFIG", "expected JSON", "'not json'"]),
    ('{"task": {"type": "worker", "index": 0}}', ["TF_CONFIG", "cluster"]),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', ["TF_CONFIG", "cluster.worker"]),
    ('{"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker", "index": 0}}', ["host:port", "nohostport"]),
    (_tf_config(["127.0.0.1:1", "127.0.0.1:2"], 2), ["TF_CONFIG", "task.index", "[0, 2)", '"index": 2']),
    (_tf_config(["127.0.0.1:1"], 0, task_type="ps"), ["TF_CONFIG", "task.type", '"ps"']),
])
def test_check_runtime_bad_tf_config(no_cluster_env, tf_config, must_contain):
    no_cluster_env.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError) as e:
        distribute.check_runtime(RuntimeConfig(strategy="multi_worker"))
    for s in must_contain:
        assert s in str(e.value), (s, str(e.value))


def test_check_runtime_accepts_valid(no_cluster_env):
    for s in ("default", "one_device", "mirrored"):
        distribute.check_runtime(RuntimeConfig(strategy=s, cpu_replicas=2))
    distribute.check_runtime(RuntimeConfig(strategy="tpu", tpu="grpc://10.0.0.1:8470"))
    no_cluster_env.setenv("TPU_NAME", "my-tpu")
    distribute.check_runtime(RuntimeConfig(strategy="tpu"))
    no_cluster_env.setenv("TF_CONFIG", _tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    distribute.check_runtime(RuntimeConfig(strategy="multi_worker"))


def test_multi_worker_with_several_cpu_replicas_is_refused(no_cluster_env):
    no_cluster_env.setenv("TF_CONFIG", _tf_config(["127.0.0.1:1", "127.0.0.1:2"], 0))
    with pytest.raises(ValueError, match=r"runtime.cpu_replicas.*multi_worker.*cpu_replicas=2"):
        distribute.check_runtime(RuntimeConfig(strategy="multi_worker", cpu_replicas=2))


# ----------------------------------------------------------------------------- devices and strategies


def test_setup_logical_cpus():
    tf.config.list_logical_devices("CPU")  # make sure devices are initialized (2, by conftest)
    distribute.setup_logical_cpus(2)  # same count: no-op
    with pytest.raises(RuntimeError, match=r"already initialized 2 logical CPU.*got n=3"):
        distribute.setup_logical_cpus(3)
    with pytest.raises(ValueError, match=r"runtime.cpu_replicas.*got 0"):
        distribute.setup_logical_cpus(0)


def test_default_and_one_device():
    s = distribute.make_strategy(RuntimeConfig())
    assert s is tf.distribute.get_strategy()
    s = distribute.make_strategy(RuntimeConfig(strategy="one_device"))
    assert isinstance(s, tf.distribute.OneDeviceStrategy)
    assert s.num_replicas_in_sync == 1
    assert "OneDeviceStrategy: 1 replica(s)" in distribute.describe(s)
    assert "CPU:0" in distribute.describe(s)


def test_mirrored_on_two_logical_cpus_all_reduces():
    s = distribute.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=2))
    assert isinstance(s, tf.distribute.MirroredStrategy)
    assert s.num_replicas_in_sync == 2
    line = distribute.describe(s)
    assert "MirroredStrategy: 2 replica(s) in sync" in line and "CPU:0" in line and "CPU:1" in line, line

    def fn() -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce("SUM", tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0)

    results = s.experimental_local_results(s.run(tf.function(fn)))
    assert [float(r) for r in results] == [3.0, 3.0]


def test_mirrored_without_cpu_replicas_uses_one_device():
    s = distribute.make_strategy(RuntimeConfig(strategy="mirrored"))
    assert s.num_replicas_in_sync == max(1, len(tf.config.list_physical_devices("GPU")))


def test_mirrored_more_cpu_replicas_than_initialized():
    tf.config.list_logical_devices("CPU")  # initialized with 2
    with pytest.raises(RuntimeError, match=r"runtime.cpu_replicas=4 .* 2 logical CPU"):
        distribute.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=4))


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="machine has GPUs")
@pytest.mark.parametrize("strategy", ["mirrored", "one_device"])
def test_missing_gpus_fail_clearly(strategy):
    with pytest.raises(RuntimeError, match=r"runtime.num_gpus=2 .*this machine has 0 GPU"):
        distribute.make_strategy(RuntimeConfig(strategy=strategy, num_gpus=2))


# ----------------------------------------------------------------------------- TPU (docs/design.md#t8)


def test_tpu_unreachable_address_fails_fast(no_cluster_env):
    t0 = time.monotonic()
    with pytest.raises((RuntimeError, TimeoutError), match=r"grpc://127\.0\.0\.1:1"):
        distribute.make_strategy(RuntimeConfig(strategy="tpu", tpu="grpc://127.0.0.1:1", tpu_timeout_s=2))
    assert time.monotonic() - t0 < 10  # a hang bound, not a speed requirement


def test_tpu_without_address_or_env(no_cluster_env):
    with pytest.raises(ValueError, match="no TPU found"):
        distribute.make_strategy(RuntimeConfig(strategy="tpu", tpu=""))


def test_tpu_silent_server_is_bounded_by_tpu_timeout():
    """A listener that accepts TCP but never speaks gRPC: connect must give up after tpu_timeout_s.

    Run in a subprocess: the abandoned connect thread stays blocked inside TensorFlow.
    """
    script = textwrap.dedent("""
        import os, socket, sys, threading, time
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
        held = []
        threading.Thread(target=lambda: [held.append(srv.accept()) for _ in iter(int, 1)], daemon=True).start()
        from framework import distribute
        from framework.config import RuntimeConfig
        address = "grpc://127.0.0.1:%d" % srv.getsockname()[1]
        t0 = time.monotonic()
        try:
            distribute.make_strategy(RuntimeConfig(strategy="tpu", tpu=address, tpu_timeout_s=3))
        except TimeoutError as e:
            print("%.2f %s" % (time.monotonic() - t0, e), flush=True)
            os._exit(0)
        os._exit(1)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    [(rc, out, err)] = _finish([p], 90)
    assert rc == 0, (rc, out, err[-2000:])
    waited = float(out.split()[0])
    assert 2.5 < waited < 10, out
    assert "runtime.tpu_timeout_s=3" in out and "grpc://127.0.0.1:" in out, out


# ----------------------------------------------------------------------------- XLA (docs/design.md#t5)


def test_jit_allowed_resolution():
    default = tf.distribute.get_strategy()
    assert jit_lib.jit_allowed(default, "auto", model_has_conv=False)[0] is True
    on, reason = jit_lib.jit_allowed(default, "auto", model_has_conv=True)
    if not tf.config.list_physical_devices("GPU"):
        assert on is False and "conv" in reason
    assert jit_lib.jit_allowed(default, True, model_has_conv=True) == (True, "trainer.jit_compile=true")
    assert jit_lib.jit_allowed(default, False, model_has_conv=False)[0] is False
    one = distribute.make_strategy(RuntimeConfig(strategy="one_device"))
    assert jit_lib.jit_allowed(one, "auto", model_has_conv=False)[0] is True
    with pytest.raises(ValueError, match=r"trainer.jit_compile.*got 'yes'"):
        jit_lib.jit_allowed(default, "yes", model_has_conv=False)

    mirrored = distribute.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=2))
    on, reason = jit_lib.jit_allowed(mirrored, "auto", model_has_conv=False)
    assert on is False and "MirroredStrategy" in reason, reason
    assert jit_lib.jit_allowed(mirrored, False, model_has_conv=False)[0] is False
    with pytest.raises(ValueError, match=r"trainer.jit_compile.*MirroredStrategy.*got True"):
        jit_lib.jit_allowed(mirrored, True, model_has_conv=False)
    single = distribute.make_strategy(RuntimeConfig(strategy="mirrored"))
    if single.num_replicas_in_sync == 1:
        assert jit_lib.jit_allowed(single, "auto", model_has_conv=False)[0] is True


# ----------------------------------------------------------------------------- multi-worker (docs/design.md#t8)


def test_multi_worker_two_processes_all_reduce_and_train():
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, WORKER, "--worker_timeout_s=60", "--steps=5"],
                              env=_env(TF_CONFIG=_tf_config(workers, i)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = _finish(procs, 120)
    elapsed = time.monotonic() - t0
    reports = []
    for rc, out, err in results:
        assert rc == 0, (rc, out, err[-3000:])
        reports.append(json.loads(out.strip().splitlines()[-1]))
    a, b = reports
    assert {a["index"], b["index"]} == {0, 1}
    assert a["sum"] == b["sum"] == 3.0  # (0 + 1) + (1 + 1)
    assert a["replicas"] == b["replicas"] == 2
    assert a["describe"].startswith("MultiWorkerMirroredStrategy: 2 replica(s) in sync"), a["describe"]
    assert a["jit_auto"] is False and b["jit_auto"] is False  # docs/design.md#t5 applies across workers too
    # Each worker fed different examples: identical weights mean the gradients were all-reduced.
    assert a["weights"] == b["weights"]
    assert a["losses"] == b["losses"]
    assert a["losses"][-1] < a["losses"][0]
    print(f"multi-worker run: {elapsed:.1f}s wall, setup {a['setup_s']}s / {b['setup_s']}s")


def test_multi_worker_missing_peer_fails_within_bound():
    """A worker whose peer never comes exits non-zero naming it (as the leader and as a follower)."""
    procs, missing = [], []
    t0 = time.monotonic()
    for index in (0, 1):
        ports = _free_ports(2)
        workers = [f"127.0.0.1:{p}" for p in ports]
        missing.append(workers[1 - index])
        procs.append(subprocess.Popen([sys.executable, WORKER, "--worker_timeout_s=5"],
                                      env=_env(TF_CONFIG=_tf_config(workers, index)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = _finish(procs, 60)
    elapsed = time.monotonic() - t0
    for (rc, out, err), peer in zip(results, missing):
        assert rc not in (None, 0), (rc, out, err[-3000:])
        assert "TimeoutError" in err and "worker_timeout_s=5" in err, err[-3000:]
        assert f"unreachable peer(s): {peer}" in err, err[-3000:]
    assert elapsed < 45, elapsed  # both ran at once; each gives up ~5-10 s after TF starts
    print(f"missing-peer runs: {elapsed:.1f}s wall")


def test_is_chief_reads_the_validated_tf_config(no_cluster_env):
    assert distribute.is_chief(RuntimeConfig(strategy="mirrored"))
    workers = ["127.0.0.1:1", "127.0.0.1:2"]
    no_cluster_env.setenv("TF_CONFIG", _tf_config(workers, 0))
    assert distribute.is_chief(RuntimeConfig(strategy="multi_worker"))
    no_cluster_env.setenv("TF_CONFIG", _tf_config(workers, 1))
    assert not distribute.is_chief(RuntimeConfig(strategy="multi_worker"))
    with_chief = json.dumps({"cluster": {"chief": ["127.0.0.1:3"], "worker": workers},
                             "task": {"type": "worker", "index": 0}})
    no_cluster_env.setenv("TF_CONFIG", with_chief)
    assert not distribute.is_chief(RuntimeConfig(strategy="multi_worker"))
    no_cluster_env.setenv("TF_CONFIG", "not json")
    with pytest.raises(ValueError, match="TF_CONFIG: expected JSON"):
        distribute.is_chief(RuntimeConfig(strategy="multi_worker"))
