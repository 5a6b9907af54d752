"""How one Blender instance is set up: its directories, its command line, its environment,
its shared-memory slot file. The actor (``blendtorch_ray.supervisor``) and the driver's
prestart (``blendtorch_ray.prestart``) start Blender from the same recipe."""

from __future__ import annotations

import os
import time
from typing import Optional

from blender_worker.protocol import LaunchArgs
from blender_worker.slots import SlotFile
from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.resume import Position, check_state
from blendtorch_ray.transport import PrivateDir, has_shared_memory_room, memory_dir, owned_prefix


def blender_args(config: LaunchConfig, btid: int, epoch: int, data_address: str, control_address: str,
                 parent_pid: int, ack_path: str, slots: Optional[SlotFile], start: Optional[Position] = None,
                 handover_path: Optional[str] = None) -> list[str]:
    """The command line of one Blender instance after ``--``.

    Args:
        config: The group's configuration.
        btid: Instance id.
        epoch: Restart epoch.
        data_address: Where ``DataPublisher`` connects.
        control_address: Where the duplex channel connects.
        parent_pid: The supervising process; Blender exits when it goes away.
        ack_path: Prefix of the end-marker acknowledgement files.
        slots: The shared-memory slot file of this process, or None.
        start: ``(stream seed, first seq)``; None: `blendtorch_ray.resume.start_position`.
        handover_path: The hand-over flag file of a Blender the driver reads before its actor
            exists (`blendtorch_ray.early_read`), or None.

    Returns:
        The launch flags (``blender_worker.protocol.LaunchArgs``), then the user's instance
        arguments.
    """
    seed, start_seq = start if start is not None else start_position(config, btid, epoch)
    return LaunchArgs(
        btid=btid,
        seed=seed,
        epoch=epoch,
        start_seq=start_seq,
        data_address=data_address,
        control_address=control_address,
        parent_pid=parent_pid,
        codec=config.stream.codec,
        ack_path=ack_path,
        slots=(slots.path, slots.slots, slots.slot_bytes) if slots else None,
        encode=config.stream.encode,
        handover_path=handover_path,
    ).to_argv() + config.args_for(btid)


def instance_dirs(config: LaunchConfig, btid: int) -> tuple[PrivateDir, PrivateDir, str]:
    """Where one instance lives.

    Both directories are named for this process, so they are swept once it is gone.

    Args:
        config: The group's configuration (``log_dir``, ``name``).
        btid: Instance id.

    Returns:
        ``(private, memory, log_path)``: its private directory (sockets, end acks, the log
        unless ``log_dir``), its /dev/shm directory (slots, rings, render scratch) and its
        log path.
    """
    private = PrivateDir(prefix=owned_prefix(f"i{btid}"))
    memory = PrivateDir(prefix=owned_prefix("shm"), base=memory_dir())
    log_dir = config.log_dir or private.path
    os.makedirs(log_dir, exist_ok=True)
    name = (config.name or "blendtorch").replace("/", "_")
    return private, memory, os.path.join(log_dir, f"{name}-{btid}.log")


def blender_environment(extra: dict, memory: PrivateDir) -> dict:
    """Environment of a Blender process.

    Args:
        extra: Variables to add (the config's ``env``, the actor's GPUs).
        memory: The instance's /dev/shm directory.

    Returns:
        This process's environment, plus ``extra``, plus where the Renderer keeps its
        scratch files (removed with ``memory``, even after a SIGKILL).
    """
    env = dict(os.environ)
    env.update(extra)
    env["BLENDTORCH_TMPDIR"] = memory.path
    return env


def slot_file_for(config: LaunchConfig, directory: PrivateDir, epoch: int) -> Optional[SlotFile]:
    """A fresh shared-memory slot file for one Blender process.

    Args:
        config: The group's configuration (``stream``).
        directory: The instance's /dev/shm directory.
        epoch: Restart epoch (part of the file name).

    Returns:
        The slot file, or None if the hop is off or /dev/shm is too small for it.
    """
    stream = config.stream
    if not stream.shared_memory_hop or not has_shared_memory_room(directory.path):
        return None
    return SlotFile(directory.join(f"slots-{epoch}-{time.monotonic_ns()}"),
                    slots=stream.slots_per_instance, slot_bytes=int(stream.item_slot_mb * 2**20), create=True)


def start_position(config: LaunchConfig, btid: int, epoch: int) -> Position:
    """Where instance ``btid`` starts: the checkpoint's position (``resume_from``) in the first
    epoch, else seq 0 of the epoch's stream seed.

    Args:
        config: The group's `blendtorch_ray.config.LaunchConfig`.
        btid: Instance id.
        epoch: 0 on first start; a recreated actor starts a fresh seed epoch.

    Returns:
        ``(stream seed, first seq)``.
    """
    if epoch == 0 and config.resume_from is not None:
        pos = check_state(config.resume_from, None, owner="LaunchConfig(resume_from=...)").get(btid)
        if pos is not None:
            return pos
    return config.seed_for(btid, epoch), 0
