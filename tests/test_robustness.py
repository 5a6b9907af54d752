"""Bad input gets a clear error and the rest goes on; Blender recycling; nobody gets in."""

import os
import stat
import time

import psutil
import numpy as np
import pytest
import zmq

from blendtorch_ray import BlenderCrashedError, BlenderLauncher, BlenderNotFoundError
from conftest import TEST_SCRIPTS

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_script_raising_in_pre_frame_after_10_frames(ray_session, write_script):
    script = write_script(
        """
        import blender_worker as bw
        launch, _ = bw.parse_launch_args()
        pub = bw.DataPublisher(launch)
        anim = bw.AnimationController()
        def pre_frame():
            if anim.frameid > 10:
                raise ValueError("bad parameter in pre_frame")
        anim.pre_frame.add(pre_frame)
        anim.post_frame.add(lambda: pub.publish(frame=anim.frameid))
        anim.play(frame_range=(1, 100), num_episodes=1, use_physics=False)
        """
    )
    with BlenderLauncher(script=script, max_restarts=1, restart_backoff=0.1) as bl:
        frames = []
        with pytest.raises(BlenderCrashedError) as err:
            for item in bl.dataset(timeout=60):
                frames.append((item["epoch"], item["frame"]))
    assert frames == [(e, f) for e in (0, 1) for f in range(1, 11)]
    msg = str(err.value)
    assert "bad parameter in pre_frame" in msg and "in pre_frame" in msg and "Blender instance 0" in msg


def test_unpicklable_item_names_the_cause(ray_session, write_script):
    script = write_script(
        """
        import threading
        import blender_worker as bw
        launch, _ = bw.parse_launch_args()
        pub = bw.DataPublisher(launch)
        pub.publish(ok=1)
        pub.publish(lock=threading.Lock())
        """
    )
    with BlenderLauncher(script=script, max_restarts=0) as bl:
        got = []
        with pytest.raises(BlenderCrashedError, match="cannot pickle published item") as err:
            for item in bl.dataset(timeout=60):
                got.append(item["ok"])
    assert got == [1]
    assert "gave up after 0 restart(s)" in str(err.value)


def test_missing_blender_binary_and_oversized_groups_fail_fast(ray_session, tmp_path):
    with pytest.raises(BlenderNotFoundError, match="does not exist"):
        BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), blender=str(tmp_path / "blender-4.2")).start()
    with pytest.raises(ValueError, match=r"do not fit in this Ray cluster \(blender: need 2, cluster has 0\)"):
        BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2, resources={"blender": 1}).start()
    with pytest.raises(ValueError, match="CPU: need 1000"):
        BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=1000, num_cpus=1).start()
    # The local-mode default share (min(1, CPUs / instances)) has a floor of 0.25 per instance.
    with pytest.raises(ValueError, match="CPU: need 250"):
        BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=1000).start()


def test_malformed_truncated_and_oversized_messages_are_dropped(ray_session):
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), max_message_mb=1) as bl:
        it = iter(bl.dataset(timeout=60))
        first = [next(it) for _ in range(10)]
        (actor,) = bl.actors
        address = __import__("ray").get(actor.endpoints.remote())["data"]
        ctx = zmq.Context.instance()
        intruder = ctx.socket(zmq.PUSH)
        intruder.setsockopt(zmq.LINGER, 2000)
        intruder.connect(address)
        intruder.send_multipart([b"garbage"])  # truncated: one frame
        intruder.send_multipart([b"not json", b"x"])  # malformed header
        intruder.send_multipart([b'{"v": 1, "codec": "pickle", "kind": "item"}', b"\x80\x05junk"])
        oversized = [b'{"v": 1, "codec": "json", "kind": "item"}', b"x" * (2 << 20)]
        intruder.send_multipart(oversized)
        intruder.send_multipart([b'{"v": 1, "codec": "pickle", "kind": "item", "slot": [3, [65536]]}', b"x"])  # no such full slot
        intruder.close()
        more = [next(it) for _ in range(60)]
        health = bl.health()[0]
    assert all(i["btid"] == 0 for i in first + more)
    seqs = [i["seq"] for i in first + more]
    assert seqs == list(range(len(seqs)))  # the real stream went on without a gap
    assert health.dropped_messages == 5  # each bad message counted once, no real item dropped
    assert any("malformed" in w for w in health.warnings)
    assert any("truncated" in w for w in health.warnings)
    assert any("unpickle" in w for w in health.warnings)
    assert any("not a full slot" in w for w in health.warnings)
    size = sum(len(f) for f in oversized)
    assert any(f"oversized message: {size} bytes (2.0 MiB) over max_message_mb=1;" in w for w in health.warnings)


def test_an_oversized_item_from_blender_is_dropped_counted_and_warned(ray_session, write_script):
    """An item whose socket message exceeds max_message_mb (its arrays are too large for a
    shared-memory slot) is dropped by the actor after receipt, counted and warned about, and
    the items after it arrive. (ZeroMQ's own MAXMSGSIZE would disconnect Blender mid-message
    and lose the item without a word.)"""
    script = write_script(
        """
        import numpy as np
        import blender_worker as bw
        launch, _ = bw.parse_launch_args()
        pub = bw.DataPublisher(launch)
        for i in range(30):
            pub.publish(arr=np.full((2 << 20) if i == 10 else 8, i, np.uint8), i=i)
        pub.close()
        """
    )
    with BlenderLauncher(script=script, max_message_mb=1, item_slot_mb=1, max_restarts=0) as bl:
        items = list(bl.dataset(timeout=60))
        health = bl.health()[0]
    expected = [i for i in range(30) if i != 10]
    assert [i["i"] for i in items] == expected and [i["seq"] for i in items] == expected
    assert all(np.all(i["arr"] == i["i"]) and i["arr"].size == 8 for i in items)
    assert health.dropped_messages == 1
    oversized = [w for w in health.warnings if "oversized message" in w]
    assert len(oversized) == 1
    assert "MiB) over max_message_mb=1;" in oversized[0] and "(2.0 MiB)" in oversized[0]
    # The end marker says 30 were sent; the dropped one is also reported as lost.
    assert health.lost_items == 1


