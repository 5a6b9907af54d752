"""Message framing for the local ZeroMQ hop (Blender -> supervising actor).

A message is a list of ZeroMQ frames::

    [header, body, buffer_0, buffer_1, ...]

``header`` is a small JSON object (``{"v": 1, "codec": ..., "kind": ...}``), ``body`` the
encoded item and ``buffer_i`` the raw memory of every numpy array in the item, sent
out-of-band so that arrays are never copied into a pickle stream.

Two codecs are offered:

* ``"pickle"`` (default): pickle protocol 5 with out-of-band buffers. Any pickle-able object
  can be published. Only ever decoded on data from the project's own local hop.
* ``"json"``: pickle-free. The item may hold numpy arrays (anywhere at the top level) and
  JSON-able values; arrays travel as raw frames described by dtype and shape.

The request/reply channels (the env's ``blender_worker.pipe``) carry one small object per
message instead: `encode_compact` pickles it with plain numpy arrays stored as ``(bytes, dtype,
shape)`` (`CompactPickler`), or plainly when it holds a big array; `decode_compact` reads both.

This module imports nothing but the standard library and numpy: it runs inside Blender.
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Any, Sequence

import numpy as np

VERSION = 1
CODECS = ("pickle", "json")

from blender_worker.protocol import KIND_ITEM


class CodecError(ValueError):
    """A message could not be encoded or decoded (malformed, truncated, unknown codec)."""


def encode(obj: Any, *, codec: str = "pickle", kind: str = KIND_ITEM) -> list:
    """Encode ``obj`` into a list of frames (bytes / buffers), without copying arrays."""
    if codec == "pickle":
        buffers: list[pickle.PickleBuffer] = []
        try:
            body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:  # noqa: BLE001 - re-raised with a clearer message
            raise CodecError(
                f"cannot pickle published item ({type(exc).__name__}: {exc}); publish only "
                "pickle-able objects (numpy arrays, numbers, strings, lists, dicts, ...)"
            ) from exc
        header = {"v": VERSION, "codec": codec, "kind": kind}
        return [json.dumps(header).encode(), body, *[b.raw() for b in buffers]]
    if codec == "json":
        if not isinstance(obj, dict):
            raise CodecError("the json codec publishes dicts only")
        plain: dict[str, Any] = {}
        arrays: list[dict] = []
        buffers_raw: list = []
        for key, value in obj.items():
            if isinstance(value, np.ndarray):
                arr = np.ascontiguousarray(value).reshape(value.shape)  # ascontiguousarray makes 0-d 1-d
                if arr.dtype.hasobject:
                    raise CodecError(f"item {key!r}: object arrays cannot use the json codec")
                arrays.append({"key": key, "dtype": arr.dtype.str, "shape": list(arr.shape)})
                buffers_raw.append(memoryview(arr).cast("B") if arr.size else b"")
            else:
                plain[key] = value
        try:
            body = json.dumps({"plain": plain, "arrays": arrays}).encode()
        except TypeError as exc:
            raise CodecError(
                f"json codec: {exc}; publish numpy arrays and JSON-able values, "
                "or use codec='pickle'"
            ) from exc
        header = {"v": VERSION, "codec": codec, "kind": kind}
        return [json.dumps(header).encode(), body, *buffers_raw]
    raise CodecError(f"unknown codec {codec!r}; choose one of {CODECS}")


def slot_header(header_frame: bytes, slot: int, sizes: list) -> bytes:
    """The header of a message whose buffers were written to shared-memory ``slot``
    (see ``blender_worker.slots``) instead of being sent as frames."""
    header = json.loads(header_frame)
    header["slot"] = [slot, sizes]
    return json.dumps(header).encode()


def decode_header(frame: Any) -> dict:
    """Parse the JSON header frame; raise CodecError when it is not one of ours."""
    try:
        header = json.loads(bytes(frame))
    except Exception as exc:  # noqa: BLE001
        raise CodecError(f"malformed message header ({exc})") from exc
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise CodecError(f"message header is not a blendtorch-ray v{VERSION} header: {header!r}")
    return header


def decode(frames: Sequence[Any]) -> tuple[dict, Any]:
    """Decode a list of frames into ``(header, obj)``.

    Frames may be ``bytes``, ``memoryview`` or ``zmq.Frame`` (anything exposing the
    buffer protocol); decoded arrays reference those buffers without copying.
    """
    if len(frames) < 2:
        raise CodecError(f"truncated message: {len(frames)} frame(s), need at least 2")
    header = decode_header(frames[0])
    return header, decode_body(header, frames)


def decode_body(header: dict, frames: Sequence[Any]) -> Any:
    """Decode the body (``frames[1]``) and buffers (``frames[2:]``) of a message whose header
    is already parsed; see ``decode``."""
    codec = header.get("codec")
    bufs = [memoryview(f) if not isinstance(f, memoryview) else f for f in frames[2:]]
    if codec == "pickle":
        try:
            obj = pickle.loads(memoryview(frames[1]), buffers=bufs)
        except Exception as exc:  # noqa: BLE001
            raise CodecError(f"cannot unpickle message body ({type(exc).__name__}: {exc})") from exc
        return obj
    if codec == "json":
        try:
            body = json.loads(bytes(frames[1]))
            obj = dict(body["plain"])
            specs = body["arrays"]
        except Exception as exc:  # noqa: BLE001
            raise CodecError(f"malformed json message body ({exc})") from exc
        if len(specs) != len(bufs):
            raise CodecError(f"json message announces {len(specs)} arrays but carries {len(bufs)}")
        for spec, buf in zip(specs, bufs):
            dtype = np.dtype(spec["dtype"])
            shape = tuple(spec["shape"])
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if buf.nbytes != expected:
                raise CodecError(
                    f"array {spec['key']!r}: {buf.nbytes} bytes, expected {expected} for "
                    f"{dtype} {shape}"
                )
            obj[spec["key"]] = np.frombuffer(buf, dtype=dtype).reshape(shape)
        return obj
    raise CodecError(f"unknown codec {codec!r} in message header")


# ---------------------------------------------------------------------- compact pickles
# The body codec of request/reply channels (blender_worker.pipe): small messages, arrays in-band.
COMPACT_MAX_BYTES = 64 * 1024
"""Largest array the compact pickler stores as ``(bytes, dtype, shape)``; an object holding a
bigger one is pickled plainly (protocol 5, in-band)."""

_DTYPES: dict = {}


class ArrayTooBig(Exception):
    """An array too large for `CompactPickler` (`encode_compact` pickles plainly instead)."""


def _array(data: bytearray, dtype: str, shape: tuple) -> np.ndarray:
    """Unpickle an array pickled by ``CompactPickler`` (writable: ``data`` is a bytearray)."""
    dt = _DTYPES.get(dtype)
    if dt is None:
        dt = _DTYPES[dtype] = np.dtype(dtype)
    arr = np.frombuffer(data, dt)
    return arr if len(shape) == 1 else arr.reshape(shape)


class CompactPickler(pickle.Pickler):
    """Pickles plain numpy arrays as ``(bytes, dtype, shape)``: half the time and bytes of
    numpy's own reduce for the small observations of an env step."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray and obj.dtype.fields is None and not obj.dtype.hasobject:
            if obj.nbytes > COMPACT_MAX_BYTES:
                raise ArrayTooBig
            return _array, (bytearray(obj.tobytes()), obj.dtype.str, obj.shape)
        return NotImplemented


