"""Frames stay on their node: which instances each consumer reads, and where instances go.

On one node a consumer reads an instance through the same-node shared-memory path; across
nodes every frame crosses the network (the tcp link, or Ray's object store). When several consumers
read one group (the ranks of a Ray Train job, or several ``RemoteIterableDataset``\\ s), give
each the instances on its own node:

* `shares` splits a group's instances over consumers by node: a consumer reads the instances
  on its node (split with the other consumers there); instances on nodes without a consumer,
  and consumers without a local instance, are matched across nodes (only then, or when a
  consumer would otherwise read nothing).
* `instance_nodes` asks a running group where each instance is; `rank_share` does it all for
  one Ray Train rank (gathering every rank's node with ``torch.distributed``).
* `worker_share` splits a consumer's instances further over its DataLoader workers.
* To place instances next to the trainer workers in the first place, pass their nodes:
  ``BlenderLauncher(..., nodes=[...])`` pins instance ``btid`` to ``nodes[btid % len(nodes)]``
  (``PlacementConfig.nodes``; ``"local"``: the launcher's own node). Inside a Ray Train worker
  ``nodes=["local"]`` starts that rank's own instances beside it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Optional, Sequence

import ray


def shares(instance_nodes: Mapping[int, str], consumer_nodes: Sequence[str]) -> list[list[int]]:
    """Split instances over consumers, each reading those on its own node where it can.

    Args:
        instance_nodes: ``btid`` -> the node id it runs on.
        consumer_nodes: One node id per consumer (rank order).

    Returns:
        Per consumer, the btids it reads (sorted). Every instance goes to exactly one consumer;
        an instance goes to a consumer on another node only if no consumer is on its node, and
        then preferably to a consumer without a local instance. A consumer that would read
        nothing while another reads several takes one of them (a cross-node read).

    Raises:
        ValueError: ``consumer_nodes`` is empty.
    """
    if not consumer_nodes:
        raise ValueError("consumer_nodes=[]: give one node id per consumer (e.g. per Ray Train rank)")
    by_node: dict[str, list[int]] = defaultdict(list)
    for btid in sorted(instance_nodes):
        by_node[instance_nodes[btid]].append(btid)
    ranks_on: dict[str, list[int]] = defaultdict(list)
    for rank, node in enumerate(consumer_nodes):
        ranks_on[node].append(rank)
    out: list[list[int]] = [[] for _ in consumer_nodes]
    orphans: list[int] = []
    for node, btids in by_node.items():
        ranks = ranks_on.get(node)
        if not ranks:
            orphans += btids
            continue
        for k, btid in enumerate(btids):
            out[ranks[k % len(ranks)]].append(btid)
    # Instances without a consumer on their node: first to consumers with nothing local.
    for btid in sorted(orphans):
        target = min(range(len(out)), key=lambda r: (len(out[r]) > 0, len(out[r]), r))
        out[target].append(btid)
    # Nobody reads nothing while someone reads several: one cross-node read each.
    while True:
        empty = [r for r in range(len(out)) if not out[r]]
        rich = max(range(len(out)), key=lambda r: (len(out[r]), -r))
        if not empty or len(out[rich]) < 2:
            break
        out[empty[0]].append(out[rich].pop())
    return [sorted(s) for s in out]


def instance_nodes(launcher_or_actors: Any) -> dict[int, str]:
    """Where each instance of a running group is: ``btid`` -> node id.

    Args:
        launcher_or_actors: A started `blendtorch_ray.launcher.BlenderLauncher` (or anything
            with ``health()``), or a list of its actors.

    Returns:
        The node id of every instance.
    """
    if hasattr(launcher_or_actors, "health"):
        return {h.btid: h.node_id for h in launcher_or_actors.health()}
    infos = ray.get([a.endpoints.remote() for a in launcher_or_actors])
    return {b: info["node_id"] for b, info in enumerate(infos)}


def rank_share(launcher: Any, rank: Optional[int] = None, world_size: Optional[int] = None,
               consumer_nodes: Optional[Sequence[str]] = None) -> list[int]:
    """The btids one rank of a multi-consumer job should read: `shares` for this rank.

    Args:
        launcher: The started group (see `instance_nodes`).
        rank: This consumer's rank; None: ``torch.distributed``'s rank (Ray Train sets it up).
        world_size: Number of consumers; None: ``torch.distributed``'s world size.
        consumer_nodes: Every rank's node id; None: gathered from all ranks with
            ``torch.distributed.all_gather_object`` (a collective: every rank must call this).

    Returns:
        The btids for ``bl.dataset(btids=...)``.

    Raises:
        ValueError: ``rank`` / ``world_size`` not given and ``torch.distributed`` is not
            initialised, or ``consumer_nodes`` does not have ``world_size`` entries.
    """
    here = ray.get_runtime_context().get_node_id()
    if rank is None or world_size is None or consumer_nodes is None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("rank_share: pass rank, world_size and consumer_nodes, or call it inside a "
                             "torch.distributed job (a Ray Train worker)")
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
        if consumer_nodes is None:
            gathered: list = [None] * world_size
            dist.all_gather_object(gathered, here)
            consumer_nodes = gathered
    if len(consumer_nodes) != world_size:
        raise ValueError(f"consumer_nodes has {len(consumer_nodes)} entries for world_size={world_size}; "
                         "give one node id per rank")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside 0..{world_size - 1} (world_size={world_size})")
    return shares(instance_nodes(launcher), list(consumer_nodes))[rank]


def worker_share(btids: Sequence[int], max_items: Optional[int], num_workers: int, worker: int) -> tuple[list[int], Optional[int]]:
    """The instances DataLoader worker ``worker`` of ``num_workers`` reads, and its share of
    ``max_items``.

    Worker ``k`` reads every ``num_workers``-th instance starting at ``k``. Workers that own
    no instance (more workers than instances) read nothing and get no share, so the shares
    of the workers that read always add up to ``max_items``.

    Args:
        btids: The instances the dataset reads.
        max_items: Items in total over all workers, or None (no limit).
        num_workers: Number of DataLoader workers (1 without workers).
        worker: This worker's id, ``0 <= worker < num_workers``.

    Returns:
        ``(btids, budget)``: this worker's instances and how many items it yields (None: no limit).
    """
    readers = min(num_workers, len(btids))
    if worker >= readers:
        return [], 0
    mine = [b for i, b in enumerate(btids) if i % num_workers == worker]
    if max_items is None:
        return mine, None
    return mine, max_items // readers + (1 if worker < max_items % readers else 0)
