"""Where a group's instances go: whether the cluster can hold them, the CPU share each
instance asks for when ``PlacementConfig.num_cpus`` is left to the default, and the nodes
instances are pinned to (``PlacementConfig.nodes``, see `blendtorch_ray.locality`)."""

from __future__ import annotations

from typing import Optional

import ray

from blendtorch_ray.config import LaunchConfig

MIN_LOCAL_CPUS = 0.25
"""Smallest default CPU share per instance in local mode (4 Blenders per core)."""


def check_capacity(cfg: LaunchConfig) -> None:
    """Check that the whole Ray cluster can hold ``cfg.num_instances`` instances.

    Args:
        cfg: The group's configuration (``num_cpus`` already resolved, not None).

    Raises:
        ValueError: The cluster's CPUs, GPUs or custom resources are too few; the message
            names each shortfall and how to fix it.
    """
    total = ray.cluster_resources()
    where = cfg.placement
    need = {"CPU": where.num_cpus * cfg.num_instances}
    if where.num_gpus:
        need["GPU"] = where.num_gpus * cfg.num_instances
    for key, value in where.resources.items():
        need[key] = value * cfg.num_instances
    short = {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if short:
        detail = ", ".join(f"{k}: need {v:g}, cluster has {have:g}" for k, (v, have) in short.items())
        raise ValueError(
            f"{cfg.num_instances} instance(s) do not fit in this Ray cluster ({detail}). Lower "
            "num_instances or the per-instance num_cpus/num_gpus/resources, start Ray with more "
            "(e.g. `ray start --resources='{\"blender\": 4}'`), or pass wait_for_resources=True "
            "on an autoscaling cluster"
        )


def default_num_cpus(num_instances: int) -> float:
    """CPUs per instance when ``PlacementConfig.num_cpus`` is None.

    Args:
        num_instances: Instances in the group.

    Returns:
        1.0 on a cluster of several nodes; on a single node (local mode)
        ``min(1, CPUs / num_instances)`` rounded down to 1/100, so the group fits, but never
        below ``MIN_LOCAL_CPUS``: a group far too large for the machine is still refused.
    """
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) != 1:
        return 1.0
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    return max(MIN_LOCAL_CPUS, min(1.0, int(100 * cpus / num_instances) / 100))


def resolve_nodes(cfg: LaunchConfig) -> Optional[list[str]]:
    """The node each instance is placed on (``PlacementConfig.nodes``), checked.

    ``"local"`` becomes the node this process runs on. Every node must be alive and hold the
    instances placed on it (``num_cpus``, ``num_gpus`` and custom resources per instance).

    Args:
        cfg: The group's configuration (``num_cpus`` already resolved, not None).

    Returns:
        One node id per instance (``btid`` order), or None when ``nodes`` is not set.

    Raises:
        ValueError: A node id is not an alive node of this cluster, or a node cannot hold the
            instances placed on it; the message lists the alive nodes and their resources.
    """
    where = cfg.placement
    if not where.nodes:
        return None
    here = ray.get_runtime_context().get_node_id()
    wanted = [here if n == "local" else n for n in where.nodes]
    alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    listing = "; ".join(f"{nid} ({n.get('NodeManagerAddress')}: "
                        f"{', '.join(f'{k} {v:g}' for k, v in sorted(n.get('Resources', {}).items()) if not k.startswith('node:'))})"
                        for nid, n in alive.items())
    unknown = [n for n in wanted if n not in alive]
    if unknown:
        raise ValueError(f"nodes={list(where.nodes)!r}: {unknown} are not alive nodes of this Ray cluster; "
                         f"alive: {listing}. Pass ids from ray.nodes() or ray.get_runtime_context().get_node_id()")
    per_node = [wanted[b % len(wanted)] for b in range(cfg.num_instances)]
    need = {"CPU": where.num_cpus, **({"GPU": where.num_gpus} if where.num_gpus else {}), **where.resources}
    for nid in dict.fromkeys(per_node):
        count = per_node.count(nid)
        have = alive[nid].get("Resources", {})
        short = {k: (v * count, have.get(k, 0.0)) for k, v in need.items() if v * count > have.get(k, 0.0) + 1e-9}
        if short:
            detail = ", ".join(f"{k}: need {v:g}, node has {h:g}" for k, (v, h) in short.items())
            raise ValueError(f"nodes=...: node {nid} cannot hold the {count} instance(s) placed on it ({detail}); "
                             f"alive nodes: {listing}. Spread the instances over more nodes or ask for less per instance")
    return per_node


def actor_options(cfg: LaunchConfig, name: str, namespace: str, node: Optional[str]) -> dict:
    """Ray ``.options()`` of one instance's actor: its name, resources, restarts and node.

    Args:
        cfg: The group's configuration (``num_cpus`` already resolved).
        name: The actor's name (``runtime.actor_name``).
        namespace: The group's Ray namespace.
        node: The node this instance is pinned to (`resolve_nodes`), or None.

    Returns:
        Keyword arguments for ``RemoteBlenderActor.options``.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    opts: dict = dict(
        name=name,
        namespace=namespace,
        num_cpus=cfg.placement.num_cpus,
        max_restarts=cfg.supervision.max_actor_restarts,
        max_task_retries=0,
    )
    if cfg.placement.num_gpus:
        opts["num_gpus"] = cfg.placement.num_gpus
    if cfg.placement.resources:
        opts["resources"] = dict(cfg.placement.resources)
    if node:  # soft: a lost node's instance is recreated elsewhere
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
    return opts


def resource_holders(limit: int = 12) -> str:
    """``; named actors alive: ...``, for a start that found no free resources (a group left
    running elsewhere holds them), or "" if Ray cannot say.

    Args:
        limit: Most names to list.

    Returns:
        The text to append to the error message.
    """
    try:
        alive = ray.util.list_named_actors(all_namespaces=True)
    except Exception:  # noqa: BLE001 - a diagnostic only
        return ""
    if not alive:
        return "; named actors alive: none"
    names = [f"{a['namespace']}/{a['name']}" for a in alive[:limit]]
    more = [f"{len(alive) - limit} more"] if len(alive) > limit else []
    return "; named actors alive: " + ", ".join(names + more)
