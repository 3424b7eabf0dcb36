"""Atomic writes: the target is replaced whole, and a failing writer leaves the old file and no temp."""
import csv
import json
import os

import numpy as np
import pytest

from framework import atomic


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "m.json"
    atomic.write_json(str(p), {"a": 1})
    atomic.write_json(str(p), {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["m.json"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    p = tmp_path / "t.txt"
    atomic.write_text(str(p), "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.replacing(str(p)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["t.txt"]


def test_a_directory_is_replaced_whole(tmp_path):
    d = tmp_path / "export"
    for content in ("one", "two"):
        with atomic.replacing(str(d)) as tmp:
            os.makedirs(tmp)
            (tmp_path / os.path.basename(tmp) / "f").write_text(content)
    assert (d / "f").read_text() == "two" and sorted(os.listdir(tmp_path)) == ["export"]


def test_a_failing_directory_writer_keeps_the_old_directory(tmp_path):
    d = tmp_path / "saved_model"
    with atomic.replacing(str(d)) as tmp:
        os.makedirs(tmp)
        (tmp_path / os.path.basename(tmp) / "f").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.replacing(str(d)) as tmp:
            os.makedirs(tmp)
            (tmp_path / os.path.basename(tmp) / "f").write_text("half")
            raise RuntimeError("boom")
    assert (d / "f").read_text() == "old" and os.listdir(tmp_path) == ["saved_model"]


def test_a_leftover_temporary_of_this_pid_is_cleared_first(tmp_path):
    d = tmp_path / "saved_model"
    stale = tmp_path / f"saved_model.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "old_file").write_text("x")
    with atomic.replacing(str(d)) as tmp:
        assert not os.path.exists(tmp)  # a writer that refuses an existing directory can write here
        os.makedirs(tmp)
        (tmp_path / os.path.basename(tmp) / "f").write_text("new")
    assert os.listdir(d) == ["f"] and os.listdir(tmp_path) == ["saved_model"]


def test_the_suffix_ends_the_temporary_name(tmp_path):
    p = tmp_path / "w.npz"
    with atomic.replacing(str(p), suffix=".npz") as tmp:
        assert tmp.endswith(".npz") and os.path.dirname(tmp) == str(tmp_path)
        np.savez(tmp, a=np.arange(3))  # np.savez would add `.npz` to a name without it
    with np.load(p) as data:
        assert data["a"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["w.npz"]


def test_open_text_writes_csv_rows_and_a_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "t.csv"
    with atomic.open_text(str(p)) as f:
        csv.writer(f).writerows([["a", "b"], [1, 2]])
    assert p.read_bytes() == b"a,b\r\n1,2\r\n"  # csv's own line ends, not translated
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.open_text(str(p)) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert p.read_bytes() == b"a,b\r\n1,2\r\n" and os.listdir(tmp_path) == ["t.csv"]


def test_save_figure_writes_the_format_of_the_extension_and_a_failure_keeps_the_old_image(tmp_path):
    class Figure:  # the one method of matplotlib's Figure that save_figure calls
        def __init__(self, fail=False):
            self.fail, self.kwargs = fail, None

        def savefig(self, path, **kwargs):
            assert path.endswith(".png"), path  # matplotlib takes the format from the name
            self.kwargs = kwargs
            with open(path, "wb") as f:
                f.write(b"\x89PNG half" if self.fail else b"\x89PNG ok")
            if self.fail:
                raise OSError("disk full")

    p = tmp_path / "plot.png"
    fig = Figure()
    atomic.save_figure(fig, str(p), dpi=120)
    assert fig.kwargs == {"dpi": 120} and p.read_bytes() == b"\x89PNG ok"
    with pytest.raises(OSError, match="disk full"):
        atomic.save_figure(Figure(fail=True), str(p))
    assert p.read_bytes() == b"\x89PNG ok" and os.listdir(tmp_path) == ["plot.png"]
