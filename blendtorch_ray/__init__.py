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
from blendtorch_ray.dataset import RemoteIterableDataset, make_loader

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

try:  # register the bundled gymnasium envs ("blendtorch/CartPole-v0") when the rl extra is installed
    import blendtorch_ray.envs as _envs  # noqa: F401
except ImportError:  # gymnasium missing: envs are unavailable, the rest works
    pass
