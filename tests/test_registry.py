"""Registry: one per kind, duplicates raise, misses list names, kwargs checked against signatures."""
import pytest

from framework import plugins, registry


def test_duplicate_name_raises_and_miss_lists_registered():
    r = registry.Registry(kind="widget")

    @r.register("a")
    def a(x=1):
        return x

    with pytest.raises(ValueError, match="widget.*'a'"):
        r.register("a")(lambda: None)
    with pytest.raises(KeyError, match=r"widget 'b'.*a"):
        r.get("b")


def test_build_checks_kwargs_and_passes_extra_only_if_accepted():
    r = registry.Registry(kind="thing")

    @r.register("t")
    def t(width=2, *, num_classes=None):
        return width, num_classes

    assert registry.build(r, "t", {"width": 3}, section="task.model", extra={"num_classes": 5, "other": 1}) == (3, 5)
    with pytest.raises(ValueError, match=r"task.model: unknown key\(s\) widht.*accepts:.*width"):
        registry.build(r, "t", {"widht": 3}, section="task.model")


def test_an_unknown_key_is_offered_the_closest_key_of_the_factory_or_the_section():
    r = registry.Registry(kind="thing")

    @r.register("t")
    def t(width=2, depth=1):
        return width, depth

    own = ["name", "learning_rate", "batch_size"]
    with pytest.raises(ValueError) as e:
        registry.build(r, "t", {"widht": 3, "learning_rat": 0.1, "zzz": 1}, section="optimizer", section_keys=own)
    msg = str(e.value)
    assert "unknown key(s) learning_rat, widht, zzz for t" in msg
    assert "did you mean 'learning_rate' for 'learning_rat', 'width' for 'widht'?" in msg
    assert "the section's keys: batch_size, learning_rate, name" in msg and "t accepts: depth, width" in msg
    with pytest.raises(ValueError) as e:  # nothing close: no suggestion
        registry.build(r, "t", {"zzz": 1}, section="task.model")
    assert "did you mean" not in str(e.value) and "section's keys" not in str(e.value)


def test_every_kind_has_a_registry_with_builtins():
    registry.import_builtin_components()
    plugins.load_experiments()
    assert "digits_cnn" in registry.EXPERIMENTS and "digits_cnn" in registry.MODELS
    assert {"digits", "arrays", "image_folder", "tfrecord", "csv", "numpy"} <= set(registry.DATASETS.names())
    assert {"sparse_categorical_crossentropy", "mse"} <= set(registry.LOSSES.names())
    assert {"adam", "adamw", "sgd", "lion", "lamb"} <= set(registry.OPTIMIZERS.names())
    assert {"cosine", "one_cycle", "piecewise"} <= set(registry.SCHEDULES.names())
    assert {"accuracy", "f1", "auc", "rmse"} <= set(registry.METRICS.names())
    assert {"early_stopping", "reduce_lr_on_plateau", "best_checkpoint", "export"} <= set(registry.HOOKS.names())


def test_import_module_refuses_paths():
    for bad in ("../x.py", "experiments/digits_cnn.py", "/abs/mod", "a..b"):
        with pytest.raises(ValueError, match="never a file path"):
            registry.import_module(bad)
    assert registry.import_module("tests._mw_experiment").__name__ == "tests._mw_experiment"


def test_registry_loads_no_experiments_by_itself():
    """The ground floor imports nothing above it: experiments come from framework.plugins."""
    import subprocess
    import sys
    code = ("import sys; from framework import registry; registry.MODELS.names(); "
            "assert 'digits_cnn' not in registry.EXPERIMENTS.names(); "
            "assert not any(m == 'experiments' or m.startswith('experiments.') for m in sys.modules); "
            "from framework import plugins; plugins.load_experiments(); "
            "assert 'digits_cnn' in registry.EXPERIMENTS.names()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
