"""Publish items from Blender to the supervising actor over a local ZeroMQ PUSH socket."""

from __future__ import annotations

import atexit
import os
import sys
import time
import weakref
from typing import Any, Optional

import zmq

from blender_worker import codec
from blender_worker.protocol import KIND_END, KIND_INFO, KIND_PAUSED, KIND_READY, LaunchArgs, check_item_keys, item_seed

ACK_POLL_S = 0.02
"""Seconds between two looks for the actor's acknowledgement file when the publisher closes."""
HANDOVER_POLL_S = 0.002
"""Seconds between two looks, while paused for the hand-over, for the actor to have bound."""

_OPEN: "weakref.WeakSet[DataPublisher]" = weakref.WeakSet()
"""Open publishers of this process (for `can_publish`)."""


def can_publish() -> bool:
    """True if every open publisher of this process can take an item without waiting.

    UI instances ask this before running a frame (`blender_worker.interactive`), so that
    backpressure pauses the animation instead of freezing Blender's window.

    Returns:
        True when no open publisher would wait (also when there is none).
    """
    return all(p.writable() for p in list(_OPEN))


class DataPublisher:
    """Send items (dicts of numpy arrays and any pickle-able objects) to the actor.

    ``publish(**items)`` blocks when the actor's queue is full (high-water mark), so a slow
    consumer slows Blender down instead of growing memory. Every item gets ``btid``,
    ``seq`` (per-instance sequence number, from ``launch.start_seq`` on), ``seed`` (the
    stream seed), ``epoch`` and ``generation`` (see ``blender_worker.duplex``) added. Draw
    the randomness of each item from `rng` (or seed your own generator with `item_seed`):
    the item is then reproducible from its ``(seed, btid, seq)`` alone, whatever restarts
    happened (see ``blendtorch_ray.resume``). Creating it sends the readiness handshake the
    supervising actor waits for; closing it (also at exit) sends an end marker and waits
    until the actor has read everything.

    Args:
        launch: From ``parse_launch_args()``; gives the address, instance id, seed and codec.
        send_hwm: Maximum number of messages queued in Blender before ``publish`` blocks
            (ZeroMQ's ``SNDHWM``).
        linger_ms: How long pending messages may take to flush when the publisher closes,
            in milliseconds (ZeroMQ's ``LINGER``, hence its unit).

    Raises:
        ValueError: The instance was not launched by blendtorch_ray (no data address).

    Example:
        Publish a rendered frame and an annotation per frame::

            launch, args = parse_launch_args()
            pub = DataPublisher(launch)
            anim.post_frame.add(lambda: pub.publish(**renderer.render(), frame=anim.frameid))
    """

    def __init__(self, launch: LaunchArgs, *, send_hwm: int = 4, linger_ms: int = 10_000):
        if not launch.data_address:
            raise ValueError(
                "this instance was launched without a data address; start it through "
                "blendtorch_ray (BlenderLauncher) so that it has somewhere to publish"
            )
        self.launch = launch
        self.btid = launch.btid
        self.seq = launch.start_seq
        """``seq`` of the next item (``launch.start_seq`` at first)."""
        self.generation = 0
        """Tagged on every item; a DuplexChannel sets it to the last received message's generation."""
        self._codec = launch.codec
        self._encoder = None
        if launch.encode:
            from blender_worker.compress import Encoder

            # Checked before the readiness handshake: a bad codec fails the launch.
            self._encoder = Encoder(launch.encode)
        # An own context, terminated in close(): term() waits (up to linger) until queued
        # messages are sent. A Blender binary exits right after the script, and pending
        # messages of an unterminated context would be dropped with the process.
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        # Not IMMEDIATE: the pipe to the actor exists from connect() on, so the hello and the
        # first items queue (up to send_hwm) while the actor is not listening yet: a Blender
        # the launcher prestarted renders its first frames while Ray is still starting.
        self._sock.connect(launch.data_address)
        self._slots = None
        if launch.slots:
            from blender_worker.slots import SlotFile

            self._slots = SlotFile(*launch.slots)
        self._closed = False
        self._handover = launch.handover_path
        """Until the hand-over from the driver to the actor is done (`_hand_over_point`)."""
        self._info_version = 0
        self._info_warnings = 0
        # Readiness handshake: the actor waits for this before reporting the instance ready.
        self._sock.send_multipart(
            codec.encode(
                {"btid": launch.btid, "seed": launch.seed, "epoch": launch.epoch},
                codec="json",
                kind=KIND_READY,
            ),
            copy=False,
        )
        atexit.register(self.close)
        _OPEN.add(self)

    @property
    def item_seed(self) -> int:
        """The seed of the next item: ``blender_worker.protocol.item_seed(seed, seq)``."""
        return item_seed(self.launch.seed, self.seq)

    def rng(self) -> Any:
        """A numpy generator for the next item's randomness, seeded with `item_seed`.

        Call it once per item before randomising the scene (e.g. in ``pre_frame``); an item
        rendered again from its ``(seed, btid, seq)`` then gets the same draws.

        Returns:
            ``numpy.random.default_rng(self.item_seed)``.
        """
        import numpy as np

        return np.random.default_rng(self.item_seed)

    def writable(self) -> bool:
        """Whether ``publish`` of one item would not wait now.

        Returns:
            True if there is a place in the send queue and, with shared-memory slots, a free
            slot; False once closed.
        """
        if self._closed or not self._sock.poll(0, zmq.POLLOUT):
            return False
        return self._slots is None or self._slots.has_free_slot()

    def publish(self, **items: Any) -> None:
        """Publish one item. Arrays are sent zero-copy; other values are pickled.

        Args:
            **items: The item's fields: numpy arrays and any pickle-able values (JSON-able
                ones with ``codec="json"``). ``btid``, ``seq``, ``seed``, ``epoch`` and
                ``generation`` are added here and must not be given.

        Raises:
            ValueError: An item key is reserved (``blender_worker.protocol.RESERVED_ITEM_KEYS``).
            RuntimeError: The publisher was closed.
        """
        if self._closed:
            raise RuntimeError("publish() on a closed DataPublisher")
        check_item_keys(items)
        if self._handover:
            self._hand_over_point()
        self._send_info()
        item = dict(items)
        item.update(btid=self.btid, seq=self.seq, seed=self.launch.seed, epoch=self.launch.epoch,
                    generation=self.generation)
        if self._encoder is not None:
            item = self._encoder.encode_item(item)  # StreamConfig.encode (blender_worker.compress)
        frames = codec.encode(item, codec=self._codec)
        if self._slots is not None and self._slots.fits(frames[2:]):
            slot, sizes = self._slots.write(frames[2:])  # waits while the actor holds the slot
            frames = [codec.slot_header(frames[0], slot, sizes), frames[1]]
        self._sock.send_multipart(frames, copy=False)
        self.seq += 1

    def close(self, linger_ms: Optional[int] = None) -> None:
        """Send the end marker, flush pending items and close the socket; idempotent.

        Args:
            linger_ms: Longest wait for pending items to flush, in milliseconds (ZeroMQ's
                ``LINGER``); None: the constructor's.
        """
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        if self._handover:
            self._hand_over_point()
        self._send_info()
        # End marker: tells the actor that every item of this epoch has been sent.
        self._sock.send_multipart(
            codec.encode({"count": self.seq - self.launch.start_seq, "epoch": self.launch.epoch}, codec="json",
                         kind=KIND_END)
        )
        self._wait_for_ack()
        if linger_ms is not None:
            self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.close()
        self._ctx.term()

    def _hand_over_point(self) -> None:
        """Let the driver hand this prestarted Blender over to its actor, between two messages.

        The driver reads a prestarted Blender before its actor exists
        (``blendtorch_ray.early_read``). To hand over, it creates the flag file; the next
        message is then ``KIND_PAUSED``, the last one the driver reads, and nothing follows
        until the actor has bound the socket and removed the file: no message is in flight
        while the socket changes hands. One stat per message until then; nothing after.
        """
        path = self._handover
        if not os.path.exists(path):
            return
        self._sock.send_multipart(codec.encode({"seq": self.seq}, codec="json", kind=KIND_PAUSED), copy=False)
        while os.path.exists(path):  # the lifeline still ends this process if the driver goes away
            time.sleep(HANDOVER_POLL_S)
        self._handover = None

    def _send_info(self) -> None:
        """Tell the actor where Blender renders when that changed (``KIND_INFO``); one integer
        comparison when it did not."""
        devices = sys.modules.get("blender_worker.devices")  # loaded by Renderer, if any
        if devices is None or devices.current()[0] == self._info_version:
            return
        version, choice, warnings = devices.current()
        body = {"device": choice.to_dict() if choice else None, "warnings": warnings[self._info_warnings:]}
        self._sock.send_multipart(codec.encode(body, codec="json", kind=KIND_INFO), copy=False)
        self._info_version, self._info_warnings = version, len(warnings)

    def _wait_for_ack(self) -> None:
        """Stay alive until the supervisor has read everything up to the end marker.

        ZeroMQ drops messages still in transit when the sending process exits while the
        receiver's queue is full (a consumer that has not started reading yet), so a
        finishing Blender waits for the actor's acknowledgement. The lifeline still ends
        this process if the supervisor goes away.
        """
        if not self.launch.ack_path:
            return
        ack = f"{self.launch.ack_path}.{self.launch.epoch}"
        while not os.path.exists(ack):
            time.sleep(ACK_POLL_S)

    def __enter__(self) -> "DataPublisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
