"""Connect to Ray: the embedded local mode by default, or a running cluster."""

from __future__ import annotations

import os
from typing import Optional

import ray


def ensure_ray(address: Optional[str] = None, namespace: Optional[str] = None, **init_kwargs) -> None:
    """``ray.init`` unless already connected.

    With ``address=None`` and no ``RAY_ADDRESS`` set, this starts a local single-node Ray
    (local mode); ``"auto"`` or ``"ray://..."`` connect to a running cluster.
    """
    if ray.is_initialized():
        return
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(init_kwargs)
    kwargs.setdefault("log_to_driver", True)
    if address is None:
        kwargs.setdefault("include_dashboard", False)
    ray.init(address=address, namespace=namespace, **kwargs)


def gcs_address() -> str:
    """Address other processes (DataLoader workers, other drivers) use to join this Ray."""
    return ray.get_runtime_context().gcs_address
