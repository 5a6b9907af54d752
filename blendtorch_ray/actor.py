"""The Ray actor that supervises one Blender instance and relays its items in batches.

``BlenderActor`` launches the Blender subprocess, binds the local PULL socket it publishes
to, waits for its readiness handshake, and offers ``stream()``: a streaming generator that
yields lists of items (one object-store put per batch). The generator's results are owned
by the caller, so batches already handed over survive this actor. Ray's generator
backpressure (``max_batches_in_flight``) stops the generator, which stops reading the
socket, whose high-water mark then blocks ``publish()`` in Blender: a slow consumer
slows Blender down instead of growing memory.

When Blender dies (non-zero exit or signal) the actor restarts it with the same ``btid``
in a new seed epoch, up to ``max_restarts`` times with exponential backoff; a clean exit
(code 0) ends that instance's stream.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import ray

from blender_worker import codec
from blender_worker.protocol import KIND_END, KIND_ITEM, KIND_READY, LaunchArgs
from blender_worker.slots import SlotFile
from blendtorch_ray.blender import find_blender
from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.duplex import ControlEndpoint
from blendtorch_ray.errors import BlenderCrashedError, BlenderStartError
from blendtorch_ray.health import MAX_WARNINGS, InstanceHealth
from blendtorch_ray.process import BlenderProcess
from blendtorch_ray.transport import (
    ItemReceiver,
    PrivateDir,
    has_shared_memory_room,
    memory_dir,
    owned_prefix,
    shm_min_free,
    sweep_stale_dirs,
)

log = logging.getLogger("blendtorch_ray")


@dataclass
class Forwarded:
    """Blender slots one stream handed to its ring's reader, in order; the reader frees them
    in the same order and counts them (``ShmRing.taken``)."""

    entries: list = field(default_factory=list)
    """(slot file, slot) not yet known to be taken."""
    done: int = 0

    def pending(self, taken: int) -> list:
        """The entries the reader has not taken yet, given its count ``taken``."""
        if taken > self.done:
            del self.entries[: taken - self.done]
            self.done = taken
        return self.entries


def blender_args(config: LaunchConfig, btid: int, epoch: int, data_address: str, control_address: str,
                 parent_pid: int, ack_path: str, slots: Optional[SlotFile]) -> list[str]:
    """The command-line arguments of one Blender instance: the launch flags
    (``blender_worker.protocol.LaunchArgs``), then the user's instance arguments."""
    return LaunchArgs(
        btid=btid,
        seed=config.seed_for(btid, epoch),
        epoch=epoch,
        data_address=data_address,
        control_address=control_address,
        parent_pid=parent_pid,
        codec=config.codec,
        ack_path=ack_path,
        slots=(slots.path, slots.slots, slots.slot_bytes) if slots else None,
    ).to_argv() + config.args_for(btid)


def instance_dirs(config: LaunchConfig, btid: int) -> tuple[PrivateDir, PrivateDir, str]:
    """Where one instance lives: its private directory (sockets, end acks, the log unless
    ``log_dir``), its /dev/shm directory (slots, rings, render scratch) and its log path.
    Both directories are named for this process, so they are swept once it is gone."""
    private = PrivateDir(prefix=owned_prefix(f"i{btid}"))
    memory = PrivateDir(prefix=owned_prefix("shm"), base=memory_dir())
    log_dir = config.log_dir or private.path
    os.makedirs(log_dir, exist_ok=True)
    name = (config.name or "blendtorch").replace("/", "_")
    return private, memory, os.path.join(log_dir, f"{name}-{btid}.log")


def blender_environment(extra: dict, memory: PrivateDir) -> dict:
    """Environment of a Blender process: this one's, plus ``extra``, plus where the
    Renderer keeps its scratch files (removed with ``memory``, even after a SIGKILL)."""
    env = dict(os.environ)
    env.update(extra)
    env["BLENDTORCH_TMPDIR"] = memory.path
    return env


def slot_file_for(config: LaunchConfig, directory: PrivateDir, epoch: int) -> Optional[SlotFile]:
    """A fresh shared-memory slot file for one Blender process (None if the hop is off or
    /dev/shm is too small for it)."""
    if not config.shared_memory_hop or not has_shared_memory_room(directory.path):
        return None
    return SlotFile(directory.join(f"slots-{epoch}-{time.monotonic_ns()}"),
                    slots=config.batch_size * (config.max_batches_in_flight + 2) + 2,
                    slot_bytes=int(config.item_slot_mb * 2**20), create=True)


