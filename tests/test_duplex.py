"""Duplex channel: real Blender (bpy wheel), real Ray actors, real ZeroMQ."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from blendtorch_ray import BlenderLauncher
from blendtorch_ray.errors import StreamTimeout
from conftest import _init_local_ray

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
        while (msg := chan.recv(timeout=0.0)) is not None:
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


def launch_echo(tmp_dir, args: list[str]) -> BlenderLauncher:
    script = tmp_dir / "echo.py"
    script.write_text(textwrap.dedent(ECHO))
    return BlenderLauncher(script=str(script), num_instances=2, instance_args=[args, args], batch_size=4,
                           max_batch_delay=0.05)


@pytest.fixture(scope="module")
def echo_group(_ray_shutdown_at_end, tmp_path_factory):
    """Two instances that echo messages and publish nothing (shared by this module's tests)."""
    _init_local_ray()  # what the (function-scoped) ray_session fixture does
    with launch_echo(tmp_path_factory.mktemp("echo"), []) as bl:
        yield bl


@pytest.mark.blender
def test_echo_round_trip_two_instances_no_cross_talk(echo_group):
    """Runs first on the shared group: it expects to be the first to send anything."""
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
def test_early_message_arrives_and_items_carry_generation(ray_session, tmp_path):
    # Blender's channel connects 1 s after it is ready: the actor must keep retrying the
    # first broadcast without any recv()/wait() from the trainer.
    with launch_echo(tmp_path, ["--publish", "--late"]) as bl:
        chan = bl.channel()
        chan.broadcast(mode="early")
        items = iter(bl.dataset(timeout=60))
        seen: dict[int, list[int]] = {0: [], 1: []}

        def read_until(generation: int) -> None:
            done: set[int] = set()
            for _ in range(3000):
                item = next(items)
                seen[item["btid"]].append(item["generation"])
                if chan.is_fresh(item):
                    assert item["generation"] == generation
                    done.add(item["btid"])
                if done == {0, 1}:
                    return
            pytest.fail(f"instances {({0, 1} - done)} never published generation {generation}")

        read_until(1)
        ids = chan.broadcast(mode="new")
        read_until(2)
        replies = chan.wait(ids.values(), timeout=30)
    assert {r.generation for r in replies.values()} == {2}
    for btid, gens in seen.items():
        assert gens == sorted(gens), f"generation went backwards for instance {btid}: {gens}"
        assert {0, 1, 2} >= set(gens) >= {1, 2}


@pytest.mark.blender
def test_bad_use_names_the_problem(echo_group):
    chan = echo_group.channel()
    with pytest.raises(ValueError, match="btid 7"):
        chan.send(btid=7, x=1)
    with pytest.raises(ValueError, match="reserved"):
        chan.broadcast(btmsgid=3)
    with pytest.raises(StreamTimeout, match=r"\[12345\]"):
        chan.wait([12345], timeout=0.5)
