"""Start Blender while Ray starts (local mode): the time to first batch overlaps the two.

In local mode the launcher starts Ray itself, which takes seconds during which the machine is
partly idle. Blender needs no Ray to boot, load its scene and render its first frame, so the
launcher starts each instance's Blender first, with the socket addresses and shared-memory
slot file its actor will use, and the actor adopts the running process when it comes up. The
Blender process connects to a socket nobody has bound yet; ZeroMQ keeps trying, and its hello
(and first items) wait in Blender until the actor binds.

The driver is the parent of a prestarted Blender: Blender's lifeline watches the driver, a
thread here reaps the process and writes its exit code for the actor, and the launcher ends
any prestarted process that no actor adopted. After the first epoch, the actor restarts and
recycles Blender as its own children, as always. Only for the ipc transport, and not for
instances that need GPUs or custom resources (which node and device they get is Ray's call).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Optional

from blender_worker.slots import SlotFile
from blendtorch_ray import handover
from blendtorch_ray.blender import BlenderExecutable
from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.instance import blender_args, blender_environment, instance_dirs, slot_file_for
from blendtorch_ray.process import BlenderProcess
from blendtorch_ray.transport import ipc_address


@dataclass(frozen=True)
class Prestarted:
    """A Blender process started by the driver for instance ``btid``, for its actor to adopt."""

    btid: int
    pid: int
    dir: str
    """Private directory: the actor binds its sockets here."""
    memory_dir: str
    """/dev/shm directory: slot file, render scratch files."""
    log_path: str
    exit_file: str
    """Written with Blender's exit code by the driver once it has reaped the process."""
    slots: Optional[tuple]
    """``(path, slots, slot_bytes)`` of the slot file, or None."""
    handover: bool = False
    """The driver reads it before its actor exists (``blendtorch_ray.early_read``): the actor
    takes the socket over (``blendtorch_ray.handover``)."""

    def usable(self) -> bool:
        """True while the process runs and its directories exist (same node, not ended)."""
        return os.path.isdir(self.dir) and not os.path.exists(self.exit_file) and os.path.exists(f"/proc/{self.pid}")

    def open_slots(self) -> Optional[SlotFile]:
        return SlotFile(*self.slots) if self.slots else None

    def discard(self) -> None:
        """End the process (if it still runs) and remove its directories."""
        import shutil

        proc = _STARTED.pop(self.pid, None)  # in the driver: the Popen itself
        if proc is not None:
            proc.terminate(timeout=DISCARD_TIMEOUT_S)
        elif self.usable():  # elsewhere (a recreated actor): by pid, while it is still ours
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError) as exc:  # ended meanwhile, or no longer ours
                log.debug("prestarted Blender %d: %s", self.pid, exc)
        shutil.rmtree(self.memory_dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


log = logging.getLogger("blendtorch_ray")

DISCARD_TIMEOUT_S = 2.0
"""Grace after SIGTERM before a discarded prestarted Blender is killed."""

_STARTED: dict = {}
"""pid -> BlenderProcess of the Blender processes this (driver) process prestarted."""


def can_prestart(config: LaunchConfig) -> bool:
    """Whether instances of ``config`` may be started before their actors (see module doc)."""
    return bool(config.supervision.prestart and config.stream.transport == "ipc" and not config.placement.num_gpus
                and not config.placement.resources and not config.placement.nodes)


def prestart(config: LaunchConfig, btid: int, blender: BlenderExecutable, read_early: bool = False) -> Prestarted:
    """Start instance ``btid``'s first Blender now, as its actor would.

    Args:
        config: The group's configuration.
        btid: Instance id.
        blender: The Blender to run.
        read_early: The driver reads it until the actor takes over (``blendtorch_ray.early_read``).

    Returns:
        The process, for its actor to adopt.
    """
    d, m, log_path = instance_dirs(config, btid)
    slots = slot_file_for(config, m, 0)
    args = blender_args(config, btid, 0, ipc_address(d, "data"), ipc_address(d, "control"),
                        os.getpid(), d.join("end-ack"), slots,
                        handover_path=d.join(handover.PAUSE_FILE) if read_early else None)
    proc = BlenderProcess(blender, config.script, config.scene, args, log_path, blender_environment(config.env, m))
    exit_file = d.join("exit-code")

    def reap() -> None:  # the driver is the parent: reap it and tell the actor how it ended
        code = proc._popen.wait()
        try:
            with open(exit_file + ".tmp", "w") as f:
                f.write(str(code))
            os.replace(exit_file + ".tmp", exit_file)
        except OSError as exc:  # the directory is gone: the actor closed already
            log.debug("prestarted Blender %d: exit code not written: %s", proc.pid, exc)

    threading.Thread(target=reap, name=f"btr-reap-{btid}", daemon=True).start()
    _STARTED[proc.pid] = proc
    return Prestarted(btid=btid, pid=proc.pid, dir=d.path, memory_dir=m.path, log_path=log_path,
                      exit_file=exit_file, slots=(slots.path, slots.slots, slots.slot_bytes) if slots else None,
                      handover=read_early)


def prefetch_consumer_imports() -> None:
    """Import the consumer side (torch) in a background thread while Ray and Blender start:
    the driver mostly waits during start-up, and torch's import takes seconds. Nothing
    happens if torch is already imported."""
    import sys

    if "torch" in sys.modules:
        return

    def load() -> None:
        try:
            import blendtorch_ray.dataset  # noqa: F401 - imports torch
        except ImportError as exc:  # the real import later reports it to the user
            log.debug("background import of the consumer side failed: %s", exc)

    threading.Thread(target=load, name="btr-prefetch-torch", daemon=True).start()
