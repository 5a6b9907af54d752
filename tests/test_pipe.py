"""The env channel's message pipe (``blender_worker.pipe``) over real sockets, both transports:
whole messages small and large, arrays intact, timeouts that lose nothing, a closed peer,
garbage on the stream."""

from __future__ import annotations

import tempfile
import threading
import time

import numpy as np
import pytest

from blender_worker import codec
from blender_worker.codec import CodecError
from blender_worker.pipe import HEADER, MessagePipe, PipeClosed, PipeListener

BIG = 5 * 2**20


@pytest.fixture
def short_dir():
    # AF_UNIX paths are limited to ~107 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="pipe-") as d:
        yield d


@pytest.fixture(params=["ipc", "tcp"])
def pair(request, short_dir):
    """``(driver, blender)``: an accepted pipe and the one that connected to it."""
    listener = PipeListener(request.param, short_dir)
    blender = MessagePipe.connect(listener.address, timeout=5)
    driver = listener.accept(5)
    listener.close()
    assert driver is not None
    yield driver, blender
    driver.close()
    blender.close()


def _in_thread(fn, *args):
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def test_addresses_use_the_control_address_notation(short_dir):
    ipc = PipeListener("ipc", short_dir, name="env")
    tcp = PipeListener("tcp")
    try:
        assert ipc.address == f"ipc://{short_dir}/env.sock"
        host_port = tcp.address.removeprefix("tcp://")
        assert host_port.startswith("127.0.0.1:") and int(host_port.rsplit(":", 1)[1]) > 0
    finally:
        ipc.close()
        tcp.close()
    with pytest.raises(ValueError, match="transport='udp'"):
        PipeListener("udp", short_dir)
    with pytest.raises(ValueError, match="private directory"):
        PipeListener("ipc", None)


def test_tcp_pipes_disable_nagle(short_dir):
    import socket

    listener = PipeListener("tcp")
    try:
        blender = MessagePipe.connect(listener.address, timeout=5)
        driver = listener.accept(5)
        for p in (driver, blender):
            assert p._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        driver.close()
        blender.close()
    finally:
        listener.close()


def test_small_messages_round_trip_in_both_directions(pair):
    driver, blender = pair
    obs = (np.arange(4, dtype=np.float32), 1.0, False, True, {"k": np.array(3)})
    for _ in range(3):
        driver.send({"cmd": "step", "action": 1})
        assert blender.recv(5) == {"cmd": "step", "action": 1}
        blender.send(obs)
        got = driver.recv(5)
        assert got[0].dtype == np.float32 and got[0].tolist() == [0.0, 1.0, 2.0, 3.0]
        assert got[1:4] == (1.0, False, True) and int(got[4]["k"]) == 3


