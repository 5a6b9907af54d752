"""The cross-node fast path: batches go from an actor straight to a consumer on another node
over one plain tcp connection, beside the Ray streaming generator.

Through Ray's object stores a batch is copied six or more times in four processes (the two
raylets move it between the stores; see docs/scaling.md), and the path is CPU-bound long
before the network is. Here the consumer listens on its node's IP and hands its address and
a random token to the actor's ``stream`` call (`TcpInbox.offer`); the actor connects
(`TcpOutbox`) and yields only a small descriptor per batch through the generator
(`is_tcp_batch`), then sends the batch's bytes. So the generator still carries what Ray is
good at: the order of batches, backpressure (``max_batches_in_flight``), cancellation and the
loss of an actor or node.

The bytes cross as in a bare socket pair: the actor hands the kernel the item arrays where
they lie (Blender's shared-memory slots, one gathering ``sendmsg``: no copy in the actor),
and the consumer receives each key of the batch straight into one fresh ``(n, ...)`` block
(``recv_into``), which ``collate`` returns as the batch. The format: `blendtorch_ray.tcp_wire`.

The consumer reads a message only after its first 16 bytes matched the stream's token, which
only Ray's own channel has carried: a connection that sends anything else is closed unread
(`TcpInbox.dropped`). Traffic is not encrypted, as Ray's own object transfers are not without
TLS; where that is needed, ``StreamConfig(cross_node="object_store")`` keeps every byte
inside Ray.

When the actor cannot reach the consumer's address within ``CONNECT_TIMEOUT_S`` (a firewall
between nodes), the stream goes through the object store instead, with a warning in the
instance's ``health().warnings``: nothing is lost, since no item was taken from Blender yet.
"""

from __future__ import annotations

import hmac
import secrets
import selectors
import socket
import time
from typing import Any, Callable, Optional

import numpy as np

from blender_worker import codec
from blendtorch_ray.tcp_wire import IOV_MAX, PACKED, message, parse_prefix, prefix_missing, unpack

TCP_BATCH = "__btr_tcp_batch__"
"""Key of the descriptor the generator yields for a batch that goes over the tcp link."""

CONNECT_TIMEOUT_S = 10.0
"""Seconds the actor tries to connect to the consumer before it falls back to the object
store for that stream."""

PEER_GONE_S = 30.0
"""Seconds a send may make no progress (the consumer stopped reading, or the network between
the nodes broke without a reset) before the stream ends."""

SEND_POLL_S = 0.5
"""Seconds between two looks at ``superseded`` while a send waits for the consumer to read."""

def is_tcp_batch(obj: Any) -> bool:
    """Whether a yielded object is the descriptor of a batch sent over the tcp link.

    Args:
        obj: What the actor's stream yielded.

    Returns:
        True for a `TcpOutbox.prepare` descriptor.
    """
    return isinstance(obj, dict) and TCP_BATCH in obj


class TcpLinkLost(ConnectionError):
    """A batch announced by the generator did not arrive on the tcp link in time."""


