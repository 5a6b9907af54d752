"""The hand-over of a prestarted Blender's socket from the driver to its actor
(blendtorch_ray/handover.py), without Ray: a real DataPublisher publishing in a thread, a
real ZeroMQ ipc socket that changes hands between two messages."""

import os
import threading
import time

import numpy as np
import zmq

from blender_worker.protocol import KIND_ITEM, KIND_PAUSED, KIND_READY, LaunchArgs
from blender_worker.publisher import DataPublisher
from blender_worker.slots import SlotFile
from blendtorch_ray import handover
from blendtorch_ray.transport import ItemReceiver, PrivateDir

ITEMS = 60


def _read(receiver, timeout_ms=10_000):
    got = receiver.recv(timeout_ms)
    assert got is not None, "nothing arrived"
    header, obj = got
    out = (header["kind"], obj)
    if header["kind"] == KIND_ITEM:
        assert np.all(obj["arr"] == obj["seq"])  # the slot holds this item's array
        out = (KIND_ITEM, obj["seq"])
    ItemReceiver.release(header)
    return out


def test_the_socket_changes_hands_between_two_messages_without_a_gap_or_a_repeat():
    d = PrivateDir()
    ctx = zmq.Context()
    try:
        driver = ItemReceiver(d, context=ctx)
        driver.slots = SlotFile(d.join("slots"), slots=4, slot_bytes=1 << 20, create=True)
        pause = d.join(handover.PAUSE_FILE)
        launch = LaunchArgs(btid=0, seed=0, data_address=driver.address, slots=(driver.slots.path, 4, 1 << 20),
                            handover_path=pause)
        pub = DataPublisher(launch, linger_ms=1000)

        def publish():
            for _ in range(ITEMS):
                pub.publish(arr=np.full((256, 256), pub.seq, np.float32))

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        assert _read(driver) == (KIND_READY, {"btid": 0, "seed": 0, "epoch": 0})
        seqs = [_read(driver)[1] for _ in range(5)]
        handover.request_pause(d.path)
        while True:  # what the driver reads up to Blender's pause
            kind, value = _read(driver)
            if kind == KIND_PAUSED:
                break
            seqs.append(value)
        assert value == {"seq": seqs[-1] + 1}  # the marker names the next seq
        assert driver.recv(500) is None  # nothing follows while the pause file exists
        driver.close()
        ctx.term()  # the listening socket and its file are gone before the actor binds
        actor = ItemReceiver(d)
        actor.slots = driver.slots
        handover.release_blender(d.path)
        assert not os.path.exists(pause)
        while len(seqs) < ITEMS:
            seqs.append(_read(actor)[1])
        assert seqs == list(range(ITEMS))
        thread.join(10)
        assert not thread.is_alive()
        pub._closed = True  # no end-marker handshake in this test
        pub._sock.close(0)
        actor.close()
    finally:
        d.cleanup()


def test_a_publisher_without_a_hand_over_file_never_pauses(tmp_path):
    d = PrivateDir()
    try:
        receiver = ItemReceiver(d)
        launch = LaunchArgs(btid=0, seed=0, data_address=receiver.address)
        pub = DataPublisher(launch, linger_ms=1000)
        with open(d.join(handover.PAUSE_FILE), "w"):  # a stray file: not this publisher's flag
            pass
        for _ in range(3):
            pub.publish(x=1)
        kinds = [receiver.recv(10_000)[0]["kind"] for _ in range(4)]
        assert kinds == [KIND_READY, KIND_ITEM, KIND_ITEM, KIND_ITEM]
        pub._closed = True
        pub._sock.close(0)
        receiver.close()
    finally:
        d.cleanup()


def test_state_and_leftovers_reach_the_actor_side(tmp_path):
    private, memory = tmp_path / "private", tmp_path / "memory"
    private.mkdir()
    memory.mkdir()
    state = handover.HandoverState(stream_seed=7, next_seq=12, ready=True, items=12, warnings=["w"],
                                   leftovers=[{"seq": 10, "image": np.arange(6)}, {"seq": 11, "image": np.arange(3)}])
    result = {}
    waiter = threading.Thread(target=lambda: result.update(s=handover.adopt(str(private), str(memory), 30)))
    waiter.start()
    deadline = time.monotonic() + 30
    while not handover.adoption_requested(str(private)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert waiter.is_alive()  # the actor waits for the state
    handover.write(str(private), str(memory), state)
    waiter.join(30)
    got = result["s"]
    assert (got.stream_seed, got.next_seq, got.items, got.warnings) == (7, 12, 12, ["w"])
    assert [x["seq"] for x in got.leftovers] == [10, 11] and got.leftovers[0]["image"].tolist() == list(range(6))
    assert not (memory / handover.LEFTOVER_FILE).exists()  # the leftovers' memory is freed


def test_adopt_gives_up_when_the_driver_never_hands_over(tmp_path):
    assert handover.adopt(str(tmp_path), str(tmp_path), 0.2) is None
    assert handover.adopt(str(tmp_path / "gone"), str(tmp_path), 5) is None  # its directory is gone
