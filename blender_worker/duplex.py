"""Blender side of the duplex channel: receive trainer messages, send replies.

The supervising actor binds a DEALER socket in its private directory and passes its address
as ``--btcontrol``; ``DuplexChannel`` connects to it. Messages from the trainer carry a
message id and a generation number; replies carry the id of the message they answer.

Poll without blocking the frame loop, typically in ``pre_frame``::

    pub = DataPublisher(launch)
    chan = DuplexChannel(launch, publisher=pub)

    def pre_frame():
        msg = chan.recv(timeout=0.0)
        if msg is not None:
            params.update(msg.payload)          # new simulation parameters
            chan.reply(msg, ok=True)

Every item published after a message was received carries that message's ``generation``
(the channel sets ``publisher.generation``), so the trainer can drop items rendered from
stale parameters.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass, field
from typing import Any, Optional

import zmq

from blender_worker import codec, sockets
from blender_worker.protocol import GENERATION, KIND_CONTROL, KIND_REPLY, MSG_ID, REPLY_TO, RESERVED_PAYLOAD_KEYS, LaunchArgs


@dataclass
class Message:
    """One message from the trainer."""

    msg_id: int
    """Id chosen by the trainer; pass the message to ``reply`` to answer it."""
    generation: int
    """Generation number; items published from now on carry it."""
    payload: dict = field(default_factory=dict)
    """What the trainer sent (``channel.send(btid=..., **payload)``)."""


class DuplexChannel:
    """Receive messages from the trainer and send replies, over the actor's control socket.

    Args:
        launch: From ``parse_launch_args()``; gives the control address and instance id.
        publisher: A `blender_worker.publisher.DataPublisher`, or None. When given, its
            ``generation`` attribute follows the last received message, so every
            published item is tagged with the generation it was rendered under.
        linger_ms: How long pending replies may take to flush when the channel closes, in
            milliseconds (ZeroMQ's ``LINGER``, hence its unit).

    Raises:
        ValueError: The instance was launched without a control address (not through
            ``BlenderLauncher``).
    """

    def __init__(self, launch: LaunchArgs, publisher: Any = None, *, linger_ms: int = 2_000) -> None:
        if not launch.control_address:
            raise ValueError(
                "this instance was launched without a control address (--btcontrol); start it "
                "through blendtorch_ray (BlenderLauncher) to use a DuplexChannel"
            )
        self.launch = launch
        self.btid = launch.btid
        self.publisher = publisher
        self.generation = 0
        self._codec = launch.codec
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.connect(launch.control_address)
        self._closed = False
        atexit.register(self.close)

    def recv(self, timeout: float = 0.0) -> Optional[Message]:
        """The next message from the trainer.

        A received message sets ``generation`` (and the publisher's) to its generation.

        Args:
            timeout: Seconds to wait (float, millisecond resolution); 0 only polls (does
                not block the frame loop).

        Returns:
            The `Message`, or None if none arrived within ``timeout``.

        Raises:
            RuntimeError: The channel is closed.
            CodecError: A message of an unexpected kind arrived.
        """
        if self._closed:
            raise RuntimeError("recv() on a closed DuplexChannel")
        if not self._sock.poll(round(timeout * 1000), zmq.POLLIN):
            return None
        header, obj = sockets.recv(self._sock)
        if header.get("kind") != KIND_CONTROL or not isinstance(obj, dict):
            raise codec.CodecError(f"unexpected control message of kind {header.get('kind')!r}")
        payload = {k: v for k, v in obj.items() if k not in RESERVED_PAYLOAD_KEYS}
        msg = Message(msg_id=int(obj[MSG_ID]), generation=int(obj[GENERATION]), payload=payload)
        self.generation = msg.generation
        if self.publisher is not None:
            self.publisher.generation = msg.generation
        return msg

    def send(self, *, reply_to: Optional[int] = None, **payload: Any) -> None:
        """Send a message to the trainer (``GroupChannel.recv`` returns it as a ``Reply``).

        Args:
            reply_to: Id of the message this answers; None: unsolicited.
            **payload: The message (keys other than the reserved ``bt...`` ones).

        Raises:
            RuntimeError: The channel is closed.
            ValueError: A payload key is reserved.
        """
        if self._closed:
            raise RuntimeError("send() on a closed DuplexChannel")
        bad = [k for k in payload if k in RESERVED_PAYLOAD_KEYS]
        if bad:
            raise ValueError(f"payload keys {bad} are reserved by the duplex channel; rename them")
        obj = dict(payload)
        obj[REPLY_TO] = reply_to
        obj[GENERATION] = self.generation
        sockets.send(self._sock, obj, codec_name=self._codec, kind=KIND_REPLY)

    def reply(self, msg: Message, **payload: Any) -> None:
        """Answer a message; the trainer receives the reply with ``msg.msg_id``.

        Args:
            msg: The message from `recv`.
            **payload: The reply.
        """
        self.send(reply_to=msg.msg_id, **payload)

    def close(self) -> None:
        """Close the socket (pending replies get ``linger_ms`` to flush)."""
        if not self._closed:
            self._closed = True
            self._sock.close()
