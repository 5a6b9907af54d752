"""Unit tests of the message codec (no Blender, no Ray)."""

import threading

import numpy as np
import pytest

from blender_worker import codec
from blender_worker.protocol import KIND_ITEM


@pytest.mark.parametrize("name", ["pickle", "json"])
def test_roundtrip_keeps_arrays_and_values(name):
    item = {"image": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "depth": np.ones((2, 3), np.float32), "k": 3, "s": "x"}
    frames = codec.encode(item, codec=name)
    header, out = codec.decode([bytes(f) for f in frames])
    assert header["kind"] == KIND_ITEM and header["codec"] == name
    assert out["k"] == 3 and out["s"] == "x"
    np.testing.assert_array_equal(out["image"], item["image"])
    assert out["depth"].dtype == np.float32 and out["depth"].shape == (2, 3)


def test_pickle_arrays_travel_out_of_band_without_copy():
    arr = np.arange(1000, dtype=np.float64)
    frames = codec.encode({"a": arr})
    assert len(frames) == 3  # header, body, one raw buffer
    assert len(frames[1]) < 200  # the body does not hold the array bytes
    buf = bytearray(frames[2])
    _, out = codec.decode([frames[0], frames[1], buf])
    assert np.shares_memory(out["a"], np.frombuffer(buf, dtype=np.float64))


def test_pickle_codec_carries_arbitrary_objects():
    item = {"boxes": [(1, 2, 3, 4)], "meta": {"nested": [1.5, None]}, "arr": np.zeros(3)}
    _, out = codec.decode(codec.encode(item))
    assert out["boxes"] == [(1, 2, 3, 4)] and out["meta"] == {"nested": [1.5, None]}


def test_unpicklable_object_gives_clear_error():
    with pytest.raises(codec.CodecError, match="cannot pickle"):
        codec.encode({"lock": threading.Lock()})


def test_json_codec_rejects_non_json_values():
    with pytest.raises(codec.CodecError, match="json codec"):
        codec.encode({"obj": object()}, codec="json")


@pytest.mark.parametrize(
    "frames, match",
    [
        ([b"{}"], "truncated"),
        ([b"not json", b""], "malformed message header"),
        ([b'{"v": 99}', b""], "not a blendtorch-ray"),
        ([b'{"v": 1, "codec": "pickle", "kind": "item"}', b"\x80\x05garbage"], "cannot unpickle"),
        ([b'{"v": 1, "codec": "zip", "kind": "item"}', b""], "unknown codec"),
    ],
)
def test_malformed_messages_raise_codec_error(frames, match):
    with pytest.raises(codec.CodecError, match=match):
        codec.decode(frames)


def test_json_truncated_array_is_detected():
    frames = codec.encode({"a": np.zeros((4, 4), np.float32)}, codec="json")
    with pytest.raises(codec.CodecError, match="bytes, expected"):
        codec.decode([frames[0], frames[1], bytes(frames[2])[:10]])
    with pytest.raises(codec.CodecError, match="announces 1 arrays but carries 0"):
        codec.decode(frames[:2])


def test_unknown_codec_name():
    with pytest.raises(codec.CodecError, match="unknown codec"):
        codec.encode({}, codec="xml")


def test_json_codec_keeps_zero_dimensional_arrays():
    frames = codec.encode({"scalar": np.array(3.5, np.float32), "v": np.arange(3)}, codec="json")
    _, obj = codec.decode([bytes(f) if not isinstance(f, bytes) else f for f in frames])
    assert obj["scalar"].shape == () and obj["scalar"] == np.float32(3.5)
    assert obj["v"].tolist() == [0, 1, 2]
