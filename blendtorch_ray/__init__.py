"""blendtorch-ray: stream Blender into PyTorch through Ray.

The few names a user needs::

    from blendtorch_ray import BlenderLauncher, LaunchConfig, make_loader

    with BlenderLauncher(script="scene.py", num_instances=2) as bl:
        for batch in make_loader(bl.dataset(max_items=1000), batch_size=8):
            ...

This is the driver side; the Blender-side script uses `blender_worker`.

Modules for users:

- `blendtorch_ray.launcher`: `BlenderLauncher` starts, supervises and attaches to a group.
- `blendtorch_ray.config`: `LaunchConfig`, every launch option.
- `blendtorch_ray.dataset`: `RemoteIterableDataset` (torch) and `collate`.
- `blendtorch_ray.loader`: `make_loader`, a DataLoader set up for a stream.
- `blendtorch_ray.ray_data`: the stream as a bounded Ray Data ``Dataset``.
- `blendtorch_ray.recording`: record a stream to tar shards and replay it.
- `blendtorch_ray.duplex`: talk back to the instances while training (`GroupChannel`).
- `blendtorch_ray.env`, `blendtorch_ray.envs`, `blendtorch_ray.rllib`: Blender scenes as
  gymnasium environments, and RLlib on them.
- `blendtorch_ray.coco`: COCO export of masks, boxes and keypoints.
- `blendtorch_ray.errors`: the exceptions.
- `blendtorch_ray.doctor`: which Blenders are there and what works in each.

Internals: `blendtorch_ray.actor` (the supervising actor), `blendtorch_ray.transport`,
`blendtorch_ray.shm_ring`, `blendtorch_ray.prestart`, `blendtorch_ray.early_read` and
`blendtorch_ray.handover` (the first batch before Ray is up, and the socket's hand-over to the
actor), `blendtorch_ray.group_start`, `blendtorch_ray.process`,
`blendtorch_ray.blender`, `blendtorch_ray.runtime`, `blendtorch_ray.validation`,
`blendtorch_ray.cli`, `blendtorch_ray.demo`, `blendtorch_ray.health`, `blendtorch_ray.extras`,
`blendtorch_ray.placement`, `blendtorch_ray.tcp_link` and `blendtorch_ray.tcp_wire` (the
cross-node link and its message format), `blendtorch_ray.open_streams` and `blendtorch_ray.read_order` (a
consumer's streams and the order it reads them in).
"""

import importlib
import importlib.util
import os
from typing import Any

__version__ = "0.1.0"

# Every public name loads on first use (as in Ray Train): ``import blendtorch_ray`` is cheap,
# and Ray's actor processes, which import this package to run ``BlenderActor``, never pay
# for torch (~2 s, ~150 MB), gymnasium or anything else they do not use.
_LAZY = {
    "BlenderLauncher": "blendtorch_ray.launcher",
    "LaunchConfig": "blendtorch_ray.config",
    "BlenderSpec": "blendtorch_ray.config",
    "PlacementConfig": "blendtorch_ray.config",
    "SupervisionConfig": "blendtorch_ray.config",
    "StreamConfig": "blendtorch_ray.config",
    "make_loader": "blendtorch_ray.loader",
    "show": "blendtorch_ray.preview",
    "RemoteIterableDataset": "blendtorch_ray.dataset",
    "InstanceHealth": "blendtorch_ray.health",
    "GroupChannel": "blendtorch_ray.duplex",
    "BlendtorchError": "blendtorch_ray.errors",
    "BlenderNotFoundError": "blendtorch_ray.errors",
    "BlenderStartError": "blendtorch_ray.errors",
    "BlenderCrashedError": "blendtorch_ray.errors",
    "BlenderVersionError": "blendtorch_ray.errors",
    "BlenderEnvError": "blendtorch_ray.errors",
    "EnvTimeout": "blendtorch_ray.errors",
    "StreamTimeout": "blendtorch_ray.errors",
    "ResumeError": "blendtorch_ray.resume",
    "DevicePrefetcher": "blendtorch_ray.prefetch",
    "rank_share": "blendtorch_ray.locality",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'blendtorch_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


def _register_gym_envs() -> None:
    """Register "blendtorch/CartPole-v0" and friends with gymnasium, if it is installed.

    Skipped inside Ray's worker processes (``RAY_RAYLET_PID`` is set there): the actors that
    supervise Blender have no use for gymnasium. Code that makes a bundled env inside a Ray
    task or actor imports ``blendtorch_ray.envs`` (``blendtorch_ray.rllib`` does), or uses
    gymnasium's ``"blendtorch_ray.envs:blendtorch/CartPole-v0"`` form.
    """
    if os.environ.get("RAY_RAYLET_PID") or importlib.util.find_spec("gymnasium") is None:
        return
    from blendtorch_ray.registry import register_gym_envs

    register_gym_envs()


_register_gym_envs()
