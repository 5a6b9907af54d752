"""Camera projections: world points to normalized device coordinates and to pixels.

Conventions: NDC are OpenGL-style, x and y in [-1, 1] inside the image; pixels are
``(x, y)`` with the origin at the upper-left corner of the image and y pointing down
(OpenCV), unless ``origin="lower-left"`` is asked for. Depth is the distance along the
camera's viewing axis (camera-space ``-z``), in scene units.
"""

from __future__ import annotations

from typing import Optional, Sequence

import bpy
import numpy as np
from mathutils import Vector


def _hom(x: np.ndarray) -> np.ndarray:
    return np.hstack((x, np.ones((len(x), 1), dtype=x.dtype)))


class Camera:
    """Projection helper around a Blender camera object.

    Call ``update_view_matrix()`` after moving the camera by other means than
    ``look_at``, and ``update_proj_matrix()`` after changing lens or resolution.
    """

    def __init__(self, bpy_camera: Optional["bpy.types.Object"] = None, shape: Optional[tuple[int, int]] = None):
        self.bpy_camera = bpy_camera or bpy.context.scene.camera
        if self.bpy_camera is None:
            raise ValueError("the scene has no active camera; pass bpy_camera= explicitly")
        self.shape = shape or self.shape_from_bpy()
        self.update_view_matrix()
        self.update_proj_matrix()

    @staticmethod
    def shape_from_bpy(bpy_render: Optional["bpy.types.RenderSettings"] = None) -> tuple[int, int]:
        """(height, width) of the rendered image, resolution percentage applied."""
        render = bpy_render or bpy.context.scene.render
        scale = render.resolution_percentage / 100.0
        return int(render.resolution_y * scale), int(render.resolution_x * scale)

    @property
    def type(self) -> str:
        """'PERSP', 'ORTHO' or 'PANO'."""
        return self.bpy_camera.data.type

    @property
    def clip_range(self) -> tuple[float, float]:
        return self.bpy_camera.data.clip_start, self.bpy_camera.data.clip_end

    def update_view_matrix(self) -> None:
        """Re-read the world-to-camera matrix from Blender."""
        bpy.context.view_layer.update()
        self.view_matrix = np.asarray(self.bpy_camera.matrix_world.normalized().inverted())

    def update_proj_matrix(self) -> None:
        """Re-read the camera-to-clip projection matrix (OpenGL convention) from Blender."""
        h, w = self.shape
        self.proj_matrix = np.asarray(
            self.bpy_camera.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=w, y=h)
        )

    def world_to_ndc(self, xyz_world: np.ndarray, return_depth: bool = False):
        """Project (N, 3) world points to (N, 3) NDC; optionally also return (N,) depth."""
        xyzw = _hom(np.atleast_2d(np.asarray(xyz_world, dtype=np.float64)))
        cam = xyzw @ self.view_matrix.T
        clip = cam @ self.proj_matrix.T
        ndc = clip[:, :3] / clip[:, 3:4]
        if return_depth:
            return ndc, -cam[:, 2]
        return ndc

    def ndc_to_pixel(self, ndc: np.ndarray, origin: str = "upper-left") -> np.ndarray:
        """Convert (N, >=2) NDC to (N, 2) pixel coordinates (x, y).

        A pixel centre sits at +0.5: the image spans [0, W] x [0, H].
        """
        if origin not in ("upper-left", "lower-left"):
            raise ValueError("origin must be 'upper-left' or 'lower-left'")
        h, w = self.shape
        xy = (np.atleast_2d(ndc)[:, :2] + 1.0) * 0.5
        if origin == "upper-left":
            xy[:, 1] = 1.0 - xy[:, 1]
        return xy * np.array([[w, h]])

    def world_to_pixel(self, xyz_world: np.ndarray, return_depth: bool = False, origin: str = "upper-left"):
        """Project (N, 3) world points straight to (N, 2) pixels (and depth)."""
        ndc, z = self.world_to_ndc(xyz_world, return_depth=True)
        pix = self.ndc_to_pixel(ndc, origin=origin)
        return (pix, z) if return_depth else pix

    def object_to_pixel(self, *objs: "bpy.types.Object", return_depth: bool = False):
        """Project the evaluated mesh vertices of each object; one (N, 2) array per object."""
        depsgraph = bpy.context.evaluated_depsgraph_get()
        out = []
        for obj in objs:
            ev = obj.evaluated_get(depsgraph)
            mesh = ev.to_mesh()
            try:
                xyz = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
                mesh.vertices.foreach_get("co", xyz)
            finally:
                ev.to_mesh_clear()
            world = _hom(xyz.reshape(-1, 3)) @ np.asarray(ev.matrix_world).T
            out.append(self.world_to_pixel(world[:, :3], return_depth=return_depth))
        return out[0] if len(out) == 1 else out

    def bbox_object_to_pixel(self, *objs: "bpy.types.Object", return_depth: bool = False):
        """Project the 8 corners of each object's bounding box; (8, 2) per object."""
        out = []
        for obj in objs:
            corners = np.array([list(obj.matrix_world @ Vector(c)) for c in obj.bound_box])
            out.append(self.world_to_pixel(corners, return_depth=return_depth))
        return out[0] if len(out) == 1 else out

    def look_at(self, look_at: Sequence[float] = (0.0, 0.0, 0.0), look_from: Optional[Sequence[float]] = None) -> None:
        """Point the camera at ``look_at`` from ``look_from`` (default: where it stands), Y up."""
        if look_from is None:
            look_from = self.bpy_camera.location.copy()
        direction = Vector(look_at) - Vector(look_from)
        self.bpy_camera.rotation_mode = "XYZ"
        self.bpy_camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
        self.bpy_camera.location = Vector(look_from)
        self.update_view_matrix()
