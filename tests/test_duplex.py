"""Duplex channel: real Blender (bpy wheel), real Ray actors, real ZeroMQ."""

from __future__ import annotations

import numpy as np
import pytest

from blendtorch_ray import BlenderLauncher
from blendtorch_ray.errors import StreamTimeout

ECHO = """
    import argparse, time
    import numpy as np
    import blender_worker as bw
    from blender_worker.duplex import DuplexChannel

    launch, rest = bw.parse_launch_args()
    parser = argparse.ArgumentParser()
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--late", action="store_true", help="connect the channel 1 s after ready")
    args = parser.parse_args(rest)
    pub = bw.DataPublisher(launch)
    if args.late:
        time.sleep(1.0)
    chan = DuplexChannel(launch, publisher=pub)
    anim = bw.AnimationController()
    received = []

    def pre_frame():
        while (msg := chan.recv(timeoutms=0)) is not None:
            received.append(msg.msg_id)
            chan.reply(msg, echo=msg.payload, me=launch.btid, received=list(received),
                       generation_seen=chan.generation)

    def post_frame():
        if args.publish:
            pub.publish(value=np.full(3, launch.btid, dtype=np.int16))
        time.sleep(0.005)

    anim.pre_frame.add(pre_frame)
    anim.post_frame.add(post_frame)
    anim.play(frame_range=(1, 50), num_episodes=-1, use_physics=False)
"""


@pytest.fixture
def echo_group(ray_session, write_script, request):
    args = getattr(request, "param", [])
    script = write_script(ECHO, "echo.py")
    with BlenderLauncher(script=script, num_instances=2, instance_args=[args, args], batch_size=4,
                         max_batch_delay=0.05) as bl:
        yield bl


@pytest.mark.blender
def test_echo_round_trip_two_instances_no_cross_talk(echo_group):
    chan = echo_group.channel()
    to0 = chan.send(btid=0, word="zero", arr=np.arange(5, dtype=np.float32))
    to1 = chan.send(btid=1, word="one")
    both = chan.broadcast(word="all")
    assert len({to0, to1, *both.values()}) == 4, "message ids must be unique"

    replies = chan.wait([to0, to1, *both.values()], timeout=60)
    r0, r1 = replies[to0], replies[to1]
    assert (r0.btid, r0.payload["me"], r0.payload["echo"]["word"]) == (0, 0, "zero")
    np.testing.assert_array_equal(r0.payload["echo"]["arr"], np.arange(5, dtype=np.float32))
    assert (r1.btid, r1.payload["me"], r1.payload["echo"]) == (1, 1, {"word": "one"})
    for btid, mid in both.items():
        r = replies[mid]
        assert (r.btid, r.payload["me"], r.payload["echo"]) == (btid, btid, {"word": "all"})
        # No cross-talk: each instance saw exactly the messages addressed to it.
        own = {0: to0, 1: to1}[btid]
        assert r.payload["received"] == [own, mid]
    # Generations: 1 (to 0), 2 (to 1), 3 (broadcast); replies carry the one Blender was at.
    assert (r0.generation, r1.generation) == (1, 2)
    assert {replies[m].generation for m in both.values()} == {3}
    assert chan.last_generation == {0: 3, 1: 3}
    assert chan.recv(timeout=0.3) is None


@pytest.mark.blender
@pytest.mark.parametrize("echo_group", [["--publish"]], indirect=True)
def test_items_carry_generation(echo_group):
    chan = echo_group.channel()
    ds = echo_group.dataset(timeout=60)
    seen: dict[int, list[int]] = {0: [], 1: []}
    sent = False
    fresh_after = {0: 0, 1: 0}
    for n, item in enumerate(ds):
        seen[item["btid"]].append(item["generation"])
        if sent and chan.is_fresh(item):
            fresh_after[item["btid"]] += 1
        if n == 10:
            ids = chan.broadcast(mode="new")
            sent = True
        if all(v >= 3 for v in fresh_after.values()) or n > 2000:
            break
    chan.wait(ids.values(), timeout=30)
    assert all(v >= 3 for v in fresh_after.values()), f"no fresh items after the broadcast: {fresh_after}"
    for btid, gens in seen.items():
        assert gens[0] == 0, "items before any message are generation 0"
        assert gens == sorted(gens), f"generation went backwards for instance {btid}: {gens}"
        assert gens[-1] == 1


@pytest.mark.blender
@pytest.mark.parametrize("echo_group", [["--publish", "--late"]], indirect=True)
def test_message_sent_before_blender_connects_is_delivered(echo_group):
    """The actor keeps retrying: no recv()/wait() call is needed to push a queued message."""
    chan = echo_group.channel()
    chan.broadcast(mode="early")  # Blender's channel connects only a second later
    got = set()
    for n, item in enumerate(echo_group.dataset(timeout=60)):
        if item["generation"] == 1:
            got.add(item["btid"])
        if got == {0, 1} or n > 3000:
            break
    assert got == {0, 1}


@pytest.mark.blender
def test_bad_use_names_the_problem(echo_group):
    chan = echo_group.channel()
    with pytest.raises(ValueError, match="btid 7"):
        chan.send(btid=7, x=1)
    with pytest.raises(ValueError, match="reserved"):
        chan.broadcast(btmsgid=3)
    with pytest.raises(StreamTimeout, match=r"\[12345\]"):
        chan.wait([12345], timeout=0.5)
