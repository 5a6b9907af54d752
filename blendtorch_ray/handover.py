"""The hand-over of a prestarted Blender from the driver, which read it before Ray was up, to
its actor: the files both sides use, and what the actor takes over.

In local mode the driver reads each prestarted Blender directly while Ray starts
(``blendtorch_ray.early_read``). The data socket then changes hands between two messages,
so that no item is lost or repeated:

1. The actor, in its constructor, creates ``ADOPT_FILE`` and waits for ``STATE_FILE``
   (`adopt`).
2. The driver sees ``ADOPT_FILE`` and creates ``PAUSE_FILE``. Blender's next message is
   ``KIND_PAUSED``, and it sends nothing more while that file exists
   (``blender_worker.publisher.DataPublisher``). The driver reads up to that message, keeping
   the items its consumer did not take (the leftovers), closes its socket, and writes the
   leftovers and then ``STATE_FILE`` (`write`).
3. The actor binds the same address, takes the state over (its stream yields the leftovers
   first) and removes ``PAUSE_FILE`` (`take_over`): Blender goes on, and its socket
   reconnects to the actor's.

The files lie in the instance's private directory (0700); the leftovers, which hold image
arrays, in its /dev/shm directory.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

ADOPT_FILE = "adopt"
"""Created by the actor: it is ready to take the socket over."""
PAUSE_FILE = "pause"
"""Created by the driver: Blender sends ``KIND_PAUSED`` and waits until the actor removes it."""
STATE_FILE = "handover.json"
"""Written by the driver once its socket is closed: a `HandoverState` (without the leftovers)."""
LEFTOVER_FILE = "early-items.pkl"
"""In the instance's /dev/shm directory: the items the driver read that its consumer did not take."""
POLL_S = 0.005
"""Seconds between two looks for the other side's file."""

log = logging.getLogger("blendtorch_ray")


@dataclass
class HandoverState:
    """What the driver learnt from a Blender before its actor existed."""

    stream_seed: int
    """The stream seed of Blender's items."""
    next_seq: int
    """``seq`` of the first item Blender has not sent yet."""
    ready: bool = False
    """Blender said hello (``KIND_READY``)."""
    items: int = 0
    """Items received (the leftovers included)."""
    dropped: int = 0
    """Malformed messages dropped."""
    warnings: list = field(default_factory=list)
    """Warnings for the actor's ``health()``, in order."""
    device: Optional[dict] = None
    """The last ``KIND_INFO`` device, if any."""
    end: Optional[dict] = None
    """The end marker's body, if Blender ended its stream (it then waits for the actor's ack)."""
    t_first: Optional[float] = None
    """``time.monotonic()`` (system-wide) when the first item arrived, for ``health().fps``."""
    t_last: Optional[float] = None
    """... and the last one."""
    leftovers: list = field(default_factory=list)
    """Items read but not taken by the consumer, in order (not in ``STATE_FILE``)."""


def request_pause(directory: str) -> None:
    """Ask Blender to pause before its next message (the driver's step 2).

    Args:
        directory: The instance's private directory.
    """
    with open(os.path.join(directory, PAUSE_FILE), "w"):
        pass


def adoption_requested(directory: str) -> bool:
    """Whether the actor waits for the hand-over (step 1 done).

    Args:
        directory: The instance's private directory.

    Returns:
        True once the actor created ``ADOPT_FILE``.
    """
    return os.path.exists(os.path.join(directory, ADOPT_FILE))


def write(directory: str, memory_dir: str, state: HandoverState) -> None:
    """Hand the state over (the driver's step 2, after its socket is closed).

    Args:
        directory: The instance's private directory.
        memory_dir: Its /dev/shm directory (for the leftovers).
        state: What the driver read.
    """
    with open(os.path.join(memory_dir, LEFTOVER_FILE), "wb") as f:
        pickle.dump(state.leftovers, f, protocol=5)
    body = {k: v for k, v in asdict(state).items() if k != "leftovers"}
    path = os.path.join(directory, STATE_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(body, f)
    os.replace(path + ".tmp", path)


def adopt(directory: str, memory_dir: str, timeout: float) -> Optional[HandoverState]:
    """Ask for the socket and wait until the driver has handed it over (the actor's step 1).

    Args:
        directory: The instance's private directory.
        memory_dir: Its /dev/shm directory.
        timeout: Longest wait, in seconds.

    Returns:
        The state, with its leftovers; None if the driver did not hand over in time (it is
        gone: the prestarted Blender's lifeline ends it too).
    """
    if not os.path.isdir(directory):
        return None
    with open(os.path.join(directory, ADOPT_FILE), "w"):
        pass
    path = os.path.join(directory, STATE_FILE)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline or not os.path.isdir(directory):
            return None
        time.sleep(POLL_S)
    with open(path) as f:
        state = HandoverState(**json.load(f))
    leftovers = os.path.join(memory_dir, LEFTOVER_FILE)
    with open(leftovers, "rb") as f:
        state.leftovers = pickle.load(f)
    os.unlink(leftovers)
    return state


def release_blender(directory: str) -> None:
    """Let Blender go on, now that the actor has bound the socket (the actor's step 3).

    Args:
        directory: The instance's private directory.
    """
    try:
        os.unlink(os.path.join(directory, PAUSE_FILE))
    except FileNotFoundError:  # the driver never had to pause it (Blender had ended)
        pass


def take_over(sup: Any, state: HandoverState) -> None:
    """The actor's step 3: its supervisor goes on from what the driver read, and Blender goes on.

    Args:
        sup: The instance's ``blendtorch_ray.supervisor.Supervisor``, its socket bound.
        state: What `adopt` returned.
    """
    sup.next_seq, sup.ready = state.next_seq, state.ready
    sup.items = sup._epoch_items = state.items
    sup._t_first, sup._t_last = state.t_first, state.t_last
    sup.dropped += state.dropped
    sup.device = state.device
    for text in state.warnings:
        sup.warn(text)
    sup.pending.extend(state.leftovers)  # handed over first
    release_blender(sup.dir.path)
    if state.end is not None:  # Blender waits for the ack of its end marker
        sup.on_end(state.end)
    log.info("Blender instance %d: taken over from the driver; %s", sup.btid, describe(state))


def describe(state: Any) -> str:
    """One line on a hand-over, for the log."""
    return (f"{state.items} item(s) read before Ray was up, {len(state.leftovers)} left for the stream, "
            f"Blender at seq {state.next_seq}")
