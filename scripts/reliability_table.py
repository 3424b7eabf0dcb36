"""Runs the reliability scenarios (tests/reliability, slow ones included) and writes their table.

    .venv/bin/python scripts/reliability_table.py [extra pytest args]

Runs pytest with --junitxml, groups the test cases by scenario id (F1..F12, B1..B9, S1..S4; F8/F9
come from tests/test_nonfinite.py, which runs too) and writes tests/reliability/RESULTS.md: faults
survived, bad inputs rejected and security checks passed, with counts, the machine and the date.
The summary table is also copied between the markers of tests/reliability/README.md.
Exits with pytest's status.
"""
from __future__ import annotations

import collections
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "reliability", "RESULTS.md")
README = os.path.join(ROOT, "tests", "reliability", "README.md")
TARGETS = ["tests/reliability", "tests/test_nonfinite.py"]

CATEGORIES = {"F": "Faults survived", "B": "Bad inputs rejected", "S": "Security checks passed"}
SCENARIOS = {
    "F1": "SIGTERM mid-run: checkpoint at the loop boundary, exit 0, exact resume",
    "F2": "SIGKILL at random points, 3 times: lost <= checkpoint_interval, bit-identical end",
    "F3": "Kill during a save (SIGKILL inside a save; partial files): index names a complete checkpoint",
    "F4": "Latest checkpoint truncated / garbage: fall back to the previous one and say so",
    "F5": "Resume at a loop boundary, before/after the last step, in the middle of an eval",
    "F6": "Re-run of a finished run: exit 0, no training, nothing rewritten",
    "F7": "checkpoint_interval and max_to_keep give exactly the expected files (across a resume)",
    "F8": "Non-finite loss under each NaN policy (tests/test_nonfinite.py)",
    "F9": "Non-finite step leaves weights untouched / restore policy (tests/test_nonfinite.py)",
    "F10": "Exception in / SIGKILL of one multi-worker process: no hang, non-zero exit",
    "F11": "model_dir full or read-only at save time: clear error, previous checkpoint intact",
    "F12": "Exact resume with 2 replicas, parameter groups, Adam and dropout",
    "B1": "Unknown experiment", "B2": "Bad flag values (lr <= 0, batch 0, strategy, clip <= 0 / NaN)",
    "B3": "Batch not divisible by replicas", "B4": "Feature shape / dtype not matching the model",
    "B5": "Sparse label out of range", "B6": "Empty dataset", "B7": "Partial batches on 2 replicas (no NaN)",
    "B8": "Checkpoint from a different model (mismatches listed, nothing loaded)",
    "B9": "Parameter-group pattern matching nothing",
    "S1": "Experiment / import by name only, never a file path",
    "S2": "Every output inside model_dir (sweep names, export subdir)",
    "S3": "Exported .keras loads with safe_mode=True",
    "S4": "No TensorBoard or other server started by the tool",
}
NONFINITE = {"test_terminate_names_step_and_keeps_last_good_checkpoint": "F8",
             "test_skip_leaves_weights_untouched_on_that_step_and_counts_it": "F8",
             "test_restore_goes_back_then_terminates_after_max_restores": "F8",
             "test_skipped_step_changes_nothing": "F9"}


def scenario_of(name: str) -> str | None:
    """Scenario id of a test case name (`test_f10_...`, `test_...[B2_lr_zero]`)."""
    if name in NONFINITE:
        return NONFINITE[name]
    m = re.search(r"\[([BFS]\d+)_", name) or re.match(r"test_([bfs]\d+)_", name)
    return m.group(1).upper() if m else None


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = []
    for pkg in ("tensorflow", "keras"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"{platform.node()}: {platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPU(s); "
            f"Python {platform.python_version()}, {', '.join(versions)}")


def run_pytest(junit: str, extra: list[str]) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "pytest", *TARGETS, "-p", "no:cacheprovider", "-q", "-rs", "--timeout=1800",
           f"--junitxml={junit}", *extra]
    print("+", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    return code, time.monotonic() - t0


def parse(junit: str) -> list[dict]:
    cases = []
    for tc in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or "").strip().splitlines()[0][:300] if el.get("message") else ""
                break
        name = tc.get("name", "")
        cases.append({"name": name, "file": (tc.get("classname") or "").replace(".", "/") + ".py",
                      "time": float(tc.get("time") or 0.0), "outcome": outcome, "message": message,
                      "scenario": scenario_of(name)})
    return cases


