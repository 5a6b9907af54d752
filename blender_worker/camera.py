"""Camera projections: world points to normalized device coordinates and to pixels.

The camera model: `Camera` projects world points to NDC and pixels, gives the intrinsics
``K``, the extrinsics, PyTorch3D cameras and camera coordinates, and points the camera
(``look_at``). Its per-object annotations (``box2d``, ``bbox3d``, ``keypoints``,
``occluded``, ``visible_fraction``, ``object_poses``, ...) are inherited from
`blender_worker.annotations.CameraAnnotations`; that module states the annotation
conventions (COCO boxes and keypoints, visibility, BOP poses).

Conventions: NDC are OpenGL-style, x and y in [-1, 1] inside the image; pixels are
``(x, y)`` with the origin at the upper-left corner of the image and y pointing down
(OpenCV), unless ``origin="lower-left"`` is asked for. Depth is the distance along the
camera's viewing axis (camera-space ``-z``), in scene units.

Camera axis conventions (see each method):

- Blender camera space: x right, y up, the camera looks along -z.
- OpenCV (``K``, ``extrinsics_opencv``): x right, y down, z forward; ``x_cam = R @ x_world + t``;
  ``K`` puts pixel centres at integer coordinates, so ``K``-projected points are
  ``world_to_pixel(...) - 0.5``.
- PyTorch3D (``pytorch3d_cameras``): x left, y up, z forward, row vectors
  (``x_view = x_world @ R + T``); the same numbers
  ``pytorch3d.utils.cameras_from_opencv_projection`` computes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import bpy
import numpy as np
from mathutils import Vector

from blender_worker.annotations import CameraAnnotations

BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0])
"""Blender camera axes (x right, y up, -z forward) to OpenCV (x right, y down, z forward)."""
OPENCV_TO_PYTORCH3D = np.diag([-1.0, -1.0, 1.0])
"""OpenCV camera axes to PyTorch3D view axes (x left, y up, z forward)."""


def _hom(x: np.ndarray) -> np.ndarray:
    return np.hstack((x, np.ones((len(x), 1), dtype=x.dtype)))


class Camera(CameraAnnotations):
    """Projection helper around a Blender camera object.

    The annotation methods (``box2d``, ``bbox3d``, ``keypoints``, ``object_poses``, ...)
    come from `blender_worker.annotations.CameraAnnotations`.

    Call ``update_view_matrix()`` after moving the camera by other means than
    ``look_at``, and ``update_proj_matrix()`` after changing lens or resolution.
    ``view_matrix`` (world to camera) and ``proj_matrix`` (camera to clip, OpenGL) are
    4x4 numpy arrays.

    Args:
        bpy_camera: The camera object; None: the scene's active camera.
        shape: ``(height, width)`` of the image in pixels; None: from the render settings.

    Raises:
        ValueError: No camera given and the scene has no active camera.

    Example:
        Pixel coordinates of an object's box corners, and its 2D box::

            cam = Camera()
            corners = cam.bbox_object_to_pixel(bpy.data.objects["Cube"])   # (8, 2)
            box = cam.box2d(bpy.data.objects["Cube"])                      # (x0, y0, x1, y1)
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
        """(height, width) of the rendered image, resolution percentage applied.

        Args:
            bpy_render: Render settings; None: the current scene's.

        Returns:
            ``(height, width)`` in pixels.
        """
        render = bpy_render or bpy.context.scene.render
        scale = render.resolution_percentage / 100.0
        return int(render.resolution_y * scale), int(render.resolution_x * scale)

    @property
    def type(self) -> str:
        """'PERSP', 'ORTHO' or 'PANO'."""
        return self.bpy_camera.data.type

    @property
    def clip_range(self) -> tuple[float, float]:
        """The camera's ``(clip_start, clip_end)`` in scene units."""
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
        """Project world points to normalized device coordinates.

        Args:
            xyz_world: (N, 3) points (a single point works too).
            return_depth: Also return the depth (see the module docstring).

        Returns:
            (N, 3) NDC, or ``(ndc, depth)`` with (N,) depth.
        """
        xyzw = _hom(np.atleast_2d(np.asarray(xyz_world, dtype=np.float64)))
        cam = xyzw @ self.view_matrix.T
        clip = cam @ self.proj_matrix.T
        ndc = clip[:, :3] / clip[:, 3:4]
        if return_depth:
            return ndc, -cam[:, 2]
        return ndc

    def ndc_to_pixel(self, ndc: np.ndarray, origin: str = "upper-left") -> np.ndarray:
        """Convert NDC to pixel coordinates (x, y).

        A pixel centre sits at +0.5: the image spans [0, W] x [0, H].

        Args:
            ndc: (N, >=2) NDC; only x and y are used.
            origin: "upper-left" (y down, OpenCV) or "lower-left" (y up).

        Returns:
            (N, 2) pixel coordinates.

        Raises:
            ValueError: ``origin`` is neither.
        """
        if origin not in ("upper-left", "lower-left"):
            raise ValueError("origin must be 'upper-left' or 'lower-left'")
        h, w = self.shape
        xy = (np.atleast_2d(ndc)[:, :2] + 1.0) * 0.5
        if origin == "upper-left":
            xy[:, 1] = 1.0 - xy[:, 1]
        return xy * np.array([[w, h]])

    def world_to_pixel(self, xyz_world: np.ndarray, return_depth: bool = False, origin: str = "upper-left"):
        """Project world points straight to pixels.

        Args:
            xyz_world: (N, 3) points.
            return_depth: Also return the (N,) depth; negative behind the camera.
            origin: "upper-left" or "lower-left" (see `ndc_to_pixel`).

        Returns:
            (N, 2) pixel coordinates, or ``(pixels, depth)``.
        """
        ndc, z = self.world_to_ndc(xyz_world, return_depth=True)
        pix = self.ndc_to_pixel(ndc, origin=origin)
        return (pix, z) if return_depth else pix

    def object_to_pixel(self, *objs: "bpy.types.Object", return_depth: bool = False):
        """Project the evaluated mesh vertices of each object.

        Args:
            *objs: Mesh objects.
            return_depth: Also return each vertex's depth.

        Returns:
            One (N, 2) array (or ``(pixels, depth)``) for one object, else a list of them.
        """
        out = [self.world_to_pixel(self.object_vertices(obj), return_depth=return_depth) for obj in objs]
        return out[0] if len(out) == 1 else out

    def bbox_object_to_pixel(self, *objs: "bpy.types.Object", return_depth: bool = False):
        """Project the 8 corners of each object's bounding box (see `bbox3d`).

        Args:
            *objs: Objects.
            return_depth: Also return each corner's depth.

        Returns:
            One (8, 2) array (or ``(pixels, depth)``) for one object, else a list of them.
        """
        out = [self.world_to_pixel(self.bbox3d(obj), return_depth=return_depth) for obj in objs]
        return out[0] if len(out) == 1 else out

    def look_at(self, look_at: Sequence[float] = (0.0, 0.0, 0.0), look_from: Optional[Sequence[float]] = None) -> None:
        """Point the camera at a point, with the world's Y axis up in the image.

        Updates ``view_matrix``.

        Args:
            look_at: World point to look at.
            look_from: Where the camera goes; None: where it stands.
        """
        if look_from is None:
            look_from = self.bpy_camera.location.copy()
        direction = Vector(look_at) - Vector(look_from)
        self.bpy_camera.rotation_mode = "XYZ"
        self.bpy_camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
        self.bpy_camera.location = Vector(look_from)
        self.update_view_matrix()

    # --- intrinsics, extrinsics and camera coordinates in other libraries' conventions -------

    @property
    def K(self) -> np.ndarray:
        """3x3 OpenCV intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels, pixel
        centres at integer coordinates (perspective cameras only)."""
        if self.type != "PERSP":
            raise ValueError(f"intrinsics K need a perspective camera, this one is {self.type}")
        h, w = self.shape
        p = self.proj_matrix
        return np.array(
            [
                [0.5 * w * p[0, 0], 0.0, 0.5 * w * (1.0 - p[0, 2]) - 0.5],
                [0.0, 0.5 * h * p[1, 1], 0.5 * h * (1.0 + p[1, 2]) - 0.5],
                [0.0, 0.0, 1.0],
            ]
        )

    def extrinsics_opencv(self) -> np.ndarray:
        """The camera's extrinsics in OpenCV axes.

        ``cv2.projectPoints(X, cv2.Rodrigues(R)[0], t, K, None)`` reproduces the projection.

        Returns:
            4x4 world-to-camera matrix ``[[R, t], [0, 1]]``: ``x_cam = R @ x_world + t``.
        """
        m = np.eye(4)
        m[:3, :] = BLENDER_TO_OPENCV @ self.view_matrix[:3, :]
        return m

    def pytorch3d_cameras(self) -> dict[str, np.ndarray]:
        """This camera for PyTorch3D.

        Returns:
            Arguments for ``pytorch3d.renderer.PerspectiveCameras(in_ndc=False, **kw)``
            (batch of 1): ``R`` (1, 3, 3) and ``T`` (1, 3) with ``x_view = x_world @ R + T``,
            ``focal_length`` (1, 2), ``principal_point`` (1, 2), ``image_size`` (1, 2) as
            (H, W).

        Raises:
            ValueError: Not a perspective camera.
        """
        ext = self.extrinsics_opencv()
        K = self.K
        R = (OPENCV_TO_PYTORCH3D @ ext[:3, :3]).T
        T = OPENCV_TO_PYTORCH3D @ ext[:3, 3]
        return {
            "R": R[None],
            "T": T[None],
            "focal_length": np.array([[K[0, 0], K[1, 1]]]),
            "principal_point": np.array([[K[0, 2], K[1, 2]]]),
            "image_size": np.array([self.shape]),
        }

    def world_to_camera(self, xyz_world: np.ndarray, convention: str = "opencv") -> np.ndarray:
        """World points in camera coordinates.

        Args:
            xyz_world: (N, 3) points.
            convention: Camera axes: 'opencv', 'pytorch3d' or 'blender' (see the module
                docstring).

        Returns:
            (N, 3) camera coordinates.

        Raises:
            ValueError: ``convention`` is unknown.
        """
        cam = _hom(np.atleast_2d(np.asarray(xyz_world, dtype=np.float64))) @ self.view_matrix.T
        axes = {"blender": np.eye(3), "opencv": BLENDER_TO_OPENCV,
                "pytorch3d": OPENCV_TO_PYTORCH3D @ BLENDER_TO_OPENCV}
        if convention not in axes:
            raise ValueError(f"unknown convention {convention!r}: use one of {sorted(axes)}")
        return cam[:, :3] @ axes[convention].T
