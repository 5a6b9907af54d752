"""Render items again from their provenance ``(seed, btid, seq)`` (see blendtorch_ray/resume.py).

`render_again` starts one Blender of the group's script in this process (no Ray, no actor:
the same `blendtorch_ray.supervisor.Supervisor` the actors use), at stream seed ``seed`` and
``seq``, and returns the items it publishes there. A script that draws each item's randomness
from ``DataPublisher.rng()`` gives back the item that was streamed, pixel for pixel.
"""

from __future__ import annotations

import time
from typing import Any

from blendtorch_ray.blender import find_blender
from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.errors import BlendtorchError
from blendtorch_ray.resume import group_identity, make_state
from blendtorch_ray.supervisor import Supervisor
from blendtorch_ray import validation

POLL_MS = 100
"""One receive while waiting for the items."""


def render_again(config: LaunchConfig, seed: int, btid: int, seq: int, count: int = 1,
                 timeout: float = 120.0) -> list[dict]:
    """Render ``count`` items of instance ``btid`` again, from item ``(seed, btid, seq)`` on.

    Args:
        config: The group's configuration (script, scene, instance arguments, Blender); its
            name, restarts and shared-memory options do not matter here.
        seed: The items' stream seed (their ``seed``).
        btid: Their instance (``btid``; selects the instance arguments).
        seq: The first item's ``seq``.
        count: How many consecutive items.
        timeout: Seconds for Blender to start and publish them all.

    Returns:
        The items, as the stream delivered them (``seed``, ``btid`` and ``seq`` included;
        arrays copied, so they outlive Blender).

    Raises:
        ValueError: ``btid`` is not in the group, or a count or time is out of range.
        BlendtorchError: Blender ended or stayed silent before it published them.
    """
    own = "render_again"
    validation.non_negative_int("btid", btid, owner=own, example=0)
    validation.non_negative_int("seq", seq, owner=own, example=0)
    validation.positive_int("count", count, owner=own, example=1)
    validation.positive("timeout", timeout, owner=own, unit="seconds", example=120)
    if btid >= config.num_instances:
        raise ValueError(f"render_again(btid={btid}): the group has {config.num_instances} instances "
                         f"(btid 0..{config.num_instances - 1}); pass the item's btid")
    name = config.name or "rerender"
    probe = config.with_options(name=name, resume_from=None)
    state = make_state(group_identity(probe), {btid: (seed, seq)})
    cfg = probe.with_options(resume_from=state, shared_memory_hop=False, max_restarts=0,
                             ready_timeout=timeout)
    sup = Supervisor(cfg, btid, find_blender(cfg.blender, ui=cfg.ui), dict(cfg.env))
    try:
        sup.wait_ready()
        return _collect(sup, seq, count, timeout)
    finally:
        sup.close()


def _collect(sup: Supervisor, seq: int, count: int, timeout: float) -> list[dict]:
    """The next ``count`` items of ``sup``, arrays copied and values decoded."""
    import numpy as np

    from blender_worker.compress import MARKER, decode_item

    items: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(items) < count:
        got = sup.next_item(POLL_MS)
        if got is None:
            if not sup.process.alive() or time.monotonic() > deadline:
                why = sup.process.describe_exit() if not sup.process.alive() else f"was silent for {timeout:.0f}s"
                raise sup.error(BlendtorchError, f"rendering item(s) again from seq {seq}: Blender {why} after "
                                f"{len(items)} of {count} item(s); does the script publish from "
                                "DataPublisher(launch) on every frame?")
            continue
        header, item = got
        item = decode_item(item) if MARKER in item else item
        items.append({k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in item.items()})
        sup.receiver.release(header)
    return items
