"""Bring a group up on Ray: start Ray if needed, check that the group fits, create one actor
per instance and wait until each is ready (called by ``BlenderLauncher.start``, in the
foreground or, with ``read_before_ray``, in the background)."""

from __future__ import annotations

from typing import Any, Optional

import ray

from blendtorch_ray.actor import RemoteBlenderActor
from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.errors import BlenderStartError, own_errors
from blendtorch_ray.placement import actor_options, check_capacity, default_num_cpus, resolve_nodes, resource_holders
from blendtorch_ray.runtime import actor_name, ensure_ray

START_GRACE_S = 60.0
"""Time beyond ``ready_timeout`` for Ray to schedule every actor before ``start()`` gives up."""


def prepare_ray(config: LaunchConfig, namespace: str) -> LaunchConfig:
    """Connect to Ray (local mode starts it) and check that the group fits.

    Args:
        config: The group's configuration.
        namespace: The group's Ray namespace.

    Returns:
        The configuration with ``num_cpus`` resolved.

    Raises:
        ValueError: The cluster cannot hold the group, unless ``wait_for_resources=True``.
    """
    ensure_ray(namespace=namespace)
    if config.placement.num_cpus is None:
        config = config.with_options(num_cpus=default_num_cpus(config.num_instances))
    if not config.placement.wait_for_resources:
        check_capacity(config)
    return config


def create_actors(config: LaunchConfig, name: str, namespace: str, prestarted: dict, actors: list,
                  early: Optional[Any] = None) -> None:
    """Create one actor per instance and wait until every one is ready.

    Args:
        config: The group's configuration (``num_cpus`` resolved).
        name: The group's name.
        namespace: Its Ray namespace.
        prestarted: btid -> ``Prestarted`` for the actors to adopt.
        actors: The handles are appended here as they are created (so that the caller can
            end them if this fails).
        early: The `blendtorch_ray.early_read.EarlyGroup` reading the prestarted Blenders:
            each actor takes its socket over as soon as it asks.

    Raises:
        BlenderStartError: Not every instance was scheduled and ready in time.
    """
    nodes = resolve_nodes(config)
    for btid in range(config.num_instances):
        opts = actor_options(config, actor_name(name, btid), namespace, nodes[btid] if nodes else None)
        actors.append(RemoteBlenderActor.options(**opts).remote(config, btid, prestarted.get(btid)))
    refs = [a.wait_ready.remote() for a in actors]
    timeout = None if config.placement.wait_for_resources else config.supervision.ready_timeout + START_GRACE_S
    if early is not None:  # an actor that failed (its wait_ready is done) will not ask
        early.hand_over(lambda b: not ray.wait([refs[b]], timeout=0)[0], timeout or float("inf"))
    try:
        with own_errors():
            ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise BlenderStartError(
            f"group {name!r}: not every instance was scheduled and ready within "
            f"{timeout:.0f}s; free resources now: {ray.available_resources()}{resource_holders()}. "
            "Lower num_instances / num_cpus, add nodes, or pass wait_for_resources=True"
        ) from None


def find_actors(name: str, namespace: str, address: Optional[str]) -> list:
    """The actors of a running group, in ``btid`` order (for ``BlenderLauncher.attach``).

    Args:
        name: The group's name.
        namespace: Its Ray namespace.
        address: Ray address to connect to if Ray is not initialized yet.

    Returns:
        The actor handles.

    Raises:
        ValueError: No group of that name in the namespace.
    """
    ensure_ray(address=address, namespace=namespace)
    actors: list = []
    while True:
        try:
            actors.append(ray.get_actor(actor_name(name, len(actors)), namespace=namespace))
        except ValueError:
            break
    if not actors:
        raise ValueError(f"no blendtorch-ray group named {name!r} in namespace {namespace!r}")
    return actors
