"""Headless rendering into numpy arrays.

Blender's ``Render Result`` holds no pixels in background mode, so each frame is written
with ``write_still`` to an uncompressed file on /dev/shm and read back with numpy:
uncompressed Targa for display-referred 8-bit RGBA (view transform applied) and
uncompressed OpenEXR (read with the ``OpenEXR`` package) for scene-linear float RGBA.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import bpy
import numpy as np

ENGINES = {
    "workbench": "BLENDER_WORKBENCH",
    "eevee": "BLENDER_EEVEE",
    "cycles": "CYCLES",
}


@dataclass
class RenderSettings:
    """How the renderer configures the scene. ``None`` keeps what the .blend file says."""

    engine: Optional[str] = None
    """'workbench', 'eevee' or 'cycles' (or a Blender engine identifier)."""
    resolution: Optional[tuple[int, int]] = None
    """(width, height) in pixels."""
    samples: Optional[int] = None
    """Cycles / Eevee samples."""
    workbench_aa: Optional[str] = None
    """Workbench anti-aliasing: 'OFF', 'FXAA', '5', '8', '11', '16', '32'."""


def read_tga(path: str) -> np.ndarray:
    """Read an uncompressed 24/32-bit Targa file into an (H, W, 4) uint8 RGBA array."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size < 18:
        raise ValueError(f"{path}: not a Targa file ({data.size} bytes)")
    id_len, _, img_type = int(data[0]), int(data[1]), int(data[2])
    width = int(data[12]) | (int(data[13]) << 8)
    height = int(data[14]) | (int(data[15]) << 8)
    bpp, descriptor = int(data[16]), int(data[17])
    if img_type != 2 or bpp not in (24, 32):
        raise ValueError(f"{path}: only uncompressed true-colour Targa is supported")
    channels = bpp // 8
    start = 18 + id_len
    pix = data[start : start + width * height * channels].reshape(height, width, channels)
    if not descriptor & 0x20:  # bottom-left origin
        pix = pix[::-1]
    rgba = np.empty((height, width, 4), dtype=np.uint8)
    rgba[..., 0] = pix[..., 2]
    rgba[..., 1] = pix[..., 1]
    rgba[..., 2] = pix[..., 0]
    rgba[..., 3] = pix[..., 3] if channels == 4 else 255
    return rgba


def read_exr(path: str) -> dict[str, np.ndarray]:
    """Read every channel group of an OpenEXR file as float arrays (top-left origin)."""
    import OpenEXR  # the openexr package; imported lazily as only float output needs it

    with OpenEXR.File(path) as f:
        return {name: np.array(ch.pixels) for name, ch in f.channels().items()}


class Renderer:
    """Render the active camera of a scene into numpy arrays.

    ``render()`` returns a dict: ``{"image": (H, W, 4) uint8}`` for the default
    ``color="srgb8"``; with ``color="linear"`` the image is scene-linear float32.
    """

    def __init__(
        self,
        settings: Optional[RenderSettings] = None,
        scene: Optional["bpy.types.Scene"] = None,
        tmpdir: Optional[str] = None,
    ):
        self.scene = scene or bpy.context.scene
        self.settings = settings or RenderSettings()
        base = tmpdir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        self._dir = tempfile.mkdtemp(prefix="btr-render-", dir=base)
        self._configure()

    def _configure(self) -> None:
        s, r = self.settings, self.scene.render
        if s.engine:
            r.engine = ENGINES.get(s.engine.lower(), s.engine)
        if s.resolution:
            r.resolution_x, r.resolution_y = s.resolution
            r.resolution_percentage = 100
        if s.samples is not None:
            if r.engine == "CYCLES":
                self.scene.cycles.samples = s.samples
                self.scene.cycles.device = "CPU"
            elif r.engine.startswith("BLENDER_EEVEE"):
                self.scene.eevee.taa_render_samples = s.samples
        if s.workbench_aa is not None:
            self.scene.display.render_aa = s.workbench_aa
        r.use_compositing = False
        r.use_sequencer = False

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of rendered images."""
        r = self.scene.render
        scale = r.resolution_percentage / 100.0
        return int(r.resolution_y * scale), int(r.resolution_x * scale)

    def render(self, color: str = "srgb8") -> dict[str, np.ndarray]:
        """Render one frame of the current scene state."""
        fmt = self.scene.render.image_settings
        if color == "srgb8":
            path = os.path.join(self._dir, "frame.tga")
            fmt.file_format = "TARGA_RAW"
            fmt.color_mode = "RGBA"
            self._write(path)
            return {"image": read_tga(path)}
        if color == "linear":
            path = os.path.join(self._dir, "frame.exr")
            fmt.file_format = "OPEN_EXR"
            fmt.color_mode = "RGBA"
            fmt.color_depth = "32"
            fmt.exr_codec = "NONE"
            self._write(path)
            return {"image": read_exr(path)["RGBA"]}
        raise ValueError(f"unknown color {color!r}: use 'srgb8' or 'linear'")

    def _write(self, path: str) -> None:
        self.scene.render.filepath = path
        bpy.ops.render.render(write_still=True, scene=self.scene.name)

    def close(self) -> None:
        """Remove the scratch directory."""
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)