def test_slow_consumer_makes_blender_wait(ray_session):
    """Backpressure: while the consumer pauses, the instance produces a bounded number."""
    batch_size, in_flight = 4, 2
    with BlenderLauncher(
        script=str(TEST_SCRIPTS / "forever.py"), batch_size=batch_size, max_batches_in_flight=in_flight
    ) as bl:
        it = iter(bl.dataset(timeout=60))
        first = [next(it) for _ in range(20)]
        time.sleep(2.0)
        produced_a = bl.health()[0].items
        time.sleep(3.0)  # consumer still paused
        produced_b = bl.health()[0].items
        rest = [next(it) for _ in range(50)]
        health = bl.health()[0]
    assert produced_b == produced_a, "the actor kept receiving while nobody consumed"
    print(f"received while paused: {produced_a} ({produced_a - 20} ahead of the consumer)")
    # At most max_batches_in_flight unconsumed batches plus the one being filled (README).
    assert produced_a - 20 <= batch_size * (in_flight + 1)
    # Blender waited instead of losing what it could not send: no gap, nothing dropped.
    assert [i["seq"] for i in first + rest] == list(range(70))
    assert all(np.all(i["arr"] == i["seq"]) for i in first + rest)
    assert health.dropped_messages == 0 and health.lost_items == 0 and health.restarts == 0


@pytest.mark.parametrize("size", [8, 128], ids=["inline", "slots"])
def test_recycle_after_n_items_has_no_gap_and_keeps_the_instance_id(ray_session, size):
    """Also with 64 KiB items, whose arrays sit in the old Blender's slot file while it is
    replaced (drained items are copied, forwarded ones read before the file goes)."""
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), recycle_after_items=25,
                         instance_args=[["--size", str(size)]]) as bl:
        it = iter(bl.dataset(timeout=60))
        rss_before = bl.health()[0].rss_bytes
        items = []
        while len({i["epoch"] for i in items}) < 3:
            items.append(next(it))
        health = bl.health()[0]
        pids = {e: {i["pid"] for i in items if i["epoch"] == e} for e in {i["epoch"] for i in items}}
        replaced = [p for e in sorted(pids)[:-1] for p in pids[e]]
        still_running = [p for p in replaced if psutil.pid_exists(p)]
    epochs = sorted({i["epoch"] for i in items})
    assert epochs[:3] == [0, 1, 2]
    assert all(np.all(i["arr"] == i["seq"]) for i in items)
    # One sequence across the recycles, one stream seed (blendtorch_ray/resume.py): no gap, no repeat.
    assert [i["seq"] for i in items] == list(range(len(items)))
    assert all(len([i for i in items if i["epoch"] == e]) >= 25 for e in epochs[:-1])
    assert {i["btid"] for i in items} == {0}
    assert health.recycles >= 2 and health.restarts == 0 and health.lost_items == 0
    assert len({i["seed"] for i in items}) == 1
    # Each epoch came from one Blender process of its own, and the replaced ones are gone.
    assert all(len(p) == 1 for p in pids.values()) and len(set().union(*pids.values())) == len(epochs)
    assert still_running == [], "a recycled Blender is still running"
    print(f"RSS before {rss_before / 2**20:.0f} MiB, after {health.rss_bytes / 2**20:.0f} MiB")
    # RSS is the live Blender's (bpy loaded: tens of MiB at least), not 0 or a wrapper's.
    assert rss_before > 50 * 2**20 and health.rss_bytes > 50 * 2**20


def test_recycle_rss_mb_replaces_blender_above_the_limit(ray_session):
    """recycle_rss_mb=1 is below any Blender's resident memory: the actor replaces Blender
    at each RSS check (every 8 items), without a gap."""
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), recycle_rss_mb=1) as bl:
        it = iter(bl.dataset(timeout=60))
        items = []
        while len({i["epoch"] for i in items}) < 4 and len(items) < 200:
            items.append(next(it))
        health = bl.health()[0]
    epochs = sorted({i["epoch"] for i in items})
    assert epochs == [0, 1, 2, 3], f"recycled {health.recycles} time(s) in {len(items)} items"
    assert [i["seq"] for i in items] == list(range(len(items)))  # one sequence across the recycles
    assert all(len([i for i in items if i["epoch"] == e]) >= 8 for e in epochs[:-1])
    assert len({i["pid"] for i in items}) == 4
    assert health.recycles >= 3 and health.restarts == 0 and health.lost_items == 0


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_no_socket_listens_beyond_loopback_or_a_private_dir(ray_session, transport):
    import ray

    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2, transport=transport) as bl:
        list(bl.dataset(max_items=10))
        for actor in bl.actors:
            ep = ray.get(actor.endpoints.remote())
            blender = psutil.Process(ep["blender_pid"])
            listening = [c for c in blender.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            assert listening == [], f"Blender listens on {listening}"
            if transport == "ipc":
                assert ep["data"].startswith("ipc://" + ep["dir"])
                assert stat.S_IMODE(os.stat(ep["dir"]).st_mode) == 0o700
            else:
                port = int(ep["data"].rsplit(":", 1)[1])
                mine = [c for c in psutil.Process(ep["actor_pid"]).net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
                assert mine and all(c.laddr.ip == "127.0.0.1" for c in mine)
