"""A small deterministic experiment (MLP on flattened digits, no dropout) for multi-process tests."""
import keras

from framework import registry

if "mw_test" not in registry.EXPERIMENTS:
    @registry.register_model("mw_mlp")
    def mw_mlp(width: int = 32) -> keras.Model:
        x = keras.Input((64,), name="x")
        h = keras.layers.Dense(width, activation="relu", name="fc1")(x)
        return keras.Model(x, keras.layers.Dense(10, name="head")(h), name="mw_mlp")

    @registry.register_experiment("mw_test")
    def mw_test() -> dict:
        return {"task": {"model": {"name": "mw_mlp"},
                         "train_data": {"name": "digits", "batch_size": 32, "flatten": True},
                         "eval_data": {"name": "digits", "batch_size": 64, "flatten": True},
                         "metrics": ["accuracy"]},
                "trainer": {"train_steps": 12, "steps_per_loop": 6, "eval_interval": 12, "checkpoint_interval": 6,
                            "jit_compile": False},
                "optimizer": {"name": "adam", "learning_rate": 0.005,
                              "param_groups": [{"pattern": "^fc1/", "lr_multiplier": 0.5}]}}

    @registry.register_hook("test_stop_at")
    def test_stop_at(step: int = 6):
        """Requests a stop once the run reaches `step` (simulates an interruption)."""
        def hook(event, ctx):
            if event == "train_loop_end" and ctx.step >= step:
                ctx.request_stop(f"test_stop_at {step}")
        return hook
