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
An iteration that stops early leaves its streams open for the next iteration in the same
process (blendtorch_ray/open_streams.py), so epochs of ``max_items`` follow each other
without making Blender start again.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Optional, Sequence

import ray
from torch.utils.data import IterableDataset, get_worker_info

from blendtorch_ray.config import CROSS_NODE
from blendtorch_ray.loader import collate, make_loader  # noqa: F401 - re-exported here too
from blendtorch_ray.locality import worker_share
from blendtorch_ray.open_streams import DIAGNOSE_TIMEOUT_S, OpenStreams, StreamOptions
from blendtorch_ray.resume import advance, check_state, make_state, provenance
from blendtorch_ray.runtime import actor_name, ensure_ray, gcs_address


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
        early: Set by ``BlenderLauncher.dataset`` while its group comes up in the background
            (`blendtorch_ray.early_read.EarlyGroup`): an iteration in this process reads the
            prestarted Blenders directly until their actors take over.

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
        early: Optional[Any] = None,
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
        self._early = early
        self._positions: dict = {}
        """``{btid: (stream seed, next seq)}`` of the streams this dataset read or loaded."""
        self._open: Optional[OpenStreams] = None
        """The streams the last iteration left open (`close`)."""
        self._creator_pid = os.getpid()
        self._connected_pid: Optional[int] = None  # the DataLoader worker that connected this copy to Ray
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
        if ray.is_initialized() and os.getpid() not in (self._creator_pid, self._connected_pid):
            # A forked worker inherited the parent's Ray state, which does not work. (A
            # persistent worker's second epoch finds the connection it made itself.)
            raise RuntimeError(
                "DataLoader worker was forked from a process using Ray; create the DataLoader "
                "with multiprocessing_context='spawn' (or 'forkserver'), or use "
                "blendtorch_ray.make_loader(dataset, ...)"
            )
        ensure_ray(address=self._address, namespace=self.namespace)
        self._connected_pid = os.getpid()

    def _reads_early(self) -> bool:
        """Whether an iteration here reads the prestarted Blenders first (Ray still starting)."""
        return self._early is not None and get_worker_info() is None and not self._early.up.done()

    def __iter__(self) -> Iterator[Any]:
        if not self._reads_early():
            self._connect()
        info = get_worker_info()
        n, k = (info.num_workers, info.id) if info else (1, 0)
        btids, budget = worker_share(self.btids, self.max_items, n, k)
        return self._items(btids, budget)

    def _items(self, btids: list[int], budget: Optional[int]) -> Iterator[Any]:
        if not btids or budget == 0:
            return
        streams = self._take_streams(btids)
        remaining = budget
        decode_item = None
        if self.decode:
            from blender_worker.compress import MARKER, decode_item
        recorder = None
        if self.record_to:
            from blendtorch_ray.recording import Recorder

            recorder = Recorder(self.record_to)
        keep = False  # the streams stay open for the next iteration if this one stops early
        try:
            while True:
                if not streams.leftover:
                    batch = streams.next_batch()
                    if batch is None:
                        return  # every instance finished
                    streams.leftover.extend(batch)
                item = streams.leftover.popleft()
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
                        keep = True
                        return
        except GeneratorExit:  # the consumer stopped reading: what it did not take is kept
            keep = True
            raise
        finally:
            if recorder is not None:
                recorder.close()
            if keep:
                self._keep_streams(streams)
            else:
                streams.close()

    def _take_streams(self, btids: list[int]) -> OpenStreams:
        """The streams an iteration reads: those the last one left open if they fit, else
        new ones (opened where this dataset stands)."""
        options = StreamOptions(self.group, self.namespace, self.timeout, self.reconnect_timeout,
                                self.max_batches_in_flight, self.shared_memory_ring, self.cross_node)
        kept, self._open = self._open, None
        if kept is not None:
            if kept.serves(options, btids):
                return kept
            kept.close()
        if self._reads_early():
            from blendtorch_ray.early_read import EarlyStreams

            return EarlyStreams(self._early, btids, self.timeout, lambda: self._streams_after_early(options, btids))
        return OpenStreams(options, btids, self._positions, self.path_counts)

    def _streams_after_early(self, options: StreamOptions, btids: list[int]) -> OpenStreams:
        """The actors' streams, once the group is up, where the early items ended."""
        self._early.wait_up()
        self._connect()
        return OpenStreams(options, btids, self._positions, self.path_counts)

    def _keep_streams(self, streams: OpenStreams) -> None:
        if self._open is not None:  # another iteration of this dataset kept its streams since
            self._open.close()
        self._open = streams

    def close(self) -> None:
        """End the streams this dataset keeps open between iterations.

        An iteration that stops early (``max_items``, or a loop broken off) leaves its streams
        open, so that the next one goes on with what is in flight, without a gap and without
        making Blender start again. They also end when the dataset is garbage-collected, its
        settings change, or a checkpoint is loaded.
        """
        kept, self._open = self._open, None
        if kept is not None:
            kept.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = None  # open streams belong to this process
        if self._early is not None:  # DataLoader workers read the group's streams: they need its Ray
            self._early.wait_up()
            state["_address"], state["_early"] = gcs_address(), None
        return state

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
        self.close()  # open streams stand elsewhere: the next iteration opens them at the state's positions

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
