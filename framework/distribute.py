"""Strategy from the runtime config, logical CPU devices, bounded TPU/multi-worker setup.

Hardware that is absent fails clearly and quickly instead of hanging (docs/design.md#t8):

* `runtime.num_gpus` beyond what the machine has raises at once;
* a TPU that cannot be reached fails within `runtime.tpu_timeout_s` (TCP pre-check of a
  `grpc://host:port` address, then resolve + connect + initialize in a thread joined with
  that timeout);
* a multi-worker peer that never comes fails within `runtime.worker_timeout_s` (the
  coordination service's registration barrier is given that timeout).

After such an error the process should exit soon, with `os._exit` if a normal exit hangs
(the caller's job): an expired TPU wait leaves a thread blocked inside TensorFlow, and a
failed multi-worker setup leaves a half-initialized distributed context.

Whether XLA may run on the replica function is decided in `framework.jit` (docs/design.md#t5).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import tensorflow as tf

from framework import config as config_lib
from framework.config import RuntimeConfig

STRATEGIES = config_lib.STRATEGIES
# Environment variables that say "this is a TPU VM / a TPU was assigned to this process".
_TPU_ENV = ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")


# ----------------------------------------------------------------------------- devices


def setup_logical_cpus(n: int) -> None:
    """Splits the first physical CPU into `n` logical devices.

    Must run before TensorFlow initializes its devices (before the first op, dataset or
    variable). Calling it again with the same `n` is a no-op.

    Args:
      n: number of logical CPU devices (>= 1).

    Raises:
      ValueError: `n` < 1.
      RuntimeError: TensorFlow already initialized its devices with a different count.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"runtime.cpu_replicas: expected an integer >= 1; got {n!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise RuntimeError(
                f"setup_logical_cpus: TensorFlow already initialized {have} logical CPU device(s) in "
                f"this process and cannot split the CPU any more; call it before any TensorFlow work; "
                f"got n={n}") from None


def _logical_cpus(n: int) -> list[str]:
    """Names of `n` logical CPU devices, creating them if TensorFlow is not initialized yet."""
    try:
        setup_logical_cpus(n)
    except RuntimeError:
        pass  # already initialized: enough devices is fine, too few is reported below
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(cpus) < n:
        raise RuntimeError(
            f"runtime.cpu_replicas={n} but TensorFlow was initialized with {len(cpus)} logical CPU "
            f"device(s) in this process (call setup_logical_cpus({n}) before any TensorFlow work); "
            f"got devices {cpus}")
    return cpus[:n]


# ----------------------------------------------------------------------------- validation


