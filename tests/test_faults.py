"""Fault tests with real processes: Blender killed mid-stream, driver killed, clean close."""

import os
import signal
import subprocess
import sys
import time

import pytest

from blendtorch_ray import BlenderCrashedError, BlenderLauncher
from conftest import REPO, TEST_SCRIPTS, pid_alive, wait_until

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_sigkilled_blender_is_restarted_and_stream_goes_on(ray_session, caplog):
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2, restart_backoff=0.2) as bl:
        it = iter(bl.dataset(timeout=60))
        before = [next(it) for _ in range(40)]
        old_pids = bl.pids()
        os.kill(old_pids[0], signal.SIGKILL)
        after = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            item = next(it)
            after.append(item)
            if item["btid"] == 0 and item["epoch"] == 1 and len(after) > 20:
                break
        health = bl.health()
        new_pids = bl.pids()
    assert any(i["btid"] == 0 and i["epoch"] == 1 for i in after), "instance 0 never came back"
    assert health[0].restarts == 1 and health[1].restarts == 0
    assert "killed by SIGKILL" in (health[0].last_error or "")
    assert new_pids[0] != old_pids[0] and new_pids[1] == old_pids[1]
    # Same btid, new seed epoch; no item delivered twice.
    restarted = [i for i in after if i["btid"] == 0 and i["epoch"] == 1]
    assert {i["seed"] for i in restarted}.isdisjoint({i["seed"] for i in before + after if i["epoch"] == 0})
    keys = [(i["btid"], i["epoch"], i["seq"]) for i in before + after]
    assert len(keys) == len(set(keys))
    assert not pid_alive(old_pids[0])


def test_crash_loop_is_bounded_and_reported(ray_session, write_script):
    script = write_script(
        """
        import blender_worker as bw
        launch, _ = bw.parse_launch_args()
        pub = bw.DataPublisher(launch)
        for i in range(3):
            pub.publish(i=i)
        pub.close()
        raise RuntimeError(f"crash in epoch {launch.epoch}")
        """
    )
    with BlenderLauncher(script=script, max_restarts=2, restart_backoff=0.1) as bl:
        got = []
        with pytest.raises(BlenderCrashedError) as err:
            for item in bl.dataset(timeout=60):
                got.append((item["epoch"], item["i"]))
    assert got == [(e, i) for e in range(3) for i in range(3)]
    msg = str(err.value)
    assert "gave up after 2 restart(s)" in msg and "crash in epoch 2" in msg


def test_close_leaves_no_blender_process(ray_session):
    bl = BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2).start()
    pids = bl.pids()
    assert all(pid_alive(p) for p in pids)
    bl.close()
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=15)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_driver_leaves_no_orphan_blender(sig):
    """A separate driver process (its own local Ray) is killed; its Blenders must go too."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "drivers" / "launch_and_wait.py"), str(TEST_SCRIPTS / "forever.py"), "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True,
    )
    try:
        pids = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = driver.stdout.readline()
            if line.startswith("PIDS"):
                pids = [int(p) for p in line.split()[1:]]
                break
            if not line and driver.poll() is not None:
                break
        assert len(pids) == 2, "driver did not report its Blender pids"
        assert all(pid_alive(p) for p in pids)
        os.kill(driver.pid, sig)
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=30), (
            f"Blender processes {[p for p in pids if pid_alive(p)]} outlived their driver"
        )
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(10)


def test_shared_memory_files_do_not_outlive_their_actor(ray_session):
    """Slot files, rings and render scratch files live in the actor's /dev/shm directory:
    removed on close, and swept by the next actor on the node when an actor was SIGKILLed."""
    import ray

    from blender_worker.scenes import CUBE

    with BlenderLauncher(script=CUBE, max_actor_restarts=1, instance_args=[["--width", "320", "--height", "240"]]) as bl:
        it = iter(bl.dataset(timeout=120))
        [next(it) for _ in range(10)]
        (actor,) = bl.actors
        ep = ray.get(actor.endpoints.remote())
        mem_dir = ep["memory_dir"]
        names = os.listdir(mem_dir)
        assert any(n.startswith("slots-") for n in names) and any(n.startswith("btr-render-") for n in names)
        os.kill(ep["blender_pid"], signal.SIGKILL)  # Blender dies: its scratch files stay in mem_dir...
        [next(it) for _ in range(10)]  # ...and the restarted one carries on
        os.kill(ep["actor_pid"], signal.SIGKILL)  # the actor dies: nobody cleans up mem_dir itself
        del it
        # Ray recreates the actor; on start it sweeps directories of dead actors.
        assert wait_until(lambda: not os.path.exists(mem_dir), timeout=90), f"{mem_dir} outlived its actor"
        assert not os.path.exists(ep["dir"]), "the killed actor's socket/log directory was not swept"
        new_dir = ray.get(actor.endpoints.remote())["memory_dir"]
        assert os.path.isdir(new_dir)
    assert wait_until(lambda: not os.path.exists(new_dir), timeout=15), "close() left the memory directory"
