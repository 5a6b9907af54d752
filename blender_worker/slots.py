"""Shared-memory slots for the Blender -> actor hop (both always run on the same node).

Large arrays do not travel through the ZeroMQ socket: Blender copies an item's array
buffers into a free slot of a file in /dev/shm that it and its actor both map, and sends
only the small message (header naming the slot, pickle body) over ZeroMQ. The actor decodes
the arrays in place and frees the slot once the batch has left (copied into the consumer's
ring or the object store). A ZeroMQ ipc transfer copies every byte twice through the kernel
in socket-buffer-sized chunks; the slot costs one ``memcpy`` in Blender.

Slot states live in the file (a 64-byte header per slot): 0 free, 1 full. Blender takes
free slots in turn and waits while all are full, which bounds memory and slows Blender down
when the consumer is slow (as the socket's high-water mark does for items sent inline).
The actor creates one file per Blender process it starts. A consumer on the same node copies
the arrays straight out of the slot and frees it (the actor then never touches the data);
otherwise the actor frees it once Ray has serialised the batch.

This module imports nothing but the standard library and numpy: it runs inside Blender.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger("blender_worker")

HEADER = 64
"""Bytes of each slot's header (its state word, padded to one cache line)."""
ALIGN = 64
"""Alignment, in bytes, of each buffer within a slot."""
INLINE_BELOW = 64 * 1024
"""Items whose array buffers total less than this go inline through ZeroMQ."""

FREE_SLOT_POLL_S = (0.0001, 0.005)
"""First and longest pause, in seconds, between two looks for a free slot while the actor
holds them all (the pause doubles up to the longest)."""


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class SlotFile:
    """``slots`` slots of ``slot_bytes`` each in a memory-mapped file, after ``reserved`` bytes
    the owner may use for a header of its own (``blendtorch_ray.shm_ring`` does)."""

    def __init__(self, path: str, slots: int, slot_bytes: int, create: bool = False, reserved: int = 0) -> None:
        if slots < 1 or slot_bytes < ALIGN:
            raise ValueError(f"need at least 1 slot of {ALIGN} bytes, got {slots} x {slot_bytes}")
        self.path, self.slots, self.slot_bytes, self.reserved = path, slots, slot_bytes, reserved
        self.stride = HEADER + slot_bytes
        size = reserved + slots * self.stride
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
            if create:
                os.ftruncate(fd, size)  # sparse: only pages written to take memory
            elif os.fstat(fd).st_size < size:
                raise ValueError(f"slot file {path} is smaller than {slots} x {slot_bytes} bytes")
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._buf = np.frombuffer(self._mm, dtype=np.uint8)
        self._states = [self._buf[self.slot_start(i) : self.slot_start(i) + 8].view(np.uint64) for i in range(slots)]
        self._next = 0

    # -- Blender (writer) ------------------------------------------------------------
    def fits(self, buffers: Sequence) -> bool:
        total = sum(_aligned(memoryview(b).nbytes) for b in buffers)
        return INLINE_BELOW <= total <= self.slot_bytes

    def write(self, buffers: Sequence) -> tuple[int, list[int]]:
        """Wait for a free slot (the next in turn if free), copy ``buffers`` into it, mark
        it full. Returns ``(slot, sizes)`` for the message header."""
        slot = self._free_slot()
        base = self.data_start(slot)
        sizes = []
        offset = 0
        for b in buffers:
            src = np.frombuffer(memoryview(b).cast("B"), dtype=np.uint8)
            self._buf[base + offset : base + offset + src.nbytes] = src
            sizes.append(src.nbytes)
            offset += _aligned(src.nbytes)
        self.mark_full(slot)
        self._next = (slot + 1) % self.slots
        return slot, sizes

    def has_free_slot(self) -> bool:
        """True if `write` would find a free slot without waiting."""
        return any(self._states[k][0] == 0 for k in range(self.slots))

    def _free_slot(self) -> int:
        pause, longest = FREE_SLOT_POLL_S
        while True:
            for k in range(self.slots):
                slot = (self._next + k) % self.slots
                if self._states[slot][0] == 0:
                    return slot
            time.sleep(pause)  # every slot is held (by the actor or a consumer): backpressure
            pause = min(pause * 2, longest)

    # -- actor (reader) --------------------------------------------------------------
    def views(self, slot: int, sizes: Sequence[int]) -> Optional[list[memoryview]]:
        """The buffers of a full slot (no copy), or None if ``slot``/``sizes`` do not describe one."""
        if not isinstance(slot, int) or not 0 <= slot < self.slots or self._states[slot][0] != 1:
            return None
        if any(not isinstance(n, int) or n < 0 for n in sizes) or sum(_aligned(n) for n in sizes) > self.slot_bytes:
            return None
        base = slot * self.stride + HEADER
        out, offset = [], 0
        for n in sizes:
            out.append(memoryview(self._buf[base + offset : base + offset + n]))
            offset += _aligned(n)
        return out

    @property
    def buffer(self) -> np.ndarray:
        return self._buf

    def slot_start(self, slot: int) -> int:
        """Byte offset of ``slot`` (its state word) in the file."""
        return self.reserved + slot * self.stride

    def data_start(self, slot: int) -> int:
        """Byte offset of ``slot``'s data in the file."""
        return self.slot_start(slot) + HEADER

    def is_free(self, slot: int) -> bool:
        return self._states[slot][0] == 0

    def mark_full(self, slot: int) -> None:
        self._states[slot][0] = 1

    def offset_in(self, slot: int, arr: np.ndarray) -> Optional[int]:
        """Offset of C-contiguous ``arr`` within ``slot``'s data if it lies there, else None."""
        if not arr.flags.c_contiguous:
            return None
        start = arr.__array_interface__["data"][0] - self._buf.__array_interface__["data"][0] - self.data_start(slot)
        if 0 <= start and start + arr.nbytes <= self.slot_bytes:
            return start
        return None

    def release(self, slot: int) -> None:
        """Give a slot back to Blender (its arrays must not be used any more)."""
        self._states[slot][0] = 0

    def close(self) -> None:
        """Unmap (once no array refers to the mapping any more; until then it stays)."""
        self._states = []
        self._buf = None
        try:
            self._mm.close()
        except BufferError:  # arrays still view the mapping: it is unmapped with the last of them
            log.debug("slot file %s still in use by arrays; unmapped when they are freed", self.path)

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:  # the other side (or a sweep) removed it first: already done
            log.debug("slot file %s already removed", self.path)
