"""Duplex channel: trainer -> Blender messages and Blender -> trainer replies, through actors.

Messages travel driver -> actor (a Ray call) -> Blender (ZeroMQ DEALER pair over ipc in the
actor's private directory), replies the same way back, so no port is exposed and the
channel works wherever the actors run (local mode or a cluster)::

    with BlenderLauncher(script="scene.py", num_instances=2) as bl:
        chan = bl.channel()
        mid = chan.send(btid=0, speed=2.0)     # one instance
        chan.broadcast(speed=3.0)              # every instance
        reply = chan.recv(timeout=10)          # Reply(btid, msg_id, generation, payload)

Every message gets a new **generation** number (a counter of the channel). Blender tags
each item it publishes after receiving a message with that message's generation, so
``chan.is_fresh(item)`` tells whether an item was rendered after the latest message sent
to its instance. A restarted Blender starts again at generation 0: its items count as
stale until it is sent a message again.

``ControlEndpoint`` is the actor's end of the local hop; ``GroupChannel`` the trainer's (its
Blender-side counterpart is ``blender_worker.duplex.DuplexChannel``).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import logging

import ray
import zmq

from blender_worker import codec, sockets
from blender_worker.protocol import GENERATION, KIND_CONTROL, KIND_REPLY, MSG_ID, REPLY_TO, RESERVED_PAYLOAD_KEYS
from blendtorch_ray.errors import StreamTimeout

log = logging.getLogger("blendtorch_ray")

OUTBOX_RETRY_S = 0.01
"""Seconds between two attempts to send the outbox while Blender has not connected yet."""

LOCKED_POLL_S = 0.01
"""Longest wait, in seconds, of one ``ControlEndpoint.recv`` poll under the socket lock (a
``send`` from another thread waits at most this long for the lock)."""


@dataclass
class Reply:
    """A message from Blender instance ``btid``."""

    btid: int
    """The instance that sent it."""
    msg_id: Optional[int]
    """Id of the message this answers (None for unsolicited messages)."""
    generation: int
    """Generation Blender was at when it sent this."""
    payload: dict = field(default_factory=dict)
    """What Blender sent (``chan.reply(msg, **payload)`` / ``chan.send(**payload)``)."""


class ControlEndpoint:
    """The actor's control socket: a DEALER bound next to the data socket.

    Messages sent before Blender connected wait in an outbox and go out on the next call.
    Thread-safe (the actor calls it from its control concurrency group). ``address`` is
    what Blender connects to (``--btcontrol``).

    Args:
        directory: The actor's private directory (a ``PrivateDir``) for the ipc socket.
        transport: "ipc" or "tcp" (127.0.0.1, random port).
        codec_name: Codec of the messages ("pickle" or "json").
        btid: The instance, for replies and log messages.
    """

    def __init__(self, directory: Any, transport: str = "ipc", codec_name: str = "pickle", btid: int = 0) -> None:
        self.btid = btid
        self._codec = codec_name
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self.address = sockets.bind(self._sock, transport, directory.path if transport == "ipc" else None, "control")
        self._outbox: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._retry: Optional[threading.Thread] = None

    def send(self, msg_id: int, generation: int, payload: dict) -> None:
        """Queue a message for Blender and send what can be sent now.

        Args:
            msg_id: The message id (chosen by the trainer's channel).
            generation: Its generation.
            payload: The message.

        Raises:
            ValueError: A payload key is reserved by the duplex channel.
        """
        bad = [k for k in payload if k in RESERVED_PAYLOAD_KEYS]
        if bad:
            raise ValueError(f"payload keys {bad} are reserved by the duplex channel; rename them")
        obj = dict(payload)
        obj[MSG_ID] = msg_id
        obj[GENERATION] = generation
        frames = codec.encode(obj, codec=self._codec, kind=KIND_CONTROL)
        with self._lock:
            self._outbox.append(frames)
            self._flush()
            if self._outbox and (self._retry is None or not self._retry.is_alive()):
                # Blender has not connected yet: keep trying until it has everything.
                self._retry = threading.Thread(target=self._retry_flush, daemon=True)
                self._retry.start()

    def _retry_flush(self) -> None:
        while True:
            time.sleep(OUTBOX_RETRY_S)
            with self._lock:
                if self._closed:
                    return
                self._flush()
                if not self._outbox:
                    return

    def _flush(self) -> None:
        while self._outbox:
            try:
                self._sock.send_multipart(self._outbox[0], flags=zmq.NOBLOCK)
            except zmq.Again:  # Blender not connected (yet): keep it for later
                return
            self._outbox.popleft()

    def recv(self, timeout: float = 0.0, max_replies: int = 1000) -> list[dict]:
        """Replies received within ``timeout`` seconds (returns as soon as there is one).

        Args:
            timeout: Seconds to wait for a first reply; 0 only polls.
            max_replies: Most replies returned at once.

        Returns:
            Reply dicts with the fields of `Reply`; malformed replies are dropped (and
            logged).
        """
        deadline = time.monotonic() + timeout
        replies: list[dict] = []
        while True:
            with self._lock:
                self._flush()
                while len(replies) < max_replies and self._sock.poll(0, zmq.POLLIN):
                    try:
                        header, obj = sockets.recv(self._sock)
                    except codec.CodecError as exc:
                        log.warning("Blender instance %d: dropped a malformed duplex reply: %s", self.btid, exc)
                        continue
                    if header.get("kind") != KIND_REPLY or not isinstance(obj, dict):
                        continue
                    replies.append(self._reply(obj))
            left = deadline - time.monotonic()
            if replies or left <= 0:
                return replies
            with self._lock:  # sockets are not thread-safe: wait under the lock, briefly
                self._sock.poll(int(min(left, LOCKED_POLL_S) * 1000) + 1, zmq.POLLIN)  # +1: round up to whole ms

    def _reply(self, obj: dict) -> dict:
        payload = {k: v for k, v in obj.items() if k not in RESERVED_PAYLOAD_KEYS}
        # Arrays from the json codec view ZeroMQ frames; copy so they outlive them.
        payload = {k: (v.copy() if hasattr(v, "copy") and hasattr(v, "dtype") else v) for k, v in payload.items()}
        reply_to = obj.get(REPLY_TO)
        return {
            "btid": self.btid,
            "msg_id": None if reply_to is None else int(reply_to),
            "generation": int(obj.get(GENERATION, 0)),
            "payload": payload,
        }

    def close(self) -> None:
        """Close the socket; queued messages are dropped."""
        with self._lock:
            self._closed = True
            self._sock.close(0)


class GroupChannel:
    """Send messages to the instances of a group and receive their replies.

    Get one with ``BlenderLauncher.channel()``. Message ids and generations are counted by
    the channel (use one channel per group).

    Args:
        actors: The group's actor handles, in ``btid`` order.
        poll_interval: Longest wait of one poll round in ``recv``/``wait``, in seconds.

    Raises:
        ValueError: ``actors`` is empty.

    Example:
        Send new parameters and keep only items rendered with them::

            chan = bl.channel()
            chan.wait(chan.broadcast(speed=2.0).values(), timeout=10)
            fresh = [item for item in items if chan.is_fresh(item)]
    """

    def __init__(self, actors: list, poll_interval: float = 0.1) -> None:
        if not actors:
            raise ValueError("a GroupChannel needs at least one instance; start the launcher first")
        self.actors = list(actors)
        self.poll_interval = poll_interval
        self._ids = itertools.count(1)
        self.generation = 0
        """Generation of the latest message sent (0: none yet)."""
        self.last_generation: dict[int, int] = {b: 0 for b in range(len(self.actors))}
        """Per instance: generation of the latest message sent to it."""
        self._inbox: collections.deque[Reply] = collections.deque()

    def _check_btid(self, btid: int) -> None:
        if not isinstance(btid, int) or not 0 <= btid < len(self.actors):
            raise ValueError(f"btid {btid!r} is not an instance of this group (0..{len(self.actors) - 1})")

    def send(self, btid: int, **payload: Any) -> int:
        """Send a message to one instance.

        Args:
            btid: The instance.
            **payload: The message (keys other than the reserved ``bt...`` ones).

        Returns:
            The message id (a reply to it carries it in ``Reply.msg_id``).

        Raises:
            ValueError: ``btid`` is not an instance of the group, or a key is reserved.
        """
        return self.send_many([btid], **payload)[btid]

    def broadcast(self, **payload: Any) -> dict[int, int]:
        """Send a message to every instance, under one new generation.

        Args:
            **payload: The message.

        Returns:
            ``{btid: message id}``.

        Raises:
            ValueError: A key is reserved.
        """
        return self.send_many(range(len(self.actors)), **payload)

    def send_many(self, btids: Iterable[int], **payload: Any) -> dict[int, int]:
        """Send a message to the given instances under one new generation.

        Args:
            btids: The instances.
            **payload: The message.

        Returns:
            ``{btid: message id}``.

        Raises:
            ValueError: A ``btid`` is not an instance of the group, or a key is reserved.
        """
        btids = list(btids)
        for b in btids:
            self._check_btid(b)
        bad = [k for k in payload if k in RESERVED_PAYLOAD_KEYS]
        if bad:
            raise ValueError(f"payload keys {bad} are reserved by the duplex channel; rename them")
        self.generation += 1
        ids = {b: next(self._ids) for b in btids}
        ray.get([self.actors[b].control_send.remote(ids[b], self.generation, payload) for b in btids])
        for b in btids:
            self.last_generation[b] = self.generation
        return ids

    def _poll(self, wait: float) -> None:
        refs = [a.control_recv.remote(wait) for a in self.actors]
        for replies in ray.get(refs):
            self._inbox.extend(Reply(**r) for r in replies)

    def recv(self, timeout: float = 10.0) -> Optional[Reply]:
        """The next reply from any instance.

        Args:
            timeout: Seconds to wait.

        Returns:
            The `Reply`, or None if none arrived within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while not self._inbox:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._poll(min(left, self.poll_interval))
        return self._inbox.popleft()

    def wait(self, msg_ids: Iterable[int], timeout: float = 30.0) -> dict[int, Reply]:
        """Wait for one reply to each of ``msg_ids``.

        Replies to other messages stay queued for ``recv``.

        Args:
            msg_ids: Ids returned by ``send``, ``broadcast`` or ``send_many``.
            timeout: Seconds to wait for all of them.

        Returns:
            ``{msg_id: Reply}``.

        Raises:
            StreamTimeout: Not every message was answered within ``timeout``; names the
                unanswered ids.
        """
        wanted = set(msg_ids)
        got: dict[int, Reply] = {}
        deadline = time.monotonic() + timeout
        while True:
            keep: collections.deque[Reply] = collections.deque()
            while self._inbox:
                r = self._inbox.popleft()
                if r.msg_id in wanted and r.msg_id not in got:
                    got[r.msg_id] = r
                else:
                    keep.append(r)
            self._inbox = keep
            if len(got) == len(wanted):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(wanted - set(got))
                raise StreamTimeout(
                    f"no reply to message id(s) {missing} within {timeout:.0f}s; does the Blender "
                    "script poll a DuplexChannel (recv in pre_frame) and reply(msg, ...)?"
                )
            self._poll(min(left, self.poll_interval))

    def is_fresh(self, item: dict) -> bool:
        """Whether an item was rendered after its instance got the latest message sent to it.

        Args:
            item: A streamed item (it carries ``btid`` and ``generation``).

        Returns:
            True for a fresh item, False for one rendered under older parameters.
        """
        return int(item.get("generation", 0)) >= self.last_generation.get(int(item["btid"]), 0)
