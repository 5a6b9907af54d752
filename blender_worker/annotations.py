"""Per-object annotations computed through a camera: boxes, keypoints, visibility, poses.

Holds `CameraAnnotations`, a mixin that `blender_worker.camera.Camera` inherits: the mesh
vertices and oriented box of an object in world coordinates (``object_vertices``,
``bbox3d``), its 2D box (``box2d``), occlusion by ray casts (``occluded``), COCO keypoints
(``keypoints``), the visible share of its vertices (``visible_fraction``) and its BOP poses
(``object_poses``). Use them through a camera: ``bw.Camera().box2d(obj)``.

The camera model itself (projections world -> NDC -> pixel, ``K``, extrinsics, PyTorch3D
cameras, the camera axis conventions) lives in `blender_worker.camera`; this module does not
import it.

Annotation conventions (see each method):

- Boxes and keypoints (COCO) use ``world_to_pixel``'s continuous pixel coordinates: the
  origin at the upper-left corner of the image, y down, pixel (0, 0) covers [0, 1] x [0, 1].
- A point is visible when it lies in front of the camera, inside the image, and the ray
  from the camera centre to it hits no object outside ``ignore`` (so an object's own far
  side hides itself).
- Poses (``object_poses``) are model-to-camera in OpenCV axes (x right, y down, z forward;
  see `blender_worker.camera`), in scene units, without the object's scale.
"""

from __future__ import annotations

from typing import Optional, Sequence

import bpy
import numpy as np
from mathutils import Vector


