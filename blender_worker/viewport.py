"""Viewport rendering: draw the active camera's view through Blender's GPU offscreen drawing.

What the original blendtorch's ``OffScreenRenderer`` did: the 3D viewport's drawing (Workbench
solid shading, Eevee material preview or the scene engine's "rendered" shading) into a
``GPUOffScreen``, read back into the same ``(H, W, 4) uint8`` array as
`blender_worker.render.Renderer`. No file round trip and no render pipeline, so it is cheap
per frame; what it draws is the viewport's approximation, not a final render.

Where it works (checked by running them):

- UI instances (``ui=True``, a Blender binary with its window; Blender 3.4 here, on Mesa's
  llvmpipe under Xvfb and on a real GPU): yes.
- Background mode: no. Blender 3.4 ``-b`` has no GPU context and crashes (segfault) on the
  first call into ``gpu``; the 5.0 bpy wheel raises "GPU functions for drawing are not
  available in background mode". (After an Eevee/Workbench render the wheel lets a
  ``GPUOffScreen`` be created, but there is no active context: drawing does nothing and a
  clear to red reads back white, so that is not used.) `ViewportRenderer` raises
  RuntimeError there, before touching ``gpu``; use ``Renderer`` (Workbench and Eevee render
  headless through Blender's own render pipeline).
"""

from __future__ import annotations

from typing import Optional

import bpy
import numpy as np

SHADINGS = ("SOLID", "MATERIAL", "RENDERED", "WIREFRAME")
"""Viewport shading types: Workbench solid, Eevee material preview, the scene engine's
viewport drawing ("RENDERED": Workbench or Eevee with the scene's lights), wireframe."""


class ViewportRenderer:
    """Draw the scene's active camera view as the viewport does, into numpy arrays.

    Args:
        resolution: ``(width, height)``; None: the scene's render resolution.
        shading: One of `SHADINGS`.
        scene: The scene; None: the current scene.

    Raises:
        RuntimeError: Background mode (``-b`` or the bpy wheel): no GPU drawing there (see the
            module docstring).
        ValueError: ``shading`` is unknown, or no 3D viewport exists to draw with.

    Example:
        In a UI instance, publish what the camera sees every frame::

            viewport = ViewportRenderer(resolution=(320, 240), shading="SOLID")
            anim.post_frame.add(lambda: pub.publish(**viewport.render()))
    """

    def __init__(self, resolution: Optional[tuple[int, int]] = None, shading: str = "SOLID",
                 scene: Optional["bpy.types.Scene"] = None) -> None:
        if bpy.app.background:
            raise RuntimeError(
                f"ViewportRenderer needs Blender's window: Blender {bpy.app.version_string} in "
                "background mode (-b or the bpy wheel) has no GPU context for drawing. Start the "
                "instance with ui=True and a Blender binary, or use blender_worker.Renderer "
                "(Workbench and Eevee render headless through the render pipeline)"
            )
        if shading not in SHADINGS:
            raise ValueError(f"unknown shading {shading!r}: use one of {', '.join(SHADINGS)}")
        import gpu

        self.scene = scene or bpy.context.scene
        r = self.scene.render
        self.width, self.height = resolution or (
            int(r.resolution_x * r.resolution_percentage / 100), int(r.resolution_y * r.resolution_percentage / 100))
        self.shading = shading
        self._space, self._region = _private_view3d()
        self._offscreen = gpu.types.GPUOffScreen(self.width, self.height)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return self.height, self.width

    def render(self) -> dict[str, np.ndarray]:
        """Draw the current scene state through the active camera.

        Returns:
            ``{"image": (H, W, 4) uint8}``, top row first, display colours (the scene's view
            transform applied), as `blender_worker.render.Renderer.render`.

        Raises:
            ValueError: The scene has no camera.
        """
        cam = self.scene.camera
        if cam is None:
            raise ValueError(f"scene {self.scene.name!r} has no camera; set scene.camera")
        space = self._space
        space.shading.type = self.shading
        space.overlay.show_overlays = False
        depsgraph = bpy.context.evaluated_depsgraph_get()
        view = cam.matrix_world.inverted()
        proj = cam.calc_matrix_camera(depsgraph, x=self.width, y=self.height,
                                      scale_x=self.scene.render.pixel_aspect_x,
                                      scale_y=self.scene.render.pixel_aspect_y)
        self._offscreen.draw_view3d(self.scene, bpy.context.view_layer, space, self._region, view, proj,
                                    do_color_management=True)
        # Through to_list(): Blender 3.4's gpu.types.Buffer exposes wrong bytes through the
        # buffer protocol (np.asarray on it reads garbage; to_list() has the pixels).
        pixels = np.array(self._offscreen.texture_color.read().to_list(), dtype=np.uint8)
        pixels = pixels.reshape(self.height, self.width, 4)
        return {"image": np.ascontiguousarray(pixels[::-1])}  # GPU rows are bottom-up

    def close(self) -> None:
        """Free the GPU offscreen buffer."""
        if self._offscreen is not None:
            self._offscreen.free()
            self._offscreen = None


def _private_view3d():
    """A 3D viewport's space and window region to draw with, preferably one of a screen no
    window shows (so that the shading set here does not change the user's viewport)."""
    wm = bpy.context.window_manager
    shown = {w.screen.name for w in wm.windows} if wm is not None else set()
    screens = sorted(bpy.data.screens, key=lambda s: s.name in shown)  # hidden screens first
    for screen in screens:
        for area in screen.areas:
            if area.type == "VIEW_3D":
                regions = [r for r in area.regions if r.type == "WINDOW"]
                if regions:
                    return area.spaces.active, regions[0]
    raise ValueError("no 3D viewport in this file to draw with; add a 3D Viewport area to a workspace")
