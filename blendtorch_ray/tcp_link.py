"""The cross-node fast path: batches go from an actor straight to a consumer on another node
over one ZeroMQ tcp connection, beside the Ray streaming generator.

Through Ray's object stores a batch is copied six or more times in four processes (the two
raylets move it between the stores; see docs/scaling.md), and the path is CPU-bound long
before the network is. Here the consumer binds a PULL socket on its node's IP and hands its
address and a random token to the actor's ``stream`` call (`TcpInbox.offer`); the actor
connects a PUSH socket (`TcpOutbox`), sends each batch's frames on it and yields only a small
descriptor through the generator (`is_tcp_batch`). So the generator still carries what Ray
is good at: the order of batches, backpressure (``max_batches_in_flight``), cancellation and
the loss of an actor or node; the bytes cross once per process, as in a bare socket pair.

The consumer decodes a message (pickle, like the rest of the stream) only after its first
frame matched the stream's token, which only Ray's own channel has carried: a process that
connects to the port without it has its messages dropped unread (`TcpInbox.dropped`).
Traffic is not encrypted, as Ray's own object transfers are not without TLS; where that is
needed, ``StreamConfig(cross_node="object_store")`` keeps every byte inside Ray.

When the actor cannot reach the consumer's address within ``CONNECT_TIMEOUT_S`` (a firewall
between nodes), the stream goes through the object store instead, with a warning in the
instance's ``health().warnings``: nothing is lost, since no item was taken from Blender yet.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any, Callable, Optional

import numpy as np
import zmq

from blender_worker import codec
from blendtorch_ray.shm_ring import register_block

TCP_BATCH = "__btr_tcp_batch__"
"""Key of the descriptor the generator yields for a batch that went over the tcp link."""

CONNECT_TIMEOUT_S = 10.0
"""Seconds the actor waits for its connection to the consumer before it falls back to the
object store for that stream."""

PEER_GONE_S = 30.0
"""Seconds the actor's socket may have no connected consumer (it went away, or the network
between the nodes broke) before the stream ends."""

SEND_POLL_MS = 500
"""Milliseconds between two looks at the clock while a send waits for a connected consumer."""

NO_HWM = 0
"""ZeroMQ high-water mark of both ends: none. ZeroMQ counts message parts, not messages (a
batch is several parts: a limit of a few batches made the actor wait for every batch to be
read before it sent the next), and Ray's generator backpressure already bounds what is in
flight: a batch is sent just before its descriptor is yielded, and the yield waits while
``max_batches_in_flight`` descriptors are not taken, so at most that many plus one batches are
queued between the two ends."""


def is_tcp_batch(obj: Any) -> bool:
    """Whether a yielded object is the descriptor of a batch sent over the tcp link.

    Args:
        obj: What the actor's stream yielded.

    Returns:
        True for a `TcpOutbox.send` descriptor.
    """
    return isinstance(obj, dict) and TCP_BATCH in obj


class TcpLinkLost(ConnectionError):
    """A batch announced by the generator did not arrive on the tcp link in time."""


class TcpInbox:
    """The consumer's end: a PULL socket bound on ``host`` (this node's IP), random port.

    Args:
        host: The address the actor's node can reach this process at
            (``ray.util.get_node_ip_address()``).
    """

    def __init__(self, host: str) -> None:
        self._ctx = zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, NO_HWM)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        # Connection events: a dropped connection (the actor's process or node died) ends a
        # wait for an announced batch at once instead of after the whole timeout.
        self._events = self.sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._events, zmq.POLLIN)
        self._connected = 0
        self.token = secrets.token_bytes(16)
        self.dropped = 0
        """Messages dropped unread: a wrong token, or a number out of order."""

    def offer(self) -> dict:
        """What the actor's ``stream(tcp=...)`` needs to connect: address and token.

        Returns:
            ``{"address": "tcp://ip:port", "token": hex string}``.
        """
        return {"address": self.address, "token": self.token.hex()}

    def take(self, descriptor: dict, timeout: float) -> list:
        """The batch that ``descriptor`` announced, decoded (its arrays are views of the
        received frames, no copy).

        Args:
            descriptor: The object the generator yielded (`is_tcp_batch`).
            timeout: Seconds to wait for it.

        Returns:
            The batch: a list of item dicts.

        Raises:
            TcpLinkLost: It did not arrive within ``timeout`` (the actor or the network went
                away after announcing it).
        """
        number = descriptor[TCP_BATCH]
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                remaining = deadline - time.monotonic()
                ready = dict(self._poller.poll(int(remaining * 1000) + 1)) if remaining > 0 else {}
                if self._events in ready:
                    self._note_events()
                    if not self._connected and not self.sock.poll(0, zmq.POLLIN):
                        raise TcpLinkLost(f"batch {number} announced by the actor did not arrive on "
                                          f"{self.address}: the actor's connection dropped")
                    continue
                if self.sock not in ready:
                    raise TcpLinkLost(f"batch {number} announced by the actor did not arrive on {self.address} "
                                      f"within {timeout:.0f}s")
                continue
            if len(frames) < 4 or not hmac.compare_digest(frames[0].bytes, self.token):
                self.dropped += 1  # not from this stream's actor: never decoded
                continue
            got = int.from_bytes(frames[1].bytes, "little")
            if got != number:
                self.dropped += 1
                continue
            return _unpack(codec.decode([f.buffer for f in frames[2:]])[1])

    def _note_events(self) -> None:
        """Count connections from the monitor's events (accepted +1, disconnected -1)."""
        from zmq.utils.monitor import recv_monitor_message

        while self._events.poll(0):
            event = recv_monitor_message(self._events)["event"]
            self._connected += 1 if event == zmq.EVENT_ACCEPTED else -1

    def close(self) -> None:
        """Close the socket (unread messages are dropped)."""
        self.sock.disable_monitor()
        self._events.close(linger=0)
        self.sock.close(linger=0)