def _parse_tf_config() -> dict[str, Any]:
    """Reads and checks TF_CONFIG for multi-worker training.

    Returns:
      The parsed mapping.

    Raises:
      ValueError: TF_CONFIG is unset, not JSON, or lacks a valid cluster / task.
    """
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise ValueError(
            "runtime.strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}} '
            "(or run `python -m framework.launch --workers=N -- ...`); got TF_CONFIG unset")
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG: expected JSON ({e}); got {raw!r}") from None
    cluster = cfg.get("cluster") if isinstance(cfg, dict) else None
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(f"TF_CONFIG: expected a mapping with 'cluster' and 'task'; got {raw!r}")
    workers = cluster.get("worker")
    if not isinstance(workers, list) or not workers or not all(
            isinstance(w, str) and _host_port(w) is not None for w in workers):
        raise ValueError(f"TF_CONFIG: cluster.worker must be a non-empty list of 'host:port' strings; "
                         f"got {raw!r}")
    ttype, index = task.get("type"), task.get("index")
    if ttype not in ("worker", "chief"):
        raise ValueError(f"TF_CONFIG: task.type must be 'worker' (or 'chief'); got {raw!r}")
    members = cluster.get(ttype)
    if not isinstance(members, list) or not members:
        raise ValueError(f"TF_CONFIG: task.type={ttype!r} but cluster.{ttype} is missing; got {raw!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(members):
        raise ValueError(f"TF_CONFIG: task.index must be an integer in [0, {len(members)}) for "
                         f"{len(members)} {ttype}(s); got {raw!r}")
    return cfg


def is_chief(runtime: RuntimeConfig) -> bool:
    """Whether this process writes the run's outputs: always, except a multi-worker process
    that is neither the `chief` task nor, in a cluster without one, worker 0."""
    if runtime.strategy != "multi_worker":
        return True
    cfg = _parse_tf_config()
    task = cfg["task"]
    if task["type"] == "chief":
        return True
    return not cfg["cluster"].get("chief") and task["index"] == 0


def _host_port(address: str) -> Optional[tuple[str, int]]:
    """(host, port) of 'host:port' or 'grpc://host:port'; None if there is no port."""
    u = urlparse(address if "://" in address else f"grpc://{address}")
    try:
        port = u.port
    except ValueError:
        return None
    if not u.hostname or not port:
        return None
    return u.hostname, port


def _tpu_address(runtime: RuntimeConfig) -> str:
    return runtime.tpu or os.environ.get("TPU_NAME", "")


def _tpu_env_present() -> bool:
    return any(os.environ.get(k) for k in _TPU_ENV) or os.path.exists("/dev/accel0")


def check_runtime(runtime: RuntimeConfig) -> None:
    """Cheap checks of `runtime` that need no TensorFlow devices (run before building anything).

    Args:
      runtime: the `runtime` config section.

    Raises:
      ValueError: naming the key, what was expected and the value received.
    """
    config_lib.validate_runtime(runtime)
    if runtime.strategy == "multi_worker":
        _parse_tf_config()
    if runtime.strategy == "tpu" and not runtime.tpu and not _tpu_env_present():
        raise ValueError(
            "runtime.strategy=tpu: no TPU found: pass --tpu=ADDRESS|NAME|local (runtime.tpu) or set "
            f"TPU_NAME; got runtime.tpu={runtime.tpu!r} and none of {', '.join(_TPU_ENV)} set")


# ----------------------------------------------------------------------------- bounded waits


def _bounded(fn: Callable[[], Any], timeout_s: float, name: str) -> Any:
    """Runs `fn()` in a daemon thread and waits at most `timeout_s` for it.

    This only bounds calls that release the GIL while they wait (TPU connect does; the
    multi-worker setup does not, see `_configure_coordination`).

    Returns:
      What `fn` returned.

    Raises:
      TimeoutError: `fn` did not finish in time (its thread is left running).
      BaseException: whatever `fn` raised.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, name=f"tapeline-{name}", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise TimeoutError(f"{name}: no answer within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _accepts(host: str, port: int, timeout_s: float) -> Optional[str]:
    """None if host:port accepts a TCP connection within `timeout_s`, else why not."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout_s, 0.05)):
            return None
    except socket.timeout:
        return f"no answer within {timeout_s:g}s"
    except OSError as e:
        return e.strerror or type(e).__name__


# ----------------------------------------------------------------------------- TPU


def _tpu(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """TPUStrategy for `runtime.tpu` (or TPU_NAME); everything bounded by `runtime.tpu_timeout_s`."""
    address = _tpu_address(runtime)
    timeout = float(runtime.tpu_timeout_s)
    deadline = time.monotonic() + timeout  # one budget for the TCP check and the connect
    hp = _host_port(address) if address.startswith("grpc://") or ":" in address else None
    if hp is not None:
        why = _accepts(hp[0], hp[1], timeout)
        if why is not None:
            raise RuntimeError(
                f"--tpu: cannot reach a TPU at {address!r}: TCP connect to {hp[0]}:{hp[1]} failed ({why}; "
                f"runtime.tpu_timeout_s={timeout:g}); got runtime.tpu={runtime.tpu!r}")

    def connect() -> tf.distribute.Strategy:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)

    try:
        return _bounded(connect, max(0.5, deadline - time.monotonic()), "tpu-connect")
    except TimeoutError:
        raise TimeoutError(
            f"--tpu: the TPU at {address or '<auto-detected>'!r} did not connect and initialize within "
            f"runtime.tpu_timeout_s={timeout:g}s (the process should exit now); got "
            f"runtime.tpu={runtime.tpu!r}") from None
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RuntimeError(f"--tpu: no usable TPU at {address or '<auto-detected>'!r}: {first}; got "
                           f"runtime.tpu={runtime.tpu!r}") from None


# ----------------------------------------------------------------------------- multi-worker


def _configure_coordination(cfg: dict[str, Any], timeout_s: float) -> bool:
    """Configures the coordination service as MultiWorkerMirroredStrategy would, but bounded.

    The strategy's own configuration registers every task with no time limit, inside a C++
    call that holds the GIL (so not even a Python thread can time it out: measured). Configured
    here first (the strategy keeps an existing configuration), registration is a barrier that
    fails with DeadlineExceeded after `timeout_s` on every task, the leader included.

    Returns:
      False if this TensorFlow has no such internals (construction is then unbounded).
    """
    # pylint: disable=import-outside-toplevel  (TensorFlow internals, used only here)
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
        from tensorflow.python.eager import context
    except ImportError:
        return False
    ctx = context.context()
    if ctx.coordination_service is not None:
        return True
    cluster = cfg["cluster"]
    jobs = [coordination_config_pb2.CoordinatedJob(name=j, num_tasks=len(cluster[j]))
            for j in ("chief", "worker") if cluster.get(j)]
    leader = "/job:chief/replica:0/task:0" if cluster.get("chief") else "/job:worker/replica:0/task:0"
    ctx.configure_coordination_service(
        service_type="standalone", service_leader=leader, coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=max(1, int(timeout_s * 1000)))
    service = ctx.coordination_service
    if "cluster_register_with_barrier" in service.DESCRIPTOR.fields_by_name:
        service.cluster_register_with_barrier = True  # without it the leader waits forever
    return True


def _multi_worker(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy from TF_CONFIG; construction bounded by worker_timeout_s.

    Construction starts this worker's gRPC server and then blocks until every task has
    registered with the coordination service (led by the chief, else worker 0). All tasks may
    start at the same time or in any order within `worker_timeout_s` of each other. Measured
    with one peer missing and worker_timeout_s=5: the leader gives up after ~6 s, a follower
    after ~10 s (a follower's last registration call adds ~5 s).

    Raises:
      TimeoutError: the cluster did not form in time (names the peers that do not accept TCP).
      RuntimeError: another setup failure (e.g. this worker's port is taken).
    """
    cfg = _parse_tf_config()
    timeout = float(runtime.worker_timeout_s)
    task = cfg["task"]
    me = cfg["cluster"][task["type"]][task["index"]]
    peers = [a for job in ("chief", "worker") for a in cfg["cluster"].get(job, []) if a != me]
    impl = (tf.distribute.experimental.CommunicationImplementation.AUTO
            if tf.config.list_physical_devices("GPU")
            else tf.distribute.experimental.CommunicationImplementation.RING)
    # No collective timeout: a slow peer mid-run (the chief evaluating or saving) is normal;
    # a dead one is detected by the coordination service's heartbeat.
    options = tf.distribute.experimental.CommunicationOptions(implementation=impl)
    _configure_coordination(cfg, timeout)
    t0 = time.monotonic()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except tf.errors.OpError as e:  # DeadlineExceeded ("Barrier timed out"), Unavailable, ...
        waited = time.monotonic() - t0
        missing = []
        for a in peers:
            hp = _host_port(a)
            why = _accepts(hp[0], hp[1], 1.0) if hp else "bad address"
            if why is not None:
                missing.append(f"{a} ({why})")
        who = (f"unreachable peer(s): {', '.join(missing)}" if missing
               else f"peers {', '.join(peers)} accept connections but did not join" if peers
               else "no peers")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        got = f"got TF_CONFIG task {task['type']}:{task['index']} at {me} in cluster {json.dumps(cfg['cluster'])}"
        if not isinstance(e, (tf.errors.DeadlineExceededError, tf.errors.UnavailableError)):
            raise RuntimeError(f"multi_worker: setting up the cluster failed after {waited:.1f}s: "
                               f"{type(e).__name__}: {first}; {who}; {got}") from None
        raise TimeoutError(
            f"multi_worker: the cluster did not form within runtime.worker_timeout_s={timeout:g}s "
            f"(waited {waited:.1f}s; {first}); {who}; the process should exit now; {got}") from None


# ----------------------------------------------------------------------------- strategies


def make_strategy(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy `runtime` asks for; absent hardware fails clearly and quickly.

    Args:
      runtime: the `runtime` config section (`strategy`, `num_gpus`, `cpu_replicas`, `tpu`,
        `tpu_timeout_s`, `worker_timeout_s`).

    Returns:
      default: `tf.distribute.get_strategy()`; one_device: OneDeviceStrategy on /gpu:0 or
      /cpu:0; mirrored: MirroredStrategy over `num_gpus` GPUs, over `cpu_replicas` logical
      CPUs (reducing through one device: no NCCL on CPU), or over all GPUs / the CPU;
      multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG; tpu: TPUStrategy.

    Raises:
      ValueError: see `check_runtime`.
      RuntimeError: GPUs or logical CPUs or the TPU are missing.
      TimeoutError: the TPU or a multi-worker peer did not answer in time.
    """
    check_runtime(runtime)
    gpus = tf.config.list_physical_devices("GPU")
    if runtime.num_gpus > len(gpus):
        raise RuntimeError(
            f"runtime.num_gpus={runtime.num_gpus} (--num_gpus) but this machine has {len(gpus)} GPU(s) "
            f"({', '.join(g.name for g in gpus) or 'none visible to TensorFlow'}); use --cpu_replicas=N "
            f"to run the distributed path on CPU; got num_gpus={runtime.num_gpus}")
    s = runtime.strategy
    if s == "default":
        return tf.distribute.get_strategy()
    if s == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if runtime.num_gpus > 0 else "/cpu:0")
    if s == "mirrored":
        if runtime.num_gpus > 0:
            return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(runtime.num_gpus)])
        if runtime.cpu_replicas > 1:
            # NCCL does not exist on CPU: reduce through one device.
            return tf.distribute.MirroredStrategy(_logical_cpus(runtime.cpu_replicas),
                                                  cross_device_ops=tf.distribute.ReductionToOneDevice())
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy(["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    if s == "multi_worker":
        return _multi_worker(runtime)
    return _tpu(runtime)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public name of the strategy's class (MultiWorkerMirroredStrategy, not its alias)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    return type(strategy).__name__


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line for the log: strategy class, replicas in sync, devices."""
    try:
        devices = tuple(strategy.extended.worker_devices)
    except (RuntimeError, AttributeError, ValueError):
        devices = ()
    return (f"{strategy_name(strategy)}: {strategy.num_replicas_in_sync} replica(s) in sync"
            + (f" on {', '.join(devices)}" if devices else ""))


def multi_replica(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` is a (MultiWorker)Mirrored strategy with more than one replica."""
    mirrored = isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy))
    return mirrored and strategy.num_replicas_in_sync > 1
