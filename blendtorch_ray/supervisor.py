"""Supervise one Blender process: start or adopt it, read what it sends, restart it when it
crashes, recycle it before it leaks, and keep the figures ``health()`` reports.

When Blender dies (non-zero exit or signal) the supervisor restarts it with the same ``btid``
at the next ``seq`` (blendtorch_ray/resume.py), up to ``max_restarts`` times with exponential backoff; a clean exit
(code 0) ends that instance's stream. Lives inside the actor (``blendtorch_ray.actor``);
knows nothing of batches or Ray's generators (``blendtorch_ray.batcher``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from typing import Any, Optional

from blender_worker import codec
from blender_worker.protocol import KIND_END, KIND_INFO, KIND_ITEM, KIND_READY
from blender_worker.slots import SlotFile
from blendtorch_ray import handover
from blendtorch_ray.blender import BlenderExecutable
from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.duplex import ControlEndpoint
from blendtorch_ray.errors import BlenderCrashedError, BlenderStartError
from blendtorch_ray.health import MAX_WARNINGS, InstanceHealth, snapshot
from blendtorch_ray.instance import blender_args, blender_environment, instance_dirs, slot_file_for, start_position
from blendtorch_ray.process import BlenderProcess
from blendtorch_ray.transport import PrivateDir, ItemReceiver, has_shared_memory_room, shm_min_free

log = logging.getLogger("blendtorch_ray")

RECV_POLL_MS = 50
"""How long one receive waits in the batch loop before it checks batch age and Blender."""
DRAIN_QUIET_POLLS = 5
"""Empty polls (``DRAIN_POLL_MS`` each), after Blender is gone, that end a drain (a crash sends no end marker)."""
RSS_CHECK_EVERY = 8
"""With ``recycle_rss_mb``, Blender's RSS is read every this many items (it costs a /proc read)."""
DRAIN_POLL_MS = 100
"""One receive while waiting for the handshake or draining an ending Blender."""
RECYCLE_EXIT_S = 5.0
"""Grace for a recycled Blender to exit after its end marker before it is killed."""


