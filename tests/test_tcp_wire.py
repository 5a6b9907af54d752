"""The tcp link's wire format (blendtorch_ray/tcp_wire.py), on real buffers."""

from __future__ import annotations

import numpy as np

from blendtorch_ray import tcp_wire
from blendtorch_ray.tcp_wire import LENGTH, MAX_PARTS, PACKED, PREFIX, message, parse_prefix, prefix_missing


def test_a_message_is_its_prefix_frames_and_the_items_arrays_back_to_back():
    base = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    batch = [{"image": base[i], "depth": np.full((5,), i, np.int16), "note": f"n{i}"} for i in range(2)]
    bufs = message(b"t" * 16, 7, batch)
    head = bytes(bufs[0])
    assert prefix_missing(head[:10]) == PREFIX.size - 10
    assert prefix_missing(head) == 0
    number, frames, blocks, lengths = parse_prefix(head)
    assert (number, blocks) == (7, 2)
    assert len(bufs) == 1 + frames + 2 + 2  # prefix, frames, two views per block
    # the blocks are the arrays where they lie, no copy
    views = bufs[1 + frames:]
    assert np.frombuffer(views[0], np.float32).ctypes.data == base[0].ctypes.data
    assert lengths[frames:] == [base.nbytes, 2 * 5 * 2]
    body = b"".join(bytes(v) for v in views[:2])
    assert body == base.tobytes()  # exactly the stacked block's bytes


def test_pack_takes_out_only_keys_of_one_shape_and_dtype():
    batch = [{"a": np.zeros((2,), np.uint8), "b": np.zeros((i + 1,), np.uint8), "c": i} for i in range(3)]
    packed, buffers = tcp_wire.pack(batch)
    assert list(packed[PACKED]) == ["a"] and packed[PACKED]["a"][1] == (3, 2)
    assert all("b" in item and "a" not in item for item in packed["items"]) and len(buffers) == 1
    # a non-contiguous array is sent as its contiguous copy
    col = np.arange(12, dtype=np.uint8).reshape(3, 4)[:, 1]
    _, bufs = tcp_wire.pack([{"x": col}])
    assert bytes(bufs[0][0]) == col.tobytes()


def test_unpack_gives_rows_of_the_received_block():
    from blendtorch_ray.shm_ring import ring_block

    block = np.empty((3, 2), np.int32)  # owns its memory, as a received block does
    block[:] = np.arange(6).reshape(3, 2)
    items = tcp_wire.unpack({PACKED: {"k": block}, "items": [{}, {}, {}]})
    assert [item["k"].tolist() for item in items] == [[0, 1], [2, 3], [4, 5]]
    assert ring_block(items[1]["k"]) is block


def test_a_prefix_announcing_too_much_is_refused():
    assert prefix_missing(PREFIX.pack(b"t" * 16, 0, MAX_PARTS, 1)) is None
    huge = PREFIX.pack(b"t" * 16, 0, 0, 2) + LENGTH.pack(tcp_wire.MAX_MESSAGE_BYTES) + LENGTH.pack(1)
    assert prefix_missing(huge) == 0 and parse_prefix(huge) is None
    fine = PREFIX.pack(b"t" * 16, 3, 1, 0) + LENGTH.pack(10)
    assert parse_prefix(fine) == (3, 1, 0, [10])
