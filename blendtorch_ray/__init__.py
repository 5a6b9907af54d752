"""blendtorch-ray: stream Blender into PyTorch through Ray.

The few names a user needs::

    from blendtorch_ray import BlenderLauncher, LaunchConfig
"""

from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.errors import (
    BlenderCrashedError,
    BlenderNotFoundError,
    BlenderStartError,
    BlenderVersionError,
    BlendtorchError,
    StreamTimeout,
)
from blendtorch_ray.actor import InstanceHealth
from blendtorch_ray.launcher import BlenderLauncher
from blendtorch_ray.loader import make_loader

__version__ = "0.1.0"

__all__ = [
    "BlenderLauncher",
    "LaunchConfig",
    "RemoteIterableDataset",
    "make_loader",
    "BlendtorchError",
    "BlenderNotFoundError",
    "BlenderStartError",
    "BlenderCrashedError",
    "BlenderVersionError",
    "InstanceHealth",
    "StreamTimeout",
]

_LAZY = {"RemoteIterableDataset": "blendtorch_ray.dataset"}


def __getattr__(name: str):
    """Import torch-dependent names on first use: Ray actor processes (which import this
    package to run ``BlenderActor``) then never pay for importing torch (~2 s, ~150 MB)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'blendtorch_ray' has no attribute {name!r}")

try:  # register the bundled gymnasium envs ("blendtorch/CartPole-v0") when the rl extra is installed
    import blendtorch_ray.envs as _envs  # noqa: F401
except ImportError:  # gymnasium missing: envs are unavailable, the rest works
    pass
