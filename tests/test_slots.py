"""Shared-memory slots of the Blender -> actor hop, without Ray: a real DataPublisher and a
real ItemReceiver talking over a real ZeroMQ ipc socket (the publisher runs in-process here)."""

import threading

import numpy as np
import pytest

from blender_worker import codec
from blender_worker.protocol import KIND_READY, LaunchArgs
from blender_worker.publisher import DataPublisher
from blender_worker.slots import INLINE_BELOW, SlotFile
from blendtorch_ray.transport import ItemReceiver, PrivateDir


def test_slot_round_trip_and_backpressure(tmp_path):
    path = str(tmp_path / "slots")
    writer = SlotFile(path, slots=2, slot_bytes=1 << 20, create=True)
    reader = SlotFile(path, slots=2, slot_bytes=1 << 20)
    big = np.arange(INLINE_BELOW, dtype=np.uint8)
    assert writer.fits([big]) and not writer.fits([big[:100]]) and not writer.fits([np.zeros(2 << 20, np.uint8)])
    a, b = np.full(INLINE_BELOW, 7, np.uint8), np.arange(1000, dtype=np.float64)
    slot, sizes = writer.write([a, b])
    assert (slot, sizes) == (0, [a.nbytes, b.nbytes])
    va, vb = reader.views(slot, sizes)
    np.testing.assert_array_equal(np.frombuffer(va, np.uint8), a)
    np.testing.assert_array_equal(np.frombuffer(vb, np.float64), b)
    assert reader.views(1, sizes) is None  # not full
    assert reader.views(5, sizes) is None and reader.views(0, [2 << 20]) is None and reader.views(0, [-1]) is None
    writer.write([a])  # slot 1
    done = threading.Event()
    t = threading.Thread(target=lambda: (writer.write([a]), done.set()))
    t.start()
    assert not done.wait(0.5), "wrote into a slot the reader still holds"
    reader.release(0)
    assert done.wait(30)
    t.join()


def test_too_small_slot_file_is_refused(tmp_path):
    path = str(tmp_path / "slots")
    SlotFile(path, slots=2, slot_bytes=4096, create=True)
    with pytest.raises(ValueError, match="smaller than"):
        SlotFile(path, slots=4, slot_bytes=4096)


@pytest.mark.parametrize("codec_name", ["pickle", "json"])
def test_publisher_puts_large_arrays_in_slots_and_small_ones_inline(tmp_path, codec_name):
    d = PrivateDir()
    try:
        receiver = ItemReceiver(d)
        receiver.slots = SlotFile(d.join("slots"), slots=3, slot_bytes=4 << 20, create=True)
        launch = LaunchArgs(btid=0, seed=0, epoch=0, data_address=receiver.address, control_address=None,
                            parent_pid=0, codec=codec_name, slots=(receiver.slots.path, 3, 4 << 20))
        pub = DataPublisher(launch, linger_ms=1000)
        assert receiver.recv(10_000)[0]["kind"] == KIND_READY
        image = np.random.default_rng(0).integers(0, 255, (240, 320, 4), dtype=np.uint8)
        pub.publish(image=image, label=3)
        pub.publish(small=np.ones(4, np.float32))
        header, item = receiver.recv(10_000)
        assert header["slot"][0] == 0
        np.testing.assert_array_equal(item["image"], image)
        assert item["label"] == 3 and np.shares_memory(item["image"], np.frombuffer(receiver.slots._buf, np.uint8))
        small_header, small = receiver.recv(10_000)
        assert "slot" not in small_header and small["small"].tolist() == [1, 1, 1, 1]
        ItemReceiver.release(header)
        assert receiver.slots.views(0, [image.nbytes]) is None  # free again
        ItemReceiver.release(small_header)  # inline: nothing to release
        pub._sock.send_multipart([b'{"v": 1, "codec": "pickle", "kind": "item", "slot": [2, [100000]]}', b"x"])
        with pytest.raises(codec.CodecError, match="not a full slot"):
            receiver.recv(10_000)
        pub._closed = True  # no end marker handshake in this test
        pub._sock.close(0)
        receiver.close()
    finally:
        d.cleanup()


def test_small_dev_shm_turns_the_shared_memory_paths_off(monkeypatch, tmp_path):
    """Writing past a full tmpfs kills the writer with SIGBUS: with too little free space the
    actor uses the socket instead (the threshold is raised here instead of shrinking /dev/shm)."""
    from blendtorch_ray import transport
    from blendtorch_ray.instance import slot_file_for
    from blendtorch_ray.config import LaunchConfig

    d = PrivateDir(base=transport.memory_dir())
    try:
        cfg = LaunchConfig(script=__file__)
        assert transport.has_shared_memory_room(d.path)
        assert slot_file_for(cfg, d, 0) is not None
        monkeypatch.setattr(transport, "SHM_MIN_FREE", 1 << 62)
        assert not transport.has_shared_memory_room(d.path)
        assert slot_file_for(cfg, d, 0) is None
    finally:
        d.cleanup()
