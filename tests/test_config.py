"""Typed config: defaults, overrides in order, unknown keys, wrong types, save/load round trip."""
import os

import pytest

from framework import config as config_lib


def test_dotted_override_converts_to_declared_types():
    cfg = config_lib.resolve({"task": {"model": {"name": "m"}, "train_data": {"name": "d"}}},
                             overrides=("optimizer.learning_rate=1e-3,trainer.train_steps=7,"
                                        "optimizer.param_groups=[{pattern: a, lr_multiplier: 0}]",))
    assert cfg.optimizer.learning_rate == 1e-3 and isinstance(cfg.optimizer.learning_rate, float)
    assert cfg.trainer.train_steps == 7
    assert cfg.optimizer.param_groups[0].pattern == "a" and cfg.optimizer.param_groups[0].lr_multiplier == 0.0


def test_component_sections_keep_unknown_keys_as_kwargs():
    cfg = config_lib.resolve({"task": {"model": {"name": "m", "width": 64}, "train_data": {"name": "d", "x": 1}}})
    assert cfg.task.model.kwargs == {"width": 64} and cfg.task.train_data.kwargs == {"x": 1}


def test_unknown_key_lists_valid_keys_at_that_level():
    with pytest.raises(config_lib.ConfigError, match=r"trainer.stepz.*valid keys at trainer:.*steps_per_loop.*train_steps"):
        config_lib.resolve({"task": {"model": {"name": "m"}, "train_data": {"name": "d"}}, "trainer": {"stepz": 1}})


@pytest.mark.parametrize("section,key,hint", [
    ("trainer", "train_stepz", " (did you mean 'train_steps'?)"),
    ("runtime", "precison", " (did you mean 'precision'?)"),
    ("trainer", "zzzz", ""),  # nothing close: no guess
])
def test_misspelt_key_suggests_the_closest_valid_one(section, key, hint):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.resolve({"task": {"model": {"name": "m"}, "train_data": {"name": "d"}}, section: {key: 1}})
    assert str(e.value).startswith(f"unknown config key '{section}.{key}'{hint}; valid keys at {section}:")


@pytest.mark.parametrize("override,match", [
    ("optimizer.learning_rate=-1", r"optimizer.learning_rate.*> 0.*-1"),
    ("task.train_data.batch_size=0", r"task.train_data.batch_size.*> 0.*0"),
    ("runtime.strategy=gpu", r"runtime.strategy.*'gpu'"),
    ("optimizer.clip.global_norm=0", r"optimizer.clip.global_norm.*0"),
    ("optimizer.clip.global_norm=.nan", r"optimizer.clip.global_norm.*nan"),
    ("trainer.train_steps=1.5", r"trainer.train_steps.*1.5"),
])
def test_bad_values_name_key_and_value(override, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.resolve({"task": {"model": {"name": "m"}, "train_data": {"name": "d"}}}, overrides=(override,))


def test_save_and_load_round_trip(tmp_path):
    cfg = config_lib.resolve({"task": {"model": {"name": "m", "w": 2}, "train_data": {"name": "d"}},
                              "hooks": [{"name": "early_stopping", "patience": 3}]})
    config_lib.save(cfg, str(tmp_path / "params.yaml"))
    back = config_lib.load(str(tmp_path / "params.yaml"))
    assert config_lib.to_dict(back) == config_lib.to_dict(cfg)
    assert back.hooks[0].kwargs == {"patience": 3}


def test_save_keeps_a_different_previous_config(tmp_path):
    def cfg(lr):
        return config_lib.resolve({"task": {"model": {"name": "m"}, "train_data": {"name": "d"}},
                                   "optimizer": {"learning_rate": lr}})

    path = str(tmp_path / "params.yaml")
    config_lib.save(cfg(0.1), path)
    config_lib.save(cfg(0.1), path)  # the same config again: nothing to keep
    assert sorted(os.listdir(tmp_path)) == ["params.yaml"]
    config_lib.save(cfg(0.2), path)
    config_lib.save(cfg(0.3), path)
    assert sorted(os.listdir(tmp_path)) == ["params.1.yaml", "params.2.yaml", "params.yaml"]
    lrs = [config_lib.load(str(tmp_path / n)).optimizer.learning_rate
           for n in ("params.1.yaml", "params.2.yaml", "params.yaml")]
    assert lrs == [0.1, 0.2, 0.3]
