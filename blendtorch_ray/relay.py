"""Who owns an item's arrays while it is relayed: Blender's shared-memory slots, held by the
actor until a batch has left, or forwarded to a same-node consumer through a ring.

A ``Relay`` is the state of one stream: the headers of items whose arrays still lie in
Blender's slots (``held``), the slots handed to the ring's reader (``Forwarded``), the ring
itself (``blendtorch_ray.shm_ring``) when the consumer is on this node, or the tcp link
(``blendtorch_ray.tcp_link``) when it is on another node.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from blendtorch_ray.shm_ring import ShmRing
from blendtorch_ray.tcp_link import TcpOutbox
from blendtorch_ray.transport import ItemReceiver, has_shared_memory_room

RING_SPARE_SLOTS = 2
"""Ring slots beyond ``max_batches_in_flight``: the one being written and the one being read."""


@dataclass
class Forwarded:
    """Blender slots one stream handed to its ring's reader, in order; the reader frees them
    in the same order and counts them (``ShmRing.taken``)."""

    entries: list = field(default_factory=list)
    """(slot file, slot) not yet known to be taken."""
    done: int = 0
    """Entries known to be taken (dropped from ``entries``)."""

    def pending(self, taken: int) -> list:
        """The entries the reader has not taken yet.

        Args:
            taken: The reader's count of taken entries.

        Returns:
            The entries not taken yet, oldest first.
        """
        if taken > self.done:
            del self.entries[: taken - self.done]
            self.done = taken
        return self.entries


class Relay:
    """The slots and ring of one stream.

    Args:
        receiver: The instance's receiver (its ``slots`` is the current Blender's slot file).
        ring: A shared-memory ring to a consumer on this node, or None.
        tcp: A tcp link to a consumer on another node, or None (with no ring either: the
            object store).
    """

    def __init__(self, receiver: ItemReceiver, ring: Optional[ShmRing] = None, tcp: Optional[TcpOutbox] = None) -> None:
        self.receiver = receiver
        self.ring = ring
        self.tcp = tcp
        self.superseded: Any = lambda: False
        """Returns True once the stream should end (set by the actor): a tcp send that waits for
        its consumer then gives up."""
        self.held: list[dict] = []
        """Headers of received items whose arrays still lie in Blender's slots."""
        self.forwarded = Forwarded()

    @classmethod
    def open(cls, receiver: ItemReceiver, memory_dir: Any, ring: bool, slots: int, slot_bytes: int) -> "Relay":
        """A relay, with a ring if ``ring`` is asked for and /dev/shm has room for it.

        Args:
            receiver: The instance's receiver.
            memory_dir: The instance's /dev/shm directory (a ``PrivateDir``).
            ring: Whether the consumer is on this node.
            slots: Ring slots (``max_batches_in_flight`` + spare).
            slot_bytes: Bytes per ring slot.

        Returns:
            The relay.
        """
        shm = None
        if ring and has_shared_memory_room(memory_dir.path):
            shm = ShmRing(memory_dir.join(f"ring-{uuid.uuid4().hex[:8]}"), slots, slot_bytes, create=True)
        return cls(receiver, shm)

    def hold(self, header: dict) -> None:
        """Keep ``header`` until the batch its item is in has left (see ``release``).

        Args:
            header: The header of a received item.
        """
        self.held.append(header)

    def hand_over(self, batch: list[dict]) -> Any:
        """What to yield for ``batch``: a ring descriptor (consumer on this node), a tcp
        descriptor (the batch went over the tcp link) or the batch (object store).

        Through the ring, items whose arrays lie in the current Blender's slots are not
        copied: the consumer reads them there and frees the slots (ownership moves from
        ``held`` to ``forwarded``).

        Args:
            batch: The items, in order; ``held`` holds their headers.

        Returns:
            The object to yield.
        """
        if self.tcp is not None:
            return self.tcp.prepare(batch)  # sent from the slots by ``release``, after the yield
        if self.ring is None:
            return batch
        current = self.receiver.slots
        sources = None
        if current is not None and len(self.held) == len(batch):
            sources = [h["slot"][0] if h.get("slot_file") is current else None for h in self.held]
        desc = self.ring.put(batch, sources=sources, slot_file=current)
        if desc is None:
            return batch
        if sources is not None:
            for header, slot in zip(self.held, sources):
                if slot is not None:
                    header.pop("slot_file")  # the consumer frees it now
                    self.forwarded.entries.append((current, slot))
        return desc

    def pending(self) -> list:
        """Forwarded slots the ring's reader has not taken yet.

        Returns:
            ``(slot file, slot)`` pairs.
        """
        return self.forwarded.pending(self.ring.taken()) if self.ring is not None else []

    def release(self) -> None:
        """Give Blender back the slots of held items once their batch has left: Ray serialised
        each yielded batch before the generator resumes, or the ring copied it, or (the tcp
        link) the batch is sent now, straight from the slots.

        Raises:
            ConnectionAbortedError: The tcp link's consumer went away (the slots are given
                back all the same).
        """
        try:
            if self.tcp is not None:
                # After the descriptor's yield: the consumer reads a batch only once it has
                # its descriptor, and a send of more than the socket buffers waits for that.
                self.tcp.flush(self.superseded)
        finally:
            for header in self.held:
                self.receiver.release(header)
            self.held.clear()

    def close(self) -> None:
        """Release everything: held items, and slots forwarded but never taken (the reader
        stopped, or the stream ended first; it frees in order, so these are the tail)."""
        if self.tcp is not None:
            self.tcp.close()  # first: a batch prepared but not sent is dropped, not sent
        self.release()
        if self.ring is not None:
            for slot_file, slot in self.pending():
                slot_file.release(slot)
            self.ring.close(unlink=True)
