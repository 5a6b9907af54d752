"""The tcp link's wire format (`blendtorch_ray.tcp_link`): one message per batch.

A message is `PREFIX` (the stream's token, the batch number, how many pickle frames and how
many blocks follow), one little-endian u64 length per frame and per block, the frames (a
`blender_worker.codec` pickle of the batch without its packed arrays, with each block's
dtype and shape), then the blocks: for each key whose values are arrays of one shape and
dtype in every item, the items' arrays back to back, which the consumer receives into one
``(n, ...)`` array (`pack` / `unpack`).
"""

from __future__ import annotations

import struct

import numpy as np

from blender_worker import codec
from blendtorch_ray.shm_ring import register_block

PREFIX = struct.Struct("<16sQII")
"""Start of every message: token, batch number, number of pickle frames, number of blocks;
then one little-endian u64 length per frame and per block, then the frames, then the blocks."""
LENGTH = struct.Struct("<Q")

MAX_PARTS = 4096
"""Most frames plus blocks a message may announce (more: the connection is dropped)."""
MAX_MESSAGE_BYTES = 1 << 36
"""Most bytes a message may announce (64 GiB; more: the connection is dropped)."""
IOV_MAX = 1024
"""Most buffers one ``sendmsg`` takes (Linux's UIO_MAXIOV)."""


PACKED = "__btr_packed__"
"""Key of a packed batch (`pack`): ``{PACKED: {key: (dtype, shape)}, "items": [rest of each item]}``;
on the consumer's side ``{key: block}``."""


def pack(batch: list) -> tuple:
    """``(packed, buffers)``: each key whose values are arrays of one shape and dtype in every
    item is taken out of the items and described as one ``(n, ...)`` block, whose bytes are
    the items' arrays in order (``buffers``: per block, one byte view per item, no copy)."""
    first = batch[0] if batch else {}
    specs, buffers = {}, []
    for key, value in first.items():
        if isinstance(value, np.ndarray) and not value.dtype.hasobject and all(
                isinstance(item.get(key), np.ndarray) and item[key].shape == value.shape
                and item[key].dtype == value.dtype for item in batch):
            specs[key] = (value.dtype, (len(batch), *value.shape))
            views = [np.ascontiguousarray(item[key]).reshape(-1).view(np.uint8) for item in batch]
            buffers.append([memoryview(v) for v in views if v.nbytes])
    items = [{k: v for k, v in item.items() if k not in specs} for item in batch]
    return {PACKED: specs, "items": items}, buffers


def unpack(packed: dict) -> list:
    """The items of a received batch; their packed arrays are rows of the received blocks."""
    items = packed["items"]
    for key, block in packed[PACKED].items():
        register_block(block)  # fresh memory (received into): collate may keep it
        for item, row in zip(items, block):
            item[key] = row
    return items


def message(token: bytes, number: int, batch: list) -> list:
    """The buffers of batch ``number``'s message, in order, for one gathering send: the
    prefix, the pickle frames, then the packed arrays where they lie (nothing is copied).

    Args:
        token: The stream's 16-byte token.
        number: The batch's number in the stream.
        batch: A list of item dicts.

    Returns:
        A list of byte memoryviews.
    """
    packed, buffers = pack(batch)
    frames = [memoryview(f).cast("B") for f in codec.encode(packed, codec="pickle")]
    lengths = [f.nbytes for f in frames] + [sum(b.nbytes for b in blk) for blk in buffers]
    head = PREFIX.pack(token, number, len(frames), len(buffers)) + b"".join(LENGTH.pack(n) for n in lengths)
    return [memoryview(head), *frames, *(b for blk in buffers for b in blk)]


def prefix_missing(buf: bytes) -> "int | None":
    """How many bytes of a message's prefix (with its lengths) ``buf`` still lacks.

    Args:
        buf: The message's first bytes received so far.

    Returns:
        The number of bytes missing (0: complete), or None if the prefix announces more
        than ``MAX_PARTS`` parts.
    """
    if len(buf) < PREFIX.size:
        return PREFIX.size - len(buf)
    _, _, frames, blocks = PREFIX.unpack_from(buf)
    if frames + blocks > MAX_PARTS:
        return None
    return max(0, PREFIX.size + LENGTH.size * (frames + blocks) - len(buf))


def parse_prefix(buf: bytes) -> "tuple | None":
    """``(number, frames, blocks, lengths)`` of a complete prefix (`prefix_missing` is 0).

    Args:
        buf: The prefix.

    Returns:
        The batch number, the counts of frames and blocks and each part's length; None if
        the parts add up to more than ``MAX_MESSAGE_BYTES``.
    """
    _, number, frames, blocks = PREFIX.unpack_from(buf)
    lengths = [LENGTH.unpack_from(buf, PREFIX.size + LENGTH.size * i)[0] for i in range(frames + blocks)]
    return None if sum(lengths) > MAX_MESSAGE_BYTES else (number, frames, blocks, lengths)
