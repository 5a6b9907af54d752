"""blendtorch-ray: stream Blender into PyTorch through Ray.

The few names a user needs::

    from blendtorch_ray import BlenderLauncher, LaunchConfig
"""

from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.errors import (
    BlenderCrashedError,
    BlenderNotFoundError,
    BlenderStartError,
    BlendtorchError,
    StreamTimeout,
)
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
    "StreamTimeout",
]