class TcpOutbox:
    """The actor's end: a PUSH socket connected to a consumer's `TcpInbox`.

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
        if not address.startswith("tcp://"):
            raise ValueError(f"tcp address {address!r}: expected tcp://host:port")
        self.address = address
        self._token = token
        self._ctx = zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, NO_HWM)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only on a live connection: POLLOUT means connected
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.sent = 0

    def wait_connected(self, timeout: float) -> bool:
        """Whether the connection to the consumer is up within ``timeout`` seconds.

        Args:
            timeout: Seconds to wait.

        Returns:
            True once it is (a send would not wait); False after ``timeout``.
        """
        return bool(self.sock.poll(int(timeout * 1000), zmq.POLLOUT))

    def send(self, batch: list, superseded: Callable[[], bool] = lambda: False) -> dict:
        """Send ``batch`` to the consumer. Its arrays are copied once, into one block per key
        (`_pack`), so the caller may give their memory back (Blender's slots) as soon as this
        returns, and the consumer's ``collate`` takes the received block as the batch.

        Args:
            batch: A list of item dicts.
            superseded: Returns True once the stream should end (the actor closes, or a newer
                stream took the instance over); a send waiting for a consumer then gives up.

        Returns:
            The descriptor to yield through the generator in place of the batch.

        Raises:
            ConnectionAbortedError: No consumer was connected for ``PEER_GONE_S``, or the
                stream was superseded while waiting for one.
        """
        frames = codec.encode(_pack(batch), codec="pickle")
        since = time.monotonic()
        while not self.sock.poll(SEND_POLL_MS, zmq.POLLOUT):
            if superseded():
                raise ConnectionAbortedError(f"the stream ended while waiting for its consumer at {self.address}")
            if time.monotonic() - since > PEER_GONE_S:
                raise ConnectionAbortedError(f"no consumer connected at {self.address} for {PEER_GONE_S:.0f}s")
        number = self.sent
        self.sock.send_multipart([self._token, number.to_bytes(8, "little"), *frames], copy=False)
        self.sent += 1
        return {TCP_BATCH: number, "items": len(batch)}

    def close(self) -> None:
        """Close the socket; batches not sent yet are dropped (the stream ended)."""
        self.sock.close(linger=0)


PACKED = "__btr_packed__"
"""Key of a packed batch (`_pack`): ``{PACKED: {key: block}, "items": [rest of each item]}``."""


def _pack(batch: list) -> dict:
    """The batch with each key whose values are arrays of one shape and dtype in every item
    stacked into one ``(n, ...)`` block: the one copy of the actor, and on the consumer's side
    the batch ``collate`` returns without stacking again."""
    first = batch[0] if batch else {}
    blocks = {}
    for key, value in first.items():
        if isinstance(value, np.ndarray) and not value.dtype.hasobject and all(
                isinstance(item.get(key), np.ndarray) and item[key].shape == value.shape
                and item[key].dtype == value.dtype for item in batch):
            blocks[key] = np.stack([item[key] for item in batch])
    items = [{k: v for k, v in item.items() if k not in blocks} for item in batch]
    return {PACKED: blocks, "items": items}


def _unpack(packed: dict) -> list:
    """The items of a `_pack`ed batch; their packed arrays are rows of the received blocks."""
    items = packed["items"]
    for key, block in packed[PACKED].items():
        if block.flags.writeable and block.flags.c_contiguous:
            register_block(block)  # fresh memory (the received frame): collate may keep it
        for item, row in zip(items, block):
            item[key] = row
    return items


def open_outbox(offer: Optional[dict], warn: Callable[[str], None],
                connect_timeout: float = CONNECT_TIMEOUT_S) -> Optional[TcpOutbox]:
    """The actor's tcp link for a stream, or None when none was asked for or it cannot connect.

    Args:
        offer: The consumer's `TcpInbox.offer`, or None.
        warn: Called with the reason when the link cannot be used (the object store is then).
        connect_timeout: Seconds to wait for the connection.

    Returns:
        A connected `TcpOutbox`, or None.
    """
    if offer is None:
        return None
    try:
        outbox = TcpOutbox(offer)
    except (ValueError, zmq.ZMQError) as exc:
        warn(f"cannot use the tcp link to the consumer ({exc}); its batches go through the object store")
        return None
    if outbox.wait_connected(connect_timeout):
        return outbox
    outbox.close()
    warn(f"the consumer's tcp link {offer.get('address')} was not reachable within {connect_timeout:.0f}s "
         "(a firewall between the nodes?); its batches go through the object store. Open the port range "
         "between nodes, or set StreamConfig(cross_node='object_store') to skip the attempt")
    return None