def render(cases: list[dict], *, code: int, seconds: float) -> tuple[str, str]:
    """(RESULTS.md text, summary table for the README)."""
    by = collections.defaultdict(list)
    for c in cases:
        by[c["scenario"]].append(c)
    summary = ["| | scenarios passed | test cases passed | failed | skipped |", "|---|---|---|---|---|"]
    sections = []
    for prefix, title in CATEGORIES.items():
        ids = [s for s in SCENARIOS if s.startswith(prefix)]
        ok_scen = sum(1 for s in ids if by.get(s) and all(c["outcome"] == "passed" for c in by[s]))
        tcs = [c for s in ids for c in by.get(s, [])]
        n = collections.Counter(c["outcome"] for c in tcs)
        summary.append(f"| {title} | {ok_scen}/{len(ids)} | {n['passed']}/{len(tcs)} | "
                       f"{n['failed'] + n['error']} | {n['skipped']} |")
        rows = [f"### {title}", "", "| id | scenario | tests | passed | failed | skipped | time (s) |",
                "|---|---|---|---|---|---|---|"]
        for s in ids:
            cs = by.get(s, [])
            k = collections.Counter(c["outcome"] for c in cs)
            mark = "PASS" if cs and k["passed"] == len(cs) else ("SKIP" if cs and k["skipped"] and not
                                                                  (k["failed"] + k["error"]) else
                                                                  ("not run" if not cs else "FAIL"))
            rows.append(f"| {s} {mark} | {SCENARIOS[s]} | {len(cs)} | {k['passed']} | {k['failed'] + k['error']} | "
                        f"{k['skipped']} | {sum(c['time'] for c in cs):.1f} |")
        sections.append("\n".join(rows))
    other = by.get(None, [])
    detail = ["| test | file | scenario | outcome | time (s) |", "|---|---|---|---|---|"]
    for c in sorted(cases, key=lambda c: (c["file"], c["name"])):
        detail.append(f"| `{c['name']}` | {c['file']} | {c['scenario'] or '-'} | {c['outcome']} | {c['time']:.1f} |")
    problems = [f"- `{c['name']}` ({c['outcome']}): {c['message']}" for c in cases if c["outcome"] != "passed"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    total = collections.Counter(c["outcome"] for c in cases)
    head = [
        "# Reliability results",
        "",
        f"Generated by `scripts/reliability_table.py` on {now}; pytest exit status {code}, "
        f"{len(cases)} test cases in {seconds / 60:.1f} min ({total['passed']} passed, "
        f"{total['failed'] + total['error']} failed, {total['skipped']} skipped).",
        "",
        f"Machine: {machine()}.",
        "",
        "Scenarios are described in [README.md](README.md). A scenario passes when all its test cases pass.",
        "",
    ]
    text = "\n".join(head + summary + [""] + ["\n\n".join(sections), ""]
                     + (["### Not passed", "", *problems, ""] if problems else [])
                     + (["Unassigned test cases: " + ", ".join(c["name"] for c in other), ""] if other else [])
                     + ["### Every test case", "", *detail, ""])
    table = "\n".join([f"Last run: {now} on {platform.node()} ({os.cpu_count()} CPUs), "
                       f"{total['passed']}/{len(cases)} test cases passed. Details: [RESULTS.md](RESULTS.md).", "",
                       *summary])
    return text, table


def update_readme(table: str) -> None:
    if not os.path.exists(README):
        return
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start in text and end in text:
        text = text[: text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):]
        with open(README, "w", encoding="utf-8") as f:
            f.write(text)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "junit.xml")
        code, seconds = run_pytest(junit, argv)
        if not os.path.exists(junit):
            print("reliability_table: pytest wrote no junit report", file=sys.stderr)
            return code or 1
        cases = parse(junit)
    text, table = render(cases, code=code, seconds=seconds)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    update_readme(table)
    print(f"wrote {os.path.relpath(OUT, ROOT)}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
