"""The streams a consumer holds open on its instances, kept from one iteration to the next.

A `blendtorch_ray.dataset.RemoteIterableDataset` opens one Ray streaming generator per
instance (``BlenderActor.stream``) and turns what each yields into a batch of items: a
ring header and ring descriptors on the same node (`blendtorch_ray.shm_ring`), tcp
descriptors from another node (`blendtorch_ray.tcp_link`), or the batch itself through
Ray's object store. A lost actor, node or link reopens that instance's stream where the
consumer stands.

When an iteration stops early (``max_items`` reached, or the loop over the dataset broken
off), the streams stay open with what they have in flight: the next iteration in the same
process goes on reading them, with no gap and no repeat. Reopening instead would make every
instance start again where the consumer stands (`blendtorch_ray.resume.reposition`
restarts Blender: about a second per epoch, more for a heavy scene).
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

import ray

from blendtorch_ray.errors import BlendtorchError, StreamTimeout, own_errors
from blendtorch_ray.read_order import FAIR_START_S, ReadOrder
from blendtorch_ray.runtime import actor_name
from blendtorch_ray.shm_ring import ShmRing, is_ring_batch, is_ring_header
from blendtorch_ray.tcp_link import TcpInbox, TcpLinkLost, is_tcp_batch

log = logging.getLogger("blendtorch_ray")

# Errors that mean "the actor or the node holding the batch is gone", not "Blender failed".
ACTOR_LOST: tuple = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.ObjectLostError,
)

RECONNECT_RETRY_S = 1.0
"""Seconds between two attempts to reach a recreated actor (and the shortest wait of one)."""

DIAGNOSE_TIMEOUT_S = 10.0
"""Seconds each diagnostic call (health, log tail) of a stream timeout may take per instance."""

TIMEOUT_LOG_LINES = 15
"""Lines of each waited-for instance's Blender log that a ``StreamTimeout`` carries."""


@dataclass(frozen=True)
class StreamOptions:
    """What a consumer opens its streams with; open streams are read on only with the same.

    Attributes:
        group: Name of the launched group.
        namespace: The group's Ray namespace.
        timeout: Seconds without any batch before `StreamTimeout`.
        reconnect_timeout: Seconds to wait for Ray to recreate a lost actor.
        max_batches_in_flight: Batches each instance may produce ahead of the consumer.
        shared_memory_ring: Read instances on this node through a shared-memory ring.
        cross_node: "tcp" or "object_store", for instances on other nodes.
    """

    group: str
    namespace: str
    timeout: float
    reconnect_timeout: float
    max_batches_in_flight: int
    shared_memory_ring: bool
    cross_node: str


