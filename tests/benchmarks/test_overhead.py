"""benchmarks.overhead's aggregation: best variants by median, per-repetition ratios, re-aggregation."""
import json
import time

from benchmarks import overhead

VARIANTS = ("a_raw_xla", "a_raw", "a_raw_xla_step", "b_tapeline", "c_tapeline_jit", "c_tapeline_nojit",
            "d_fit", "e_fit_spe", "e_fit_jit", "e_fit_spe_jit", "f_eager")


def _raw(samples):
    return {"model": "mlp", "batch": 4, "steps_per_call": {k: 10 for k in VARIANTS}, "reps": 3,
            "samples": samples, "call_seconds": {k: [[1.0, 2.0]] * 3 for k in VARIANTS},
            "b_jit": True, "b_xla_group_steps": 8, "b_jit_reason": "r"}


def test_best_rows_are_the_variant_with_the_highest_median_not_a_per_repetition_maximum():
    samples = {k: [10.0, 10.0, 10.0] for k in VARIANTS}
    samples["e_fit_jit"] = [30.0, 1.0, 1.0]  # one lucky repetition: its median is 1
    samples["e_fit_spe"] = [12.0, 12.0, 12.0]
    samples["a_raw_xla"] = [20.0, 25.0, 22.0]
    samples["b_tapeline"] = [18.0, 20.0, 24.0]
    out = overhead.summarize(_raw(samples))
    assert out["fit_best_variant"] == "e_fit_spe" and out["samples"]["e_fit_best"] == [12.0, 12.0, 12.0]
    assert out["best_variant"]["a_raw_best"] == "a_raw_xla"
    assert out["steps_per_sec"]["e_fit_best"] == 12.0
    # medians of the per-repetition ratios: 18/20, 20/25, 24/22 -> 0.9
    assert abs(out["ratios"]["b_tapeline"]["vs_raw"] - 0.9) < 1e-12
    assert abs(out["targets"]["b_vs_fit_best >= 1.0"] - 20.0 / 12.0) < 1e-12
    assert out["examples_per_sec"]["b_tapeline"] == 4 * 20.0


def test_from_json_rebuilds_the_tables_of_a_recorded_run(tmp_path):
    samples = {k: [10.0, 11.0, 12.0] for k in VARIANTS}
    samples["e_fit_best"] = [99.0, 99.0, 99.0]  # an old combined row: recomputed, not kept
    machine = {"cpu": "cpu", "cores": 2, "tensorflow": "t", "keras": "k", "date": "2026-01-01 00:00 UTC"}
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"machine": machine, "quick": False, "results": [_raw(samples)]}))
    assert overhead.main(["--from_json", str(src), "--out_dir", str(tmp_path), "--name", "again"]) == 0
    md = (tmp_path / "again.md").read_text()
    assert md.startswith("Machine: cpu, 2 cores; TensorFlow t, Keras k; 2026-01-01 00:00 UTC")
    assert "fit's calls timed whole fit() calls" in md  # a run from before fit was timed in its calls
    out = json.loads((tmp_path / "again.json").read_text())["results"][0]
    assert out["steps_per_sec"]["e_fit_best"] == 11.0


def test_a_call_that_times_itself_is_taken_at_its_own_time_and_others_at_wall_time():
    def self_timed(k):
        time.sleep(0.05)
        return 0.01 * k

    def plain(k):
        time.sleep(0.02 * k)

    assert overhead.call_seconds(self_timed, 2) == 0.02
    assert overhead.call_seconds(plain, 2) >= 0.04
    assert overhead.steady_times(self_timed, 3) == (0.03, 0.06)


def test_fit_is_timed_from_its_first_step_to_the_end_of_its_epoch():
    run = overhead.fit_runner("mlp", True)
    run(2)  # trace
    t0 = time.perf_counter()
    own = run(4)
    wall = time.perf_counter() - t0
    # Inside the call, and without fit's set-up and iterator teardown.
    assert 0.0 < own < wall
