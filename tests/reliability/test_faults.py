"""Faults survived (F1-F7, F12): real processes, real SIGTERM / SIGKILL, exact resume.

Every resumed run must end bit-identical (model, optimizer, step) to the uninterrupted
`reference` run and must log each 2-step loop once, from its restored step to the end.
"""
import os
import random
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.reliability import _util as U

SLEEP = "{hooks: [{name: rel_sleep, seconds: 0.4}]}"


# ------------------------------------------------------------------ F1 SIGTERM


@pytest.mark.slow
def test_f1_sigterm_mid_run_saves_at_loop_boundary_exits_0_and_resumes_exactly(tmp_path, reference):
    d = tmp_path / "run"
    args = [*U.BASE, f"--model_dir={d}", f"--params_override={SLEEP}"]
    p = U.Proc(args, tmp_path / "first.log")
    p.wait_for(r"train \| step 6/16")
    p.signal(signal.SIGTERM)  # lands in the middle of the run (during the hook's sleep after step 6)
    assert p.wait(120) == 0, p.text()[-3000:]
    text = p.text()
    assert "SIGTERM: checkpointing" in text and "preempted (SIGTERM)" in text
    steps = U.train_steps(text)
    stop = steps[-1]
    assert stop in (6, 8) and stop < U.TOTAL, steps
    U.assert_contiguous(steps, 0, stop)
    assert f"saved {d}/ckpt-{stop}" in text
    assert U.latest_step(d) == stop  # checkpointed at the loop boundary it stopped at: 0 steps lost
    r = U.ok(*args)
    assert U.restored(r.out) == (f"{d}/ckpt-{stop}", stop)
    U.assert_contiguous(U.train_steps(r.out), stop)
    U.assert_same_final_state(d, reference)


# ------------------------------------------------------------------ F2 SIGKILL, repeated


@pytest.mark.slow
def test_f2_sigkill_at_random_points_repeatedly_resumes_bit_identical(tmp_path, reference):
    seed = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 100000))
    rng = random.Random(seed)
    d = tmp_path / "run"
    args = [*U.BASE, f"--model_dir={d}", "--params_override={hooks: [{name: rel_sleep, seconds: 0.3}]}"]
    at = 0  # the step the next process must restore
    log = []
    for i in range(3):
        # A target step at most 12 leaves >= 2 loops (> 0.6 s) after it: the kill lands before the end.
        targets = range(at + U.LOOP, U.TOTAL - 2 * U.LOOP + 1, U.LOOP)
        if not targets:
            break
        p = U.Proc(args, tmp_path / f"kill{i}.log")
        target = rng.choice(targets)
        p.wait_for(rf"train \| step {target}/16")
        time.sleep(rng.uniform(0.0, 0.5))  # anywhere: in a loop, an eval, a save, a hook
        p.signal(signal.SIGKILL)
        assert p.wait(60) == -signal.SIGKILL
        text = p.text()
        steps = U.train_steps(text)
        if at:
            assert U.restored(text) == (f"{d}/ckpt-{at}", at), text[-3000:]
        U.assert_contiguous(steps, at, steps[-1])
        now = U.latest_step(d) or 0
        lost = steps[-1] - now
        log.append((target, steps[-1], now, lost))
        assert 0 <= lost <= U.INTERVAL, (seed, log)
        at = now
    r = U.ok(*args)
    if at:
        assert U.restored(r.out) == (f"{d}/ckpt-{at}", at)
    U.assert_contiguous(U.train_steps(r.out), at)
    U.assert_same_final_state(d, reference)
    print(f"F2 seed={seed} kills (target, last logged, restored, lost): {log}")


# ------------------------------------------------------------------ F3 kill during a save


