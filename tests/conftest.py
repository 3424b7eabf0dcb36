"""Shared fixtures: two logical CPU devices (distribution without a GPU) and temp dirs."""
import atexit
import os
import shutil
import tempfile

import tensorflow as tf


def pytest_configure(config):
    # CLI runs started by tests keep their persistent XLA cache out of the user's home.
    if "TAPELINE_XLA_CACHE" not in os.environ:
        cache = tempfile.mkdtemp(prefix="tapeline-xla-tests-")
        atexit.register(shutil.rmtree, cache, True)
        os.environ["TAPELINE_XLA_CACHE"] = cache
    # Must run before TensorFlow initializes its devices (i.e. before any test module runs).
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:
        pass
