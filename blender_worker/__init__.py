"""Code that runs inside Blender's Python: parse launch arguments, animate, render, publish.

Imports nothing from ``blendtorch_ray``; bpy-dependent parts load lazily so that the codec
and argument parser can be used from plain Python too.

A Blender-side script::

    import blender_worker as bw

    launch, args = bw.parse_launch_args()
    renderer, pub, anim = bw.Renderer(), bw.DataPublisher(launch), bw.AnimationController()
    anim.post_frame.add(lambda: pub.publish(**renderer.render()))
    anim.play(frame_range=(1, 100), num_episodes=-1)

Modules:

- `blender_worker.protocol`: `parse_launch_args`, what an instance knows about itself, and
  the rest of the wire protocol (message kinds, env commands, reserved keys).
- `blender_worker.publisher`: `DataPublisher`, sends items to the supervising actor.
- `blender_worker.animation`: `AnimationController`, the frame loop and its signals
  (`blender_worker.signals`).
- `blender_worker.render`: `Renderer`, frames and ground-truth passes as numpy arrays;
  `blender_worker.passes` explains the passes.
- `blender_worker.camera`: `Camera`, projections, intrinsics, extrinsics, boxes, keypoints.
- `blender_worker.randomize`: seeded domain randomisation helpers.
- `blender_worker.duplex`: receive the trainer's messages and reply.
- `blender_worker.env`: the Blender side of a gymnasium environment.

Internals: `blender_worker.codec`, `blender_worker.sockets`, `blender_worker.slots`,
`blender_worker.lifeline`, `blender_worker.bootstrap`, `blender_worker.exr`,
`blender_worker.readers`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LaunchArgs": "blender_worker.protocol",
    "parse_launch_args": "blender_worker.protocol",
    "parse_env_args": "blender_worker.protocol",
    "DuplexChannel": "blender_worker.duplex",
    "BaseEnv": "blender_worker.env",
    "DataPublisher": "blender_worker.publisher",
    "AnimationController": "blender_worker.animation",
    "Signal": "blender_worker.signals",
    "Camera": "blender_worker.camera",
    "Renderer": "blender_worker.render",
    "RenderSettings": "blender_worker.render",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the bpy-dependent names of ``__all__`` on first use (see ``_LAZY``)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'blender_worker' has no attribute {name!r}")
