"""The env channel: one length-prefixed message pipe over a plain stream socket.

Why not ZeroMQ: a gymnasium env step is one request and one reply. A bare ZeroMQ REQ/REP round
trip between two plain Python processes costs ~117 us on the reference machine (8,516 round
trips/s), most of a ~257 us env step: ZeroMQ hands every message to its IO thread and back
(several thread wake-ups per direction). The same round trip over a connected stream socket is
one ``send`` and one ``recv`` system call per direction in the calling threads
(``benchmarks/env_steps.py`` measures both).

Wire format: a message is an 8-byte little-endian unsigned length followed by that many body
bytes. The body is a pickle (protocol 5, in-band):

* small objects (requests, step replies) use a compact pickler that stores plain numpy arrays
  as ``(bytes, dtype, shape)``, half the time and bytes of numpy's own reduce for the small
  observations of an env step;
* objects holding a big array (over ``codec.COMPACT_MAX_BYTES``, e.g. a rendered frame) are plain
  protocol-5 pickles with the array data in-band (one copy into the pickle stream).

Either way the receiver calls ``pickle.loads``; arrays arrive writable. The body is only ever
decoded on data from the project's own local hop (a 0700 directory for ipc, 127.0.0.1 for tcp).

The driver (``blendtorch_ray.env``) binds a `PipeListener` before Blender starts and passes
its ``address`` as ``--btcontrol``; Blender connects with `MessagePipe.connect`. Addresses use
ZeroMQ's notation, as the other channels' do: ``ipc://<path>`` (a unix stream socket) or
``tcp://127.0.0.1:<port>``.

The body codec (the compact pickler) is ``blender_worker.codec``'s ``encode_compact`` /
``decode_compact``. This module imports only the standard library and
``blender_worker.codec``: it runs inside Blender.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import socket
import struct
import time
from typing import Any, Optional


from blender_worker.codec import ArrayTooBig, CodecError, CompactPickler, decode_compact, plain_pickle

HEADER = struct.Struct("<Q")
"""The length prefix of every message: 8 bytes, little-endian, unsigned."""

COALESCE_MAX_BYTES = 64 * 1024
"""Bodies up to this size are copied behind their header and sent with one ``send``; bigger
ones go out with ``sendmsg([header, body])`` (no copy)."""

RECV_CHUNK = 64 * 1024
"""Bytes asked for by one ``recv`` while no message is under way: a small message arrives
whole in one system call."""

MAX_MESSAGE_BYTES = 1 << 40
"""A length prefix above this is not a message of this channel (garbage on the stream)."""

_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)  # a closed peer raises instead of SIGPIPE
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_PLAIN = (str, int, float, bool, type(None))
_SCALARS = (*_PLAIN, bytes)


class PipeClosed(EOFError):
    """The peer closed the pipe (or the connection was reset): no more messages will come."""


def _parse(address: str) -> tuple[int, Any]:
    """``(family, sockaddr)`` of an ``ipc://<path>`` or ``tcp://<host>:<port>`` address."""
    if address.startswith("ipc://"):
        return socket.AF_UNIX, address[len("ipc://"):]
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address {address!r}: expected tcp://<host>:<port>")
        return socket.AF_INET, (host, int(port))
    raise ValueError(f"address {address!r}: expected ipc://<path> or tcp://<host>:<port>")


