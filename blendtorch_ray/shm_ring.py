"""Same-node fast path: hand batches from the actor to a consumer on the same node through a
ring of shared-memory slots instead of the Ray object store.

Why: here every ``ray.put`` page-faults its whole destination (a fresh object-store allocation
per batch: ~2,750 minor faults and 17-28 ms per 10 MB), which caps the relay. A ring file in
/dev/shm is mapped once by both sides, so its pages stay warm. Only the top-level numpy arrays
of each item travel through the ring; everything else (and the slot number) goes through the
actor's streaming generator as a small descriptor, so ordering, errors and backpressure are
unchanged. The consumer copies the arrays out and frees the slot at once.
On by default (``LaunchConfig(shared_memory_ring=False)`` turns it off).

Slot states live in the file: 0 free, 1 full; the writer (actor) waits for a free slot, the
reader (consumer) sets it free after copying. Consumers on other nodes always get the
object-store path.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Optional

import numpy as np

from blender_worker.slots import ALIGN, SlotFile

HEADER = 64  # the ring's own header before its slots (SlotFile's ``reserved``)
CLOSED_OFFSET = 0  # global header: reader-closed flag
TAKEN_OFFSET = 8  # global header: Blender slots the reader has freed
WORD = 8  # bytes of one global header field (a uint64)

FULL_SLOT_POLL_S = 0.0005
"""Seconds between two looks at the next ring slot while the reader still holds it."""

# Blocks that ``take`` copied out of a slot, by id: ``collate`` may return rows of these as
# a batch without copying (they are fresh memory nobody else holds); never a user's array.
_BLOCKS: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def register_block(block: np.ndarray) -> np.ndarray:
    """Mark ``block``'s memory as fresh memory whose rows ``collate`` may return as a batch
    without copying (a block ``take`` copied out, or one the tcp link received; never a
    user's array). What is registered is the array that owns the memory (``block`` itself, or
    the array it is a view of): numpy makes every row's ``base`` that array.

    Args:
        block: A writable, C-contiguous ``(n, ...)`` array that nothing else holds.

    Returns:
        ``block``.
    """
    owner = block.base if isinstance(block.base, np.ndarray) else block
    _BLOCKS[id(owner)] = owner
    return block


def ring_block(arr: np.ndarray) -> Optional[np.ndarray]:
    """The registered memory (`register_block`) that ``arr`` is a view of, else None."""
    base = arr.base
    if base is not None and _BLOCKS.get(id(base)) is base:
        return base
    return None


class ShmRing:
    """``slots`` slots of ``slot_bytes`` each in a file, mapped by writer and reader."""

    def __init__(self, path: str, slots: int, slot_bytes: int, create: bool) -> None:
        self.path, self.slots, self.slot_bytes = path, slots, slot_bytes
        self._file = SlotFile(path, slots, slot_bytes, create=create, reserved=HEADER)
        self._buf = self._file.buffer
        self._closed_flag = self._buf[CLOSED_OFFSET : CLOSED_OFFSET + WORD].view(np.uint64)
        self._taken = self._buf[TAKEN_OFFSET : TAKEN_OFFSET + WORD].view(np.uint64)
        self._source: Any = None
        self._next = 0

    # -- writer (actor) ----------------------------------------------------------------
    def put(self, batch: list[dict], timeout: float = 600.0, sources: Optional[list] = None,
            slot_file: Any = None) -> Optional[dict]:
        """Describe ``batch`` in the next ring slot; return the descriptor, or None if its
        arrays do not fit one slot (the caller then sends the batch as it is).

        Top-level arrays are copied into the slot, laid out by key: the arrays of one key
        that share shape and dtype (the usual case: every item's ``image``) sit back to back,
        so ``take`` copies them out with one copy and ``collate`` can hand them on as a batch
        without another. Items whose arrays still lie in Blender's shared-memory slot
        (``sources[i]`` is their slot in ``slot_file``) are not copied at all: the descriptor
        points the consumer there, and the consumer frees that slot after copying."""
        forwarded: dict[tuple[int, str], tuple] = {}
        release: list[int] = []
        if slot_file is not None and sources is not None:
            for i, (item, slot) in enumerate(zip(batch, sources)):
                if slot is None:
                    continue
                release.append(slot)
                for key, value in item.items():
                    if isinstance(value, np.ndarray) and value.dtype != object:
                        offset = slot_file.offset_in(slot, value)
                        if offset is not None:
                            forwarded[(i, key)] = ("__btr_fwd__", slot, offset, value.dtype.str, value.shape)
        columns: dict[str, list] = {}
        for i, item in enumerate(batch):
            for key, value in item.items():
                if isinstance(value, np.ndarray) and value.dtype != object and (i, key) not in forwarded:
                    columns.setdefault(key, []).append((i, value))
        need = sum(-(-sum(v.nbytes for _, v in col) // ALIGN) * ALIGN for col in columns.values())
        if need > self.slot_bytes:
            return None
        slot = self._next
        deadline = time.monotonic() + timeout
        while not self._file.is_free(slot):
            if self._closed_flag[0] or time.monotonic() > deadline:
                raise ConnectionAbortedError("shared-memory ring: the reader went away")
            time.sleep(FULL_SLOT_POLL_S)
        base = self._file.data_start(slot)
        items = [dict(item) for item in batch]
        for (i, key), marker in forwarded.items():
            items[i][key] = marker
        offset = 0
        for key, col in columns.items():
            for i, arr in col:
                view = self._buf[base + offset : base + offset + arr.nbytes]
                view[:] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
                items[i][key] = ("__btr_shm__", offset, arr.dtype.str, arr.shape)
                offset += arr.nbytes
            offset = -(-offset // ALIGN) * ALIGN
        self._file.mark_full(slot)
        self._next = (slot + 1) % self.slots
        desc: dict = {"__btr_ring_slot__": slot, "items": items}
        if release:
            desc["slot_file"] = [slot_file.path, slot_file.slots, slot_file.slot_bytes]
            desc["release"] = release
        return desc

    def taken(self) -> int:
        """How many Blender slots the reader has freed so far (see ``put``)."""
        return int(self._taken[0])

    # -- reader (consumer) -------------------------------------------------------------
    def take(self, descriptor: dict) -> list[dict]:
        """Copy a slot's arrays out into fresh memory, free the slot (and the Blender slots
        it points to), return the items.

        A key whose arrays all have one shape and dtype is copied out into one ``(n, *shape)``
        block; the items then hold its rows (views)."""
        slot = descriptor["__btr_ring_slot__"]
        base = self._file.data_start(slot)
        source = self._slot_source(descriptor.get("slot_file"))
        out = [dict(item) for item in descriptor["items"]]
        columns: dict[str, list] = {}
        for i, item in enumerate(out):
            for key, value in item.items():
                if isinstance(value, tuple) and len(value) in (4, 5) and value[0] in ("__btr_shm__", "__btr_fwd__"):
                    if value[0] == "__btr_shm__":
                        _, offset, dtype, shape = value
                        start = base + offset
                        buf = self._buf
                    else:
                        _, src_slot, offset, dtype, shape = value
                        start = source.data_start(src_slot) + offset
                        buf = source.buffer
                    columns.setdefault(key, []).append((i, buf, start, np.dtype(dtype), tuple(shape)))
        for key, col in columns.items():
            _, _, _, dt, shape = col[0]
            n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            if n > 0 and all(d == dt and s == shape for _, _, _, d, s in col):
                block = np.empty((len(col), *shape), dt)
                flat = block.reshape(len(col), -1).view(np.uint8)
                for j, (i, buf, start, _, _) in enumerate(col):
                    flat[j] = buf[start : start + n]
                    out[i][key] = block[j]
                register_block(block)
                continue
            for i, buf, start, dt_i, shape_i in col:
                size = int(np.prod(shape_i, dtype=np.int64)) * dt_i.itemsize
                out[i][key] = buf[start : start + size].view(dt_i).reshape(shape_i).copy()
        released = descriptor.get("release") or []
        for s in released:
            source.release(s)
        self._taken[0] += len(released)
        self._file.release(slot)
        return out

    def _slot_source(self, spec: Optional[list]) -> Any:
        """Map (once) the Blender slot file a descriptor points into; drop older ones (an
        instance's items refer to a newer file only after every item of the older one)."""
        if not spec:
            return None
        path = spec[0]
        if self._source is None or self._source.path != path:
            from blender_worker.slots import SlotFile

            self._source = SlotFile(path, spec[1], spec[2])
        return self._source

    def header(self) -> dict:
        """What the reader needs to map this ring: the first object a ring stream yields.

        Returns:
            ``{RING_HEADER: path, "slots": ..., "slot_bytes": ...}``.
        """
        return {RING_HEADER: self.path, "slots": self.slots, "slot_bytes": self.slot_bytes}

    @classmethod
    def from_header(cls, header: dict) -> "ShmRing":
        """Map the ring a stream's header names (the reader's side).

        Args:
            header: A ring header (``is_ring_header``).

        Returns:
            The mapped ring.
        """
        return cls(header[RING_HEADER], header["slots"], header["slot_bytes"], create=False)

    def unlink(self) -> None:
        """Remove the ring's file; the mappings stay valid until closed."""
        self._file.unlink()

    def close_reader(self) -> None:
        """Tell the writer that nobody reads any more (it stops waiting for slots)."""
        self._closed_flag[0] = 1

    def close(self, unlink: bool = False) -> None:
        self._closed_flag = None
        self._taken = None
        self._source = None
        self._buf = None
        self._file.close()
        if unlink:
            self.unlink()


RING_HEADER = "__btr_ring__"
"""Key of the first object a ring stream yields: it names the ring (see ``ShmRing.header``)."""


def is_ring_header(obj: Any) -> bool:
    """Whether ``obj`` is the header a ring stream yields first (see ``ShmRing.header``).

    Args:
        obj: An object a stream yielded.

    Returns:
        True for a ring header.
    """
    return isinstance(obj, dict) and RING_HEADER in obj


def is_ring_batch(obj: Any) -> bool:
    return isinstance(obj, dict) and "__btr_ring_slot__" in obj