@pytest.mark.slow
def test_f3_sigkill_inside_a_save_leaves_index_on_previous_complete_checkpoint(tmp_path, reference):
    d = tmp_path / "run"
    p = U.Proc([*U.BASE, "--import=tests.reliability._slow_save", f"--model_dir={d}"], tmp_path / "first.log")
    p.wait_for(r"slow save: \S*ckpt-8 written")
    p.signal(signal.SIGKILL)  # ckpt-8's files are written, the `checkpoint` index not yet updated
    assert p.wait(60) == -signal.SIGKILL
    assert os.path.exists(d / "ckpt-8.index")
    assert U.latest_step(d) == 4  # the index still names the previous complete checkpoint
    r = U.ok(*U.BASE, f"--model_dir={d}")
    assert U.restored(r.out) == (f"{d}/ckpt-4", 4)
    U.assert_contiguous(U.train_steps(r.out), 4)
    U.assert_same_final_state(d, reference)


def test_f3_partial_files_of_an_interrupted_save_are_ignored(tmp_path, stopped_at_8, reference):
    """A save killed while writing: a half data file and a temp dir of ckpt-12, no index for it."""
    d = U.copy_run(stopped_at_8, tmp_path / "run")
    data = open(os.path.join(d, "ckpt-8.data-00000-of-00001"), "rb").read()
    with open(os.path.join(d, "ckpt-12.data-00000-of-00001"), "wb") as f:
        f.write(data[: len(data) // 3])
    os.makedirs(os.path.join(d, "ckpt-12_temp"))
    with open(os.path.join(d, "ckpt-12_temp", "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
        f.write(data[:100])
    r = U.ok(*U.BASE, f"--model_dir={d}")
    assert U.restored(r.out) == (f"{d}/ckpt-8", 8)
    U.assert_contiguous(U.train_steps(r.out), 8)
    U.assert_same_final_state(d, reference)


# ------------------------------------------------------------------ F4 corrupt latest checkpoint


def _truncate_data(d):
    p = os.path.join(d, "ckpt-8.data-00000-of-00001")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    return "ckpt-8"


def _garbage_index(d):
    p = os.path.join(d, "ckpt-8.index")
    open(p, "wb").write(np.random.default_rng(0).bytes(os.path.getsize(p)))
    return "ckpt-8"


def _garbage_data_same_size(d):
    p = os.path.join(d, "ckpt-8.data-00000-of-00001")
    open(p, "wb").write(np.random.default_rng(1).bytes(os.path.getsize(p)))
    return "ckpt-8"


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", [_truncate_data, _garbage_index, _garbage_data_same_size],
                         ids=["truncated_data", "garbage_index", "garbage_data"])
def test_f4_corrupt_latest_checkpoint_falls_back_to_previous_and_says_so(tmp_path, stopped_at_8, reference, corrupt):
    d = U.copy_run(stopped_at_8, tmp_path / "run")
    bad = corrupt(d)
    r = U.ok(*U.BASE, f"--model_dir={d}")
    assert f"cannot restore {d}/{bad}" in r.out  # names the bad file
    assert U.restored(r.out) == (f"{d}/ckpt-4", 4)  # the previous one, not a fresh start
    U.assert_contiguous(U.train_steps(r.out), 4)
    U.assert_same_final_state(d, reference)


def test_f4_truncated_latest_checkpoint_falls_back(tmp_path, stopped_at_8):
    """Fast variant of the above: only the restore (a 0-step eval run)."""
    d = U.copy_run(stopped_at_8, tmp_path / "run")
    _truncate_data(d)
    r = U.ok(*U.BASE, f"--model_dir={d}", "--mode=eval")
    assert f"cannot restore {d}/ckpt-8" in r.out and "trying the previous checkpoint" in r.out
    assert "eval | step 4/16" in r.out and "train | step" not in r.out


def test_f4_every_checkpoint_corrupt_refuses_to_start_over(tmp_path, stopped_at_8):
    d = U.copy_run(stopped_at_8, tmp_path / "run")
    for n in (4, 8):
        p = os.path.join(d, f"ckpt-{n}.index")
        open(p, "wb").write(b"garbage")
    before = {f: open(os.path.join(d, f), "rb").read() for f in U.ckpt_files(d)}
    r = U.cli(*U.BASE, f"--model_dir={d}")
    assert r.returncode == 2, r.out[-3000:]
    assert "none can be restored" in r.out and f"{d}/ckpt-8" in r.out and f"{d}/ckpt-4" in r.out
    assert "train | step" not in r.out  # never a silent start from scratch
    assert {f: open(os.path.join(d, f), "rb").read() for f in U.ckpt_files(d)} == before


# ------------------------------------------------------------------ F5 where the resume happens


def test_f5_resume_at_a_loop_boundary_runs_only_the_remaining_loops(tmp_path, stopped_at_8, reference):
    d = U.copy_run(stopped_at_8, tmp_path / "run")
    r = U.ok(*U.BASE, f"--model_dir={d}")
    assert U.restored(r.out) == (f"{d}/ckpt-8", 8)
    U.assert_contiguous(U.train_steps(r.out), 8)
    U.assert_same_final_state(d, reference)


@pytest.mark.slow
def test_f5_resume_before_the_last_loop_and_after_the_last_step(tmp_path, reference):
    d = tmp_path / "run"
    r = U.ok(*U.BASE, f"--model_dir={d}", "--params_override={hooks: [{name: test_stop_at, step: 14}]}")
    assert U.train_steps(r.out)[-1] == 14 and U.latest_step(d) == 14
    # Resume for the last loop only; then killed after the final checkpoint, before exiting.
    p = U.Proc([*U.BASE, f"--model_dir={d}", "--params_override={hooks: [{name: rel_sleep, event: end, seconds: 30}]}"],
               tmp_path / "last.log")
    p.wait_for(r"rel_sleep: end at step 16")
    p.signal(signal.SIGKILL)
    p.wait(60)
    assert U.train_steps(p.text()) == [16] and U.restored(p.text())[1] == 14
    r = U.ok(*U.BASE, f"--model_dir={d}")
    assert "already finished" in r.out and "train | step" not in r.out
    U.assert_same_final_state(d, reference)


@pytest.mark.slow
def test_f5_sigkill_in_the_middle_of_an_eval(tmp_path, reference):
    d = tmp_path / "run"
    slow_eval = "task.eval_data.eval_delay_ms=10,task.eval_data.cache=false"  # ~4.5 s per eval
    p = U.Proc([*U.BASE, f"--model_dir={d}", f"--params_override={slow_eval}"], tmp_path / "first.log")
    p.wait_for(r"train \| step 8/16")
    time.sleep(1.0)
    assert "eval | step 8/16" not in p.text()  # still evaluating
    p.signal(signal.SIGKILL)
    p.wait(60)
    assert U.latest_step(d) == 4  # step 8 is saved after its eval: not reached
    r = U.ok(*U.BASE, f"--model_dir={d}")
    assert U.restored(r.out) == (f"{d}/ckpt-4", 4)
    U.assert_contiguous(U.train_steps(r.out), 4)
    assert "eval | step 8/16" in r.out and "eval | step 16/16" in r.out
    U.assert_same_final_state(d, reference)


@pytest.mark.slow
def test_f5_sigterm_in_the_middle_of_an_eval_loses_nothing(tmp_path, reference):
    d = tmp_path / "run"
    slow_eval = "task.eval_data.eval_delay_ms=10,task.eval_data.cache=false"
    p = U.Proc([*U.BASE, f"--model_dir={d}", f"--params_override={slow_eval}"], tmp_path / "first.log")
    p.wait_for(r"train \| step 8/16")
    time.sleep(1.0)
    assert "eval | step 8/16" not in p.text()
    p.signal(signal.SIGTERM)
    assert p.wait(120) == 0, p.text()[-3000:]
    text = p.text()
    assert "eval | step 8/16" in text  # the eval finished
    stop = U.train_steps(text)[-1]
    assert U.latest_step(d) == stop  # checkpoint at the step it stopped at: 0 steps lost
    r = U.ok(*U.BASE, f"--model_dir={d}")
    assert U.restored(r.out) == (f"{d}/ckpt-{stop}", stop)
    U.assert_contiguous(U.train_steps(r.out), stop)
    U.assert_same_final_state(d, reference)


# ------------------------------------------------------------------ F6 finished run


def test_f6_rerun_of_a_finished_run_exits_0_without_training(tmp_path, reference):
    d = U.copy_run(reference, tmp_path / "run")
    names = ["checkpoint", *U.ckpt_files(d), "metrics.json"]
    before = {f: (os.stat(os.path.join(d, f)).st_mtime_ns, open(os.path.join(d, f), "rb").read()) for f in names}
    r = U.ok(*U.BASE, f"--model_dir={d}")
    assert "already finished: step 16 of 16" in r.out and "train | step" not in r.out
    assert "done at step 16" in r.out
    after = {f: (os.stat(os.path.join(d, f)).st_mtime_ns, open(os.path.join(d, f), "rb").read()) for f in names}
    assert after == before  # nothing rewritten
    assert sorted(["checkpoint", *U.ckpt_files(d), "metrics.json"]) == sorted(names)


# ------------------------------------------------------------------ F7 files kept


def _index_files(d):
    return sorted((f for f in os.listdir(d) if f.endswith(".index")), key=lambda f: int(f[5:-6]))


def _listed(d):
    state = tf.train.get_checkpoint_state(str(d))
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths]


def test_f7_checkpoint_interval_and_max_to_keep_give_exactly_the_expected_files(tmp_path):
    d = tmp_path / "run"
    over = ("trainer.train_steps=10,trainer.steps_per_loop=3,trainer.checkpoint_interval=4,"
            "trainer.max_to_keep=3")
    r = U.ok(*U.BASE, f"--model_dir={d}", "--mode=train", f"--params_override={over}")
    # Loops end at multiples of 3 and of 4 and at the end: 3 4 6 8 9 10; saves at 4 8 and the end.
    assert U.train_steps(r.out) == [3, 4, 6, 8, 9, 10]
    assert _index_files(d) == ["ckpt-4.index", "ckpt-8.index", "ckpt-10.index"]
    assert _listed(d) == ["ckpt-4", "ckpt-8", "ckpt-10"]
    assert not [f for f in os.listdir(d) if "temp" in f or f.startswith("ckpt-") and not f.startswith(
        ("ckpt-4.", "ckpt-8.", "ckpt-10."))]


def test_f7_max_to_keep_holds_across_a_resume(tmp_path, stopped_at_8):
    d = U.copy_run(stopped_at_8, tmp_path / "run")
    U.ok(*U.BASE, f"--model_dir={d}", "--mode=train", "--params_override=trainer.max_to_keep=2")
    # Checkpoints 4 and 8 were written by the earlier process; the resumed one still prunes them.
    assert _index_files(d) == ["ckpt-12.index", "ckpt-16.index"]
    assert _listed(d) == ["ckpt-12", "ckpt-16"]
    assert len([f for f in os.listdir(d) if f.startswith("ckpt-")]) == 4


# ------------------------------------------------------------------ F12 two replicas, groups, Adam, dropout


@pytest.mark.slow
def test_f12_exact_resume_with_two_replicas_groups_adam_and_dropout(tmp_path):
    flags = ["--cpu_replicas=2", "--strategy=mirrored", "--params_override=task.model.dropout=0.3"]
    straight = tmp_path / "straight"
    U.ok(*U.BASE, f"--model_dir={straight}", *flags)
    d = tmp_path / "resumed"
    args = [*U.BASE, f"--model_dir={d}", *flags, f"--params_override={SLEEP}"]
    p = U.Proc(args, tmp_path / "first.log")
    p.wait_for(r"train \| step 6/16")
    p.signal(signal.SIGTERM)
    assert p.wait(120) == 0, p.text()[-3000:]
    assert "MirroredStrategy: 2 replica(s)" in p.text()
    stop = U.train_steps(p.text())[-1]
    assert stop < U.TOTAL and U.latest_step(d) == stop
    r = U.ok(*args)
    assert U.restored(r.out) == (f"{d}/ckpt-{stop}", stop)
    U.assert_contiguous(U.train_steps(r.out), stop)
    _, a = U.state(straight)
    _, b = U.state(d)
    # The dropout RNG state is in the checkpoint (docs/design.md#t9): its variable is among the compared ones.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(d)))
    assert "seed_generator" in reader.get_tensor("model_paths/.ATTRIBUTES/VARIABLE_VALUE").decode()
    U.assert_same_final_state(d, straight)
    assert len([k for k in a if k.startswith("optimizer/")]) >= 2 + 2 * 4  # Adam slots of every variable
