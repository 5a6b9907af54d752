"""The ZeroMQ sockets of the local hop, for both sides: bind an address, send and receive
one framed message (``blender_worker.codec``).

Like pyzmq's ``send_serialized`` / ``recv_serialized``: one pair of functions used by the
ZeroMQ channels (items, duplex), so framing is spelled once. (The env channel is no ZeroMQ
socket: ``blender_worker.pipe``.) Imports only pyzmq and the codec.
"""

from __future__ import annotations

import os
from typing import Any, Optional

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
