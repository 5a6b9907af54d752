"""Launch arguments that the supervising actor passes to every Blender instance.

Blender passes everything after ``--`` on its command line to the script untouched; the
launcher puts the blendtorch-ray arguments there, followed by the user's per-instance
arguments. ``parse_launch_args`` splits the two.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence


@dataclass(frozen=True)
class LaunchArgs:
    """What one Blender instance knows about itself."""

    btid: int
    """Instance id, unique within a launch (0..N-1)."""
    seed: int
    """Seed for this instance (base seed + btid, re-derived on every restart epoch)."""
    epoch: int
    """Restart epoch: 0 on first start, +1 each time the supervisor restarts this instance."""
    data_address: Optional[str]
    """ZeroMQ address of the actor's PULL socket that ``DataPublisher`` connects to."""
    control_address: Optional[str]
    """ZeroMQ address of the duplex control socket, if one was requested."""
    parent_pid: int
    """Pid of the supervising process; Blender exits when it goes away."""
    ack_path: Optional[str] = None
    """The supervisor creates ``{ack_path}.{epoch}`` once it has read this epoch's end marker."""
    codec: str = "pickle"
    """Message codec for published items (see ``blender_worker.codec``)."""
    slots: Optional[tuple[str, int, int]] = None
    """Shared-memory slot file for large items: ``(path, slots, slot_bytes)`` (see ``blender_worker.slots``)."""
    remainder: list[str] = field(default_factory=list)
    """Instance arguments for the user's script (everything the launcher did not consume)."""


def _script_argv(argv: Optional[Sequence[str]]) -> list[str]:
    """Arguments meant for the script: after ``--`` in sys.argv, or ``argv`` as given."""
    if argv is None:
        return sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    argv = list(argv)
    return argv[argv.index("--") + 1 :] if "--" in argv else argv


def _parse_slots(value: Optional[str]) -> Optional[tuple[str, int, int]]:
    if not value:
        return None
    path, slots, slot_bytes = value.rsplit(",", 2)
    return path, int(slots), int(slot_bytes)


def parse_launch_args(argv: Optional[Sequence[str]] = None) -> tuple[LaunchArgs, list[str]]:
    """Parse ``sys.argv`` (or ``argv``) after ``--``.

    Returns ``(launch_args, remainder)`` where ``remainder`` holds the user's instance
    arguments, ready for the script's own ``argparse``. Also arms the parent watchdog
    so that this Blender never outlives its supervisor.
    """
    parser = argparse.ArgumentParser(prog="blender_worker", add_help=False)
    parser.add_argument("-btid", "--btid", type=int, required=True)
    parser.add_argument("-btseed", "--btseed", type=int, required=True)
    parser.add_argument("-btepoch", "--btepoch", type=int, default=0)
    parser.add_argument("-btdata", "--btdata", default=None)
    parser.add_argument("-btcontrol", "--btcontrol", default=None)
    parser.add_argument("-btparent", "--btparent", type=int, default=0)
    parser.add_argument("-btcodec", "--btcodec", default="pickle")
    parser.add_argument("-btack", "--btack", default=None)
    parser.add_argument("-btslots", "--btslots", default=None, help="PATH,SLOTS,SLOT_BYTES")
    args, remainder = parser.parse_known_args(_script_argv(argv))
    launch = LaunchArgs(
        btid=args.btid,
        seed=args.btseed,
        epoch=args.btepoch,
        data_address=args.btdata,
        control_address=args.btcontrol,
        parent_pid=args.btparent,
        codec=args.btcodec,
        ack_path=args.btack,
        slots=_parse_slots(args.btslots),
        remainder=list(remainder),
    )
    if launch.parent_pid:
        from blender_worker.lifeline import exit_gracefully_on_sigterm, watch_parent

        watch_parent(launch.parent_pid)
        exit_gracefully_on_sigterm()
    return launch, list(remainder)