def encode_compact(obj: Any) -> Any:
    """The body of a message: the compact pickle of ``obj``, or a plain protocol-5 pickle when
    it holds an array over ``COMPACT_MAX_BYTES``.

    Args:
        obj: A pickle-able object.

    Returns:
        The body (bytes or a buffer).

    Raises:
        blender_worker.codec.CodecError: ``obj`` cannot be pickled.
    """
    out = io.BytesIO()
    try:
        CompactPickler(out, protocol=5).dump(obj)
    except ArrayTooBig:
        return plain_pickle(obj)
    except Exception as exc:  # noqa: BLE001 - re-raised as the channel's error
        raise CodecError(f"cannot pickle message ({type(exc).__name__}: {exc})") from exc
    return out.getbuffer()


def plain_pickle(obj: Any) -> bytes:
    """A plain protocol-5 pickle, arrays in-band (objects with a big array)."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception as exc:  # noqa: BLE001 - re-raised as the channel's error
        raise CodecError(f"cannot pickle message ({type(exc).__name__}: {exc})") from exc


def decode_compact(body: Any) -> Any:
    """The object in a message body made by `encode_compact` (or any pickle).

    Args:
        body: The body bytes.

    Returns:
        The object.

    Raises:
        blender_worker.codec.CodecError: ``body`` does not unpickle.
    """
    try:
        return pickle.loads(body)
    except Exception as exc:  # noqa: BLE001 - re-raised as the channel's error
        raise CodecError(f"cannot unpickle message body of {len(body)} bytes ({type(exc).__name__}: {exc})") from exc
