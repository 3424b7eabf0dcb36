"""Shared runs for the reliability scenarios (each made once per session, copied by the tests)."""
import pytest

from tests.reliability import _util as U


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """An uninterrupted rel_test run (16 steps): the weights every resume must reproduce."""
    d = tmp_path_factory.mktemp("reference") / "run"
    U.ok(*U.BASE, f"--model_dir={d}")
    return d


@pytest.fixture(scope="session")
def stopped_at_8(tmp_path_factory):
    """rel_test stopped after step 8 (checkpoints 4 and 8); tests copy it before changing it."""
    d = tmp_path_factory.mktemp("stopped") / "run"
    r = U.ok(*U.BASE, f"--model_dir={d}", "--params_override={hooks: [{name: test_stop_at, step: 8}]}")
    assert U.train_steps(r.out) == [2, 4, 6, 8]
    assert U.ckpt_files(d) == ["ckpt-4.data-00000-of-00001", "ckpt-4.index", "ckpt-8.data-00000-of-00001",
                               "ckpt-8.index"]
    return d