class Supervisor:
    """One Blender process and its local hop, kept alive across restarts and recycles.

    Args:
        config: The group's configuration.
        btid: Instance id.
        blender: The Blender to run.
        gpu_env: Environment variables naming this actor's GPUs (empty without GPUs).
        prestarted: A Blender the driver started for this instance (``blendtorch_ray.prestart``),
            to adopt instead of starting one; None: start one.
        epoch: The first seed epoch (a recreated actor starts a fresh one).
    """

    def __init__(self, config: LaunchConfig, btid: int, blender: BlenderExecutable, gpu_env: dict,
                 prestarted: Optional[Any] = None, epoch: int = 0) -> None:
        self.config = config
        self.btid = btid
        self.blender = blender
        self._gpu_env = gpu_env
        if prestarted is not None:
            self.dir, self.mem_dir = PrivateDir.existing(prestarted.dir), PrivateDir.existing(prestarted.memory_dir)
            self.log_path = prestarted.log_path
        else:
            self.dir, self.mem_dir, self.log_path = instance_dirs(config, btid)
        taken_over = None
        if prestarted is not None and prestarted.handover:  # the driver reads it: wait for its socket
            taken_over = handover.adopt(self.dir.path, self.mem_dir.path, config.supervision.ready_timeout)
            if taken_over is None:
                raise BlenderStartError(f"Blender instance {btid}: the driver did not hand its socket over within "
                                        f"{config.supervision.ready_timeout:.0f}s (ready_timeout)", btid=btid,
                                        log_path=self.log_path)
        stream = config.stream
        self.receiver = ItemReceiver(self.dir if stream.transport == "ipc" else None, stream.transport,
                                     max_message_bytes=int(stream.max_message_mb * 2**20))
        self.control = ControlEndpoint(self.dir, stream.transport, stream.codec, btid)
        self.lock = threading.Lock()  # held while reading the socket (stream and wait_ready: two threads)
        self.retired: list[SlotFile] = []
        """Slot files of earlier Blender processes that consumers may still map."""
        self.epoch = epoch
        self.stream_seed, self.next_seq = start_position(config, btid, epoch)  # next_seq: first not received
        self.restarts = 0
        self.recycles = 0
        self.lost = 0
        self.pending: deque = deque()
        """Items received before this actor (``blendtorch_ray.handover``), handed over first."""
        self.items = 0
        self.batches = 0
        self.dropped = 0
        self.partial = 0
        """Items received but not yet handed over in a batch."""
        self.last_error: Optional[str] = None
        self.warnings: list[str] = []
        self.device: Optional[dict] = None
        """Where Blender renders (``blender_worker.devices.DeviceChoice.to_dict()``), from its latest ``KIND_INFO``."""
        self.ready = False
        self.finished = False
        self._epoch_items = 0
        self._t_first: Optional[float] = None
        self._t_last: Optional[float] = None
        if (stream.shared_memory_hop or stream.shared_memory_ring) and not has_shared_memory_room(self.mem_dir.path):
            self.warn(f"shared-memory paths off: less than {shm_min_free() // 2**20} MiB free in "
                      f"{os.path.dirname(self.mem_dir.path)}; raise it (docker run --shm-size=2g) for speed")
        if prestarted is not None:
            self.receiver.slots = prestarted.open_slots()
            self.process = BlenderProcess.adopt(blender, prestarted.pid, self.log_path, prestarted.exit_file)
            if taken_over is not None:
                handover.take_over(self, taken_over)
        else:
            self.process = self._spawn()

    def position(self) -> tuple:
        """``(stream seed, seq)`` of the next item this instance hands over."""
        return self.stream_seed, (self.pending[0]["seq"] if self.pending else self.next_seq)

    # -- the process ---------------------------------------------------------------
    def _spawn(self) -> BlenderProcess:
        self._epoch_items = 0
        old = self.receiver.slots
        if old is not None:  # unlinked once no consumer can still need it (see unlink_retired)
            self.retired.append(old)
        slots = self.receiver.slots = slot_file_for(self.config, self.mem_dir, self.epoch)
        args = blender_args(self.config, self.btid, self.epoch, self.receiver.address, self.control.address,
                            os.getpid(), self.dir.join("end-ack"), slots, (self.stream_seed, self.next_seq))
        env = blender_environment(self._gpu_env, self.mem_dir)
        return BlenderProcess(self.blender, self.config.script, self.config.scene, args, self.log_path, env)

    def unlink_retired(self, pending: list) -> None:
        """Unlink retired slot files that no forwarded, untaken item points into.

        Args:
            pending: ``(slot file, slot)`` pairs a consumer has not taken yet.
        """
        keep = [f for f in self.retired if any(src is f for src, _ in pending)]
        for f in self.retired:
            if f not in keep:
                f.unlink()
        self.retired = keep

    def error(self, cls: type, message: str) -> Exception:
        """An exception of ``cls`` naming this instance, with the Blender log tail.

        Args:
            cls: A ``BlendtorchError`` subclass.
            message: What happened and the fix.

        Returns:
            The exception, ready to raise.
        """
        return cls(f"Blender instance {self.btid}: {message}", btid=self.btid,
                   log_tail=self.process.log_tail(), log_path=self.log_path)

    def warn(self, text: str) -> None:
        """Log a warning and keep it for ``health()`` (``warnings``, ``last_error``).

        Args:
            text: The warning, without the instance prefix.
        """
        text = f"Blender instance {self.btid}: {text}"
        log.warning(text)
        self.warnings.append(text)
        del self.warnings[:-MAX_WARNINGS]
        self.last_error = text

    def wait_ready(self) -> None:
        """Block until the instance's DataPublisher says hello.

        Raises:
            BlenderStartError: Blender exited first, or stayed silent past ``ready_timeout``.
        """
        timeout = self.config.supervision.ready_timeout
        deadline = time.monotonic() + timeout
        with self.lock:
            while not self.ready:
                msg = self.recv(DRAIN_POLL_MS)
                if msg is not None:
                    header, _ = msg
                    if header.get("kind") == KIND_READY:
                        self.ready = True
                    else:
                        self.receiver.release(header)
                    continue
                if not self.process.alive():
                    raise self.error(BlenderStartError, f"Blender {self.process.describe_exit()} before it was "
                                     "ready (the script must create a DataPublisher); fix the error shown in its log")
                if time.monotonic() > deadline:
                    raise self.error(BlenderStartError, f"no readiness handshake within {timeout:.0f}s; does the "
                                     "script create a DataPublisher(launch_args)? Raise ready_timeout for slow scenes")

    def restart(self) -> None:
        """Restart a crashed Blender (same btid, next epoch).

        Raises:
            BlenderCrashedError: The instance is out of restarts (``max_restarts``).
        """
        why = self.process.describe_exit()
        sup = self.config.supervision
        if self.restarts >= sup.max_restarts:
            raise self.error(BlenderCrashedError, f"Blender {why}; gave up after {self.restarts} restart(s) "
                             f"(max_restarts={sup.max_restarts})")
        delay = sup.restart_backoff * (2 ** self.restarts)
        self.warn(f"Blender {why}; restarting in {delay:.1f}s (restart {self.restarts + 1})")
        time.sleep(delay)
        self.restarts += 1
        self._next_epoch()

    def _next_epoch(self) -> None:
        """Start a fresh Blender for the next epoch (same btid and sequence unless ``reseed_on_restart``)."""
        self.epoch += 1
        if self.config.supervision.reseed_on_restart:
            self.stream_seed, self.next_seq = self.config.seed_for(self.btid, self.epoch), 0
        self.ready = False
        self.process = self._spawn()

    def should_recycle(self) -> bool:
        """Whether Blender is due for replacement (``recycle_after_items`` / ``recycle_rss_mb``).

        Returns:
            True when the current process should be recycled now.
        """
        sup = self.config.supervision
        if sup.recycle_after_items and self._epoch_items >= sup.recycle_after_items:
            return True
        if sup.recycle_rss_mb and self._epoch_items % RSS_CHECK_EVERY == 0:
            return self.process.rss_bytes() > sup.recycle_rss_mb * 2**20
        return False

    def recycle(self, held: list) -> list[dict]:
        """Replace Blender between items, keeping every item it flushed.

        SIGTERM makes blender_worker flush and send its end marker; the next epoch starts.

        Args:
            held: Headers of items still in slots; those of the returned items are added.

        Returns:
            The items the ending Blender flushed.
        """
        rss = self.process.rss_bytes()
        log.info("Blender instance %d: recycling after %d items (RSS %.0f MiB)", self.btid, self._epoch_items, rss / 2**20)
        self.process.signal(signal.SIGTERM)
        items = self.drain(held)
        self.process.terminate(timeout=RECYCLE_EXIT_S)
        self.recycles += 1
        self._next_epoch()
        return items

    # -- messages -----------------------------------------------------------------
    def recv(self, timeout_ms: int) -> Optional[tuple[dict, Any]]:
        """One message from Blender, or None (timeout, or a bad message, counted and warned).

        Args:
            timeout_ms: How long to wait, in milliseconds.

        Returns:
            ``(header, obj)`` or None.
        """
        try:
            return self.receiver.recv(timeout_ms)
        except codec.CodecError as exc:
            self.dropped += 1
            self.warn(f"dropped a message: {exc}")
            return None

    def next_item(self, timeout_ms: int = RECV_POLL_MS) -> Optional[tuple[dict, dict]]:
        """The next item Blender published, handling the other kinds of message on the way.

        Args:
            timeout_ms: How long to wait, in milliseconds.

        Returns:
            ``(header, item)``, or None if no item arrived in time. The header must be
            released (``receiver.release``) once the item's arrays are no longer needed.
        """
        if self.pending:
            return {"kind": KIND_ITEM}, self.pending.popleft()
        with self.lock:
            msg = self.recv(timeout_ms)
        return None if msg is None else self._take(msg)

    def _take(self, msg: tuple[dict, Any]) -> Optional[tuple[dict, dict]]:
        """Act on one message: an item is counted and returned; any other kind is handled
        (handshake, end marker, device info, a dropped non-dict item) and its slot released."""
        header, obj = msg
        kind = header.get("kind")
        if kind == KIND_ITEM and isinstance(obj, dict):
            self.count()
            if obj.get("seed") == self.stream_seed and isinstance(obj.get("seq"), int):
                self.next_seq = max(self.next_seq, obj["seq"] + 1)
            return header, obj
        self.receiver.release(header)
        if kind == KIND_READY:
            self.ready = True
        elif kind == KIND_END:
            self.on_end(obj)
        elif kind == KIND_INFO:
            self.on_info(obj)
        elif kind == KIND_ITEM:
            self.dropped += 1
            self.warn(f"dropped an item of type {type(obj).__name__}; publish(**items) sends dicts")
        return None

    def drain(self, held: list, timeout: float = 30.0) -> list[dict]:
        """Collect what an ending Blender flushes before it exits.

        Reads until the publisher's end marker arrives, or until the process is gone and the
        socket stayed quiet for ``DRAIN_QUIET_POLLS`` polls (a crashed Blender sends no end
        marker).

        Args:
            held: Headers of items still in slots; those of the returned items are added.
            timeout: Seconds to read at most.

        Returns:
            The items that arrived.
        """
        items: list[dict] = []
        quiet_polls = 0
        deadline = time.monotonic() + timeout
        with self.lock:
            while time.monotonic() < deadline:
                msg = self.recv(DRAIN_POLL_MS)
                if msg is None:
                    quiet_polls += 0 if self.process.alive() else 1
                    if quiet_polls >= DRAIN_QUIET_POLLS:
                        break
                    continue
                quiet_polls = 0
                got = self._take(msg)
                if got is not None:
                    held.append(got[0])
                    items.append(got[1])
                elif msg[0].get("kind") == KIND_END:
                    break
        return items

    def on_end(self, obj: Any) -> None:
        """The publisher's end marker says how many items it sent: let it exit, count any
        shortfall.

        Args:
            obj: The end marker's body (``{"count", "epoch"}``).
        """
        sent = int(obj.get("count", 0)) if isinstance(obj, dict) else 0
        with open(self.dir.join(f"end-ack.{self.epoch}"), "w"):  # everything it sent was read
            pass
        if sent > self._epoch_items:
            self.lost += sent - self._epoch_items
            self.warn(f"{sent - self._epoch_items} item(s) of epoch {self.epoch} were sent but never arrived")

    def on_info(self, obj: Any) -> None:
        """Blender says where it renders (``KIND_INFO``): keep it for ``health()``, pass its
        warnings on.

        Args:
            obj: The message body (``{"device", "warnings"}``).
        """
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("device"), dict):
            self.device = obj["device"]
        for text in obj.get("warnings") or ():
            self.warn(str(text))

    def count(self) -> None:
        """Count one received item (for ``items``, ``fps`` and recycling)."""
        now = time.monotonic()
        if self._t_first is None:
            self._t_first = now
        self._t_last = now
        self.items += 1
        self._epoch_items += 1

    # -- reporting and the end ----------------------------------------------------------
    def health(self, node_id: str) -> InstanceHealth:
        """A snapshot of this instance.

        Args:
            node_id: The Ray node this runs on.

        Returns:
            The `InstanceHealth`.
        """
        return snapshot(self, node_id)

    def close(self) -> None:
        """End Blender and remove the instance's directories."""
        self.process.terminate()
        self.receiver.close()
        self.control.close()
        self.dir.cleanup()
        self.mem_dir.cleanup()

