"""The iterator-release benchmark: both settings measured, every release timed, files written."""
import json

from benchmarks import iterator_release


def test_every_iterator_of_both_settings_is_released_and_reported(tmp_path):
    assert iterator_release.main(["--iterators=2", "--age=0.3", f"--out_dir={tmp_path}"]) == 0
    data = json.loads((tmp_path / "iterator_release.json").read_text())
    assert data["iterators"] == 2 and data["quick"] is False
    assert set(data["release_s"]) == set(iterator_release.SETTINGS)
    assert all(len(xs) == 2 and min(xs) >= 0 for xs in data["release_s"].values())
    md = (tmp_path / "iterator_release.md").read_text()
    assert md.startswith("Machine: ") and "| autotune off (default) | 2 |" in md and "| autotune on | 2 |" in md
    assert (tmp_path / "iterator_release.png").stat().st_size > 0
