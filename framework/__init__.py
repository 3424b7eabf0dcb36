"""tapeline: a tf.function-compiled GradientTape trainer (public API re-exports only)."""
from framework import config, registry
from framework.registry import (
                                register_dataset,
                                register_experiment,
                                register_hook,
                                register_loss,
                                register_metric,
                                register_model,
                                register_optimizer,
                                register_schedule,
)

__all__ = ["config", "registry", "register_dataset", "register_experiment", "register_hook", "register_loss",
           "register_metric", "register_model", "register_optimizer", "register_schedule"]
