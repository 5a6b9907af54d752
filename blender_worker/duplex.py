"""Blender side of the duplex channel: receive trainer messages, send replies.

The supervising actor binds a DEALER socket in its private directory and passes its address
as ``--btcontrol``; ``DuplexChannel`` connects to it. Messages from the trainer carry a
message id and a generation number; replies carry the id of the message they answer.

Poll without blocking the frame loop, typically in ``pre_frame``::

    pub = DataPublisher(launch)
    chan = DuplexChannel(launch, publisher=pub)

    def pre_frame():
        msg = chan.recv(timeoutms=0)
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

from blender_worker import codec
from blender_worker.arguments import LaunchArgs

KIND_MESSAGE = "control"
"""Header kind of a trainer -> Blender message."""
KIND_REPLY = "reply"
"""Header kind of a Blender -> trainer reply."""
MSG_ID = "btmsgid"
"""Reserved payload key carrying the message id."""
GENERATION = "btgeneration"
"""Reserved payload key carrying the generation number."""
REPLY_TO = "btreplyto"
"""Reserved payload key carrying the id of the answered message (None: unsolicited)."""
RESERVED = (MSG_ID, GENERATION, REPLY_TO)


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

    Params
    ------
    launch: LaunchArgs
        From ``parse_launch_args()``; gives the control address and instance id.
    publisher: DataPublisher or None
        When given, its ``generation`` attribute follows the last received message, so
        every published item is tagged with the generation it was rendered under.
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

    def recv(self, timeoutms: int = 0) -> Optional[Message]:
        """Return the next message, or None if none arrives within ``timeoutms`` (0: poll).

        A received message sets ``generation`` (and the publisher's) to its generation.
        """
        if self._closed:
            raise RuntimeError("recv() on a closed DuplexChannel")
        if not self._sock.poll(timeoutms, zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart(copy=False)
        header, obj = codec.decode([f.buffer for f in frames])
        if header.get("kind") != KIND_MESSAGE or not isinstance(obj, dict):
            raise codec.CodecError(f"unexpected control message of kind {header.get('kind')!r}")
        payload = {k: v for k, v in obj.items() if k not in RESERVED}
        msg = Message(msg_id=int(obj[MSG_ID]), generation=int(obj[GENERATION]), payload=payload)
        self.generation = msg.generation
        if self.publisher is not None:
            self.publisher.generation = msg.generation
        return msg

    def send(self, *, reply_to: Optional[int] = None, **payload: Any) -> None:
        """Send a message to the trainer (``reply_to``: id of the message it answers)."""
        if self._closed:
            raise RuntimeError("send() on a closed DuplexChannel")
        bad = [k for k in payload if k in RESERVED]
        if bad:
            raise ValueError(f"payload keys {bad} are reserved by the duplex channel; rename them")
        obj = dict(payload)
        obj[REPLY_TO] = reply_to
        obj[GENERATION] = self.generation
        self._sock.send_multipart(codec.encode(obj, codec=self._codec, kind=KIND_REPLY), copy=False)

    def reply(self, msg: Message, **payload: Any) -> None:
        """Answer ``msg``; the trainer receives the reply with ``msg.msg_id``."""
        self.send(reply_to=msg.msg_id, **payload)

    def close(self) -> None:
        """Close the socket (pending replies get ``linger_ms`` to flush)."""
        if not self._closed:
            self._closed = True
            self._sock.close()