def _transform(xyz: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 3) points mapped by a 4x4 affine matrix."""
    return xyz @ matrix[:3, :3].T + matrix[:3, 3]


class CameraAnnotations:
    """Annotation methods of `blender_worker.camera.Camera` (a mixin; use them through a camera).

    The methods rely on what ``Camera`` provides: ``world_to_pixel``, ``extrinsics_opencv``,
    ``update_view_matrix``, ``shape`` ((height, width) in pixels) and ``bpy_camera``.
    ``object_vertices`` and ``bbox3d`` are static methods and need no camera.

    Example:
        The 2D box and the visible share of an object::

            cam = Camera()
            box = cam.box2d(bpy.data.objects["Cube"])                    # (x0, y0, x1, y1)
            seen = cam.visible_fraction(bpy.data.objects["Cube"])        # 0.0 .. 1.0
    """

    @staticmethod
    def object_vertices(obj: "bpy.types.Object") -> np.ndarray:
        """World coordinates of the evaluated mesh vertices of an object (modifiers applied).

        Args:
            obj: A mesh object (or any object that converts to a mesh).

        Returns:
            (N, 3) world coordinates.
        """
        ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = ev.to_mesh()
        try:
            xyz = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
            mesh.vertices.foreach_get("co", xyz)
        finally:
            ev.to_mesh_clear()
        return _transform(xyz.reshape(-1, 3), np.asarray(ev.matrix_world))

    @staticmethod
    def bbox3d(obj: "bpy.types.Object") -> np.ndarray:
        """Corners of an object's oriented bounding box.

        Args:
            obj: The object.

        Returns:
            (8, 3) world coordinates, in Blender's ``bound_box`` order (x-, y-, z- corner
            first).
        """
        m = np.asarray(obj.matrix_world)
        return _transform(np.array([list(c) for c in obj.bound_box], dtype=np.float64), m)

    def box2d(self, obj: "bpy.types.Object", clip: bool = True) -> Optional[tuple[float, float, float, float]]:
        """Tight 2D box of the projected mesh vertices, ignoring occlusion (the amodal box).

        Args:
            obj: A mesh object.
            clip: Clip the box to the image.

        Returns:
            ``(x0, y0, x1, y1)`` in pixels, or None if the object is behind the camera or
            (clipped) outside the image.
        """
        pix, z = self.world_to_pixel(self.object_vertices(obj), return_depth=True)
        pix = pix[z > 0]
        if not len(pix):
            return None
        x0, y0 = pix.min(axis=0)
        x1, y1 = pix.max(axis=0)
        if clip:
            h, w = self.shape
            x0, x1 = np.clip([x0, x1], 0, w)
            y0, y1 = np.clip([y0, y1], 0, h)
            if x1 <= x0 or y1 <= y0:
                return None
        return float(x0), float(y0), float(x1), float(y1)

    def occluded(self, xyz_world: np.ndarray, ignore: Sequence["bpy.types.Object"] = (), eps: float = 1e-4) -> np.ndarray:
        """Whether something lies between the camera and each world point (scene ray casts).

        Args:
            xyz_world: (N, 3) points.
            ignore: Objects whose hits do not count (e.g. the object the points are on).
            eps: A hit within this relative distance of the point does not count.

        Returns:
            (N,) bool, True where the point is hidden.
        """
        depsgraph = bpy.context.evaluated_depsgraph_get()
        scene = bpy.context.scene
        origin = Vector(self.bpy_camera.matrix_world.translation)
        ignored = {o.name for o in ignore}
        out = np.zeros(len(np.atleast_2d(xyz_world)), dtype=bool)
        for i, p in enumerate(np.atleast_2d(xyz_world)):
            d = Vector(p) - origin
            dist = d.length
            start, left = origin, dist * (1.0 - eps)
            while left > 0:
                hit, loc, _, _, obj, _ = scene.ray_cast(depsgraph, start, d.normalized(), distance=left)
                if not hit:
                    break
                if obj.name not in ignored:
                    out[i] = True
                    break
                step = (loc - start).length + 1e-6
                start, left = loc + d.normalized() * 1e-6, left - step
        return out

    def keypoints(self, xyz_world: np.ndarray, ignore: Sequence["bpy.types.Object"] = ()) -> np.ndarray:
        """COCO keypoints of world points.

        Args:
            xyz_world: (N, 3) points.
            ignore: Objects whose ray-cast hits do not count as occlusion.

        Returns:
            (N, 3) ``(x, y, v)``: v = 2 visible, 1 in the image but occluded (ray cast),
            0 behind the camera or outside the image (x = y = 0 then).
        """
        pts = np.atleast_2d(np.asarray(xyz_world, dtype=np.float64))
        pix, z = self.world_to_pixel(pts, return_depth=True)
        h, w = self.shape
        inside = (z > 0) & (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
        v = np.where(inside, 2, 0)
        if inside.any():
            occ = self.occluded(pts[inside], ignore=ignore)
            v[np.flatnonzero(inside)[occ]] = 1
        out = np.zeros((len(pts), 3))
        out[:, :2] = np.where(inside[:, None], pix, 0.0)
        out[:, 2] = v
        return out

    def visible_fraction(self, obj: "bpy.types.Object") -> float:
        """Share of an object's mesh vertices that are in the image and not hidden (ray casts).

        Points on the object's own far side count as hidden by itself, so a solid object
        rarely reaches 1.0.

        Args:
            obj: A mesh object.

        Returns:
            1.0 fully visible, 0.0 hidden or off screen.
        """
        kp = self.keypoints(self.object_vertices(obj))
        return float(np.mean(kp[:, 2] == 2)) if len(kp) else 0.0

    def object_poses(self, objects: Sequence["bpy.types.Object"], category_property: str = "category_id") -> dict[str, np.ndarray]:
        """Model-to-camera poses of objects in OpenCV axes (BOP's ``cam_R_m2c`` / ``cam_t_m2c``).

        ``x_cam = R @ x_model + t`` maps a point of the object's mesh (its local coordinates)
        into OpenCV camera coordinates (x right, y down, z forward), so with ``K`` it projects
        to pixels as ``world_to_pixel(...) - 0.5``. The object's scale is left out (R is a
        rotation): export BOP models with the scale applied. Publish the result with the
        item (``pub.publish(**out, **cam.object_poses(objs), K=cam.K)``) for
        `blendtorch_ray.bop.export_bop`.

        Args:
            objects: The objects.
            category_property: Custom property naming an object's model / class (see
                ``passes.category_of``): BOP's ``obj_id``.

        Returns:
            ``pose_ids`` (N,) int32 instance ids (``pass_index``, as in the 'instance' pass),
            ``pose_obj_ids`` (N,) int32 BOP object ids (the object's category, else its
            instance id), ``cam_R_m2c`` (N, 3, 3) and ``cam_t_m2c`` (N, 3) in scene units.
        """
        from blender_worker.passes import category_of

        self.update_view_matrix()
        w2c = self.extrinsics_opencv()
        Rs, ts, ids, obj_ids = [], [], [], []
        for obj in objects:
            m = np.asarray(obj.matrix_world.normalized())  # rotation and translation, no scale
            m2c = w2c @ m
            Rs.append(m2c[:3, :3])
            ts.append(m2c[:3, 3])
            ids.append(obj.pass_index)
            obj_ids.append(category_of(obj, category_property) or obj.pass_index)
        return {
            "pose_ids": np.array(ids, dtype=np.int32),
            "pose_obj_ids": np.array(obj_ids, dtype=np.int32),
            "cam_R_m2c": np.array(Rs, dtype=np.float64).reshape(-1, 3, 3),
            "cam_t_m2c": np.array(ts, dtype=np.float64).reshape(-1, 3),
        }