class _Peer:
    """One accepted connection: the bytes of a message prefix read so far."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.trusted = False


class TcpInbox:
    """The consumer's end: a listening socket on ``host`` (this node's IP), random port.

    Args:
        host: The address the actor's node can reach this process at
            (``ray.util.get_node_ip_address()``).
    """

    def __init__(self, host: str) -> None:
        self._listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._listener.setblocking(False)
        port = self._listener.getsockname()[1]
        self.address = f"tcp://{host}:{port}"
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peers: list = []
        self._accepted = 0
        self.token = secrets.token_bytes(16)
        self.dropped = 0
        """Connections closed unread (a wrong token, a malformed prefix) and messages read but
        dropped (a batch number out of order)."""

    def offer(self) -> dict:
        """What the actor's ``stream(tcp=...)`` needs to connect: address and token.

        Returns:
            ``{"address": "tcp://ip:port", "token": hex string}``.
        """
        return {"address": self.address, "token": self.token.hex()}

    def take(self, descriptor: dict, timeout: float) -> list:
        """The batch that ``descriptor`` announced, decoded: each packed key's arrays are rows
        of one block it was received into.

        Args:
            descriptor: The object the generator yielded (`is_tcp_batch`).
            timeout: Seconds to wait for it.

        Returns:
            The batch: a list of item dicts.

        Raises:
            TcpLinkLost: It did not arrive within ``timeout``, or the actor's connection
                dropped (the actor or the network went away after announcing it).
        """
        number = descriptor[TCP_BATCH]
        deadline = time.monotonic() + timeout
        while True:
            for peer in list(self._peers):
                got = self._prefix(peer)
                if got is None:
                    continue
                parts = self._body(peer, got, deadline, number)
                if got[0] != number:
                    self.dropped += 1
                    continue
                return parts
            if self._accepted and not self._peers:
                raise TcpLinkLost(f"batch {number} announced by the actor did not arrive on "
                                  f"{self.address}: the actor's connection dropped")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TcpLinkLost(f"batch {number} announced by the actor did not arrive on {self.address} "
                                  f"within {timeout:.0f}s")
            for key, _ in self._sel.select(min(remaining, 1.0)):
                if key.data is None:
                    self._accept()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            peer = _Peer(sock)
            self._peers.append(peer)
            self._sel.register(sock, selectors.EVENT_READ, peer)
            self._accepted += 1

    def _drop(self, peer: _Peer, unread: bool) -> None:
        self._peers.remove(peer)
        self._sel.unregister(peer.sock)
        peer.sock.close()
        if unread:
            self.dropped += 1

    def _prefix(self, peer: _Peer) -> Optional[tuple]:
        """``(number, frames, blocks, lengths)`` of the message that starts on ``peer``
        once all of its prefix has arrived, else None (read without waiting). A connection
        that closes is dropped; one whose first bytes are not the token is dropped unread."""
        while True:
            need = prefix_missing(peer.buf)
            if need is None:
                self._drop(peer, unread=True)
                return None
            if not need:
                break
            try:
                chunk = peer.sock.recv(need)
            except BlockingIOError:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self._drop(peer, unread=not peer.trusted and bool(peer.buf))
                return None
            peer.buf += chunk
            if not peer.trusted and len(peer.buf) >= 16:
                if not hmac.compare_digest(bytes(peer.buf[:16]), self.token):
                    self._drop(peer, unread=True)  # not from this stream's actor: never decoded
                    return None
                peer.trusted = True
        prefix, peer.buf = parse_prefix(peer.buf), bytearray()
        if prefix is None:
            self._drop(peer, unread=True)
        return prefix

    def _body(self, peer: _Peer, prefix: tuple, deadline: float, number: int) -> list:
        """Read the rest of the message whose prefix was read from ``peer`` (a trusted
        connection: the actor sends whole messages) and decode it."""
        got, frames, blocks, lengths = prefix
        bufs = [bytearray(n) for n in lengths[:frames]]
        for buf in bufs:
            self._fill(peer, memoryview(buf), deadline, number)
        if got != number:  # read past, unused
            for n in lengths[frames:]:
                self._fill(peer, memoryview(bytearray(n)), deadline, number)
            return []
        packed = codec.decode(bufs)[1]
        specs = packed[PACKED]
        if len(specs) != blocks:
            raise TcpLinkLost(f"batch {number} on {self.address}: {blocks} blocks, expected {len(specs)}")
        for (key, (dtype, shape)), n in zip(specs.items(), lengths[frames:]):
            block = np.empty(shape, dtype)
            if block.nbytes != n:
                raise TcpLinkLost(f"batch {number} on {self.address}: block {key!r} of {n} bytes, "
                                  f"expected {block.nbytes}")
            self._fill(peer, memoryview(block.reshape(-1).view(np.uint8)), deadline, number)
            specs[key] = block
        return unpack(packed)

    def _fill(self, peer: _Peer, view: memoryview, deadline: float, number: int) -> None:
        """Receive exactly ``len(view)`` bytes from ``peer`` into ``view`` (blocking, until
        ``deadline``; the socket's own timeout waits, no selector per wait)."""
        sock, got = peer.sock, 0
        try:
            while got < len(view):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TcpLinkLost(f"batch {number} was cut off on {self.address}: the rest did not "
                                      "arrive in time")
                sock.settimeout(remaining)
                try:
                    n = sock.recv_into(view[got:])
                except socket.timeout:
                    continue
                except OSError:
                    n = 0
                if not n:
                    self._drop(peer, unread=False)
                    raise TcpLinkLost(f"batch {number} was cut off on {self.address}: the actor's connection dropped")
                got += n
        finally:
            if peer in self._peers:
                sock.setblocking(False)

    def close(self) -> None:
        """Close the connections and the listening socket (unread messages are dropped)."""
        for peer in list(self._peers):
            self._drop(peer, unread=False)
        self._sel.close()
        self._listener.close()


class TcpOutbox:
    """The actor's end: a connection to a consumer's `TcpInbox`.

    Args:
        offer: The consumer's `TcpInbox.offer`.

    Raises:
        ValueError: ``offer`` is not an inbox's offer.
    """

    def __init__(self, offer: dict) -> None:
        try:
            address, token = str(offer["address"]), bytes.fromhex(offer["token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"tcp={offer!r} is not a TcpInbox.offer() ({exc})") from exc
        host, _, port = address[len("tcp://"):].rpartition(":")
        if not address.startswith("tcp://") or not host or not port.isdigit():
            raise ValueError(f"tcp address {address!r}: expected tcp://host:port")
        self.address = address
        self._where = (host.strip("[]"), int(port))
        self._token = token
        self.sock: Optional[socket.socket] = None
        self._pending: list = []
        self.sent = 0

    def wait_connected(self, timeout: float) -> bool:
        """Connect to the consumer, trying for up to ``timeout`` seconds.

        Args:
            timeout: Seconds to try.

        Returns:
            True once connected; False after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while self.sock is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                self.sock = socket.create_connection(self._where, timeout=remaining)
            except OSError:  # refused (not listening yet) or unreachable: once more, shortly
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(SEND_POLL_S)
        return True

    def prepare(self, batch: list) -> dict:
        """The descriptor of ``batch``, which `flush` then sends. Nothing is copied: until
        `flush` returns, the batch's arrays must stay where they are (Blender's slots).

        Args:
            batch: A list of item dicts.

        Returns:
            The descriptor to yield through the generator in place of the batch.
        """
        self._pending = message(self._token, self.sent, batch)
        number = self.sent
        self.sent += 1
        return {TCP_BATCH: number, "items": len(batch)}

    def flush(self, superseded: Callable[[], bool] = lambda: False) -> None:
        """Send what `prepare` announced (if anything), waiting for the consumer to read it.

        Args:
            superseded: Returns True once the stream should end (the actor closes, or a newer
                stream took the instance over); a send waiting for the consumer then gives up.

        Raises:
            ConnectionAbortedError: The consumer went away, read nothing for
                ``PEER_GONE_S``, or the stream was superseded while waiting for it.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        if self.sock is None:
            raise ConnectionAbortedError(f"not connected to the consumer at {self.address}")
        progress = time.monotonic()
        while pending:
            try:
                n = self.sock.sendmsg(pending[:IOV_MAX], [], socket.MSG_NOSIGNAL)
            except socket.timeout:
                if superseded():
                    raise ConnectionAbortedError(f"the stream ended while waiting for its consumer at {self.address}") from None
                if time.monotonic() - progress > PEER_GONE_S:
                    raise ConnectionAbortedError(f"the consumer at {self.address} read nothing for {PEER_GONE_S:.0f}s") from None
                continue
            except OSError as exc:
                raise ConnectionAbortedError(f"the consumer at {self.address} went away ({exc})") from exc
            progress = time.monotonic()
            while n and n >= pending[0].nbytes:
                n -= pending.pop(0).nbytes
            if n:
                pending[0] = pending[0][n:]

    def send(self, batch: list, superseded: Callable[[], bool] = lambda: False) -> dict:
        """`prepare` and `flush` in one: send ``batch`` now.

        Args:
            batch: A list of item dicts.
            superseded: As for `flush`.

        Returns:
            The descriptor to yield through the generator in place of the batch.

        Raises:
            ConnectionAbortedError: As for `flush`.
        """
        desc = self.prepare(batch)
        self.flush(superseded)
        return desc

    def close(self) -> None:
        """Close the connection; a batch prepared but not sent is dropped (the stream ended)."""
        self._pending = []
        if self.sock is not None:
            self.sock.close()


def open_outbox(offer: Optional[dict], warn: Callable[[str], None],
                connect_timeout: float = CONNECT_TIMEOUT_S) -> Optional[TcpOutbox]:
    """The actor's tcp link for a stream, or None when none was asked for or it cannot connect.

    Args:
        offer: The consumer's `TcpInbox.offer`, or None.
        warn: Called with the reason when the link cannot be used (the object store is then).
        connect_timeout: Seconds to try to connect.

    Returns:
        A connected `TcpOutbox`, or None.
    """
    if offer is None:
        return None
    try:
        outbox = TcpOutbox(offer)
    except ValueError as exc:
        warn(f"cannot use the tcp link to the consumer ({exc}); its batches go through the object store")
        return None
    if outbox.wait_connected(connect_timeout):
        return outbox
    outbox.close()
    warn(f"the consumer's tcp link {offer.get('address')} was not reachable within {connect_timeout:.0f}s "
         "(a firewall between the nodes?); its batches go through the object store. Open the port range "
         "between nodes, or set StreamConfig(cross_node='object_store') to skip the attempt")
    return None
