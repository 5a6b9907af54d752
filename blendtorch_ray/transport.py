"""The receiving end of the local ZeroMQ hop: a PULL socket in a private directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Optional

import zmq

from blender_worker import codec


class PrivateDir:
    """A 0700 temporary directory for ipc sockets and logs, removed on ``cleanup``."""

    def __init__(self, prefix: str = "btr-") -> None:
        self.path = tempfile.mkdtemp(prefix=prefix)  # mkdtemp creates it 0700
        os.chmod(self.path, 0o700)

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ItemReceiver:
    """PULL socket bound on ``ipc://`` in a private directory (or tcp on 127.0.0.1).

    ``recv(timeout_ms)`` returns ``(header, obj)`` or None on timeout. Messages that are
    malformed, truncated or larger than ``max_message_bytes`` raise ``codec.CodecError``
    and are dropped; the socket stays usable.
    """

    def __init__(
        self,
        directory: Optional[PrivateDir],
        transport: str = "ipc",
        recv_hwm: int = 4,
        max_message_bytes: int = 1 << 30,
    ) -> None:
        self._ctx = zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, recv_hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if transport == "ipc":
            if directory is None:
                raise ValueError("ipc transport needs a private directory")
            self.address = f"ipc://{directory.join('data.sock')}"
            self.sock.bind(self.address)
        elif transport == "tcp":
            port = self.sock.bind_to_random_port("tcp://127.0.0.1")
            self.address = f"tcp://127.0.0.1:{port}"
        else:
            raise ValueError(f"unknown transport {transport!r}: use 'ipc' or 'tcp'")
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)

    def recv(self, timeout_ms: int) -> Optional[tuple[dict, Any]]:
        try:  # fast path: a message is already queued, no poll system call
            frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if not timeout_ms or not self._poller.poll(timeout_ms):
                return None
            frames = self.sock.recv_multipart(copy=False)
        return codec.decode([f.buffer for f in frames])

    def close(self) -> None:
        self.sock.close(0)
