"""The Ray actor of one Blender instance: its stream and its control methods.

``BlenderActor`` builds the instance's ``Supervisor`` (which starts or adopts Blender, binds
the local hop and keeps Blender alive) and offers ``stream()``: a streaming generator that
yields one object per batch (``blendtorch_ray.batcher``). The generator's results are owned
by the caller, so batches already handed over survive this actor; with a consumer on this
node, they are small descriptors into shared memory instead (``blendtorch_ray.relay``).
The control methods (health, endpoints, duplex messages, close) run in their own
concurrency group, so they answer while a stream is busy; the health figures are also
exported as Ray metrics (``blendtorch_ray.metrics``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Any, Iterator, Optional

import ray

from blendtorch_ray.batcher import batches
from blendtorch_ray.blender import find_blender
from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.egl import egl_environment
from blendtorch_ray.health import InstanceHealth
from blendtorch_ray.metrics import InstanceMetrics
from blendtorch_ray.relay import RING_SPARE_SLOTS, Relay
from blendtorch_ray.resume import group_identity, reposition
from blendtorch_ray.supervisor import Supervisor
from blendtorch_ray.tcp_link import open_outbox
from blendtorch_ray.transport import sweep_stale_dirs

log = logging.getLogger("blendtorch_ray")

EXIT_TERMINATE_S = 1.0
"""Grace for Blender when the actor object is collected without ``close()``."""
STREAM_TAKEOVER_S = 10.0
"""Longest wait, before a stream starting at a position moves Blender, for older streams to end."""


def _gpu_environment(config: LaunchConfig) -> dict:
    """The config's environment for Blender, plus this actor's GPUs (``CUDA_VISIBLE_DEVICES``
    for Cycles, the EGL device shim for Eevee and Workbench: `blendtorch_ray.egl`)."""
    env = dict(config.env)
    if config.placement.num_gpus:
        ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ids)
        env["BLENDTORCH_GPU_IDS"] = env["CUDA_VISIBLE_DEVICES"]
        if not config.ui:  # a window draws through its X server's GL; headless through EGL
            env.update(egl_environment([str(i) for i in ids], env))
    return env


class BlenderActor:
    """Supervise one Blender subprocess and relay what it publishes (a Ray actor).

    Args:
        config: The group's configuration.
        btid: Instance id.
        prestarted: A Blender the driver started for this instance while Ray was starting
            (``blendtorch_ray.prestart``); the actor adopts it instead of starting its own,
            unless this actor is a recreation (then that process is ended and a fresh one
            started).
    """

    def __init__(self, config: LaunchConfig, btid: int, prestarted: Optional[Any] = None) -> None:
        self.config = config
        self.btid = btid
        with warnings.catch_warnings():  # Ray's property warns about its own internals
            warnings.simplefilter("ignore")
            reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        # A prestarted Blender the driver read is taken over even if it ended meanwhile: the
        # supervisor then restarts it after the items the driver read (blendtorch_ray/handover.py).
        if prestarted is not None and (reconstructed or not (prestarted.usable() or prestarted.handover)):
            prestarted.discard()  # a recreated actor starts its own Blender
            prestarted = None
        sweep_stale_dirs()
        # A recreated actor (node lost, actor process died) starts a fresh epoch so that its
        # Blender never repeats the seeds of items already delivered.
        epoch = int(time.time()) if reconstructed else 0
        self.sup = Supervisor(config, btid, find_blender(config.blender, ui=config.ui), _gpu_environment(config), prestarted, epoch)
        self._closed = False
        self._streams = threading.Condition()
        """Guards ``_active`` (streams running) and ``_generation`` (bumped by a stream with a
        start position: the older streams end at their next poll, a cancelled one within ~1 s)."""
        self._active = 0
        self._generation = 0
        self._stop_metrics = threading.Event()
        node = ray.get_runtime_context().get_node_id()
        InstanceMetrics(config.name or "", btid, node).run(lambda: self.sup.health(node), self._stop_metrics, self.sup.warn)

    def wait_ready(self) -> dict:
        """Block until the instance's first DataPublisher says hello.

        Returns:
            ``{"btid", "pid", "epoch", "node_id"}`` of the instance.

        Raises:
            BlenderStartError: Blender exited first, or stayed silent past ``ready_timeout``.
        """
        self.sup.wait_ready()
        return {"btid": self.btid, "pid": self.sup.process.pid, "epoch": self.sup.epoch,
                "node_id": ray.get_runtime_context().get_node_id()}

    @ray.method(concurrency_group="stream")
    def stream(self, ring: bool = False, start: Optional[tuple] = None, tcp: Optional[dict] = None) -> Iterator[Any]:
        """Yield batches (lists of item dicts) until the instance finishes (exit code 0).

        Use with ``.options(_generator_backpressure_num_objects=...)``.

        Args:
            ring: The consumer is on this node: the first object names a shared-memory ring
                and the batches that follow are descriptors of its slots (see ``shm_ring``).
            start: ``(stream seed, seq)`` of the first item to yield; Blender starts there
                again unless it is where it stands (`blendtorch_ray.resume.reposition`).
                None: go on where it is.
            tcp: The consumer is on another node and offers a tcp link
                (`blendtorch_ray.tcp_link.TcpInbox.offer`): batches go over it and the
                objects yielded are their descriptors. If it cannot be reached, the
                batches go through the object store (with a warning in ``health()``).

        Yields:
            The ring header (with ``ring``), then one object per batch.

        Raises:
            BlenderCrashedError: Blender crashed once more than ``max_restarts`` allows.
        """
        with self._streams:
            if start is not None:  # a stream that starts at a position ends the older ones first
                self._generation += 1
                if not self._streams.wait_for(lambda: self._active == 0, timeout=STREAM_TAKEOVER_S):
                    log.warning("Blender instance %d: an older stream did not end within %.0fs", self.btid,
                                STREAM_TAKEOVER_S)
                reposition(self.sup, start)
            self._active += 1
        mine = self._generation
        try:
            stream = self.config.stream
            relay = Relay.open(self.sup.receiver, self.sup.mem_dir, ring, stream.max_batches_in_flight + RING_SPARE_SLOTS,
                               int(stream.ring_slot_mb * 2**20))
            superseded = lambda: self._closed or self._generation != mine  # noqa: E731
            if relay.ring is None:
                relay.tcp = open_outbox(tcp, self.sup.warn)
                relay.superseded = superseded
            if relay.ring is not None:
                yield relay.ring.header()
            try:
                yield from batches(self.sup, relay, superseded)
            except ConnectionAbortedError:  # the ring's reader (or the tcp link's) went away
                return
            finally:
                relay.close()
                self.sup.unlink_retired([])
        finally:
            with self._streams:
                self._active -= 1
                self._streams.notify_all()

    # -- control ---------------------------------------------------------------
    @ray.method(concurrency_group="control")
    def health(self) -> InstanceHealth:
        """Current health figures of this instance.

        Returns:
            The `InstanceHealth` snapshot.
        """
        return self.sup.health(ray.get_runtime_context().get_node_id())

    @ray.method(concurrency_group="control")
    def endpoints(self) -> dict:
        """Where this instance lives.

        Returns:
            ``{"data", "dir", "memory_dir", "node_id", "actor_pid", "blender_pid"}``.
        """
        return {
            "data": self.sup.receiver.address,
            "dir": self.sup.dir.path,
            "memory_dir": self.sup.mem_dir.path,
            "node_id": ray.get_runtime_context().get_node_id(),
            "actor_pid": os.getpid(),
            "blender_pid": self.sup.process.pid,
        }

    @ray.method(concurrency_group="control")
    def identity(self) -> dict:
        """What a checkpoint of this group's stream belongs to.

        Returns:
            `blendtorch_ray.resume.group_identity` of the group's config.
        """
        return group_identity(self.config)

    @ray.method(concurrency_group="control")
    def log_tail(self, max_lines: int = 30) -> str:
        """The last lines of the Blender log.

        Args:
            max_lines: How many lines.

        Returns:
            The lines, joined.
        """
        return self.sup.process.log_tail(max_lines)

    @ray.method(concurrency_group="control")
    def pid(self) -> int:
        """The pid of the current Blender process.

        Returns:
            The pid.
        """
        return self.sup.process.pid

    @ray.method(concurrency_group="control")
    def finished(self) -> bool:
        """Whether Blender ended cleanly (exit code 0) and its stream is complete.

        Returns:
            True once finished.
        """
        return self.sup.finished

    @ray.method(concurrency_group="control")
    def control_send(self, msg_id: int, generation: int, payload: dict) -> None:
        """Duplex channel: queue a message for Blender (see ``blendtorch_ray.duplex``).

        Args:
            msg_id: The message id the channel chose.
            generation: The channel's generation for this message.
            payload: What to send.
        """
        self.sup.control.send(msg_id, generation, payload)

    @ray.method(concurrency_group="control")
    def control_recv(self, timeout: float = 0.0) -> list[dict]:
        """Duplex channel: Blender's replies.

        Args:
            timeout: Seconds to wait for the first reply.

        Returns:
            The replies that arrived (as dicts of `blendtorch_ray.duplex.Reply` fields).
        """
        return self.sup.control.recv(timeout)

    @ray.method(concurrency_group="control")
    def close(self) -> None:
        """End Blender and remove the instance's directories."""
        self._closed = True
        self._stop_metrics.set()
        self.sup.close()

    def __del__(self) -> None:  # best effort: the lifeline in Blender is the guarantee
        sup = getattr(self, "sup", None)
        if sup is None:
            return
        try:
            sup.process.terminate(timeout=EXIT_TERMINATE_S)
        except OSError as exc:
            log.debug("Blender instance %d: terminate at actor exit failed: %s", self.btid, exc)


RemoteBlenderActor = ray.remote(concurrency_groups={"stream": 4, "control": 2})(BlenderActor)
"""The Ray actor class; options (resources, name, lifetime) are set by the launcher."""
