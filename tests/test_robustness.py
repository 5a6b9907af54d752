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
        intruder.send_multipart([b'{"v": 1, "codec": "json", "kind": "item"}', b"x" * (2 << 20)])  # oversized
        intruder.send_multipart([b'{"v": 1, "codec": "pickle", "kind": "item", "slot": [3, [65536]]}', b"x"])  # no such full slot
        intruder.close()
        more = [next(it) for _ in range(60)]
        health = bl.health()[0]
    assert all(i["btid"] == 0 for i in first + more)
    seqs = [i["seq"] for i in first + more]
    assert seqs == list(range(len(seqs)))  # the real stream went on without a gap
    assert health.dropped_messages >= 4
    assert any("malformed" in w or "truncated" in w or "unpickle" in w for w in health.warnings)
    assert any("not a full slot" in w for w in health.warnings)


def test_slow_consumer_makes_blender_wait(ray_session):
    """Backpressure: while the consumer pauses, the instance produces a bounded number."""
    batch_size, in_flight = 4, 2
    with BlenderLauncher(
        script=str(TEST_SCRIPTS / "forever.py"), batch_size=batch_size, max_batches_in_flight=in_flight
    ) as bl:
        it = iter(bl.dataset(timeout=60))
        [next(it) for _ in range(20)]
        time.sleep(2.0)
        produced_a = bl.health()[0].items
        time.sleep(3.0)  # consumer still paused
        produced_b = bl.health()[0].items
        rest = [next(it) for _ in range(50)]
    assert produced_b == produced_a, "the actor kept receiving while nobody consumed"
    assert len(rest) == 50


@pytest.mark.parametrize("size", [8, 128], ids=["inline", "slots"])
def test_recycle_after_n_items_has_no_gap_and_keeps_the_instance_id(ray_session, size):
    """Also with 64 KiB items, whose arrays sit in the old Blender's slot file while it is
    replaced (drained items are copied, forwarded ones read before the file goes)."""
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), recycle_after_items=25,
                         instance_args=[["--size", str(size)]]) as bl:
        it = iter(bl.dataset(timeout=60))
        rss_before = bl.health()[0].rss_bytes
        pids = {bl.pids()[0]}
        items = []
        while len({i["epoch"] for i in items}) < 3:
            items.append(next(it))
            if len(items) % 10 == 0:
                pids.add(bl.pids()[0])
        health = bl.health()[0]
    epochs = sorted({i["epoch"] for i in items})
    assert epochs[:3] == [0, 1, 2]
    assert all(np.all(i["arr"] == i["seq"]) for i in items)
    for e in epochs[:-1]:
        seqs = [i["seq"] for i in items if i["epoch"] == e]
        assert seqs == list(range(len(seqs))) and len(seqs) >= 25
    assert {i["btid"] for i in items} == {0}
    assert health.recycles >= 2 and health.restarts == 0 and health.lost_items == 0
    assert len({i["seed"] for i in items}) == len(epochs)
    print(f"RSS before {rss_before / 2**20:.0f} MiB, after {health.rss_bytes / 2**20:.0f} MiB, pids seen {len(pids)}")


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
