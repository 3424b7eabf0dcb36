"""The benchmark scripts' result files (JSON, Markdown, PNG chart) without running a benchmark.

The scripts' quick runs (tests/benchmarks/test_quick.py) take minutes; these draw their charts
from made-up rows in a second, so the shared writing code is checked in the default suite.
"""
import json
import os

import pytest

from benchmarks import common, end_to_end, scaling

_MACHINE = {"cpu": "test cpu", "cores": 2, "tensorflow": "2.x", "keras": "3.x", "date": "2026-01-01 00:00 UTC"}


def _png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path


def test_publish_writes_json_markdown_and_the_chart_and_prints_the_table(tmp_path, capsys):
    def chart(path):
        with common.chart(path, figsize=(2, 2)) as (_, ax):
            ax.bar([0, 1], [1.0, 2.0])

    paths = common.publish("demo", {"machine": _MACHINE, "quick": True}, "| a |\n|---|", out_dir=str(tmp_path),
                           chart=chart)
    assert paths == {"json": str(tmp_path / "demo.json"), "md": str(tmp_path / "demo.md")}
    assert json.loads((tmp_path / "demo.json").read_text()) == {"machine": _MACHINE, "quick": True}
    assert (tmp_path / "demo.md").read_text() == ("Machine: test cpu, 2 cores; TensorFlow 2.x, Keras 3.x; "
                                                  "2026-01-01 00:00 UTC\n\n| a |\n|---|\n")
    _png(tmp_path / "demo.png")
    assert sorted(os.listdir(tmp_path)) == ["demo.json", "demo.md", "demo.png"]
    out = capsys.readouterr().out
    assert "| a |" in out and f"wrote {paths['json']} and {paths['md']}" in out


def test_a_chart_that_fails_keeps_the_old_image_and_closes_its_figure(tmp_path):
    import matplotlib.pyplot as plt

    path = str(tmp_path / "c.png")
    with common.chart(path) as (_, ax):
        ax.plot([0, 1])
    before = (tmp_path / "c.png").read_bytes()
    figures = plt.get_fignums()
    with pytest.raises(KeyError):
        with common.chart(path) as (_, ax):
            ax.plot([0, 1], [1, 0])
            raise KeyError("a missing result")
    assert (tmp_path / "c.png").read_bytes() == before and os.listdir(tmp_path) == ["c.png"]
    assert plt.get_fignums() == figures


def test_end_to_end_and_scaling_draw_their_charts(tmp_path):
    e2e = [{"model": m, "steps_per_sec": {"raw": 10.0, "cli": 9.0, "fit": 5.0}} for m in ("mlp", "cnn")]
    end_to_end._chart(e2e, str(tmp_path / "e2e.png"))
    rows = [{"model": m, "setup": s, "batch": 64, "steps_per_sec": {v: 1.0 for v in scaling.VARIANTS}}
            for m in ("mlp", "cnn") for s in ("default", "mirrored:2")]
    scaling._chart(rows, str(tmp_path / "scaling.png"))
    scaling._chart(rows[:2], str(tmp_path / "scaling_one.png"))  # one model: a single Axes
    for name in ("e2e.png", "scaling.png", "scaling_one.png"):
        _png(tmp_path / name)


def test_a_child_result_is_written_whole(tmp_path):
    path = tmp_path / "sub" / "result.json"
    common.write_json(str(path), {"steps_per_sec": 1.5})
    assert json.loads(path.read_text()) == {"steps_per_sec": 1.5} and os.listdir(path.parent) == ["result.json"]
