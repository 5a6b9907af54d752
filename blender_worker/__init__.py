"""Code that runs inside Blender's Python: parse launch arguments, animate, render, publish.

Imports nothing from ``blendtorch_ray``; bpy-dependent parts load lazily so that the codec
and argument parser can be used from plain Python too.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LaunchArgs": "blender_worker.arguments",
    "parse_launch_args": "blender_worker.arguments",
    "DataPublisher": "blender_worker.publisher",
    "AnimationController": "blender_worker.animation",
    "Signal": "blender_worker.signals",
    "Camera": "blender_worker.camera",
    "Renderer": "blender_worker.render",
    "RenderSettings": "blender_worker.render",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'blender_worker' has no attribute {name!r}")
