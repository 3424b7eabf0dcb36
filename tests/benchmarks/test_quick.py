"""The benchmark scripts run end to end in their quick modes (tiny sizes, one repetition).

Only the files and their keys are checked: timings on a shared machine are never asserted.
Each script runs in a fresh process, as a user would run it (logical devices, subprocesses).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(module: str, out_dir: str, *extra: str, timeout: float = 240) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    p = subprocess.run([sys.executable, "-m", module, "--quick", f"--out_dir={out_dir}", *extra], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]


def _files(out_dir: str, name: str) -> dict:
    for ext in ("json", "md", "png"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        assert os.path.exists(path) and os.path.getsize(path) > 0, path
    with open(os.path.join(out_dir, f"{name}.md"), encoding="utf-8") as f:
        md = f.read()
    assert md.startswith("Machine: ") and "TensorFlow" in md and "|---" in md, md
    with open(os.path.join(out_dir, f"{name}.json"), encoding="utf-8") as f:
        data = json.load(f)
    assert data["quick"] is True
    assert {"cpu", "cores", "tensorflow", "keras", "date"} <= set(data["machine"])
    return data


# Every script in quick mode takes minutes of the 2 cores (processes, compiles; the MLP run of
# `overhead` alone 100 s on a slow 2-core VM): they run with `scripts/test.sh --slow`, and the
# overhead module's units stay in the default suite (tests/benchmarks/test_overhead.py).
@pytest.mark.slow
@pytest.mark.parametrize("models", ["mlp", "cnn,transformer"])
def test_overhead_quick(tmp_path, models):
    _run("benchmarks.overhead", str(tmp_path), f"--models={models}", timeout=420)
    data = _files(str(tmp_path), "overhead_quick")
    assert [r["model"] for r in data["results"]] == models.split(",")
    for r in data["results"]:
        want = {"a_raw_best", "a_raw_xla", "a_raw", "a_raw_xla_step", "b_tapeline", "c_tapeline", "d_fit",
                "e_fit_best", "e_fit_spe", "e_fit_jit", "e_fit_spe_jit", "f_eager"}
        assert want <= set(r["steps_per_sec"])
        assert want <= set(r["ratios"])
        assert {"vs_raw", "vs_fit", "vs_fit_best"} == set(r["ratios"]["b_tapeline"])
        # fit at its best is the fit setting with the highest median, its samples unchanged
        fits = ("d_fit", "e_fit_spe", "e_fit_jit", "e_fit_spe_jit")
        assert r["fit_best_variant"] == max(fits, key=lambda k: r["steps_per_sec"][k])
        assert r["samples"]["e_fit_best"] == r["samples"][r["fit_best_variant"]]
        assert r["best_variant"]["a_raw_best"] in ("a_raw_xla", "a_raw", "a_raw_xla_step")
        assert len(r["call_seconds"]["b_tapeline"]) == r["reps"]  # [t(k), t(2k)] of each repetition
        assert all(v > 0 for v in r["steps_per_sec"].values())
        assert {"examples_per_sec", "b_jit"} <= set(r)


@pytest.mark.slow
def test_scaling_quick(tmp_path):
    _run("benchmarks.scaling", str(tmp_path))
    data = _files(str(tmp_path), "scaling_quick")
    setups = [r["setup"] for r in data["rows"]]
    assert setups == ["default", "mirrored:1", "mirrored:2", "workers:2"]
    assert [r["replicas"] for r in data["rows"]] == [1, 1, 2, 2]
    for r in data["rows"]:
        assert {"tapeline", "fit"} <= set(r["steps_per_sec"])
        for k in ("speedup", "efficiency", "overhead", "examples_per_sec"):
            assert set(r[k]) == {"tapeline", "fit", "fit_spe"}
        assert {"tapeline_vs_fit", "tapeline_vs_fit_spe"} <= set(r)
        assert all(v > 0 for v in r["steps_per_sec"].values())
    (workers,) = [r for r in data["runs"] if r["setup"] == "workers:2"]
    ar = workers["allreduce"]["mlp"]
    assert ar["params"] > 0 and ar["seconds"] > 0 and ar["seconds_per_param"] == ar["seconds"] / ar["params"]
    e = data["estimate_8"]["mlp"]
    assert e["devices"] == 8 and e["measured_workers"] == 2 and 0 < e["efficiency"] < 1
    # ring all-reduce: 2 (N - 1) / N of the data, 8 devices against the 2 measured
    assert e["t_allreduce_s"] == pytest.approx(ar["seconds"] * (2 * 7 / 8) / (2 * 1 / 2))


@pytest.mark.slow
def test_startup_quick(tmp_path):
    _run("benchmarks.startup", str(tmp_path))
    data = _files(str(tmp_path), "startup_quick")
    # The tiny MLP is XLA-compiled (auto), so the warm persistent-cache row is there too.
    assert {(r["framework"], r["model"]) for r in data["first_step"]} == {
        ("tapeline", "mlp"), ("fit", "mlp"), ("tapeline warm-cache", "mlp")}
    for r in data["first_step"]:  # the warm runs found the cache the priming process filled
        warm = r["framework"] == "tapeline warm-cache"
        assert all((s["xla_cache_entries_at_start"] or 0) > 0 for s in r["samples"]) == warm
    for r in data["first_step"]:
        assert {"build_s", "first_step_s", "to_first_step_s", "peak_rss_mb", "import_s"} <= set(r)
        assert r["first_step_s"] > 0 and r["peak_rss_mb"] > 0
    assert {r["framework"] for r in data["growth"]} == {"tapeline", "fit"}
    for r in data["growth"]:
        assert r["marks"] == [50, 200]
        assert set(r["rss_at_mb"]) == {"50", "200"}
        assert all(v > 0 for v in r["rss_at_mb"].values())
        assert "growth_mb" in r and r["series"]


def test_overhead_profile_writes_a_trace(tmp_path):
    from benchmarks import overhead

    assert overhead.main(["--quick", "--models=mlp", "--profile_steps=3", f"--out_dir={tmp_path}"]) == 0
    traces = list((tmp_path / "profile" / "mlp").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


@pytest.mark.slow
def test_ablation_quick(tmp_path):
    _run("benchmarks.ablation", str(tmp_path))
    data = _files(str(tmp_path), "ablation_quick")
    assert set(data["steps_per_sec"]) == {"default", "group_1", "group_16", "group_32", "cond_update", "no_grad_stats",
                                          "no_metrics", "fixed_batch", "element_pipeline",
                                          "step_in_raw_loop", "raw_limit", "grad_norm_alone"}
    assert all(v > 0 for v in data["steps_per_sec"].values())


@pytest.mark.slow
def test_ablation_quick_cnn_has_the_no_xla_variants(tmp_path):
    _run("benchmarks.ablation", str(tmp_path), "--model=cnn")
    data = _files(str(tmp_path), "ablation_cnn_quick")
    assert set(data["steps_per_sec"]) == {"default", "gated_update", "no_grad_stats", "no_metrics", "fixed_batch",
                                          "element_pipeline", "step_in_raw_loop", "raw_limit"}
    assert all(v > 0 for v in data["steps_per_sec"].values())


@pytest.mark.slow
def test_ablation_quick_transformer_has_its_variants(tmp_path):
    _run("benchmarks.ablation", str(tmp_path), "--model=transformer")
    data = _files(str(tmp_path), "ablation_transformer_quick")
    assert set(data["steps_per_sec"]) == {"default", "cond_update", "no_grad_stats", "no_metrics", "fixed_batch",
                                          "step_in_raw_loop", "raw_limit"}
    assert all(v > 0 for v in data["steps_per_sec"].values())


@pytest.mark.slow
def test_end_to_end_quick(tmp_path):
    _run("benchmarks.end_to_end", str(tmp_path), "--models=mlp", timeout=420)
    data = _files(str(tmp_path), "end_to_end_quick")
    (r,) = data["results"]
    assert r["model"] == "mlp" and r["steps"] == [10, 40]
    assert set(r["steps_per_sec"]) == {"cli", "raw", "fit"} and all(v > 0 for v in r["steps_per_sec"].values())
    assert set(r["ratios"]) == {"cli_vs_raw", "cli_vs_fit"}
    assert len(r["samples"]["cli"]) == r["reps"] == 1


def test_overhead_steps_must_be_whole_fit_executions(capsys):
    from benchmarks import overhead

    with pytest.raises(SystemExit) as e:
        overhead.main(["--steps=30", "--models=mlp"])
    assert e.value.code == 2
    assert "--steps: expected a multiple of 50 (fit's steps_per_execution); got 30" in capsys.readouterr().err