class PipeListener:
    """The driver's listening socket of one env channel; Blender connects to ``address``.

    Args:
        transport: "ipc" (a unix stream socket at ``<directory>/<name>.sock``) or "tcp"
            (127.0.0.1, a random port).
        directory: A private (0700) directory for the ipc socket file (needed for "ipc").
        name: The socket's name in ``directory``.

    Raises:
        ValueError: Unknown transport, or "ipc" without a directory.
        OSError: The socket cannot be bound.
    """

    def __init__(self, transport: str, directory: Optional[str] = None, name: str = "env") -> None:
        if transport == "ipc":
            if directory is None:
                raise ValueError("the ipc transport needs a private directory for its socket")
            path = os.path.join(directory, name + ".sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
            except BaseException:
                sock.close()
                raise
            self.address = f"ipc://{path}"
        elif transport == "tcp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", 0))
            except BaseException:
                sock.close()
                raise
            self.address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        else:
            raise ValueError(f"transport={transport!r}: use 'ipc' or 'tcp'")
        sock.listen(1)
        self._sock: Optional[socket.socket] = sock

    def accept(self, timeout: Optional[float] = None) -> Optional["MessagePipe"]:
        """Wait for the peer to connect.

        Args:
            timeout: Longest wait in seconds; None waits for ever.

        Returns:
            The connected pipe, or None if nobody connected within ``timeout``.

        Raises:
            OSError: The listener was closed.
        """
        if self._sock is None:
            raise OSError("accept() on a closed PipeListener")
        self._sock.settimeout(timeout)
        try:
            conn, _ = self._sock.accept()
        except TimeoutError:
            return None
        return MessagePipe(conn)

    def close(self) -> None:
        """Stop listening (the ipc socket file stays until its directory is removed). Pipes
        already accepted stay open. Safe to call more than once."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class MessagePipe:
    """A connected stream socket that sends and receives whole messages (module docstring).

    Made by `PipeListener.accept` (the driver) or `MessagePipe.connect` (Blender). A
    receive that times out keeps what arrived of a message; the next one continues it. Sends
    block until the kernel took the whole message.

    Args:
        sock: A connected ``SOCK_STREAM`` socket; the pipe owns it.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)  # timeouts are the kernel's SO_RCVTIMEO: one system call per recv
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._armed: Optional[float] = None  # the SO_RCVTIMEO in force (None: blocks for ever)
        self._buf = bytearray()  # bytes received beyond the last whole message
        self._body: Optional[bytearray] = None  # a big body being received in place ...
        self._got = 0  # ... and how much of it has arrived
        self._poller: Any = None
        self._out = io.BytesIO()  # one compact pickler per pipe, reused: saves ~2 us a message
        self._pickler = CompactPickler(self._out, protocol=5)

    @classmethod
    def connect(cls, address: str, timeout: float = 30.0) -> "MessagePipe":
        """Connect to a `PipeListener`'s address, retrying until it listens.

        Args:
            address: ``ipc://<path>`` or ``tcp://<host>:<port>``.
            timeout: Seconds to keep retrying a refused (or not yet existing) socket.

        Returns:
            The connected pipe.

        Raises:
            ValueError: A malformed address.
            OSError: Nobody listened within ``timeout`` (the last connection error).
        """
        family, sockaddr = _parse(address)
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.connect(sockaddr)
                return cls(sock)
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
            except BaseException:
                sock.close()
                raise

    def fileno(self) -> int:
        """The socket's file descriptor (for ``select``).

        Returns:
            The descriptor, -1 once closed.
        """
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket; the peer's next receive raises `PipeClosed`. Safe to call twice."""
        self._sock.close()

    # ------------------------------------------------------------------ send
    def send(self, obj: Any) -> None:
        """Send ``obj`` as one message (header and body in one system call).

        Args:
            obj: A pickle-able object (a request, a reply).

        Raises:
            blender_worker.codec.CodecError: ``obj`` cannot be pickled.
            PipeClosed: The peer closed the pipe.
        """
        kind = type(obj)
        if (kind is dict and all(type(v) in _PLAIN for v in obj.values())) or kind in _SCALARS:
            body: Any = pickle.dumps(obj, protocol=5)  # a request or a scalar: no arrays to compact
        else:
            body = self._encode(obj)
        size = len(body)
        try:
            if size <= COALESCE_MAX_BYTES:
                self._sock.sendall(HEADER.pack(size) + body, _SEND_FLAGS)
                return
            header = HEADER.pack(size)
            sent = self._sock.sendmsg([header, body], (), _SEND_FLAGS)
            if sent < 8:  # the kernel took part of it: the rest, blocking
                self._sock.sendall(header[sent:], _SEND_FLAGS)
                sent = 8
            if sent < 8 + size:
                self._sock.sendall(memoryview(body)[sent - 8:], _SEND_FLAGS)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise PipeClosed(f"the peer closed the pipe ({exc})") from exc

    def _encode(self, obj: Any) -> Any:
        """`blender_worker.codec.encode_compact` with this pipe's reused pickler."""
        out, pickler = self._out, self._pickler
        try:
            pickler.dump(obj)
            return out.getvalue()
        except ArrayTooBig:
            pass
        except Exception as exc:  # noqa: BLE001 - re-raised as the channel's error
            raise CodecError(f"cannot pickle message ({type(exc).__name__}: {exc})") from exc
        finally:
            pickler.clear_memo()
            out.seek(0)
            out.truncate()
        return plain_pickle(obj)

    # ------------------------------------------------------------------ receive
    def recv(self, timeout: Optional[float] = None) -> Any:
        """Receive the next message.

        Args:
            timeout: Longest wait in seconds (0: only what already arrived); None waits for
                ever. A message still arriving when it passes stays buffered: the next
                ``recv`` continues it.

        Returns:
            The object.

        Raises:
            TimeoutError: No whole message within ``timeout``.
            PipeClosed: The peer closed the pipe (an ``EOFError``).
            blender_worker.codec.CodecError: A body that does not unpickle (the pipe stays
                usable), or a length prefix that cannot be one (the stream is lost).
        """
        if self._buf or self._body is not None:
            return self._recv_more(timeout)
        if timeout != self._armed and timeout != 0:
            self._arm(timeout)
        try:
            data = self._sock.recv(RECV_CHUNK, _DONTWAIT if timeout == 0 else 0)
        except BlockingIOError:
            raise TimeoutError(f"no message within {timeout} s") from None
        except ConnectionResetError as exc:
            raise PipeClosed(f"the peer reset the pipe ({exc})") from exc
        n = len(data)
        if n > 8 and HEADER.unpack_from(data)[0] == n - 8:  # the fast path: one whole message
            return decode_compact(data[8:])
        if not n:
            raise PipeClosed("the peer closed the pipe")
        self._buf += data
        return self._recv_more(timeout)

    def _recv_more(self, timeout: Optional[float]) -> Any:
        """The general case: messages split across receives, or several in one."""
        deadline = None if not timeout else time.monotonic() + timeout
        while True:
            if self._body is None:
                buf = self._buf
                if len(buf) >= 8:
                    size = HEADER.unpack_from(buf)[0]
                    if size > MAX_MESSAGE_BYTES:
                        self._buf = bytearray()
                        raise CodecError(f"length prefix {size:#x} is no message of this channel (garbage on the stream)")
                    if len(buf) >= 8 + size:
                        body = bytes(buf[8:8 + size])
                        del buf[:8 + size]
                        return decode_compact(body)
                    if size > RECV_CHUNK:  # big: receive the rest in place
                        self._body = bytearray(size)
                        self._got = len(buf) - 8
                        self._body[:self._got] = memoryview(buf)[8:]
                        self._buf = bytearray()
            elif self._got == len(self._body):
                body, self._body = self._body, None
                return decode_compact(body)
            if timeout:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no whole message within {timeout} s")
                self._arm(left)
            elif timeout is None and self._armed is not None:
                self._arm(None)
            flags = _DONTWAIT if timeout == 0 else 0
            try:
                if self._body is not None:
                    n = self._sock.recv_into(memoryview(self._body)[self._got:], 0, flags)
                    self._got += n
                else:
                    data = self._sock.recv(RECV_CHUNK, flags)
                    n = len(data)
                    self._buf += data
            except BlockingIOError:
                raise TimeoutError(f"no whole message within {timeout} s") from None
            except ConnectionResetError as exc:
                raise PipeClosed(f"the peer reset the pipe ({exc})") from exc
            if not n:
                raise PipeClosed("the peer closed the pipe in the middle of a message")

    def _arm(self, timeout: Optional[float]) -> None:
        """Set the kernel's receive timeout (SO_RCVTIMEO; 0 there means no timeout)."""
        if timeout is None:
            sec, usec = 0, 0
        else:
            t = max(timeout, 1e-6)
            sec = int(t)
            usec = max(int((t - sec) * 1e6), 0 if sec else 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, usec))
        self._armed = timeout

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a ``recv`` would find something (bytes buffered or arriving, or a closed peer).

        Args:
            timeout: Longest wait in seconds (0: just look).

        Returns:
            True if bytes are buffered (a whole message, or part of one) or the socket is
            readable (or the peer closed: the next ``recv`` then raises `PipeClosed`).
        """
        if self._buf or self._body is not None:
            return True
        if hasattr(select, "poll"):
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self._sock.fileno(), select.POLLIN)
            return bool(self._poller.poll(max(0, int(timeout * 1000 + 0.999))))
        return bool(select.select([self._sock], [], [], max(0.0, timeout))[0])
