"""Strategy from the runtime config, logical CPU devices, bounded TPU/multi-worker setup, XLA choice.

Hardware that is absent fails clearly and quickly: `num_gpus` beyond what exists, a TPU that
cannot be reached (bounded by `runtime.tpu_timeout_s`, DESIGN.md trap 8) and multi-worker peers
that never come (bounded by `runtime.worker_timeout_s`).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any
from urllib.parse import urlparse

import tensorflow as tf

from framework.config import RuntimeConfig

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def setup_logical_cpus(n: int) -> None:
    """Splits the first physical CPU into `n` logical devices (before TF initializes devices).

    Raises:
      RuntimeError: devices are already initialized with a different count.
    """
    if n < 1:
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
            raise RuntimeError(f"runtime.cpu_replicas={n}: TensorFlow already initialized {have} CPU device(s) "
                               f"in this process; set it before any TensorFlow work") from None


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        raise ValueError("runtime.strategy=multi_worker needs the TF_CONFIG environment variable "
                         "(or use `python -m framework.launch --workers=N -- ...`); got it unset")
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        task = cfg["task"]
        ttype, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG: expected JSON with cluster.worker and task.type/index ({e}); "
                         f"got {raw!r}") from None
    n = len(cfg["cluster"].get(ttype, []))
    if not 0 <= index < n:
        raise ValueError(f"TF_CONFIG: task index {index} out of range for {n} {ttype}(s); got {raw!r}")
    if not workers:
        raise ValueError(f"TF_CONFIG: cluster.worker is empty; got {raw!r}")
    return cfg


def check_runtime(runtime: RuntimeConfig) -> None:
    """Cheap checks before TensorFlow builds anything (names the key and the value)."""
    if runtime.strategy not in STRATEGIES:
        raise ValueError(f"runtime.strategy (--strategy): expected one of {', '.join(STRATEGIES)}; "
                         f"got {runtime.strategy!r}")
    if runtime.cpu_replicas < 0 or runtime.num_gpus < 0:
        raise ValueError(f"runtime.cpu_replicas / runtime.num_gpus: expected >= 0; got "
                         f"{runtime.cpu_replicas} / {runtime.num_gpus}")
    if runtime.cpu_replicas > 0 and runtime.num_gpus > 0:
        raise ValueError(f"runtime.cpu_replicas and runtime.num_gpus: set one of them; got "
                         f"cpu_replicas={runtime.cpu_replicas}, num_gpus={runtime.num_gpus}")
    if runtime.strategy == "multi_worker":
        _tf_config()
    if runtime.strategy == "tpu" and not (runtime.tpu or os.environ.get("TPU_NAME")):
        raise ValueError("runtime.strategy=tpu needs --tpu=ADDRESS (runtime.tpu) or TPU_NAME; got neither")


def _bounded(fn: Any, timeout_s: float, what: str) -> Any:
    """Runs `fn()` in a daemon thread; raises TimeoutError after `timeout_s`."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise TimeoutError(f"{what}: no answer within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _reachable(address: str, timeout_s: float) -> bool:
    u = urlparse(address if "://" in address else f"grpc://{address}")
    if not u.hostname or not u.port:
        return True  # a TPU name, not an address: let the resolver look it up (bounded)
    try:
        with socket.create_connection((u.hostname, u.port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _tpu(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    address = runtime.tpu or os.environ.get("TPU_NAME", "")
    t = runtime.tpu_timeout_s
    if not _reachable(address, min(t, 10.0)):
        raise RuntimeError(f"--tpu: cannot reach a TPU at {address!r} (TCP connect failed within "
                           f"{min(t, 10.0):g}s); tried TPUClusterResolver(tpu={address!r})")

    def connect() -> Any:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)

    try:
        return _bounded(connect, t, f"--tpu={address!r}")
    except TimeoutError as e:
        raise RuntimeError(f"--tpu: TPU at {address!r} did not answer ({e}; runtime.tpu_timeout_s)") from None
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise RuntimeError(f"--tpu: no usable TPU at {address!r}: {str(e).splitlines()[0]}") from None


def _multi_worker(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    cfg = _tf_config()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=runtime.worker_timeout_s)
    peers = cfg["cluster"]["worker"]
    try:
        # Construction blocks until every peer's server answers: bound it (trap 8).
        return _bounded(lambda: tf.distribute.MultiWorkerMirroredStrategy(communication_options=options),
                        runtime.worker_timeout_s, "MultiWorkerMirroredStrategy")
    except TimeoutError:
        raise TimeoutError(f"multi_worker: peers {peers} did not all join within runtime.worker_timeout_s="
                           f"{runtime.worker_timeout_s:g}s; got TF_CONFIG task {cfg['task']}") from None


def make_strategy(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy `runtime` asks for (fails clearly if the hardware is missing)."""
    check_runtime(runtime)
    gpus = tf.config.list_physical_devices("GPU")
    if runtime.num_gpus > len(gpus):
        raise RuntimeError(f"runtime.num_gpus={runtime.num_gpus} (--num_gpus) but this machine has {len(gpus)} "
                           f"GPU(s); use --cpu_replicas=N to run the distributed path on CPU")
    s = runtime.strategy
    if s == "default":
        return tf.distribute.get_strategy()
    if s == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if runtime.num_gpus else "/cpu:0")
    if s == "mirrored":
        if runtime.num_gpus:
            return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(runtime.num_gpus)])
        cpus = tf.config.list_logical_devices("CPU")
        if runtime.cpu_replicas:
            cpus = cpus[:runtime.cpu_replicas]
        # NCCL does not exist on CPU: reduce through one device.
        return tf.distribute.MirroredStrategy([d.name for d in cpus],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    if s == "multi_worker":
        return _multi_worker(runtime)
    return _tpu(runtime)


def describe(strategy: tf.distribute.Strategy) -> str:
    try:
        devices = tuple(strategy.extended.worker_devices)
    except (RuntimeError, AttributeError):
        devices = ()
    return (f"{type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s)"
            + (f" on {', '.join(devices)}" if devices else ""))


def jit_allowed(strategy: tf.distribute.Strategy, requested: bool | str, *, model_has_conv: bool) -> tuple[bool, str]:
    """Resolves `trainer.jit_compile` (true | false | auto) for this strategy and model.

    Raises:
      ValueError: `true` under a multi-replica strategy, where XLA on the replica function
        fails (trap 5: variables on another device).
    """
    multi = strategy.num_replicas_in_sync > 1 or isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy))
    if requested is True:
        if multi:
            raise ValueError(f"trainer.jit_compile: XLA on the replica function fails under "
                             f"{type(strategy).__name__} (variables on another device); use auto or false; got True")
        return True, "trainer.jit_compile=true"
    if requested is False:
        return False, "trainer.jit_compile=false"
    if multi:
        return False, f"auto: off under {type(strategy).__name__} (XLA in strategy.run fails there)"
    on_cpu = not tf.config.list_physical_devices("GPU")
    if on_cpu and model_has_conv:
        return False, "auto: off for convolutions on CPU (XLA measured slower there)"
    return True, "auto: on (dense model or accelerator)"