def test_five_megabyte_messages_round_trip(pair):
    driver, blender = pair
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1024, 1707, 3), dtype=np.uint8)  # ~5 MB
    assert image.nbytes >= BIG
    frames = [image, rng.standard_normal(BIG // 8)]
    for sender, receiver in ((blender, driver), (driver, blender)):
        for arr in frames:
            t = _in_thread(sender.send, {"image": arr, "frame": 7})
            got = receiver.recv(30)
            t.join(10)
            assert got["frame"] == 7 and got["image"].dtype == arr.dtype and got["image"].shape == arr.shape
            np.testing.assert_array_equal(got["image"], arr)
            assert got["image"].flags.writeable
    raw = b"x" * BIG  # a plain big bytes body too
    t = _in_thread(driver.send, raw)
    assert blender.recv(30) == raw
    t.join(10)


def test_messages_that_share_a_receive_are_kept_apart(pair):
    driver, blender = pair
    for i in range(5):
        driver.send({"cmd": "step", "action": i})
    assert [blender.recv(5)["action"] for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(TimeoutError):
        blender.recv(0.05)


@pytest.mark.parametrize("size", ["small", "big"])
def test_a_timeout_in_the_middle_of_a_message_loses_nothing(pair, size):
    driver, blender = pair
    obj = {"cmd": "step", "action": 3} if size == "small" else {"image": np.arange(BIG // 8, dtype=np.float64)}
    body = bytes(codec.encode_compact(obj))
    wire = HEADER.pack(len(body)) + body
    cuts = [4, 8 + len(body) // 2] if size == "small" else [len(wire) // 2]  # in the header, in the body
    sent = 0
    for cut in cuts:
        t = _in_thread(blender._sock.sendall, wire[sent:cut])
        deadline = time.monotonic() + 10
        while t.is_alive() and time.monotonic() < deadline:  # recv drains what the sender pushes
            with pytest.raises(TimeoutError):
                driver.recv(0.02)
        t.join(1)
        assert not t.is_alive()
        sent = cut
        with pytest.raises(TimeoutError):
            driver.recv(0.05)
        with pytest.raises(TimeoutError):
            driver.recv(0)
        assert driver.poll(0)  # part of a message is buffered
    t = _in_thread(blender._sock.sendall, wire[sent:])
    got = driver.recv(10)
    t.join(10)
    if size == "small":
        assert got == obj
    else:
        np.testing.assert_array_equal(got["image"], obj["image"])
    with pytest.raises(TimeoutError):  # and nothing more: the message was consumed exactly
        driver.recv(0.05)


def test_eof_when_the_peer_closes(pair):
    driver, blender = pair
    blender.send({"last": True})
    blender.close()
    assert driver.poll(1)
    assert driver.recv(1) == {"last": True}  # what was sent before the close still arrives
    with pytest.raises(PipeClosed):
        driver.recv(1)
    assert issubclass(PipeClosed, EOFError)
    with pytest.raises(PipeClosed):  # sending to it fails too (tcp may take one send to notice)
        for _ in range(50):
            driver.send({"cmd": "step"})
            time.sleep(0.01)


def test_eof_in_the_middle_of_a_message(pair):
    driver, blender = pair
    body = bytes(codec.encode_compact({"cmd": "step"}))
    blender._sock.sendall(HEADER.pack(len(body)) + body[:3])
    with pytest.raises(TimeoutError):
        driver.recv(0.05)
    blender.close()
    with pytest.raises(PipeClosed, match="middle of a message"):
        driver.recv(1)


def test_accept_times_out_with_none(short_dir):
    for transport in ("ipc", "tcp"):
        listener = PipeListener(transport, short_dir, name=f"env-{transport}")
        try:
            t0 = time.monotonic()
            assert listener.accept(0.1) is None
            assert time.monotonic() - t0 >= 0.09
        finally:
            listener.close()


def test_poll_sees_data_and_nothing_else(pair):
    driver, blender = pair
    assert not driver.poll(0)
    t0 = time.monotonic()
    assert not driver.poll(0.05)
    assert time.monotonic() - t0 >= 0.04
    blender.send("ping")
    assert driver.poll(1)
    assert driver.recv(0) == "ping"
    assert not driver.poll(0)


def test_garbage_body_raises_codec_error_and_the_pipe_goes_on(pair):
    driver, blender = pair
    junk = b"\x80\x05this is no pickle"
    blender._sock.sendall(HEADER.pack(len(junk)) + junk)
    with pytest.raises(CodecError, match="cannot unpickle"):
        driver.recv(1)
    blender.send({"cmd": "hello"})
    assert driver.recv(1) == {"cmd": "hello"}
    blender._sock.sendall(b"\xff" * 8)  # a length prefix no message has
    with pytest.raises(CodecError, match="length prefix"):
        driver.recv(1)


def test_connect_retries_until_timeout(short_dir):
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError):
        MessagePipe.connect(f"ipc://{short_dir}/nobody.sock", timeout=0.2)
    assert time.monotonic() - t0 >= 0.15
    with pytest.raises(ValueError, match="ipc://"):
        MessagePipe.connect("inproc://x", timeout=0.1)


def test_compact_bodies_keep_values_and_big_arrays_go_plain():
    """Values, dtypes and shapes survive the compact pickler, arrays arrive writable; an
    object with an array over COMPACT_MAX_BYTES is a plain pickle (no compact arrays)."""
    small = (np.arange(4, dtype=np.float32), 1.0, False, True, {"k": np.array(3), "f": np.asfortranarray(np.eye(2, 3))})
    structured = np.zeros(2, dtype=[("x", "<f4"), ("y", ">i2")])
    big = {"image": np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)}
    assert b"_array" in bytes(codec.encode_compact(small))
    assert b"_array" not in bytes(codec.encode_compact(big))
    obs, reward, terminated, truncated, info = codec.decode_compact(codec.encode_compact(small))
    assert obs.dtype == np.float32 and obs.tolist() == [0.0, 1.0, 2.0, 3.0] and obs.flags.writeable
    assert (reward, terminated, truncated) == (1.0, False, True)
    assert info["k"].shape == () and int(info["k"]) == 3
    np.testing.assert_array_equal(info["f"], np.eye(2, 3))
    got = codec.decode_compact(codec.encode_compact(structured))
    assert got.dtype == structured.dtype and got.tolist() == structured.tolist()
    got = codec.decode_compact(codec.encode_compact(big))
    np.testing.assert_array_equal(got["image"], big["image"])
    assert got["image"].flags.writeable
    with pytest.raises(CodecError, match="cannot pickle"):
        codec.encode_compact({"f": lambda: None})
