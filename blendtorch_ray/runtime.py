"""Connect to Ray (the embedded local mode by default, or a running cluster) and name the
group's actors there."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Any, Callable, Optional

import ray

WORKER_NICENESS = 0
"""Niceness of Ray workers (actors, and the Blender processes they start) in local mode."""


def ensure_ray(address: Optional[str] = None, namespace: Optional[str] = None, **init_kwargs) -> None:
    """``ray.init`` unless already connected.

    With ``address=None`` and no ``RAY_ADDRESS`` set, this starts a new local single-node Ray
    (local mode), even if a cluster started with ``ray start`` runs on this machine;
    ``"auto"`` or ``"ray://..."`` connect to a running cluster.

    A local Ray is started with worker niceness 0 (``RAY_worker_niceness`` overrides it).
    Ray's default of 15 lowers the priority of every actor and of the Blender processes
    they start, so on a busy machine Blender loses the CPU to the trainer and to Ray itself
    (measured: render efficiency 0.87 at niceness 15). On clusters, start Ray with
    ``RAY_worker_niceness=0 ray start ...`` (the YAMLs in ``cluster_configs/`` do).
    """
    if ray.is_initialized():
        return
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(init_kwargs)
    kwargs.setdefault("log_to_driver", True)
    if address is None:
        # "local": always a new single-node Ray. Plain ray.init() would instead join the last
        # cluster `ray start` (or ray.cluster_utils) left on this machine, where a
        # _system_config is refused; pass address="auto" or set RAY_ADDRESS to join one.
        address = "local"
        kwargs.setdefault("include_dashboard", False)
        if "RAY_worker_niceness" not in os.environ:
            system_config = dict(kwargs.get("_system_config") or {})
            system_config.setdefault("worker_niceness", WORKER_NICENESS)
            kwargs["_system_config"] = system_config
    ray.init(address=address, namespace=namespace, **kwargs)


def gcs_address() -> str:
    """Address other processes (DataLoader workers, other drivers) use to join this Ray."""
    return ray.get_runtime_context().gcs_address


def actor_name(group: str, btid: int) -> str:
    """The Ray actor name of instance ``btid`` in ``group``.

    Args:
        group: The group's name (``LaunchConfig.name``).
        btid: The instance id.

    Returns:
        ``"{group}/{btid}"``, looked up in the group's namespace.
    """
    return f"{group}/{btid}"


def run_in_keeper_thread(fn: Callable[[], Any], name: str = "btr-ray-start") -> Future:
    """Run ``fn`` (which may start Ray) in a new thread that then lives as long as the process.

    Ray starts its own processes (GCS, raylet) with ``PR_SET_PDEATHSIG``, which Linux sends
    when the *thread* that started them ends: a thread that called ``ray.init()`` and
    returned would take the local Ray down with it (measured: the GCS died as the thread
    ended). So the thread stays, idle, after ``fn`` returns.

    Args:
        fn: What to run.
        name: The thread's name.

    Returns:
        A future of ``fn``'s result (or exception).
    """
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to whoever waits for the future
            future.set_exception(exc)
        threading.Event().wait()  # never set: Ray's processes live as long as this thread

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
