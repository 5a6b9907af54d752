"""Exact object ids from a flat Workbench render: every object drawn unlit, without
anti-aliasing, in a colour that encodes its id (``encode_id`` / ``decode_ids``). The
Renderer's ``instance`` pass uses it for Workbench and Eevee (`IdRender`), and
`amodal_masks` renders each object alone for full (amodal) silhouettes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from blender_worker.passes import renderable_objects

if TYPE_CHECKING:  # pragma: no cover
    import bpy


def encode_id(i: int) -> tuple[float, float, float, float]:
    """Object colour that the id render draws for an id (base 256 in R, G, B).

    Args:
        i: Instance id.

    Returns:
        RGBA with each channel in [0, 1].

    Raises:
        ValueError: ``i`` is outside ``[0, 2**24)``.
    """
    if not 0 <= i < 1 << 24:
        raise ValueError(f"instance id {i} out of range [0, 2**24)")
    return ((i & 255) / 255.0, ((i >> 8) & 255) / 255.0, ((i >> 16) & 255) / 255.0, 1.0)


def decode_ids(rgba: np.ndarray) -> np.ndarray:
    """Inverse of `encode_id` on an image.

    Args:
        rgba: (H, W, 4) float image.

    Returns:
        (H, W) int32 ids; transparent pixels are 0.
    """
    b = np.rint(np.clip(rgba[..., :3], 0.0, 1.0) * 255.0).astype(np.int32)
    ids = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    ids[rgba[..., 3] < 0.5] = 0
    return ids


class IdRender:
    """Render exact instance ids with Workbench: flat, unlit, no anti-aliasing, colour = id.

    Every setting it touches (engine, shading, film, object colours) is restored afterwards,
    so it can run between two normal renders of any engine.

    Args:
        scene: The scene to render.
    """

    _SHADING = {
        "light": "FLAT",
        "color_type": "OBJECT",
        "show_cavity": False,
        "show_object_outline": False,
        "show_shadows": False,
        "show_specular_highlight": False,
        "show_xray": False,
        "use_dof": False,
        "show_backface_culling": False,
    }

    def __init__(self, scene: "bpy.types.Scene"):
        self.scene = scene

    def render(self, path: str) -> np.ndarray:
        """Render the id image.

        Args:
            path: OpenEXR file to write (overwritten).

        Returns:
            (H, W) int32 instance ids, 0 = background.
        """
        import bpy

        from blender_worker.readers import read_exr

        sc = self.scene
        shading, r = sc.display.shading, sc.render
        fmt = r.image_settings
        saved_scene = {
            "engine": r.engine,
            "film_transparent": r.film_transparent,
            "filepath": r.filepath,
            "render_aa": sc.display.render_aa,
            **({"media_type": fmt.media_type} if hasattr(fmt, "media_type") else {}),  # Blender >= 5.0
            "file_format": fmt.file_format,
            "color_mode": fmt.color_mode,
            "color_depth": fmt.color_depth,
            "exr_codec": fmt.exr_codec,
        }
        saved_shading = {k: getattr(shading, k) for k in self._SHADING}
        objs = renderable_objects(sc)
        saved_colors = [tuple(o.color) for o in objs]
        try:
            r.engine = "BLENDER_WORKBENCH"
            r.film_transparent = True
            sc.display.render_aa = "OFF"
            for k, v in self._SHADING.items():
                setattr(shading, k, v)
            for o in objs:
                o.color = encode_id(o.pass_index)
            if hasattr(fmt, "media_type"):
                fmt.media_type = "IMAGE"
            fmt.file_format = "OPEN_EXR"
            fmt.color_mode = "RGBA"
            fmt.color_depth = "32"
            fmt.exr_codec = "NONE"
            r.filepath = path
            bpy.ops.render.render(write_still=True, scene=sc.name)
        finally:
            for o, c in zip(objs, saved_colors):
                o.color = c
            for k, v in saved_shading.items():
                setattr(shading, k, v)
            sc.display.render_aa = saved_scene.pop("render_aa")
            for k in ("engine", "film_transparent", "filepath"):
                setattr(r, k, saved_scene.pop(k))
            for k, v in saved_scene.items():
                setattr(fmt, k, v)
        return decode_ids(read_exr(path)["RGBA"])


def amodal_masks(objects: Sequence["bpy.types.Object"], path: str, scene: Optional["bpy.types.Scene"] = None) -> np.ndarray:
    """Full silhouettes of objects, occlusion ignored (BOP's ``mask``; the 'instance' pass is
    the visible part, BOP's ``mask_visib``).

    One flat Workbench id render (`IdRender`) per object with every other object hidden
    (``hide_render`` restored afterwards); pixel-centre rule, no anti-aliasing.

    Args:
        objects: The objects, e.g. in the order of ``Camera.object_poses``.
        path: OpenEXR scratch file (overwritten).
        scene: The scene; None: the current scene.

    Returns:
        (N, H, W) bool.

    Raises:
        ValueError: An object has no instance id (``pass_index`` 0).
    """
    import bpy

    sc = scene or bpy.context.scene
    others = renderable_objects(sc)
    saved = {o.name: o.hide_render for o in others}
    out = []
    try:
        for obj in objects:
            if not obj.pass_index:
                raise ValueError(f"object {obj.name!r} has pass_index 0: give it an id (assign_instance_ids)")
            for o in others:
                o.hide_render = o.name != obj.name
            obj.hide_render = False
            out.append(IdRender(sc).render(path) == obj.pass_index)
    finally:
        for o in others:
            o.hide_render = saved[o.name]
    return np.array(out, dtype=bool)
