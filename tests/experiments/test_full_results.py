"""Full-length experiment runs through scripts/run_experiments.py (minutes each; marked slow).

    pytest tests/experiments -m slow        # or: bash scripts/test.sh --slow
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_digits_cnn_reaches_its_stated_accuracy(tmp_path):
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run_experiments.py"), "--only", "digits_cnn",
                        "--runs_dir", str(runs), "--readme", str(tmp_path / "README.md")],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    metrics = json.loads((runs / "digits_cnn" / "metrics.json").read_text())
    assert metrics["step"] == 1200
    assert metrics["accuracy"] >= 0.97, metrics
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.loads((runs / "results.json").read_text())
    assert results["digits_cnn"]["passed"]
    table = (tmp_path / "README.md").read_text()
    assert "| digits_cnn |" in table and "--experiment=digits_cnn" in table