class BlenderActor:
    """Supervise one Blender subprocess and relay what it publishes (a Ray actor).

    ``prestarted``: a Blender the driver started for this instance while Ray was starting
    (``blendtorch_ray.prestart``); the actor adopts it instead of starting its own, unless
    this actor is a recreation (then that process is ended and a fresh one started).
    """

    def __init__(self, config: LaunchConfig, btid: int, prestarted: Optional[Any] = None) -> None:
        self.config = config
        self.btid = btid
        self.blender = find_blender(config.blender)
        with warnings.catch_warnings():  # Ray's property warns about its own internals
            warnings.simplefilter("ignore")
            reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        if prestarted is not None and (reconstructed or not prestarted.usable()):
            prestarted.discard()  # a recreated actor starts its own Blender
            prestarted = None
        sweep_stale_dirs()
        if prestarted is not None:
            self._dir, self._mem_dir = PrivateDir.existing(prestarted.dir), PrivateDir.existing(prestarted.memory_dir)
            self.log_path = prestarted.log_path
        else:
            self._dir, self._mem_dir, self.log_path = instance_dirs(config, btid)
        self._retired: list[SlotFile] = []
        self._receiver = ItemReceiver(
            self._dir if config.transport == "ipc" else None,
            config.transport,
            max_message_bytes=int(config.max_message_mb * 2**20),
        )
        self._control = ControlEndpoint(self._dir, config.transport, config.codec, btid)
        self._lock = threading.Lock()
        # A recreated actor (node lost, actor process died) starts a fresh epoch so that its
        # Blender never repeats the seeds of items already delivered.
        self.epoch = int(time.time()) if reconstructed else 0
        self.restarts = 0
        self.recycles = 0
        self.lost = 0
        self._epoch_items = 0
        self.items = 0
        self.batches = 0
        self.dropped = 0
        self.last_error: Optional[str] = None
        self.warnings: list[str] = []
        self._ready = False
        self._finished = False
        self._closed = False
        self._partial = 0
        self._t_first: Optional[float] = None
        self._t_last: Optional[float] = None
        if (config.shared_memory_hop or config.shared_memory_ring) and not has_shared_memory_room(self._mem_dir.path):
            self._warn(f"shared-memory paths off: less than {shm_min_free() // 2**20} MiB free in "
                       f"{os.path.dirname(self._mem_dir.path)}; raise it (docker run --shm-size=2g) for speed")
        self._gpu_env = self._gpu_environment()
        if prestarted is not None:
            self._receiver.slots = prestarted.open_slots()
            self.process = BlenderProcess.adopt(self.blender, prestarted.pid, self.log_path, prestarted.exit_file)
        else:
            self.process = self._spawn()

    # -- process management -------------------------------------------------
    def _gpu_environment(self) -> dict:
        env = dict(self.config.env)
        if self.config.num_gpus:
            ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ids)
            env["BLENDTORCH_GPU_IDS"] = env["CUDA_VISIBLE_DEVICES"]
        return env

    def _new_slot_file(self) -> Optional[SlotFile]:
        """A fresh shared-memory slot file for the next Blender. The old one is retired:
        unlinked once no consumer can still need to map it (see ``_unlink_retired``); items
        held from it keep their mapping until released."""
        old = self._receiver.slots
        if old is not None:
            self._retired.append(old)
        slots = slot_file_for(self.config, self._mem_dir, self.epoch)
        self._receiver.slots = slots
        return slots

    def _unlink_retired(self, pending: list) -> None:
        """Unlink retired slot files that no forwarded, untaken item (``pending``) points into."""
        keep = [f for f in self._retired if any(src is f for src, _ in pending)]
        for f in self._retired:
            if f not in keep:
                f.unlink()
        self._retired = keep

    def _spawn(self) -> BlenderProcess:
        self._epoch_items = 0
        slots = self._new_slot_file()
        args = blender_args(self.config, self.btid, self.epoch, self._receiver.address, self._control.address,
                            os.getpid(), self._dir.join("end-ack"), slots)
        env = blender_environment(self._gpu_env, self._mem_dir)
        return BlenderProcess(self.blender, self.config.script, self.config.scene, args, self.log_path, env)

    def _error(self, cls: type, message: str) -> Exception:
        return cls(
            f"Blender instance {self.btid}: {message}",
            btid=self.btid,
            log_tail=self.process.log_tail(),
            log_path=self.log_path,
        )

    def wait_ready(self) -> dict:
        """Block until the instance's first DataPublisher says hello; return its info.

        Raises BlenderStartError if Blender exits first or stays silent past ready_timeout.
        """
        deadline = time.monotonic() + self.config.ready_timeout
        with self._lock:
            while not self._ready:
                msg = self._recv(100)
                if msg is not None:
                    header, obj = msg
                    if header.get("kind") == KIND_READY:
                        self._ready = True
                    else:
                        self._receiver.release(header)
                    continue
                if not self.process.alive():
                    raise self._error(
                        BlenderStartError,
                        f"Blender {self.process.describe_exit()} before it was ready (the script "
                        "must create a DataPublisher); fix the error shown in its log",
                    )
                if time.monotonic() > deadline:
                    raise self._error(
                        BlenderStartError,
                        f"no readiness handshake within {self.config.ready_timeout:.0f}s; does the "
                        "script create a DataPublisher(launch_args)? Raise ready_timeout for slow scenes",
                    )
        return {"btid": self.btid, "pid": self.process.pid, "epoch": self.epoch,
                "node_id": ray.get_runtime_context().get_node_id()}

    def _recv(self, timeout_ms: int) -> Optional[tuple[dict, Any]]:
        try:
            return self._receiver.recv(timeout_ms)
        except codec.CodecError as exc:
            self.dropped += 1
            self._warn(f"dropped a message: {exc}")
            return None

    def _warn(self, text: str) -> None:
        text = f"Blender instance {self.btid}: {text}"
        log.warning(text)
        self.warnings.append(text)
        del self.warnings[:-MAX_WARNINGS]
        self.last_error = text

    def _restart(self) -> None:
        """Restart a crashed Blender (same btid, next epoch) or raise when out of retries."""
        why = self.process.describe_exit()
        if self.restarts >= self.config.max_restarts:
            raise self._error(
                BlenderCrashedError,
                f"Blender {why}; gave up after {self.restarts} restart(s) (max_restarts="
                f"{self.config.max_restarts})",
            )
        delay = self.config.restart_backoff * (2 ** self.restarts)
        self._warn(f"Blender {why}; restarting in {delay:.1f}s (restart {self.restarts + 1})")
        time.sleep(delay)
        self.restarts += 1
        self._next_epoch()

    def _next_epoch(self) -> None:
        """Start a fresh Blender for the next epoch (new seed, same btid)."""
        self.epoch += 1
        self._ready = False
        self.process = self._spawn()

    # -- streaming ------------------------------------------------------------
    @ray.method(concurrency_group="stream")
    def stream(self, ring: bool = False) -> Iterator[Any]:
        """Yield batches (lists of item dicts) until the instance finishes (exit code 0).

        Use with ``.options(_generator_backpressure_num_objects=...)``. With ``ring=True``
        (consumer on this node) the first object names a shared-memory ring and the batches
        that follow are descriptors of its slots (see ``shm_ring``).
        """
        shm = None
        if ring and has_shared_memory_room(self._mem_dir.path):
            import uuid

            from blendtorch_ray.shm_ring import ShmRing

            cfg = self.config
            shm = ShmRing(self._mem_dir.join(f"ring-{uuid.uuid4().hex[:8]}"), cfg.max_batches_in_flight + 2,
                          int(cfg.ring_slot_mb * 2**20), create=True)
            yield {"__btr_ring__": shm.path, "slots": shm.slots, "slot_bytes": shm.slot_bytes}
        held: list[dict] = []  # headers of received items whose arrays are still in Blender's slots
        forwarded = Forwarded()
        try:
            yield from self._stream(shm, held, forwarded)
        except ConnectionAbortedError:  # the ring's reader went away
            return
        finally:
            self._release(held)
            if shm is not None:
                # Slots forwarded but never taken (the reader stopped, or this stream ended
                # first) go back to Blender. The reader frees in order, so these are the tail.
                for slot_file, slot in forwarded.pending(shm.taken()):
                    slot_file.release(slot)
                self._unlink_retired([])
                shm.close(unlink=True)

    def _stream(self, ring: Any, held: list[dict], forwarded: "Forwarded") -> Iterator[Any]:
        cfg = self.config
        batch: list[dict] = []
        batch_started = 0.0
        while not self._closed:
            with self._lock:
                msg = self._recv(50)
            if msg is not None:
                header, obj = msg
                if header.get("kind") == KIND_READY:
                    self._ready = True
                    continue
                if header.get("kind") == KIND_END:
                    self._on_end(obj)
                    continue
                if header.get("kind") != KIND_ITEM or not isinstance(obj, dict):
                    self._receiver.release(header)
                    if header.get("kind") == KIND_ITEM:
                        self.dropped += 1
                        self._warn(f"dropped an item of type {type(obj).__name__}; publish(**items) sends dicts")
                    continue
                if not batch:
                    batch_started = time.monotonic()
                batch.append(obj)
                held.append(header)
                self._count()
                self._partial = len(batch)
                if len(batch) >= cfg.batch_size:
                    yield from self._emit(batch, ring, held, forwarded)
                    batch = []
                if self._should_recycle():
                    batch += self._recycle(held)
                continue
            if batch and time.monotonic() - batch_started > cfg.max_batch_delay:
                yield from self._emit(batch, ring, held, forwarded)
                batch = []
            if not self.process.alive():
                batch += self._drain(held)
                if batch:
                    yield from self._emit(batch, ring, held, forwarded)
                    batch = []
                if self.process.poll() == 0:
                    self._finished = True
                    return
                self._restart()
        if batch:
            yield from self._emit(batch, ring, held, forwarded)

    def _emit(self, batch: list[dict], ring: Any, held: list[dict], forwarded: "Forwarded") -> Iterator[Any]:
        """Yield ``batch`` (or its ring descriptor), then give back the slots it held: Ray
        has serialised a yielded object before the generator resumes."""
        yield self._hand_over(batch, ring, held, forwarded)
        self._release(held)

    def _release(self, held: list[dict]) -> None:
        """Give Blender back the slots of items that have left (Ray serialised each yielded
        batch before the generator resumes, or the ring copied it)."""
        for header in held:
            self._receiver.release(header)
        held.clear()

    def _drain(self, held: list[dict], timeout: float = 30.0) -> list[dict]:
        """Collect what an ending Blender flushes before it exits.

        Reads until the publisher's end marker arrives, or until the process is gone and
        the socket stayed quiet for 0.5 s (a crashed Blender sends no end marker). Headers
        of the items returned are added to ``held``.
        """
        items: list[dict] = []
        quiet_polls = 0
        deadline = time.monotonic() + timeout
        with self._lock:
            while time.monotonic() < deadline:
                msg = self._recv(100)
                if msg is None:
                    quiet_polls += 0 if self.process.alive() else 1
                    if quiet_polls >= 5:
                        break
                    continue
                quiet_polls = 0
                header, obj = msg
                if header.get("kind") == KIND_END:
                    self._on_end(obj)
                    break
                if header.get("kind") == KIND_ITEM and isinstance(obj, dict):
                    items.append(obj)
                    held.append(header)
                    self._count()
                else:
                    self._receiver.release(header)
        return items

    def _on_end(self, obj: dict) -> None:
        """The publisher's end marker says how many items it sent; count any shortfall."""
        sent = int(obj.get("count", 0)) if isinstance(obj, dict) else 0
        # Let the finishing Blender exit: everything it sent has been read.
        with open(self._dir.join(f"end-ack.{self.epoch}"), "w"):
            pass
        if sent > self._epoch_items:
            self.lost += sent - self._epoch_items
            self._warn(f"{sent - self._epoch_items} item(s) of epoch {self.epoch} were sent but never arrived")

    def _should_recycle(self) -> bool:
        cfg = self.config
        if cfg.recycle_after_items and self._epoch_items >= cfg.recycle_after_items:
            return True
        if cfg.recycle_rss_mb and self._epoch_items % 8 == 0:
            return self.process.rss_bytes() > cfg.recycle_rss_mb * 2**20
        return False

    def _recycle(self, held: list[dict]) -> list[dict]:
        """Replace Blender between items: ask it to exit (SIGTERM makes blender_worker flush
        and send its end marker), keep every item it flushed, start the next epoch."""
        rss = self.process.rss_bytes()
        log.info("Blender instance %d: recycling after %d items (RSS %.0f MiB)", self.btid, self._epoch_items, rss / 2**20)
        self.process.signal(signal.SIGTERM)
        items = self._drain(held)
        self.process.terminate(timeout=5.0)
        self.recycles += 1
        self._next_epoch()
        return items

    def _count(self) -> None:
        now = time.monotonic()
        if self._t_first is None:
            self._t_first = now
        self._t_last = now
        self.items += 1
        self._epoch_items += 1

    def _hand_over(self, batch: list[dict], ring: Any, held: list[dict], forwarded: "Forwarded") -> Any:
        """What to yield for ``batch``: a ring descriptor (consumer on this node) or the batch.

        Through the ring, items whose arrays lie in the current Blender's slots are not
        copied: the consumer reads them there and frees the slots (ownership moves from
        ``held`` to ``forwarded``)."""
        self.batches += 1
        self._partial = 0
        if ring is None:
            return batch
        current = self._receiver.slots
        sources = None
        if current is not None and len(held) == len(batch):
            sources = [h["slot"][0] if h.get("slot_file") is current else None for h in held]
        desc = ring.put(batch, sources=sources, slot_file=current)
        if desc is None:
            return batch
        if sources is not None:
            for header, slot in zip(held, sources):
                if slot is not None:
                    header.pop("slot_file")  # the consumer frees it now
                    forwarded.entries.append((current, slot))
        self._unlink_retired(forwarded.pending(ring.taken()))
        return desc

    # -- control ---------------------------------------------------------------
    @ray.method(concurrency_group="control")
    def health(self) -> InstanceHealth:
        """Current health figures of this instance."""
        fps = 0.0
        if self._t_first is not None and self._t_last and self._t_last > self._t_first:
            fps = (self.items - 1) / (self._t_last - self._t_first)
        return InstanceHealth(
            btid=self.btid,
            node_id=ray.get_runtime_context().get_node_id(),
            pid=self.process.pid if self.process.alive() else None,
            alive=self.process.alive(),
            items=self.items,
            batches=self.batches,
            fps=fps,
            restarts=self.restarts,
            epoch=self.epoch,
            queue_depth=self._partial,
            dropped_messages=self.dropped,
            last_error=self.last_error,
            log_path=self.log_path,
            rss_bytes=self.process.rss_bytes(),
            recycles=self.recycles,
            lost_items=self.lost,
            niceness=self.process.niceness(),
            warnings=list(self.warnings),
        )

    @ray.method(concurrency_group="control")
    def endpoints(self) -> dict:
        """Where this instance lives: socket addresses, private dir, actor and Blender pids."""
        return {
            "data": self._receiver.address,
            "dir": self._dir.path,
            "memory_dir": self._mem_dir.path,
            "node_id": ray.get_runtime_context().get_node_id(),
            "actor_pid": os.getpid(),
            "blender_pid": self.process.pid,
        }

    @ray.method(concurrency_group="control")
    def log_tail(self, max_lines: int = 30) -> str:
        return self.process.log_tail(max_lines)

    @ray.method(concurrency_group="control")
    def pid(self) -> int:
        return self.process.pid

    @ray.method(concurrency_group="control")
    def finished(self) -> bool:
        return self._finished

    @ray.method(concurrency_group="control")
    def control_send(self, msg_id: int, generation: int, payload: dict) -> None:
        """Duplex channel: queue a message for Blender (see ``blendtorch_ray.duplex``)."""
        self._control.send(msg_id, generation, payload)

    @ray.method(concurrency_group="control")
    def control_recv(self, timeout: float = 0.0) -> list[dict]:
        """Duplex channel: Blender's replies that arrive within ``timeout`` seconds."""
        return self._control.recv(timeout)

    @ray.method(concurrency_group="control")
    def close(self) -> None:
        """End Blender and remove the private directory."""
        self._closed = True
        self.process.terminate()
        self._receiver.close()
        self._control.close()
        self._dir.cleanup()
        self._mem_dir.cleanup()

    def __del__(self) -> None:  # best effort: the lifeline in Blender is the guarantee
        try:
            self.process.terminate(timeout=1.0)
        except Exception:  # noqa: BLE001
            pass


RemoteBlenderActor = ray.remote(concurrency_groups={"stream": 4, "control": 2})(BlenderActor)
"""The Ray actor class; options (resources, name, lifetime) are set by the launcher."""
