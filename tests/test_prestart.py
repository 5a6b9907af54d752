"""Local mode starts Blender while Ray starts, and the actors adopt those processes
(blendtorch_ray/prestart.py). Run in a fresh driver process: prestart applies only when
the launcher itself starts Ray."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TEST_SCRIPTS, pid_alive, wait_until

pytestmark = [pytest.mark.blender, pytest.mark.ray, pytest.mark.slow]


def test_prestarted_blender_is_adopted_supervised_and_cleaned_up():
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, str(REPO / "tests" / "drivers" / "prestart_check.py"),
                          str(TEST_SCRIPTS / "forever.py")], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, run.stderr[-3000:]
    out = json.loads(lines[0].split(" ", 1)[1])
    # The actors run the very processes the driver started before Ray was up.
    assert out["pids"] == out["prestarted"] and out["parents"] == [out["driver"]] * 2
    # Killing an adopted Blender: noticed, restarted by its actor (as its own child), no duplicates.
    assert out["restarts"] == [1, 0] and "SIGKILL" in (out["last_error"] or "")
    assert out["new_pids"][0] != out["pids"][0] and out["new_parent"] == out["actor_pid"]
    assert out["unique"] and out["arrays_ok"]
    # Nothing outlives the driver: no Blender, no shared-memory directory.
    assert wait_until(lambda: not any(pid_alive(p) for p in out["pids"] + out["new_pids"]), timeout=30)
    assert not any(os.path.exists(d) for d in out["memory_dirs"])


def _early_read(mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, str(REPO / "tests" / "drivers" / "early_read_check.py"), mode,
                          str(TEST_SCRIPTS / "forever.py")], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, run.stderr[-3000:]
    return json.loads(lines[0].split(" ", 1)[1])


def test_the_first_items_come_before_ray_and_the_actors_take_over_without_a_gap():
    out = _early_read("main")
    assert out["first_before_up"]
    # The driver held items nobody had taken when the actors took over: they came first from the actors.
    assert sum(out["leftovers"]) > 0 and out["paths"]["ring"] > 0
    assert all(out["contiguous"].values()) and sum(out["counts"].values()) == 88 and out["arrays_ok"]
    # The very processes the driver started, never restarted; nothing outlives the driver.
    assert out["pids"] == out["prestarted"] and out["restarts"] == [0, 0]
    # health() counts what the driver read too.
    assert all(n >= c for n, c in zip(out["health_items"], out["counts"].values())) and min(out["fps"]) > 0
    assert wait_until(lambda: not any(pid_alive(p) for p in out["pids"]), timeout=30)
    assert not any(os.path.exists(d) for d in out["dirs"])


def test_dataloader_workers_read_from_the_start_once_the_group_is_up():
    out = _early_read("workers")
    assert all(out["contiguous"].values()) and sum(out["counts"].values()) == 64 and out["arrays_ok"]
    assert min(out["counts"].values()) > 0 and out["pids"] == out["prestarted"] and out["restarts"] == [0, 0]
