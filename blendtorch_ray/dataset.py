"""Consume a group's stream as a torch ``IterableDataset``.

Each instance's actor yields batches through a Ray streaming generator; this dataset waits
on all of them at once (``ray.wait``) and flattens batches into items. Instances with a
batch ready are read round-robin, so a training batch mixes instances instead of draining
one instance's backlog first. With a DataLoader and ``num_workers > 0``, worker ``k`` of
``n`` reads every ``n``-th instance starting at ``k``, so no item is read twice and none is
skipped; workers beyond the number of instances read nothing, and ``max_items`` is split
over the workers that read, so exactly ``max_items`` items arrive in every layout. Workers must be started with
``multiprocessing_context="spawn"`` or ``"forkserver"`` (a forked child cannot use the
parent's Ray connection); ``make_loader`` sets that up.

A stream the dataset opens starts where it knows the instance stands (stream seed and next
``seq``), so none is skipped or repeated, across checkpoints too (blendtorch_ray/resume.py).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import ray
from torch.utils.data import IterableDataset, get_worker_info

from blendtorch_ray.errors import BlendtorchError, StreamTimeout, own_errors
from blendtorch_ray.locality import worker_share
from blendtorch_ray.read_order import FAIR_START_S, ReadOrder
from blendtorch_ray.loader import collate, make_loader  # noqa: F401 - re-exported here too
from blendtorch_ray.resume import advance, check_state, make_state, provenance
from blendtorch_ray.runtime import actor_name, ensure_ray, gcs_address
from blendtorch_ray.config import CROSS_NODE
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


class RemoteIterableDataset(IterableDataset):
    """Items published by a running group of Blender instances.

    Usually made by ``BlenderLauncher.dataset()``. Each item is the dict the Blender script
    published, plus ``btid``, ``seq``, ``seed``, ``epoch`` and ``generation``. The dataset
    pickles into DataLoader workers (it holds names, not actor handles) and works in any
    process connected to the group's Ray cluster.

    Args:
        group: Name of the launched group (``BlenderLauncher.name``).
        namespace: The group's Ray namespace.
        num_instances: Number of instances in the group.
        max_items: Stop after this many items in total, whatever the number of DataLoader
            workers (split over the workers that own an instance); None: until every
            instance finishes.
        item_transform: Applied to every item dict before it is yielded (runs in the
            DataLoader worker).
        timeout: Seconds without any item before `StreamTimeout` is raised (naming each
            instance and showing its log tail).
        max_batches_in_flight: Batches each instance may produce ahead of the consumer.
        btids: Read only these instances (e.g. a Ray Train rank's share:
            ``btid % world_size == rank``); DataLoader workers split them further. None: all
            ``num_instances``.
        record_to: Directory to record every yielded item to (raw, before
            ``item_transform``) as WebDataset tar shards; replay with
            `blendtorch_ray.recording.ReplayDataset`.
        reconnect_timeout: Seconds to wait for Ray to recreate an instance whose actor or
            node was lost.
        shared_memory_ring: Read instances on this node through a shared-memory ring
            instead of the object store.
        cross_node: How instances on other nodes send their batches: "tcp" (a direct
            connection to this process, `blendtorch_ray.tcp_link`) or "object_store".
        decode: Decode the values Blender compressed (``StreamConfig.encode``), item by
            item, before ``record_to`` and ``item_transform``, in the process that iterates
            (the DataLoader worker). False: yield them encoded (a 1-D uint8 array per key
            and a ``blender_worker.compress.MARKER`` entry; decode later with
            ``blender_worker.compress.decode_item``).
        identity: What a checkpoint of this stream belongs to
            (`blendtorch_ray.resume.group_identity`); None: asked from the group's actors
            when needed.

    Raises:
        ValueError: A count or time is out of range, or a ``btid`` is not in the group.

    Checkpoints (torchdata's ``StatefulDataLoader`` convention): `state_dict` /
    `load_state_dict`; with a plain DataLoader and workers, also `mark_consumed` (see
    blendtorch_ray/resume.py, "DataLoader workers").

    Example:
        What ``bl.dataset(max_items=1000)`` makes, for a running launcher ``bl``::

            ds = RemoteIterableDataset(bl.name, bl.namespace, bl.num_instances, max_items=1000)
            for batch in make_loader(ds, batch_size=8, num_workers=2):
                ...
    """

    def __init__(
        self,
        group: str,
        namespace: str,
        num_instances: int,
        max_items: Optional[int] = None,
        item_transform: Optional[Callable[[dict], Any]] = None,
        timeout: float = 60.0,
        max_batches_in_flight: int = 4,
        btids: Optional[Sequence[int]] = None,
        record_to: Optional[str] = None,
        reconnect_timeout: float = 120.0,
        shared_memory_ring: bool = False,
        cross_node: str = "tcp",
        decode: bool = True,
        identity: Optional[dict] = None,
    ) -> None:
        super().__init__()
        from blendtorch_ray import validation

        validation.positive_int("num_instances", num_instances, owner="RemoteIterableDataset", example=1)
        validation.stream_options(
            "RemoteIterableDataset",
            max_items=max_items,
            timeout=timeout,
            max_batches_in_flight=max_batches_in_flight,
            reconnect_timeout=reconnect_timeout,
        )
        self.group = group
        self.namespace = namespace
        self.num_instances = num_instances
        self.max_items = max_items
        self.item_transform = item_transform
        self.timeout = timeout
        self.max_batches_in_flight = max_batches_in_flight
        self.btids = list(range(num_instances)) if btids is None else [int(b) for b in btids]
        validation.one_of("cross_node", cross_node, CROSS_NODE, owner="RemoteIterableDataset")
        bad = [b for b in self.btids if not 0 <= b < num_instances]
        if bad:
            raise ValueError(f"btids {bad} out of range for a group of {num_instances} instances (0..{num_instances - 1})")
        self.record_to = record_to
        self.reconnect_timeout = reconnect_timeout
        self.shared_memory_ring = shared_memory_ring
        self.cross_node = cross_node
        self.decode = decode
        self._address = gcs_address() if ray.is_initialized() else None
        self._identity = identity
        self._positions: dict = {}
        """``{btid: (stream seed, next seq)}`` of the streams this dataset read or loaded."""
        self._creator_pid = os.getpid()
        self.path_counts: dict = {"ring": 0, "tcp": 0, "object_store": 0}
        """Batches this dataset (in this process) received by each path: the same-node ring,
        the cross-node tcp link, or Ray's object store."""

    def __len__(self) -> int:
        if self.max_items is None:
            raise TypeError("a stream without max_items has no length")
        return self.max_items

    def _connect(self) -> None:
        info = get_worker_info()
        if info is None:
            ensure_ray(address=self._address, namespace=self.namespace)
            return
        if ray.is_initialized() and os.getpid() != self._creator_pid:
            # A forked worker inherited the parent's Ray state, which does not work.
            raise RuntimeError(
                "DataLoader worker was forked from a process using Ray; create the DataLoader "
                "with multiprocessing_context='spawn' (or 'forkserver'), or use "
                "blendtorch_ray.make_loader(dataset, ...)"
            )
        ensure_ray(address=self._address, namespace=self.namespace)

    def __iter__(self) -> Iterator[Any]:
        self._connect()
        info = get_worker_info()
        n, k = (info.num_workers, info.id) if info else (1, 0)
        btids, budget = worker_share(self.btids, self.max_items, n, k)
        return self._items(btids, budget)

    def _items(self, btids: list[int], budget: Optional[int]) -> Iterator[Any]:
        if not btids or budget == 0:
            return
        actors = {b: ray.get_actor(actor_name(self.group, b), namespace=self.namespace) for b in btids}
        links: dict = {}  # stream -> its TcpInbox (instances on other nodes, cross_node="tcp")
        # Round-robin over the ready streams, with a fair start (blendtorch_ray/read_order.py).
        gens = ReadOrder({self._open_stream(actors[b], b, links): b for b in btids},
                         fair_start_s=min(self.timeout, FAIR_START_S))
        rings: dict = {}
        remaining = budget
        decode_item = None
        if self.decode:
            from blender_worker.compress import MARKER, decode_item
        recorder = None
        if self.record_to:
            from blendtorch_ray.recording import Recorder

            recorder = Recorder(self.record_to)
        try:
            while gens:
                gen = gens.next_ready(self.timeout)  # and sends it to the back of the order
                if gen is None:
                    raise self._timeout_error(actors, gens.btids())
                try:
                    ref = next(gen)
                    with own_errors():  # the instance's error (e.g. BlenderCrashedError) as itself
                        batch = ray.get(ref)
                    if is_ring_header(batch):
                        rings[gen] = ShmRing.from_header(batch)
                        # Both sides have it mapped now: unlinking means its memory is freed with
                        # the last mapping, even if the actor is killed before it cleans up.
                        rings[gen].unlink()
                        continue
                    if is_ring_batch(batch):
                        batch = rings[gen].take(batch)
                        self.path_counts["ring"] += 1
                    elif is_tcp_batch(batch):
                        batch = links[gen].take(batch, self.timeout)
                        self.path_counts["tcp"] += 1
                    else:
                        self.path_counts["object_store"] += 1
                    gens.delivered(gen)
                except StopIteration:
                    gens.remove(gen)
                    _close_link(links, gen)
                    continue
                except ACTOR_LOST + (TcpLinkLost,) as exc:
                    # The actor (or its node, or the link to it) died; Ray recreates it elsewhere.
                    # Items in flight are lost (see README: loss bound); delivered items are
                    # never repeated.
                    b = gens.remove(gen)
                    rings.pop(gen, None)
                    _close_link(links, gen)
                    gens.add(self._reconnect(actors[b], b, exc, links), b)
                    continue
                for item in batch:
                    if "seq" in item:
                        advance(self._positions, item["btid"], item["seed"], item["seq"])
                    if decode_item is not None and MARKER in item:
                        item = decode_item(item)
                    if recorder is not None:
                        recorder.write(item)
                    yield self.item_transform(item) if self.item_transform else item
                    if remaining is not None:
                        remaining -= 1
                        if remaining == 0:
                            return
        finally:
            for shm in rings.values():
                shm.close_reader()
                shm.close()
            for gen in list(links):
                _close_link(links, gen)
            if recorder is not None:
                recorder.close()
            for gen in gens:
                try:
                    ray.cancel(gen)
                except (ray.exceptions.RayError, TypeError, ValueError) as exc:
                    # The actor (or Ray) may be gone already: nothing left to cancel. Ray raises
                    # RayError subclasses for that, TypeError/ValueError for a refused cancel.
                    log.debug("cancelling a stream of group %r failed: %s", self.group, exc)

    def _reconnect(self, actor: Any, btid: int, cause: BaseException, links: dict) -> Any:
        """Wait for a recreated actor to be ready again and open a new stream on it."""
        log.warning("instance %d of %r lost (%s); waiting for Ray to recreate it", btid, self.group, type(cause).__name__)
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            try:
                info = ray.get(actor.wait_ready.remote(), timeout=max(RECONNECT_RETRY_S, deadline - time.monotonic()))
                break
            except ACTOR_LOST + (ray.exceptions.GetTimeoutError,) as exc:
                if time.monotonic() > deadline:
                    raise BlendtorchError(
                        f"instance {btid} of group {self.group!r} was lost ({type(cause).__name__}) and "
                        f"not recreated within {self.reconnect_timeout:.0f}s; is there a node with free "
                        f"resources for it (e.g. the 'blender' resource)? Last error: {exc}",
                        btid=btid,
                    ) from exc
                time.sleep(RECONNECT_RETRY_S)
        log.warning("instance %d of %r is back on node %s (epoch %s)", btid, self.group, info.get("node_id"), info.get("epoch"))
        return self._open_stream(actor, btid, links)

    def _open_stream(self, actor: Any, btid: int, links: dict) -> Any:
        """Start the actor's batch generator at this dataset's position of ``btid`` (if it has
        one): through the shared-memory ring if asked for and the actor runs on this node,
        through a tcp link (kept in ``links``) if asked for and it runs on another node."""
        here = True  # where the actor runs matters only to the ring and the tcp link
        if self.shared_memory_ring or self.cross_node == "tcp":
            here = ray.get(actor.endpoints.remote()).get("node_id") == ray.get_runtime_context().get_node_id()
        ring = self.shared_memory_ring and here
        inbox = TcpInbox(ray.util.get_node_ip_address()) if self.cross_node == "tcp" and not here else None
        start = self._positions.get(btid)
        gen = actor.stream.options(_generator_backpressure_num_objects=self.max_batches_in_flight).remote(
            ring, start, inbox.offer() if inbox else None)
        if inbox is not None:
            links[gen] = inbox
        return gen

    # -- checkpoints (blendtorch_ray/resume.py) ------------------------------------------
    def state_dict(self) -> dict:
        """Where each instance's stream stands, for a checkpoint.

        Returns:
            A plain dict (``torch.save`` / JSON-able): ``version``, what it belongs to
            (group, script, base seed, number of instances) and ``positions``: per ``btid``,
            the stream seed and the next ``seq`` to consume.
        """
        return make_state(self._group_identity(), self._positions)

    def load_state_dict(self, state: dict) -> None:
        """Go on from a checkpoint: each stream opened from now on starts at the state's
        position of its instance (items in flight when it was taken are rendered again).

        Args:
            state: What `state_dict` returned (e.g. in an earlier run).

        Raises:
            ResumeError: ``state`` is not a state dict, comes from a newer version of
                blendtorch-ray, or from another group or script (the message names what
                differs).
        """
        positions = check_state(state, self._group_identity(), owner="RemoteIterableDataset.load_state_dict")
        self._positions.update({b: p for b, p in positions.items() if b in self.btids})

    def mark_consumed(self, batch: Any) -> None:
        """Record that the training loop took these items (with a plain DataLoader and workers).

        Args:
            batch: A collated batch (with ``seed``, ``btid`` and ``seq``), or a list of items.

        Raises:
            ResumeError: The batch has no ``seed``/``btid``/``seq``.
        """
        for seed, btid, seq in provenance(batch):
            advance(self._positions, btid, seed, seq)

    def _group_identity(self) -> dict:
        if self._identity is None:
            ensure_ray(address=self._address, namespace=self.namespace)
            actor = ray.get_actor(actor_name(self.group, self.btids[0]), namespace=self.namespace)
            self._identity = ray.get(actor.identity.remote(), timeout=DIAGNOSE_TIMEOUT_S)
        return self._identity

    def _timeout_error(self, actors: dict, waiting: list[int]) -> StreamTimeout:
        lines, tails = [], []
        for b in waiting:
            try:
                h = ray.get(actors[b].health.remote(), timeout=DIAGNOSE_TIMEOUT_S)
                lines.append(
                    f"instance {b}: alive={h.alive} items={h.items} restarts={h.restarts} "
                    f"last_error={h.last_error}"
                )
                tails.append(f"[instance {b}]\n" + ray.get(actors[b].log_tail.remote(TIMEOUT_LOG_LINES),
                                                           timeout=DIAGNOSE_TIMEOUT_S))
            except ray.exceptions.RayError as exc:  # dead, unreachable or slow actor (GetTimeoutError)
                lines.append(f"instance {b}: unreachable ({type(exc).__name__})")
        btid = waiting[0] if len(waiting) == 1 else None
        return StreamTimeout(
            f"no item from instance(s) {waiting} of group {self.group!r} within {self.timeout:.0f}s; "
            "is the Blender script publishing (and not blocked or too slow)? Raise timeout= "
            "for slow renders.\n  " + "\n  ".join(lines),
            btid=btid,
            log_tail="\n".join(tails),
        )


def _close_link(links: dict, gen: Any) -> None:
    """Close and forget the tcp link of stream ``gen``, if it has one."""
    inbox = links.pop(gen, None)
    if inbox is not None:
        inbox.close()
