"""The persistent XLA cache: on by default for the CLI, in a per-user directory, capped, switchable off."""
import os
import subprocess
import sys

from framework import xla_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_directory_and_flag(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    d = xla_cache.configure(env)
    assert d == str(tmp_path / "tapeline" / "xla") and os.path.isdir(d)
    assert env["TF_XLA_FLAGS"] == f"--tf_xla_persistent_cache_directory={d}"


def test_off_and_user_settings_are_respected(tmp_path):
    env = {"TAPELINE_XLA_CACHE": "off", "XDG_CACHE_HOME": str(tmp_path)}
    assert xla_cache.configure(env) is None and "TF_XLA_FLAGS" not in env
    env = {"TF_XLA_FLAGS": "--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory=/mine"}
    assert xla_cache.configure(env) == "/mine"
    assert env["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory=/mine"
    env = {"TAPELINE_XLA_CACHE": str(tmp_path / "c"), "TF_XLA_FLAGS": "--tf_xla_auto_jit=2"}
    assert xla_cache.configure(env) == str(tmp_path / "c")
    assert env["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory={tmp_path / 'c'}"


def test_prune_removes_the_oldest_beyond_the_cap(tmp_path):
    for i in range(5):
        p = tmp_path / f"e{i}"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (1000 + i, 1000 + i))
    assert xla_cache.prune(str(tmp_path), cap_bytes=2500) == 3
    assert sorted(os.listdir(tmp_path)) == ["e3", "e4"]


def _cli(tmp_path, env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_XLA_FLAGS", "TAPELINE_XLA_CACHE")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **env_extra)
    over = "trainer.train_steps=4,trainer.steps_per_loop=4,trainer.eval_interval=4,trainer.checkpoint_interval=4"
    return subprocess.run([sys.executable, "-m", "framework.main", "--experiment=linear_regression",
                           f"--model_dir={tmp_path / 'run'}", f"--params_override={over}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_run_fills_the_cache_by_default_and_not_when_off(tmp_path):
    r = _cli(tmp_path / "a", {"XDG_CACHE_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr[-2000:]
    cache = tmp_path / "home" / "tapeline" / "xla"
    assert cache.is_dir() and len(os.listdir(cache)) > 0  # the XLA-compiled step was stored
    off = _cli(tmp_path / "b", {"XDG_CACHE_HOME": str(tmp_path / "home2"), "TAPELINE_XLA_CACHE": "off"})
    assert off.returncode == 0, off.stderr[-2000:]
    assert not (tmp_path / "home2" / "tapeline").exists()
