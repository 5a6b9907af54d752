"""Fault tests with real processes: Blender killed mid-stream, driver killed, clean close."""

import json
import os
import re
import signal
import time

import psutil
import pytest

from blendtorch_ray import BlenderCrashedError, BlenderLauncher
from conftest import REPO, TEST_SCRIPTS, pid_alive, wait_until
from drivers.driver_process import DriverProcess

DRIVERS = REPO / "tests" / "drivers"

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_sigkilled_blender_is_restarted_and_stream_goes_on(ray_session):
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
    # What the driver is told: one restart warning for instance 0, nothing for instance 1.
    assert health[0].warnings == [health[0].last_error]
    assert re.fullmatch(r"Blender instance 0: Blender killed by SIGKILL; restarting in 0\.2s \(restart 1\)",
                        health[0].warnings[0])
    assert health[1].warnings == [] and health[1].last_error is None
    assert new_pids[0] != old_pids[0] and new_pids[1] == old_pids[1]
    # Same btid and stream seed, the sequence goes on (blendtorch_ray/resume.py); no item twice.
    restarted = [i for i in after if i["btid"] == 0 and i["epoch"] == 1]
    assert {i["seed"] for i in restarted} == {i["seed"] for i in before if i["btid"] == 0}
    assert restarted[0]["seq"] > max(i["seq"] for i in before + after if i["btid"] == 0 and i["epoch"] == 0)
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


def test_restart_warning_reaches_the_driver_log(tmp_path):
    """README: after a Blender crash "the driver sees a warning". In local mode (Ray started by
    the launcher, log_to_driver on) the actor's warning is forwarded by Ray to the driver's
    stderr, tagged with the actor's pid; health() carries the same text."""
    driver = DriverProcess([str(DRIVERS / "restart_warning.py"), str(TEST_SCRIPTS / "forever.py")],
                           tmp_path / "driver.err", stdin=True)
    try:
        out = json.loads(driver.wait_line("RESTARTED", timeout=180))
        text = "Blender instance 0: Blender killed by SIGKILL; restarting in 0.2s (restart 1)"
        assert out["restarts"] == 1 and out["warnings"] == [text] and out["last_error"] == text
        # Ray's log monitor forwards worker output asynchronously: wait for it, bounded.
        line = re.compile(r"\(BlenderActor pid=%d\)\S* %s$" % (out["actor_pid"], re.escape(text)), re.MULTILINE)
        assert wait_until(lambda: line.search(driver.stderr()), timeout=60), (
            f"the restart warning never reached the driver's stderr:\n{driver.stderr()[-5000:]}")
        driver.send("\n")
        driver.wait_line("CLOSED", timeout=60)
    finally:
        driver.cleanup()


def _gone(pid: int, create_time: float) -> bool:
    """True once the process ``pid`` started at ``create_time`` has ended (zombies count as gone)."""
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) > 0.05 or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("mode, sig", [("prestart", signal.SIGKILL), ("prestart", signal.SIGINT),
                                       ("ray-first", signal.SIGKILL)],
                         ids=["prestart-SIGKILL", "prestart-SIGINT", "ray-first-SIGKILL"])
def test_killed_driver_leaves_no_orphan(mode, sig, tmp_path):
    """A separate driver process with its own local Ray is killed: its Blenders go, and so does
    every process of its Ray (gcs_server, raylet, agents, actors).

    prestart: the launcher starts Ray, and the first Blenders are the driver's own children.
    ray-first: the driver called ray.init() before launching, so each Blender is the child
    of its actor (what every restarted Blender and every cluster instance is)."""
    driver = DriverProcess([str(DRIVERS / "launch_and_wait.py"), str(TEST_SCRIPTS / "forever.py"), "2", mode],
                           tmp_path / "driver.err")
    try:
        pids = [int(p) for p in driver.wait_line("PIDS", timeout=180).split()]
        info = json.loads(driver.wait_line("PROCS", timeout=30))
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        names = {pid: name for pid, _, name in info["procs"]}
        if mode == "prestart":
            assert info["parents"] == [driver.pid] * 2
        else:
            assert all(names.get(p) == "ray::BlenderActor" for p in info["parents"]), (info["parents"], names)
        ray_procs = {(pid, ct): name for pid, ct, name in info["procs"] if pid not in pids}
        assert {"gcs_server", "raylet", "ray::BlenderActor"} <= set(ray_procs.values()), ray_procs
        driver.kill(sig)
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=30), (
            f"Blender processes {[p for p in pids if pid_alive(p)]} outlived their driver"
        )
        # Ray's dashboard and runtime-env agents notice the dead raylet by polling, then try
        # to report it to the dead GCS: after a SIGKILL they go last (measured ~62 s, Ray 2.60).
        assert wait_until(lambda: all(_gone(p, ct) for p, ct in ray_procs), timeout=150), (
            "Ray processes outlived their driver: "
            f"{sorted((p, n) for (p, ct), n in ray_procs.items() if not _gone(p, ct))}"
        )
    finally:
        driver.cleanup()


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
        # The sweep runs while the recreated actor starts: until it is up, Ray answers a call
        # with ActorUnavailableError ("the actor is restarting").
        recreated = {}

        def _endpoints() -> bool:
            try:
                recreated.update(ray.get(actor.endpoints.remote(), timeout=30))
                return True
            except ray.exceptions.ActorUnavailableError:
                return False

        assert wait_until(_endpoints, timeout=90), "the recreated actor never answered"
        new_dir = recreated["memory_dir"]
        assert os.path.isdir(new_dir)
    assert wait_until(lambda: not os.path.exists(new_dir), timeout=15), "close() left the memory directory"


def test_an_actor_killed_between_two_iterations_is_read_on_where_the_dataset_stands(ray_session):
    """The first iteration leaves its stream open (open_streams.py); its actor is SIGKILLed
    before the second one. The second reads what the old actor had sent (its ring outlives it
    in this process), then the recreated actor's new Blender, gap-free."""
    import ray

    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_cpus=0.5, batch_size=4,
                         max_actor_restarts=1) as bl:
        ds = bl.dataset(max_items=10, timeout=120)
        first = list(ds)
        ep = ray.get(bl.actors[0].endpoints.remote())
        os.kill(ep["actor_pid"], signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(ep["actor_pid"]), timeout=30)
        ds.max_items = 40  # more than the batches in flight: what the old actor had sent comes first
        second = list(ds)
        ds.close()
    assert [int(it["seq"]) for it in first + second] == list(range(50))
    assert {int(it["pid"]) for it in first} == {ep["blender_pid"]}
    pids = [int(it["pid"]) for it in second]
    assert pids[-1] != ep["blender_pid"], pids  # rendered by the recreated actor's new Blender
    assert not pid_alive(ep["blender_pid"])