class OpenStreams:
    """One consumer's streams on its instances, and the items taken but not yet yielded.

    Args:
        options: How to open the streams.
        btids: The instances to read.
        positions: ``{btid: (stream seed, next seq)}``, the consumer's positions (read when a
            stream is opened, so that it starts where the consumer stands).
        path_counts: Counts of batches per path (``ring``, ``tcp``, ``object_store``),
            updated in place.
    """

    def __init__(self, options: StreamOptions, btids: list[int], positions: dict, path_counts: dict) -> None:
        self.options = options
        self.btids = list(btids)
        self.leftover: collections.deque = collections.deque()
        """Items of the last batch that the consumer has not taken yet."""
        self._positions = positions
        self._path_counts = path_counts
        self._actors = {b: ray.get_actor(actor_name(options.group, b), namespace=options.namespace) for b in btids}
        self._links: dict = {}  # stream -> its TcpInbox (instances on other nodes, cross_node="tcp")
        self._rings: dict = {}  # stream -> its ShmRing (instances on this node, shared_memory_ring)
        self._order = ReadOrder({self._open(b): b for b in btids},
                                fair_start_s=min(options.timeout, FAIR_START_S))

    def serves(self, options: StreamOptions, btids: list[int]) -> bool:
        """Whether these streams are what a consumer with ``options`` reading ``btids`` needs."""
        return bool(self._order) and options == self.options and list(btids) == self.btids

    def next_batch(self) -> Optional[list]:
        """The next batch of any instance, round-robin (`blendtorch_ray.read_order`).

        Returns:
            A list of item dicts, or None once every instance has finished.

        Raises:
            StreamTimeout: No instance delivered within ``options.timeout``.
            BlendtorchError: An instance failed (e.g. ``BlenderCrashedError``), or was lost
                and not recreated within ``options.reconnect_timeout``.
        """
        order = self._order
        while order:
            gen = order.next_ready(self.options.timeout)  # and sends it to the back of the order
            if gen is None:
                raise self._timeout_error(order.btids())
            try:
                ref = next(gen)
                with own_errors():  # the instance's error (e.g. BlenderCrashedError) as itself
                    batch = ray.get(ref)
                if is_ring_header(batch):
                    self._rings[gen] = ShmRing.from_header(batch)
                    # Both sides have it mapped now: unlinking means its memory is freed with
                    # the last mapping, even if the actor is killed before it cleans up.
                    self._rings[gen].unlink()
                    continue
                if is_ring_batch(batch):
                    batch = self._rings[gen].take(batch)
                    self._path_counts["ring"] += 1
                elif is_tcp_batch(batch):
                    batch = self._links[gen].take(batch, self.options.timeout)
                    self._path_counts["tcp"] += 1
                else:
                    self._path_counts["object_store"] += 1
                order.delivered(gen)
                return batch
            except StopIteration:
                order.remove(gen)
                self._forget(gen)
            except ACTOR_LOST + (TcpLinkLost,) as exc:
                # The actor (or its node, or the link to it) died; Ray recreates it elsewhere.
                # Items in flight are lost (see README: loss bound); delivered items are never
                # repeated.
                b = order.remove(gen)
                self._forget(gen)
                order.add(self._reconnect(b, exc), b)
        return None

    def close(self) -> None:
        """End every stream: rings and links closed, generators cancelled."""
        for gen in list(self._rings) + list(self._links):
            self._forget(gen)
        for gen in self._order if ray.is_initialized() else ():  # Ray shut down: nothing left to cancel
            try:  # (and a call would start a new Ray: ray.cancel auto-initialises)
                ray.cancel(gen)
            except (ray.exceptions.RayError, TypeError, ValueError) as exc:
                # The actor (or Ray) may be gone already: nothing left to cancel. Ray raises
                # RayError subclasses for that, TypeError/ValueError for a refused cancel.
                log.debug("cancelling a stream of group %r failed: %s", self.options.group, exc)
        for gen in list(self._order):
            self._order.remove(gen)
        self.leftover.clear()

    def __del__(self) -> None:
        # Streams a dropped dataset kept open: cancelled, or their actors would go on taking
        # items from Blender for a consumer that is gone.
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit Ray may be gone already
            pass

    def _forget(self, gen: Any) -> None:
        """Close and forget the ring and the tcp link of stream ``gen``, if it has them."""
        ring = self._rings.pop(gen, None)
        if ring is not None:
            ring.close_reader()
            ring.close()
        inbox = self._links.pop(gen, None)
        if inbox is not None:
            inbox.close()

    def _open(self, btid: int) -> Any:
        """Start the actor's batch generator at the consumer's position of ``btid`` (if it has
        one): through the shared-memory ring if asked for and the actor runs on this node,
        through a tcp link if asked for and it runs on another node."""
        actor, opts = self._actors[btid], self.options
        here = True  # where the actor runs matters only to the ring and the tcp link
        if opts.shared_memory_ring or opts.cross_node == "tcp":
            here = ray.get(actor.endpoints.remote()).get("node_id") == ray.get_runtime_context().get_node_id()
        ring = opts.shared_memory_ring and here
        inbox = TcpInbox(ray.util.get_node_ip_address()) if opts.cross_node == "tcp" and not here else None
        gen = actor.stream.options(_generator_backpressure_num_objects=opts.max_batches_in_flight).remote(
            ring, self._positions.get(btid), inbox.offer() if inbox else None)
        if inbox is not None:
            self._links[gen] = inbox
        return gen

    def _reconnect(self, btid: int, cause: BaseException) -> Any:
        """Wait for a recreated actor to be ready again and open a new stream on it."""
        group, actor = self.options.group, self._actors[btid]
        log.warning("instance %d of %r lost (%s); waiting for Ray to recreate it", btid, group, type(cause).__name__)
        deadline = time.monotonic() + self.options.reconnect_timeout
        while True:
            try:
                info = ray.get(actor.wait_ready.remote(), timeout=max(RECONNECT_RETRY_S, deadline - time.monotonic()))
                break
            except ACTOR_LOST + (ray.exceptions.GetTimeoutError,) as exc:
                if time.monotonic() > deadline:
                    raise BlendtorchError(
                        f"instance {btid} of group {group!r} was lost ({type(cause).__name__}) and "
                        f"not recreated within {self.options.reconnect_timeout:.0f}s; is there a node with "
                        f"free resources for it (e.g. the 'blender' resource)? Last error: {exc}",
                        btid=btid,
                    ) from exc
                time.sleep(RECONNECT_RETRY_S)
        log.warning("instance %d of %r is back on node %s (epoch %s)", btid, group, info.get("node_id"), info.get("epoch"))
        return self._open(btid)

    def _timeout_error(self, waiting: list[int]) -> StreamTimeout:
        lines, tails = [], []
        for b in waiting:
            actor = self._actors[b]
            try:
                h = ray.get(actor.health.remote(), timeout=DIAGNOSE_TIMEOUT_S)
                lines.append(
                    f"instance {b}: alive={h.alive} items={h.items} restarts={h.restarts} "
                    f"last_error={h.last_error}"
                )
                tails.append(f"[instance {b}]\n" + ray.get(actor.log_tail.remote(TIMEOUT_LOG_LINES),
                                                           timeout=DIAGNOSE_TIMEOUT_S))
            except ray.exceptions.RayError as exc:  # dead, unreachable or slow actor (GetTimeoutError)
                lines.append(f"instance {b}: unreachable ({type(exc).__name__})")
        btid = waiting[0] if len(waiting) == 1 else None
        return StreamTimeout(
            f"no item from instance(s) {waiting} of group {self.options.group!r} within "
            f"{self.options.timeout:.0f}s; is the Blender script publishing (and not blocked or too "
            "slow)? Raise timeout= for slow renders.\n  " + "\n  ".join(lines),
            btid=btid,
            log_tail="\n".join(tails),
        )
