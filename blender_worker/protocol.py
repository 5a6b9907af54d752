"""The wire protocol between Blender and the driver, in one place.

Both sides import this module: ``blender_worker`` (inside Blender) and ``blendtorch_ray``
(the driver and its actors). It imports only the standard library, so Blender can load it.

What lives here:

* message kinds: the ``kind`` field of every message header (see ``blender_worker.codec``);
* reserved item keys: the fields ``DataPublisher.publish`` adds to every item.
"""

from __future__ import annotations

# Message kinds (the ``kind`` of a header).
KIND_ITEM = "item"
"""An item published by ``DataPublisher.publish``."""
KIND_READY = "ready"
"""The publisher's readiness handshake (``{"btid", "seed", "epoch"}``)."""
KIND_END = "end"
"""The publisher's end marker (``{"count", "epoch"}``): everything of this epoch was sent."""

RESERVED_ITEM_KEYS = ("btid", "seq", "seed", "epoch", "generation")
"""Keys ``DataPublisher.publish`` sets on every item: instance id, per-instance sequence
number, the instance's seed and restart epoch, and the duplex generation. User items must
not use them."""


def check_item_keys(keys) -> None:
    """Raise ``ValueError`` if a user item uses a reserved key.

    Args:
        keys: The keys of the item about to be published.

    Raises:
        ValueError: A key is one of ``RESERVED_ITEM_KEYS``; the message names it.
    """
    clash = [k for k in keys if k in RESERVED_ITEM_KEYS]
    if clash:
        raise ValueError(
            f"publish(): item key(s) {clash} are reserved (blendtorch-ray sets "
            f"{', '.join(RESERVED_ITEM_KEYS)} on every item); rename them, e.g. {clash[0]}_"
        )
