"""The ZeroMQ sockets of the local hop, for both sides: bind an address, send and receive
one framed message (``blender_worker.codec``).

Like pyzmq's ``send_serialized`` / ``recv_serialized``: one pair of functions used by every
channel (items, duplex, env), so framing is spelled once. Imports only pyzmq and the codec.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, Optional

import numpy as np
import zmq

from blender_worker import codec
from blender_worker.protocol import KIND_ITEM

LOOPBACK = "tcp://127.0.0.1"


def ipc_address(directory: str, name: str) -> str:
    """The ``ipc://`` address of socket ``name`` in a private directory.

    Args:
        directory: A private (0700) directory of the binding side.
        name: The socket's name ("data", "control", "env").

    Returns:
        ``ipc://<directory>/<name>.sock``.
    """
    return f"ipc://{os.path.join(directory, name + '.sock')}"


def bind(sock: "zmq.Socket", transport: str, directory: Optional[str] = None, name: str = "data") -> str:
    """Bind ``sock`` on an ipc socket in ``directory`` or on a random tcp port of 127.0.0.1.

    Args:
        sock: The socket to bind.
        transport: "ipc" or "tcp".
        directory: Private directory for the ipc socket file (needed for "ipc").
        name: The socket's name in ``directory``.

    Returns:
        The address the other side connects to.

    Raises:
        ValueError: Unknown transport, or "ipc" without a directory.
    """
    if transport == "ipc":
        if directory is None:
            raise ValueError("the ipc transport needs a private directory for its socket")
        address = ipc_address(directory, name)
        sock.bind(address)
        return address
    if transport == "tcp":
        return f"{LOOPBACK}:{sock.bind_to_random_port(LOOPBACK)}"
    raise ValueError(f"transport={transport!r}: use 'ipc' or 'tcp'")


def send(sock: "zmq.Socket", obj: Any, *, codec_name: str = "pickle", kind: str = KIND_ITEM, flags: int = 0) -> None:
    """Encode ``obj`` and send it as one multipart message (arrays not copied).

    Args:
        sock: The socket to send on.
        obj: The object (an item dict, a request, a reply).
        codec_name: "pickle" or "json".
        kind: The header's message kind (``blender_worker.protocol``).
        flags: ZeroMQ send flags (e.g. ``zmq.NOBLOCK``).
    """
    sock.send_multipart(codec.encode(obj, codec=codec_name, kind=kind), flags=flags, copy=False)


def recv(sock: "zmq.Socket", flags: int = 0) -> tuple[dict, Any]:
    """Receive one multipart message and decode it (arrays are views of the frames).

    Args:
        sock: The socket to receive on.
        flags: ZeroMQ receive flags (e.g. ``zmq.NOBLOCK``).

    Returns:
        ``(header, obj)``.

    Raises:
        blender_worker.codec.CodecError: The message is malformed or truncated.
        zmq.Again: With ``zmq.NOBLOCK``, when nothing is queued.
    """
    frames = sock.recv_multipart(flags, copy=False)
    return codec.decode([f.buffer for f in frames])


COMPACT_MAX_BYTES = 64 * 1024
"""Largest pickle ``send_compact`` sends as one in-band frame; bigger objects (rendered
frames) go through ``send`` with their arrays out-of-band."""


def send_compact(sock: "zmq.Socket", obj: Any, *, kind: str = KIND_ITEM, flags: int = 0) -> None:
    """Send a small ``obj`` as ONE frame (an in-band pickle, protocol 5, no JSON header).

    The fast path of request/reply channels whose messages are a few dozen bytes (env steps):
    one frame, copied, costs far fewer system calls and allocations than the framed
    ``send``. Objects whose pickle exceeds ``COMPACT_MAX_BYTES`` fall back to ``send``
    (several frames); ``recv_compact`` reads either.

    Args:
        sock: The socket to send on.
        obj: A pickle-able object.
        kind: The header's message kind, used only by the fallback.
        flags: ZeroMQ send flags (e.g. ``zmq.NOBLOCK``).
    """
    if type(obj) is dict and all(type(v) in _PLAIN for v in obj.values()):  # a request: no arrays
        body = pickle.dumps(obj, protocol=5)
    else:
        out = io.BytesIO()
        try:
            _CompactPickler(out, protocol=5).dump(obj)
        except _TooBig:
            send(sock, obj, kind=kind, flags=flags)
            return
        body = out.getbuffer()
    if len(body) > COMPACT_MAX_BYTES:
        send(sock, obj, kind=kind, flags=flags)
    else:
        sock.send(body, flags)


_PLAIN = (str, int, float, bool, type(None))
_DTYPES: dict = {}


class _TooBig(Exception):
    """An array too large for a one-frame message (``send_compact`` falls back to ``send``)."""


def _array(data: bytearray, dtype: str, shape: tuple) -> np.ndarray:
    """Unpickle an array pickled by ``_CompactPickler`` (writable: ``data`` is a bytearray)."""
    dt = _DTYPES.get(dtype)
    if dt is None:
        dt = _DTYPES[dtype] = np.dtype(dtype)
    arr = np.frombuffer(data, dt)
    return arr if len(shape) == 1 else arr.reshape(shape)


class _CompactPickler(pickle.Pickler):
    """Pickles plain numpy arrays as ``(bytes, dtype, shape)``: half the time and bytes of
    numpy's own reduce for the small observations of an env step."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray and obj.dtype.fields is None and not obj.dtype.hasobject:
            if obj.nbytes > COMPACT_MAX_BYTES:
                raise _TooBig
            return _array, (bytearray(obj.tobytes()), obj.dtype.str, obj.shape)
        return NotImplemented


def recv_compact(sock: "zmq.Socket", flags: int = 0) -> Any:
    """Receive one message sent by ``send_compact`` (one frame) or ``send`` (several).

    Args:
        sock: The socket to receive on.
        flags: ZeroMQ receive flags (e.g. ``zmq.NOBLOCK``).

    Returns:
        The object.

    Raises:
        blender_worker.codec.CodecError: The message is malformed or truncated.
        zmq.Again: With ``zmq.NOBLOCK`` (or a receive timeout), when nothing is queued.
    """
    first = sock.recv(flags)
    if first[:1] == b"\x80":  # a pickle (send_compact); a framed message starts with its JSON header
        try:
            return pickle.loads(first)
        except Exception as exc:  # noqa: BLE001
            raise codec.CodecError(f"cannot unpickle one-frame message ({type(exc).__name__}: {exc})") from exc
    frames = [first, *(sock.recv_multipart(flags, copy=False) if sock.getsockopt(zmq.RCVMORE) else ())]
    return codec.decode([f if isinstance(f, bytes) else f.buffer for f in frames])[1]
