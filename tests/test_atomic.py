"""Atomic writes: the target is replaced whole, and a failing writer leaves the old file and no temp."""
import json
import os

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
