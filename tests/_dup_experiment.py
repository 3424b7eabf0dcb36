"""A user module that registers an experiment name the built-ins already use (for the CLI test)."""
from framework import registry


@registry.register_experiment("digits_cnn")
def digits_cnn() -> dict:
    return {}
